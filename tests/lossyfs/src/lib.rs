//! lossyfs: a FUSE filesystem for tests that forgets, on command, every write not yet
//! fsynced, as a machine losing power does (after LazyFS, which found lost writes in
//! NATS with the same trick).
//!
//! It passes through to a backing directory that always holds only the durable state
//! (see [`tree`] for how): file contents reach it on `fsync`/`fdatasync` of the file,
//! creates, renames and unlinks of files on `fsync` of their directory. Until then
//! they live in the filesystem process's memory. [`Mount::lose_power`] (or the
//! `lose-power` command on the control socket of the `lossyfs` binary) drops them.
//!
//! A SIGKILL of a process leaves the kernel's page cache, so it shows nothing about
//! what a program forgot to fsync; a power loss of this filesystem does.

pub mod content;
mod fuse;
pub mod tree;

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

pub use tree::Tree;

/// The mount options every lossyfs mount uses.
fn options(auto_unmount: bool) -> Vec<fuser::MountOption> {
    let mut o = vec![
        fuser::MountOption::FSName("lossyfs".into()),
        fuser::MountOption::RW,
        fuser::MountOption::DefaultPermissions,
    ];
    if auto_unmount {
        // The kernel mount goes away with the process (fusermount3 watches it).
        o.push(fuser::MountOption::AutoUnmount);
        o.push(fuser::MountOption::AllowRoot);
    }
    o
}

/// The shared state of one mounted filesystem: what the control handle acts on.
#[derive(Clone)]
pub struct Control {
    tree: Arc<Mutex<Tree>>,
}

impl Control {
    /// Drops every unsynced write, create, rename and unlink.
    pub fn lose_power(&self) -> io::Result<()> {
        self.tree
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .lose_power()
    }

    /// Runs one control command (`lose-power` or `ping`); the answer line.
    pub fn command(&self, line: &str) -> String {
        match line.trim() {
            "ping" => "ok".into(),
            "lose-power" => match self.lose_power() {
                Ok(()) => "ok".into(),
                Err(e) => format!("error {e}"),
            },
            other => format!("error unknown command {other:?}"),
        }
    }

    /// Serves commands, one per line, on a Unix socket at `path` (in this thread).
    pub fn serve(&self, path: &Path) -> io::Result<()> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        for stream in listener.incoming() {
            let stream = stream?;
            let mut reader = BufReader::new(stream.try_clone()?);
            let mut out = stream;
            let mut line = String::new();
            while reader.read_line(&mut line)? > 0 {
                let answer = self.command(&line);
                writeln!(out, "{answer}")?;
                line.clear();
            }
        }
        Ok(())
    }
}

/// Sends `command` to the control socket at `path`; Ok if it answered `ok`.
pub fn send_command(path: &Path, command: &str) -> io::Result<()> {
    let mut stream = UnixStream::connect(path)?;
    writeln!(stream, "{command}")?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    match line.trim() {
        "ok" => Ok(()),
        other => Err(io::Error::other(format!("lossyfs: {command}: {other}"))),
    }
}

/// A filesystem mounted by this process (in a background thread); unmounted on drop.
pub struct Mount {
    control: Control,
    _session: fuser::BackgroundSession,
}

impl Mount {
    pub fn control(&self) -> &Control {
        &self.control
    }

    pub fn lose_power(&self) -> io::Result<()> {
        self.control.lose_power()
    }
}

/// Mounts a lossyfs of `backing` at `mountpoint` in a background thread.
pub fn mount(mountpoint: &Path, backing: &Path) -> io::Result<Mount> {
    let tree = Arc::new(Mutex::new(Tree::open(backing)?));
    let fs = fuse::LossyFs { tree: tree.clone() };
    let session = fuser::spawn_mount2(fs, mountpoint, &options(false))?;
    Ok(Mount {
        control: Control { tree },
        _session: session,
    })
}

/// Mounts a lossyfs of `backing` at `mountpoint` and serves it in this thread until
/// it is unmounted; the kernel mount goes when this process does. `ready` gets the
/// control handle once the mount is up.
pub fn run(mountpoint: &Path, backing: &Path, ready: impl FnOnce(Control)) -> io::Result<()> {
    let tree = Arc::new(Mutex::new(Tree::open(backing)?));
    let control = Control { tree: tree.clone() };
    let fs = fuse::LossyFs { tree };
    let mut session = fuser::Session::new(fs, mountpoint, &options(true))?;
    ready(control);
    session.run()
}
