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
mod tests {
    //! Small hand-written histories, one per kind of violation, so the checker is
    //! shown to catch each (and to pass a clean one).

    use super::*;

    /// Builds a history line by line.
    #[derive(Default)]
    struct H {
        events: Vec<Event>,
        next_id: u64,
    }

    fn honest(payload: &[u8]) -> Vec<u8> {
        let mut out = b"out:".to_vec();
        out.extend_from_slice(payload);
        out
    }

    fn hist(states: &[&str]) -> Vec<String> {
        states.iter().map(|s| s.to_string()).collect()
    }

    impl H {
        fn push(&mut self, mut e: Event) -> u64 {
            e.i = self.events.len() as u64;
            e.t_ms = e.i * 10;
            self.events.push(e);
            self.events.len() as u64 - 1
        }

        fn invoke(&mut self, mut e: Event) -> Event {
            self.next_id += 1;
            e.id = self.next_id;
            e.kind = Kind::Invoke;
            self.push(e.clone());
            e
        }

        fn done(&mut self, mut e: Event, kind: Kind) {
            e.kind = kind;
            self.push(e);
        }

        fn session(&mut self, q: u8) {
            let e = self.invoke(Event::new("setup", "session"));
            self.done(
                Event {
                    session: Some("s-1".into()),
                    k: Some(3),
                    q: Some(q),
                    ..e
                },
                Kind::Ok,
            );
        }

        /// A submit of `key` answered with `task` (or `kind` without a task).
        fn submit(&mut self, key: &str, task: Option<&str>, kind: Kind) {
            let mut e = Event::new("client-1", "submit");
            e.key = Some(key.into());
            e.payload = Some(b64(key.as_bytes()));
            let e = self.invoke(e);
            self.done(
                Event {
                    task: task.map(Into::into),
                    created: Some(true),
                    ..e
                },
                kind,
            );
        }

        /// A submit without a key, its payload the marker itself.
        fn submit_unkeyed(&mut self, marker: &str, task: Option<&str>, kind: Kind) {
            let mut e = Event::new("client-u1", "submit");
            e.marker = Some(marker.into());
            e.payload = Some(b64(marker.as_bytes()));
            let e = self.invoke(e);
            self.done(
                Event {
                    task: task.map(Into::into),
                    created: Some(true),
                    ..e
                },
                kind,
            );
        }

        /// A task without a key completed with the honest result of `payload`, as
        /// the final scan reads it.
        fn scan_unkeyed(&mut self, task: &str, payload: &[u8]) {
            let out = honest(payload);
            self.reveal(task, "m-1", &out, Some(Kind::Ok));
            self.reveal(task, "m-2", &out, Some(Kind::Ok));
            self.read(
                "scan",
                task,
                "",
                &["queued", "acked", "precommitted", "completed"],
                Some(&out),
            );
        }

        fn reveal(&mut self, task: &str, miner: &str, output: &[u8], kind: Option<Kind>) {
            let mut e = Event::new(&format!("miner-{miner}"), "reveal");
            e.task = Some(task.into());
            e.miner = Some(miner.into());
            e.output = Some(b64(output));
            let e = self.invoke(e);
            if let Some(kind) = kind {
                self.done(e, kind);
            }
        }

        fn read_at(
            &mut self,
            op: &str,
            task: &str,
            key: &str,
            states: &[&str],
            result: Option<&[u8]>,
        ) -> (Event, Event) {
            let mut e = Event::new(if op == "scan" { "scan" } else { "reader-1" }, op);
            e.task = Some(task.into());
            e.node = Some(0);
            let inv = self.invoke(e);
            let mut out = inv.clone();
            out.kind = Kind::Ok;
            if states.is_empty() {
                out.missing = Some(true);
            } else {
                out.state = Some(states.last().unwrap().to_string());
                out.history = Some(hist(states));
                out.idempotency_key = (!key.is_empty()).then(|| key.to_string());
                out.result = result.map(b64);
            }
            (inv, out)
        }

