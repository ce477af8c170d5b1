//! The checker: reads a history (see [`super::history`]) after the cluster has healed
//! and drained, and finds every way the run broke the contract of SPEC sections 3
//! and 5. Each finding is a violation; a run passes only with none.
//!
//! - **lost**: a task whose submit was answered with success (acknowledged) that the
//!   final scan does not find (or finds under another idempotency key), or that a
//!   linearizable read invoked after the acknowledgement did not find;
//! - **duplicates**: one idempotency key with two tasks (two successful submits of
//!   the key answered with different ids, or two tasks carrying the key in the
//!   final scan), or one task id answered for two submits; and a submit without a
//!   key applied twice: two tasks whose result is the honest output of its payload
//!   (each payload carries a unique marker), or, counted, more tasks without a key
//!   in the final scan than attempts without a key that may have created one (each
//!   makes at most one; a submit without a key is never retried after an unknown
//!   outcome);
//! - **failed but applied**: a submit every attempt of which was answered as not
//!   done (`fail`: a 4xx, a 503 `unavailable`, a refused connection) whose task
//!   exists after healing;
//! - **unsupported results**: a task seen Completed whose result fewer than q
//!   miners may have revealed (reveals answered with success or with an unknown
//!   outcome count; refused ones do not);
//! - **illegal transitions**: a task history, as a read returned it, with a step
//!   the state machine does not allow, or a read whose state is not the last of its
//!   history, or two reads of a finished task that disagree on its state or result;
//! - **stale reads**: two reads whose histories are not one a prefix of the other
//!   (the task's history forked), or a read that misses a transition a read which
//!   had already completed before it was invoked saw (linearizable reads only:
//!   every read of the harness is one);
//! - **not completed**: an acknowledged task the final scan finds in a state other
//!   than Completed;
//! - **unverified**: an acknowledged task the final scan could not read;
//! - **node crashes**: a node process that exited without being told to.
//!
//! Allowed steps: queued → acked → precommitted → committed → completed (a read
//! may skip states), acked → queued (a slot lost while the precommit phase is open),
//! precommitted → completed, and any unfinished state → failed or cancelled. A
//! finished state never changes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use serde::Serialize;
use session_queue::client::{b64, unb64};

use super::history::{Event, Kind};

/// Counts of one operation's outcomes.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct OpCounts {
    pub invoke: u64,
    pub ok: u64,
    pub fail: u64,
    pub unknown: u64,
}

/// What the checker found. Every `Vec<String>` is a list of violations.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub events: usize,
    pub duration_ms: u64,
    pub ops: BTreeMap<String, OpCounts>,
    pub faults: BTreeMap<String, u64>,
    /// Keys submitted, tasks acknowledged, keys whose submit was retried after an
    /// unknown or failed outcome, tasks found by the final scan.
    pub keys_submitted: usize,
    pub keys_retried: usize,
    /// Submits without a key (distinct payload markers), those with an attempt
    /// whose outcome was unknown (never retried), and tasks without a key found by
    /// the final scan.
    pub unkeyed_submitted: usize,
    pub unkeyed_unknown: usize,
    pub unkeyed_tasks: usize,
    pub acknowledged: usize,
    pub scanned_tasks: usize,
    pub completed: usize,
    pub reads_checked: usize,
    pub reveals_recorded: usize,
    /// Completed tasks whose result is not the honest miners' output (allowed when
    /// q lying miners agreed; with one liar it stays 0).
    pub results_not_honest: usize,

    pub lost: Vec<String>,
    pub duplicates: Vec<String>,
    pub failed_but_applied: Vec<String>,
    pub unsupported_results: Vec<String>,
    pub illegal_transitions: Vec<String>,
    pub stale_reads: Vec<String>,
    pub not_completed: Vec<String>,
    pub unverified: Vec<String>,
    pub node_crashes: Vec<String>,
    /// Times no majority leader emerged within 30 s of healing a fault (not a
    /// violation of safety; a liveness figure).
    pub unsettled: usize,
}

