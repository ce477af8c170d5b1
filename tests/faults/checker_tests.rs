//! The checker's unit tests: small hand-written histories, one per kind of
//! violation, so the checker is shown to catch each (and to pass a clean one).

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

    fn read(&mut self, op: &str, task: &str, key: &str, states: &[&str], result: Option<&[u8]>) {
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