        fn read(
            &mut self,
            op: &str,
            task: &str,
            key: &str,
            states: &[&str],
            result: Option<&[u8]>,
        ) {
            let (_, out) = self.read_at(op, task, key, states, result);
            self.push(out);
        }

        /// A clean life of task `task` for key `key`: submitted, read on the way,
        /// revealed by two honest miners, completed, scanned.
        fn clean_task(&mut self, task: &str, key: &str) {
            self.submit(key, Some(task), Kind::Ok);
            self.read("read", task, key, &["queued"], None);
            self.read(
                "read",
                task,
                key,
                &["queued", "acked", "queued", "acked"],
                None,
            );
            let out = honest(key.as_bytes());
            self.reveal(task, "m-1", &out, Some(Kind::Ok));
            self.reveal(task, "m-2", &out, Some(Kind::Ok));
            let done = [
                "queued",
                "acked",
                "queued",
                "acked",
                "precommitted",
                "committed",
                "completed",
            ];
            self.read("read", task, key, &done, Some(&out));
            self.read("scan", task, key, &done, Some(&out));
        }

        fn fault(&mut self, kind: &str) {
            let mut e = Event::new("nemesis", "fault");
            e.fault = Some(kind.into());
            e.phase = Some("start".into());
            self.next_id += 1;
            e.id = self.next_id;
            e.kind = Kind::Info;
            self.push(e);
        }

        fn check(&self) -> Report {
            check(&self.events, honest)
        }
    }

    fn clean() -> H {
        let mut h = H::default();
        h.session(2);
        h.fault("kill-leader");
        h.clean_task("t-1", "k-1");
        h.fault("isolate");
        h.clean_task("t-2", "k-2");
        h
    }

    #[test]
    fn a_clean_history_passes_and_is_counted() {
        let r = clean().check();
        assert!(r.ok(), "{}", r.summary());
        assert_eq!(r.acknowledged, 2);
        assert_eq!(r.completed, 2);
        assert_eq!(r.faults.values().sum::<u64>(), 2);
        assert_eq!(
            r.ops["submit"],
            OpCounts {
                invoke: 2,
                ok: 2,
                fail: 0,
                unknown: 0
            }
        );
        assert_eq!(r.results_not_honest, 0);
    }

    #[test]
    fn an_acknowledged_task_missing_after_healing_is_lost() {
        let mut h = clean();
        h.submit("k-3", Some("t-3"), Kind::Ok);
        h.read("scan", "t-3", "k-3", &[], None);
        let r = h.check();
        assert_eq!(r.lost.len(), 1, "{}", r.summary());
        assert!(!r.ok());
    }

    #[test]
    fn an_acknowledged_task_a_later_read_does_not_find_is_lost() {
        let mut h = clean();
        h.submit("k-3", Some("t-3"), Kind::Ok);
        h.read("read", "t-3", "k-3", &[], None); // gone for a while...
        h.read("scan", "t-3", "k-3", &["queued"], None); // ...and back
        let r = h.check();
        assert_eq!(r.lost.len(), 1, "{}", r.summary());
    }

    #[test]
    fn a_read_concurrent_with_the_submit_may_miss_the_task() {
        let mut h = clean();
        // The read begins before the submit is answered: not finding it is fine.
        let (_, read) = h.read_at("read", "t-3", "k-3", &[], None);
        h.submit("k-3", Some("t-3"), Kind::Ok);
        h.push(read);
        h.reveal("t-3", "m-1", &honest(b"k-3"), Some(Kind::Ok));
        h.reveal("t-3", "m-2", &honest(b"k-3"), Some(Kind::Ok));
        h.read(
            "scan",
            "t-3",
            "k-3",
            &["queued", "acked", "precommitted", "completed"],
            Some(&honest(b"k-3")),
        );
        let r = h.check();
        assert!(r.ok(), "{}", r.summary());
    }