impl Report {
    pub fn violations(&self) -> usize {
        self.lost.len()
            + self.duplicates.len()
            + self.failed_but_applied.len()
            + self.unsupported_results.len()
            + self.illegal_transitions.len()
            + self.stale_reads.len()
            + self.not_completed.len()
            + self.unverified.len()
            + self.node_crashes.len()
    }

    pub fn ok(&self) -> bool {
        self.violations() == 0
    }

    /// A human-readable summary (violations listed, at most 20 of each kind).
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "history: {} lines over {:.1} s",
            self.events,
            self.duration_ms as f64 / 1000.0
        );
        let _ = writeln!(s, "operations (invoke / ok / fail / unknown):");
        for (op, c) in &self.ops {
            let _ = writeln!(
                s,
                "  {op:<10} {:>7} {:>7} {:>7} {:>7}",
                c.invoke, c.ok, c.fail, c.unknown
            );
        }
        let total: u64 = self.faults.values().sum();
        let _ = writeln!(s, "faults: {total}");
        for (fault, n) in &self.faults {
            let _ = writeln!(s, "  {fault:<18} {n}");
        }
        let _ = writeln!(
            s,
            "keys submitted {}, retried {}; tasks acknowledged {}, found by the final scan {}, completed {}",
            self.keys_submitted, self.keys_retried, self.acknowledged, self.scanned_tasks, self.completed
        );
        let _ = writeln!(
            s,
            "submits without a key {} ({} with an unknown outcome, not retried); tasks without a key found by the final scan {}",
            self.unkeyed_submitted, self.unkeyed_unknown, self.unkeyed_tasks
        );
        let _ = writeln!(
            s,
            "reads checked {}, reveals recorded {}, completed results not the honest output {}",
            self.reads_checked, self.reveals_recorded, self.results_not_honest
        );
        let _ = writeln!(s, "no leader within 30 s of healing: {}", self.unsettled);
        let lists: [(&str, &Vec<String>); 9] = [
            ("acknowledged tasks lost", &self.lost),
            (
                "tasks created twice for one key or one submit",
                &self.duplicates,
            ),
            (
                "submits answered as not done that were applied",
                &self.failed_but_applied,
            ),
            (
                "completed with a result no quorum revealed",
                &self.unsupported_results,
            ),
            ("illegal transitions", &self.illegal_transitions),
            ("stale reads", &self.stale_reads),
            ("acknowledged tasks not completed", &self.not_completed),
            ("acknowledged tasks not verified", &self.unverified),
            (
                "node processes that exited by themselves",
                &self.node_crashes,
            ),
        ];
        for (what, list) in lists {
            let _ = writeln!(s, "{what}: {}", list.len());
            for v in list.iter().take(20) {
                let _ = writeln!(s, "    {v}");
            }
            if list.len() > 20 {
                let _ = writeln!(s, "    ... and {} more", list.len() - 20);
            }
        }
        let _ = writeln!(s, "verdict: {}", if self.ok() { "PASS" } else { "FAIL" });
        s
    }
}

fn terminal(state: &str) -> bool {
    matches!(state, "completed" | "failed" | "cancelled")
}

/// One step of a task's recorded history the state machine may take.
pub fn step_allowed(from: &str, to: &str) -> bool {
    if from == to {
        return true;
    }
    if terminal(from) {
        return false;
    }
    matches!(
        (from, to),
        ("queued", "acked")
            | ("acked", "queued")
            | ("acked", "precommitted")
            | ("precommitted", "committed")
            | ("precommitted", "completed")
            | ("committed", "completed")
            | (_, "failed")
            | (_, "cancelled")
    )
}

/// Whether a task in `from` may later be seen in `to` (any number of steps).
pub fn reachable(from: &str, to: &str) -> bool {
    fn rank(s: &str) -> u8 {
        match s {
            "queued" | "acked" => 0,
            "precommitted" => 1,
            "committed" => 2,
            _ => 3,
        }
    }
    if from == to {
        return true;
    }
    if terminal(from) {
        return false;
    }
    terminal(to) || rank(to) >= rank(from)
}

