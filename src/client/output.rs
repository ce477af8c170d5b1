//! What the command-line client prints, and how it fails.
//!
//! Everything goes through [`json`] and [`line`], which return the write's error
//! instead of panicking as `println!` does: `session-queue get t-1 | head -c1`
//! closes the pipe under the client, and [`exit`] then ends the program quietly
//! (status 0), as a well-behaved Unix tool does. Any other error prints as one line,
//! `error: <what>: <why>`, never a debug dump or a backtrace.

use std::io::{self, Write};
use std::process::ExitCode;

use serde_json::Value;

/// Prints a JSON value, pretty, on stdout.
pub fn json(value: &Value) -> io::Result<()> {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    line(&text)
}

/// Prints one line on stdout, flushed (a watcher's lines appear as they happen).
pub fn line(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Whether the error is (caused by) writing to a closed pipe.
pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// The error as one line: its causes joined by `: `, line breaks folded.
pub fn one_line(error: &anyhow::Error) -> String {
    format!("{error:#}")
        .split(['\n', '\r'])
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The program's exit: quiet success on a closed pipe, one line on stderr for
/// any other error.
pub fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(io::stderr(), "error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn a_broken_pipe_is_recognised_under_context_and_errors_are_one_line() {
        let pipe: anyhow::Result<()> = Err(io::Error::from(io::ErrorKind::BrokenPipe).into());
        assert!(is_broken_pipe(&pipe.context("printing").unwrap_err()));
        let other = anyhow::anyhow!("404: not_found:\nunknown task t-9").context("get t-9");
        assert!(!is_broken_pipe(&other));
        assert_eq!(
            one_line(&other),
            "get t-9: 404: not_found: unknown task t-9"
        );
    }
}