    #[test]
    fn two_tasks_for_one_key_are_duplicates() {
        // Two tasks carry the key after healing (the retry created a second one).
        let mut h = clean();
        h.submit("k-3", None, Kind::Unknown);
        h.submit("k-3", Some("t-4"), Kind::Ok);
        h.read("scan", "t-3", "k-3", &["queued"], None);
        h.read("scan", "t-4", "k-3", &["queued"], None);
        let r = h.check();
        assert_eq!(r.duplicates.len(), 1, "{}", r.summary());
        assert_eq!(r.keys_retried, 1);

        // Two successful submits of one key answered with different ids.
        let mut h = clean();
        h.submit("k-3", Some("t-3"), Kind::Ok);
        h.submit("k-3", Some("t-4"), Kind::Ok);
        let r = h.check();
        assert!(!r.duplicates.is_empty(), "{}", r.summary());
    }

    #[test]
    fn submits_without_a_key_pass_when_each_made_one_task() {
        let mut h = clean();
        h.submit_unkeyed("u1-1", Some("t-3"), Kind::Ok);
        h.scan_unkeyed("t-3", b"u1-1");
        // Unknown outcome, applied once: fine (never retried).
        h.submit_unkeyed("u1-2", None, Kind::Unknown);
        h.scan_unkeyed("t-4", b"u1-2");
        // Unknown outcome, not applied: fine too.
        h.submit_unkeyed("u1-3", None, Kind::Unknown);
        // Refused once, then done.
        h.submit_unkeyed("u1-4", None, Kind::Fail);
        h.submit_unkeyed("u1-4", Some("t-5"), Kind::Ok);
        h.scan_unkeyed("t-5", b"u1-4");
        let r = h.check();
        assert!(r.ok(), "{}", r.summary());
        assert_eq!(r.unkeyed_submitted, 4);
        assert_eq!(r.unkeyed_unknown, 2);
        assert_eq!(r.unkeyed_tasks, 3);
        assert_eq!(r.acknowledged, 4);
        assert_eq!(r.keys_submitted, 2);
    }

    #[test]
    fn a_submit_without_a_key_applied_twice_is_caught() {
        // Answered with t-3, and its payload made t-4 too (a retry inside the cluster).
        let mut h = clean();
        h.submit_unkeyed("u1-1", Some("t-3"), Kind::Ok);
        h.scan_unkeyed("t-3", b"u1-1");
        h.scan_unkeyed("t-4", b"u1-1");
        let r = h.check();
        assert_eq!(r.duplicates.len(), 1, "{}", r.summary());
        assert!(r.duplicates[0].contains("u1-1"), "{}", r.summary());

        // An unknown outcome that made two tasks.
        let mut h = clean();
        h.submit_unkeyed("u1-1", None, Kind::Unknown);
        h.scan_unkeyed("t-3", b"u1-1");
        h.scan_unkeyed("t-4", b"u1-1");
        let r = h.check();
        assert_eq!(r.duplicates.len(), 1, "{}", r.summary());

        // Not completed, so not told by result: counted instead (two tasks, one
        // attempt that may have made one).
        let mut h = clean();
        h.submit_unkeyed("u1-1", Some("t-3"), Kind::Ok);
        h.scan_unkeyed("t-3", b"u1-1");
        h.read("scan", "t-4", "", &["queued"], None);
        let r = h.check();
        assert_eq!(r.duplicates.len(), 1, "{}", r.summary());
        assert!(r.duplicates[0].contains("only 1"), "{}", r.summary());
    }

    #[test]
    fn a_submit_answered_as_not_done_that_was_applied_is_caught() {
        let mut h = clean();
        h.submit_unkeyed("u1-1", None, Kind::Fail);
        h.scan_unkeyed("t-3", b"u1-1");
        let r = h.check();
        assert_eq!(r.failed_but_applied.len(), 1, "{}", r.summary());
        assert!(!r.ok());

        let mut h = clean();
        h.submit("k-3", None, Kind::Fail);
        h.read("scan", "t-3", "k-3", &["queued"], None);
        let r = h.check();
        assert_eq!(r.failed_but_applied.len(), 1, "{}", r.summary());
    }

