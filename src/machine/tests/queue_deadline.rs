//! The queue deadline: a task that waits in the queue longer than its
//! `queue_timeout_ms` (the session's, or its own) fails as expired, measured from when
//! it last entered the queue; the deadline survives a restore.

use super::invariants::assert_indexes_equal;
use super::*;

fn session_with_queue_timeout(w: &mut World, k: u8, q: u8, queue_timeout_ms: u64) -> SessionId {
    let mut sp = spec(k, q);
    sp.queue_timeout_ms = queue_timeout_ms;
    w.session_with(sp)
}

fn with_timeout(payload: &str, queue_timeout_ms: Option<u64>) -> NewTask {
    NewTask {
        queue_timeout_ms,
        ..new_task(payload, None, None)
    }
}

#[test]
fn a_task_that_waits_too_long_for_miners_fails_as_expired() {
    let mut w = World::new();
    let s = session_with_queue_timeout(&mut w, 1, 1, 5_000);
    let t = w.submit(s, "x");
    assert_eq!(w.task(t).queue_deadline, Some(w.now + 5_000));
    w.advance(4_999);
    assert_eq!(w.state(t), TaskState::Queued);
    w.advance(1);
    let task = w.task(t);
    assert_eq!(task.state, TaskState::Failed);
    let failure = task.failure().unwrap();
    assert!(failure.starts_with("expired:"), "{failure}");
    assert!(failure.contains("5000 ms"), "{failure}");
    assert_eq!(task.queue_deadline, None);
    let session = w.s.session(s).unwrap();
    assert_eq!((session.counts.failed, session.open_slots), (1, 0));
    // Finished like any task: purged after the retention.
    w.advance(RETENTION_MS);
    assert!(w.s.task(t).is_none());
}

#[test]
fn a_task_overrides_the_session_queue_timeout() {
    let mut w = World::new();
    let s = session_with_queue_timeout(&mut w, 1, 1, 5_000);
    let forever = w.submit_task(s, with_timeout("forever", Some(0)));
    let longer = w.submit_task(s, with_timeout("longer", Some(20_000)));
    let default = w.submit_task(s, with_timeout("default", None));
    assert_eq!(w.task(forever).queue_timeout_ms, 0);
    assert_eq!(w.task(forever).queue_deadline, None);
    w.advance(5_000);
    assert_eq!(w.state(default), TaskState::Failed);
    assert_eq!(w.state(longer), TaskState::Queued);
    w.advance(15_000);
    assert_eq!(w.state(longer), TaskState::Failed);
    w.advance(limits::MAX_DURATION_MS);
    assert_eq!(w.state(forever), TaskState::Queued, "no limit, no expiry");
    // A session without a limit gives none; a task may still ask for one.
    let open = w.session(1, 1);
    let unlimited = w.submit(open, "y");
    let limited = w.submit_task(open, with_timeout("z", Some(1_000)));
    w.advance(1_000);
    assert_eq!(w.state(unlimited), TaskState::Queued);
    assert_eq!(w.state(limited), TaskState::Failed);
}

#[test]
fn the_wait_is_measured_from_when_the_task_last_entered_the_queue() {
    let mut w = World::new();
    let s = session_with_queue_timeout(&mut w, 1, 1, 15_000);
    let m = w.miner(1);
    let t = w.submit(s, "x");
    assert_eq!(w.holders(t), vec![m]);
    assert_eq!(
        w.task(t).queue_deadline,
        None,
        "dispatched: out of the queue"
    );
    w.advance(9_999);
    w.ok(Command::DeregisterMiner { auth: auth(m) });
    let requeued_at = w.now;
    assert_eq!(w.task(t).queue_deadline, Some(requeued_at + 15_000));
    w.advance(14_999);
    assert_eq!(w.state(t), TaskState::Queued);
    w.advance(1);
    let task = w.task(t);
    assert_eq!(task.state, TaskState::Failed);
    assert!(task.failure().unwrap().starts_with("expired:"));
}

#[test]
fn a_partly_held_task_that_expires_in_the_queue_frees_its_miners() {
    let mut w = World::new();
    let s = session_with_queue_timeout(&mut w, 2, 2, 5_000);
    let (a, b) = (w.miner(1), w.miner(1));
    let t = w.submit(s, "x");
    w.ack(t, a);
    w.ok(Command::DeregisterMiner { auth: auth(b) });
    assert_eq!(w.holders(t), vec![a]);
    w.advance(5_000);
    let task = w.task(t);
    assert_eq!(task.state, TaskState::Failed);
    assert!(task.failure().unwrap().contains("1 of 2 slots"));
    assert!(w.s.miner(a).unwrap().active.is_empty());
    assert_eq!(w.s.session(s).unwrap().active_slots, 0);
}

#[test]
fn the_queue_deadline_survives_a_restore() {
    let mut w = World::new();
    let s = session_with_queue_timeout(&mut w, 1, 1, 5_000);
    let t = w.submit(s, "x");
    let mut restored = State::decode(&w.s.encode()).unwrap();
    assert_indexes_equal(&restored, &w.s);
    assert_eq!(restored.next_deadline(), Some(w.now + 5_000));
    restored.apply(&Command::Tick, w.now + 5_000).unwrap();
    let task = restored.task(t).unwrap();
    assert_eq!(task.state, TaskState::Failed);
    assert!(task.failure().unwrap().starts_with("expired:"));
}

#[test]
fn a_queue_timeout_out_of_range_is_refused() {
    let mut w = World::new();
    let mut sp = spec(1, 1);
    sp.queue_timeout_ms = limits::MAX_DURATION_MS + 1;
    assert!(matches!(
        w.refused(Command::CreateSession(sp)),
        Rejection::Invalid(_)
    ));
    let s = w.session(1, 1);
    assert!(matches!(
        w.refused(Command::SubmitTasks {
            session: s,
            tasks: vec![with_timeout("x", Some(limits::MAX_DURATION_MS + 1))],
        }),
        Rejection::Invalid(_)
    ));
}