/// One successful read of a task.
struct Observation {
    invoked: u64,
    completed: u64,
    node: Option<usize>,
    process: String,
    missing: bool,
    state: Option<String>,
    history: Option<Vec<String>>,
    result: Option<String>,
}

impl Observation {
    fn describe(&self) -> String {
        format!(
            "{} via node {:?} at line {} saw {}",
            self.process,
            self.node,
            self.completed,
            if self.missing {
                "no such task".to_string()
            } else {
                format!(
                    "{} {:?}",
                    self.state.as_deref().unwrap_or("?"),
                    self.history.as_deref().unwrap_or(&[])
                )
            }
        )
    }
}

fn is_prefix(a: &[String], b: &[String]) -> bool {
    a.len() <= b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// Checks a history. `honest` computes the output an honest miner reveals for a
/// payload (for the `results_not_honest` figure).
pub fn check(events: &[Event], honest: impl Fn(&[u8]) -> Vec<u8>) -> Report {
    let mut r = Report {
        events: events.len(),
        duration_ms: events.last().map_or(0, |e| e.t_ms),
        ..Report::default()
    };

    // Pair each invocation with its outcome.
    let mut invokes: HashMap<u64, &Event> = HashMap::new();
    let mut outcomes: HashMap<u64, &Event> = HashMap::new();
    let mut q: Option<u8> = None;
    for e in events {
        match e.kind {
            Kind::Invoke => {
                invokes.insert(e.id, e);
                r.ops.entry(e.op.clone()).or_default().invoke += 1;
            }
            Kind::Info => match e.op.as_str() {
                "fault" if e.phase.as_deref() == Some("start") => {
                    *r.faults
                        .entry(e.fault.clone().unwrap_or_default())
                        .or_default() += 1;
                }
                "crash" => r.node_crashes.push(format!(
                    "line {}: {}",
                    e.i,
                    e.error.as_deref().unwrap_or("?")
                )),
                "note" => r.unsettled += 1,
                _ => {}
            },
            kind => {
                outcomes.insert(e.id, e);
                let c = r.ops.entry(e.op.clone()).or_default();
                match kind {
                    Kind::Ok => c.ok += 1,
                    Kind::Fail => c.fail += 1,
                    _ => c.unknown += 1,
                }
                if e.op == "session" && kind == Kind::Ok {
                    q = e.q.or(q);
                }
            }
        }
    }
    let invoked_at = |e: &Event| invokes.get(&e.id).map_or(e.i, |inv| inv.i);

    // Submits: what each key (or marker of a submit without a key) was answered with.
    let mut payload_of: HashMap<Ident, &str> = HashMap::new();
    let mut tasks_of: BTreeMap<Ident, BTreeSet<&str>> = BTreeMap::new();
    let mut ident_of_task: BTreeMap<&str, Ident> = BTreeMap::new();
    let mut acked_at: BTreeMap<&str, u64> = BTreeMap::new();
    let mut attempts_of: BTreeMap<Ident, usize> = BTreeMap::new();
    // Whether any attempt may have been applied (its outcome is not `fail`).
    let mut may_apply: BTreeMap<Ident, bool> = BTreeMap::new();
    // Attempts without a key that may have created a task.
    let mut unkeyed_may_create = 0usize;
    for e in events.iter().filter(|e| e.op == "submit") {
        let Some(ident) = Ident::of(e) else {
            continue;
        };
        if e.kind == Kind::Invoke {
            *attempts_of.entry(ident).or_default() += 1;
            if let Some(p) = e.payload.as_deref() {
                payload_of.insert(ident, p);
            }
            let outcome = outcomes.get(&e.id).map(|o| o.kind);
            let may = !matches!(outcome, Some(Kind::Fail));
            *may_apply.entry(ident).or_default() |= may;
            if may && ident.key().is_none() {
                unkeyed_may_create += 1;
            }
            if outcome == Some(Kind::Unknown) && ident.key().is_none() {
                r.unkeyed_unknown += 1;
            }
        }
        if e.kind != Kind::Ok {
            continue;
        }
        let Some(task) = e.task.as_deref() else {
            continue;
        };
        tasks_of.entry(ident).or_default().insert(task);
        match ident_of_task.get(task) {
            Some(other) if *other != ident => {
                r.duplicates.push(format!(
                    "task {task} was answered for two submits, {other} and {ident}"
                ));
            }
            _ => {
                ident_of_task.insert(task, ident);
            }
        }
        acked_at.entry(task).or_insert(e.i);
    }
    let keyed = |i: &&Ident| i.key().is_some();
    r.keys_submitted = attempts_of.keys().filter(keyed).count();
    r.keys_retried = attempts_of
        .iter()
        .filter(|(i, &n)| keyed(i) && n > 1)
        .count();
    r.unkeyed_submitted = attempts_of.len() - r.keys_submitted;
    r.acknowledged = acked_at.len();
    for (ident, tasks) in &tasks_of {
        if tasks.len() > 1 {
            r.duplicates.push(format!(
                "{ident} was answered with {} tasks: {tasks:?}",
                tasks.len()
            ));
        }
    }

    // Reveals that may have happened: (task, output) -> miners.
    let mut revealed: HashMap<(&str, &str), BTreeSet<&str>> = HashMap::new();
    for inv in events
        .iter()
        .filter(|e| e.op == "reveal" && e.kind == Kind::Invoke)
    {
        let outcome = outcomes.get(&inv.id).map(|o| o.kind);
        if matches!(outcome, Some(Kind::Fail)) {
            continue; // refused: certainly not recorded
        }
        r.reveals_recorded += 1;
        if let (Some(task), Some(output), Some(miner)) = (
            inv.task.as_deref(),
            inv.output.as_deref(),
            inv.miner.as_deref(),
        ) {
            revealed.entry((task, output)).or_default().insert(miner);
        }
    }

    // Every successful read, by task.
    let mut observations: BTreeMap<&str, Vec<Observation>> = BTreeMap::new();
    for e in events
        .iter()
        .filter(|e| (e.op == "read" || e.op == "scan") && e.kind == Kind::Ok)
    {
        let Some(task) = e.task.as_deref() else {
            continue;
        };
        observations.entry(task).or_default().push(Observation {
            invoked: invoked_at(e),
            completed: e.i,
            node: e.node,
            process: e.process.clone(),
            missing: e.missing == Some(true),
            state: e.state.clone(),
            history: e.history.clone(),
            result: e.result.clone(),
        });
        r.reads_checked += 1;
    }

    let q = q.unwrap_or(1) as usize;
    for (task, obs) in &observations {
        // A read invoked after the acknowledgement must find the task.
        if let Some(&acked) = acked_at.get(task) {
            if let Some(o) = obs.iter().find(|o| o.missing && o.invoked > acked) {
                r.lost.push(format!(
                    "task {task} (acknowledged at line {acked}): {}",
                    o.describe()
                ));
            }
        }
        let found: Vec<&Observation> = obs.iter().filter(|o| !o.missing).collect();
        // Each history is a legal sequence ending in the state read.
        for o in &found {
            if let Some(h) = &o.history {
                if let Some(bad) = h.windows(2).find(|w| !step_allowed(&w[0], &w[1])) {
                    r.illegal_transitions.push(format!(
                        "task {task}: {} -> {} in {}",
                        bad[0],
                        bad[1],
                        o.describe()
                    ));
                }
                if h.last() != o.state.as_ref() {
                    r.illegal_transitions.push(format!(
                        "task {task}: state is not the last of its history in {}",
                        o.describe()
                    ));
                }
            }
        }
        // Histories never fork: sorted by length, each is a prefix of the next.
        let mut by_len: Vec<&&Observation> = found.iter().filter(|o| o.history.is_some()).collect();
        by_len.sort_by_key(|o| o.history.as_ref().map_or(0, Vec::len));
        if let Some(w) = by_len.windows(2).find(|w| {
            !is_prefix(
                w[0].history.as_ref().unwrap(),
                w[1].history.as_ref().unwrap(),
            )
        }) {
            r.stale_reads.push(format!(
                "task {task}: histories fork: {} / {}",
                w[0].describe(),
                w[1].describe()
            ));
        }
        // Real time: a read never goes back behind one that completed before it began.
        let mut reported = false;
        for b in &found {
            for a in found.iter().filter(|a| a.completed < b.invoked) {
                let (sa, sb) = (
                    a.state.as_deref().unwrap_or(""),
                    b.state.as_deref().unwrap_or(""),
                );
                if terminal(sa) && (sa != sb || a.result != b.result) {
                    r.illegal_transitions.push(format!(
                        "task {task}: finished {sa} (result {:?}) then {sb} (result {:?}): {} / {}",
                        a.result,
                        b.result,
                        a.describe(),
                        b.describe()
                    ));
                    reported = true;
                } else if !reachable(sa, sb) {
                    r.illegal_transitions.push(format!(
                        "task {task}: {sa} then {sb}: {} / {}",
                        a.describe(),
                        b.describe()
                    ));
                    reported = true;
                } else if let (Some(ha), Some(hb)) = (&a.history, &b.history) {
                    if hb.len() < ha.len() {
                        r.stale_reads.push(format!(
                            "task {task}: {} / later {}",
                            a.describe(),
                            b.describe()
                        ));
                        reported = true;
                    }
                }
                if reported {
                    break;
                }
            }
            if reported {
                break; // one finding per task is enough
            }
        }
        // Concurrent reads of a finished task still agree.
        let results: BTreeSet<(&str, Option<&str>)> = found
            .iter()
            .filter(|o| o.state.as_deref().is_some_and(terminal))
            .map(|o| (o.state.as_deref().unwrap_or(""), o.result.as_deref()))
            .collect();
        if results.len() > 1 && !reported {
            r.illegal_transitions.push(format!(
                "task {task}: finished differently in different reads: {results:?}"
            ));
        }
        // A completed result is backed by q reveals.
        let completed: BTreeSet<Option<&str>> = found
            .iter()
            .filter(|o| o.state.as_deref() == Some("completed"))
            .map(|o| o.result.as_deref())
            .collect();
        for result in completed {
            let miners = result
                .and_then(|res| revealed.get(&(*task, res)))
                .map_or(0, BTreeSet::len);
            if miners < q {
                r.unsupported_results.push(format!(
                    "task {task}: completed with {:?}, revealed by {miners} recorded miners, quorum {q}",
                    result.and_then(unb64).map(|b| String::from_utf8_lossy(&b).into_owned())
                ));
            }
            let payload = ident_of_task
                .get(task)
                .and_then(|i| payload_of.get(i))
                .and_then(|p| unb64(p));
            if let (Some(payload), Some(result)) = (payload, result) {
                if b64(&honest(&payload)) != result {
                    r.results_not_honest += 1;
                }
            }
        }
    }

    // The final scan: every task that exists after healing.
    let mut scan: BTreeMap<&str, &Event> = BTreeMap::new();
    for e in events
        .iter()
        .filter(|e| e.op == "scan" && e.kind == Kind::Ok)
    {
        if let Some(task) = e.task.as_deref() {
            scan.insert(task, e); // the last read of each task wins
        }
    }
    let mut tasks_with_key: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    // Submits without a key: their tasks, told by the honest result of their
    // payload (each payload carries a unique marker) and by the answers.
    let marker_of_result: HashMap<String, &str> = payload_of
        .iter()
        .filter_map(|(i, p)| match i {
            Ident::Marker(m) => unb64(p).map(|p| (b64(&honest(&p)), *m)),
            Ident::Key(_) => None,
        })
        .collect();
    let mut tasks_of_marker: BTreeMap<&str, BTreeSet<&str>> = tasks_of
        .iter()
        .filter_map(|(i, t)| match i {
            Ident::Marker(m) => Some((*m, t.clone())),
            Ident::Key(_) => None,
        })
        .collect();
    for (task, e) in &scan {
        if e.missing == Some(true) {
            continue;
        }
        r.scanned_tasks += 1;
        if e.state.as_deref() == Some("completed") {
            r.completed += 1;
        }
        match e.idempotency_key.as_deref() {
            Some(key) => tasks_with_key.entry(key).or_default().push(task),
            None => {
                r.unkeyed_tasks += 1;
                if let Some(m) = e
                    .result
                    .as_deref()
                    .and_then(|res| marker_of_result.get(res))
                {
                    tasks_of_marker.entry(m).or_default().insert(task);
                }
            }
        }
    }
    for (key, tasks) in &tasks_with_key {
        if tasks.len() > 1 {
            r.duplicates.push(format!(
                "key {key} has {} tasks after healing: {tasks:?}",
                tasks.len()
            ));
        }
    }
    let mut named = false;
    for (m, tasks) in &tasks_of_marker {
        if tasks.len() > 1 {
            named = true;
            r.duplicates.push(format!(
                "submit {m} (no key, one request) was applied {} times: tasks {tasks:?}",
                tasks.len()
            ));
        }
    }
    // Each attempt without a key that may have been applied made at most one task.
    if !named && r.unkeyed_tasks > unkeyed_may_create {
        r.duplicates.push(format!(
            "{} tasks without a key after healing, but only {unkeyed_may_create} submits without a key may have created one",
            r.unkeyed_tasks
        ));
    }
    // A submit answered `fail` on every attempt must have created nothing.
    for (ident, &may) in &may_apply {
        if may {
            continue;
        }
        let found: Vec<&str> = match ident {
            Ident::Key(k) => tasks_with_key.get(k).cloned().unwrap_or_default(),
            Ident::Marker(m) => tasks_of_marker
                .get(m)
                .map(|t| t.iter().copied().collect())
                .unwrap_or_default(),
        };
        if !found.is_empty() {
            r.failed_but_applied.push(format!(
                "{ident}: every attempt was answered as not done, yet it made {found:?}"
            ));
        }
    }
    for (task, &at) in &acked_at {
        let ident = ident_of_task.get(task).copied();
        let expected_key = ident.and_then(Ident::key);
        let ident = ident.map_or("?".to_string(), |i| i.to_string());
        match scan.get(task) {
            None => r.unverified.push(format!(
                "task {task} ({ident}, acknowledged at line {at}): no final read"
            )),
            Some(e) if e.missing == Some(true) => {
                if !r
                    .lost
                    .iter()
                    .any(|l| l.starts_with(&format!("task {task} ")))
                {
                    r.lost.push(format!(
                        "task {task} ({ident}, acknowledged at line {at}): not found after healing"
                    ));
                }
            }
            Some(e) if e.idempotency_key.as_deref() != expected_key => r.lost.push(format!(
                "task {task} ({ident}): after healing it carries key {:?}",
                e.idempotency_key
            )),
            Some(e) if e.state.as_deref() != Some("completed") => r.not_completed.push(format!(
                "task {task} ({ident}): {} after healing{}",
                e.state.as_deref().unwrap_or("?"),
                e.failure
                    .as_deref()
                    .map(|f| format!(" ({f})"))
                    .unwrap_or_default()
            )),
            Some(_) => {}
        }
    }
    r
}

/// What a submit is known by: its idempotency key, or, without one, the marker its
/// payload carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Ident<'a> {
    Key(&'a str),
    Marker(&'a str),
}

impl<'a> Ident<'a> {
    fn of(e: &'a Event) -> Option<Self> {
        match (e.key.as_deref(), e.marker.as_deref()) {
            (Some(k), _) => Some(Ident::Key(k)),
            (None, Some(m)) => Some(Ident::Marker(m)),
            _ => None,
        }
    }

    fn key(self) -> Option<&'a str> {
        match self {
            Ident::Key(k) => Some(k),
            Ident::Marker(_) => None,
        }
    }
}

impl std::fmt::Display for Ident<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ident::Key(k) => write!(f, "key {k}"),
            Ident::Marker(m) => write!(f, "submit {m} (no key)"),
        }
    }
}

#[cfg(test)]
#[path = "checker_tests.rs"]
mod tests;