    #[test]
    fn an_acknowledged_task_without_a_key_that_gains_one_is_lost() {
        let mut h = clean();
        h.submit_unkeyed("u1-1", Some("t-3"), Kind::Ok);
        h.read("scan", "t-3", "k-9", &["queued"], None);
        let r = h.check();
        assert_eq!(r.lost.len(), 1, "{}", r.summary());
    }

    #[test]
    fn a_result_without_a_quorum_of_reveals_is_caught() {
        let mut h = H::default();
        h.session(2);
        h.submit("k-1", Some("t-1"), Kind::Ok);
        let out = honest(b"k-1");
        h.reveal("t-1", "m-1", &out, Some(Kind::Ok));
        // The second reveal was refused: it does not count.
        h.reveal("t-1", "m-2", &out, Some(Kind::Fail));
        h.read(
            "scan",
            "t-1",
            "k-1",
            &["queued", "acked", "precommitted", "committed", "completed"],
            Some(&out),
        );
        let r = h.check();
        assert_eq!(r.unsupported_results.len(), 1, "{}", r.summary());

        // A result nobody revealed at all.
        let mut h = H::default();
        h.session(2);
        h.submit("k-1", Some("t-1"), Kind::Ok);
        h.reveal("t-1", "m-1", &out, Some(Kind::Ok));
        h.reveal("t-1", "m-2", &out, Some(Kind::Ok));
        h.read(
            "scan",
            "t-1",
            "k-1",
            &["queued", "acked", "precommitted", "completed"],
            Some(b"forged"),
        );
        let r = h.check();
        assert_eq!(r.unsupported_results.len(), 1, "{}", r.summary());
        assert_eq!(r.results_not_honest, 1);

        // Reveals with an unknown outcome (or none recorded) may have been applied.
        let mut h = H::default();
        h.session(2);
        h.submit("k-1", Some("t-1"), Kind::Ok);
        h.reveal("t-1", "m-1", &out, Some(Kind::Unknown));
        h.reveal("t-1", "m-2", &out, None);
        h.read(
            "scan",
            "t-1",
            "k-1",
            &["queued", "acked", "precommitted", "completed"],
            Some(&out),
        );
        let r = h.check();
        assert!(r.ok(), "{}", r.summary());
    }

    #[test]
    fn an_illegal_step_in_a_history_is_caught() {
        let mut h = clean();
        h.submit("k-3", Some("t-3"), Kind::Ok);
        h.read(
            "read",
            "t-3",
            "k-3",
            &["queued", "acked", "precommitted", "acked"],
            None,
        );
        let r = h.check();
        assert_eq!(r.illegal_transitions.len(), 1, "{}", r.summary());
    }

    #[test]
    fn a_finished_task_that_changes_is_caught() {
        let mut h = clean();
        // t-1 was read completed; a later read says failed.
        h.read(
            "read",
            "t-1",
            "k-1",
            &["queued", "acked", "precommitted", "failed"],
            None,
        );
        let r = h.check();
        assert!(
            !r.illegal_transitions.is_empty() || !r.stale_reads.is_empty(),
            "{}",
            r.summary()
        );
        assert!(!r.ok());

        // Same state, another result.
        let mut h = clean();
        let done = [
            "queued",
            "acked",
            "queued",
            "acked",
            "precommitted",
            "committed",
            "completed",
        ];
        h.read("read", "t-1", "k-1", &done, Some(b"something else"));
        let r = h.check();
        assert!(!r.illegal_transitions.is_empty(), "{}", r.summary());
    }

