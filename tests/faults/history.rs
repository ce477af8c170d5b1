//! The history of a fault run: every client operation and every fault, one JSON
//! object per line, in the order they happened.
//!
//! An operation is recorded twice: when it is invoked (`"type": "invoke"`) and when
//! its outcome is known: `ok` (it happened), `fail` (it certainly did not happen:
//! a 4xx answer, a 503 `unavailable`, a refused connection) or `unknown` (it may or
//! may not have happened: a timeout, a reset connection, a 503 `outcome_unknown`, a
//! 500). Both lines carry the same `id`; `i` is the line's position and `t_ms` the
//! time since the run began. Faults are `info` lines of the `nemesis` process with a
//! `phase` of `start` or `end`.
//!
//! Fields besides those depend on the operation (see [`Event`]); each line carries
//! what identifies its operation (key, task, miner), so lines can be read alone.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// What a line says about its operation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    #[default]
    Invoke,
    Ok,
    Fail,
    Unknown,
    Info,
}

/// One line of the history.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the file (0, 1, 2, ...).
    #[serde(default)]
    pub i: u64,
    /// Milliseconds since the run began.
    #[serde(default)]
    pub t_ms: u64,
    /// Who: `client-N`, `client-uN` (submits without a key), `reader-N`, `miner-NAME`, `drain`, `scan`, `setup`, `nemesis`.
    pub process: String,
    /// The operation this line belongs to (the invoke and its outcome share it).
    pub id: u64,
    #[serde(rename = "type")]
    pub kind: Kind,
    /// `session`, `register`, `submit`, `read`, `poll`, `ack`, `precommit`,
    /// `reveal`, `heartbeat`, `fault`.
    pub op: String,
    /// The node (0-based index) the request went to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<usize>,

    /// session: its id; k and q.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<u8>,

    /// submit: the idempotency key and payload (base64); its outcome names the task
    /// and whether this call created it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// submit without an idempotency key: the unique marker its payload carries
    /// (`u<n>-<seq>`), so a task created twice from it can be told.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marker: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<bool>,

    /// Miner operations: the miner's id (and its name at registration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub miner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// reveal: the revealed output (base64); precommit: the hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// poll: how many assignments came back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,

    /// read / scan outcome: the task's state, its recorded history of states, its
    /// result (base64), failure, idempotency key, attempts; `missing` when the task
    /// was not found (404).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<bool>,

    /// fault: what (`kill-leader`, `pause-follower`, `isolate`, ...), `start` or
    /// `end`, the nodes it hit (0-based) and a description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<usize>>,

    /// A failed or unknown outcome: the HTTP status, if any, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Event {
    /// A line of `process` about operation `op`.
    pub fn new(process: &str, op: &str) -> Self {
        Event {
            process: process.to_string(),
            op: op.to_string(),
            ..Event::default()
        }
    }
}

/// Writes the history file; shared by every worker of a run.
pub struct Recorder {
    out: Mutex<(BufWriter<File>, u64)>,
    start: Instant,
    next_id: AtomicU64,
}

impl Recorder {
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let file = File::create(path)?;
        Ok(Recorder {
            out: Mutex::new((BufWriter::new(file), 0)),
            start: Instant::now(),
            next_id: AtomicU64::new(1),
        })
    }

    /// Appends a line, stamping its position and time under the lock, so the file's
    /// order is the order in which things were recorded.
    pub fn write(&self, mut event: Event) {
        let mut out = self.out.lock().expect("history lock");
        event.i = out.1;
        event.t_ms = self.start.elapsed().as_millis() as u64;
        out.1 += 1;
        let line = serde_json::to_string(&event).expect("encode a history line");
        writeln!(out.0, "{line}").expect("write the history");
    }

    /// Records the invocation of an operation; returns the template of its outcome
    /// line (same id and identifying fields).
    pub fn invoke(&self, mut event: Event) -> Event {
        event.id = self.next_id.fetch_add(1, Ordering::Relaxed);
        event.kind = Kind::Invoke;
        self.write(event.clone());
        event
    }

    /// Records an outcome (`event` built from what [`Recorder::invoke`] returned).
    pub fn complete(&self, mut event: Event, kind: Kind) {
        event.kind = kind;
        self.write(event);
    }

    /// Records a line that is not an operation (faults, notes).
    pub fn info(&self, mut event: Event) {
        event.id = self.next_id.fetch_add(1, Ordering::Relaxed);
        event.kind = Kind::Info;
        self.write(event);
    }

    pub fn flush(&self) {
        let mut out = self.out.lock().expect("history lock");
        out.0.flush().expect("flush the history");
    }
}

/// Reads a history file.
pub fn read(path: &Path) -> Result<Vec<Event>, String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut events = Vec::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        events.push(
            serde_json::from_str(&line)
                .map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?,
        );
    }
    Ok(events)
}