    #[test]
    fn a_read_that_goes_back_in_time_is_stale() {
        let mut h = clean();
        h.submit("k-3", Some("t-3"), Kind::Ok);
        h.read("read", "t-3", "k-3", &["queued", "acked", "queued"], None);
        // Invoked after the first completed, it misses the step back to queued
        // (acked is a state a task may be in after queued, but not this history).
        h.read("read", "t-3", "k-3", &["queued", "acked"], None);
        let r = h.check();
        assert_eq!(r.stale_reads.len(), 1, "{}", r.summary());
        assert!(r.illegal_transitions.is_empty(), "{}", r.summary());

        // Going back from precommitted to acked is an illegal transition too.
        let mut h = clean();
        h.submit("k-3", Some("t-3"), Kind::Ok);
        h.read(
            "read",
            "t-3",
            "k-3",
            &["queued", "acked", "precommitted"],
            None,
        );
        h.read("read", "t-3", "k-3", &["queued", "acked"], None);
        let r = h.check();
        assert_eq!(r.illegal_transitions.len(), 1, "{}", r.summary());

        // Concurrent reads may be seen in either order...
        let mut h = clean();
        h.submit("k-3", Some("t-3"), Kind::Ok);
        let (_, newer) = h.read_at(
            "read",
            "t-3",
            "k-3",
            &["queued", "acked", "precommitted"],
            None,
        );
        let (_, older) = h.read_at("read", "t-3", "k-3", &["queued", "acked"], None);
        h.push(newer);
        h.push(older);
        h.read(
            "scan",
            "t-3",
            "k-3",
            &["queued", "acked", "precommitted", "failed"],
            None,
        );
        let r = h.check();
        assert!(
            r.stale_reads.is_empty() && r.illegal_transitions.is_empty(),
            "{}",
            r.summary()
        );
        // ...but never fork.
        h.read("read", "t-3", "k-3", &["queued", "acked", "queued"], None);
        let r = h.check();
        assert!(!r.stale_reads.is_empty(), "{}", r.summary());
    }

    #[test]
    fn an_acknowledged_task_not_completed_after_healing_is_caught() {
        let mut h = clean();
        h.submit("k-3", Some("t-3"), Kind::Ok);
        h.read(
            "scan",
            "t-3",
            "k-3",
            &["queued", "acked", "precommitted", "failed"],
            None,
        );
        let r = h.check();
        assert_eq!(r.not_completed.len(), 1, "{}", r.summary());
        assert!(r.illegal_transitions.is_empty());
    }

    #[test]
    fn an_acknowledged_task_without_a_final_read_is_unverified() {
        let mut h = clean();
        h.submit("k-3", Some("t-3"), Kind::Ok);
        let r = h.check();
        assert_eq!(r.unverified.len(), 1, "{}", r.summary());
    }

    #[test]
    fn a_node_that_exits_by_itself_fails_the_run() {
        let mut h = clean();
        let mut e = Event::new("nemesis", "crash");
        e.kind = Kind::Info;
        e.error = Some("node 2 exited by itself: signal 6 (SIGABRT)".into());
        h.push(e);
        let r = h.check();
        assert_eq!(r.node_crashes.len(), 1, "{}", r.summary());
    }

    #[test]
    fn the_step_rules() {
        for (a, b) in [
            ("queued", "acked"),
            ("acked", "queued"),
            ("acked", "precommitted"),
            ("precommitted", "committed"),
            ("committed", "completed"),
            ("queued", "cancelled"),
            ("committed", "failed"),
        ] {
            assert!(step_allowed(a, b), "{a} -> {b}");
        }
        for (a, b) in [
            ("queued", "committed"),
            ("precommitted", "acked"),
            ("committed", "precommitted"),
            ("completed", "failed"),
            ("failed", "queued"),
            ("cancelled", "completed"),
        ] {
            assert!(!step_allowed(a, b), "{a} -> {b}");
        }
        assert!(reachable("acked", "committed"));
        assert!(reachable("acked", "queued"));
        assert!(!reachable("precommitted", "queued"));
        assert!(!reachable("completed", "committed"));
    }
}
