//! Idempotency keys: a retry answers the first task, for the session's window, even
//! after the task is purged; the same key with another task is refused.

use super::*;

fn submitted(r: Response) -> Vec<(TaskId, bool)> {
    match r {
        Response::TasksSubmitted { tasks } => tasks,
        r => panic!("{r:?}"),
    }
}

fn keys_of(w: &World, s: SessionId) -> usize {
    w.s.keys.keys().filter(|(sid, _)| *sid == s).count()
}

#[test]
fn a_repeated_idempotency_key_returns_the_first_task() {
    let mut w = World::new();
    let s = w.session(1, 1);
    let t1 = w.submit_with(s, "x", None, Some("k-1"));
    let before = w.s.session(s).unwrap().submitted_total;
    let tasks = submitted(w.ok(Command::SubmitTasks {
        session: s,
        tasks: vec![
            new_task("x", None, Some("k-1")),
            new_task("new", None, Some("k-2")),
            new_task("new", None, Some("k-2")),
        ],
    }));
    assert_eq!(tasks[0], (t1, false));
    assert!(tasks[1].1);
    assert_eq!(tasks[2], (tasks[1].0, false));
    assert_eq!(w.s.session(s).unwrap().submitted_total, before + 1);
    assert_eq!(w.s.unwritten_payload(t1), Some(&b"x"[..]));
    // The session's default priority is what was asked when none was given.
    assert_eq!(w.submit_with(s, "x", Some(0), Some("k-1")), t1);
    // Another session's key space is its own.
    let s2 = w.session(1, 1);
    assert_ne!(w.submit_with(s2, "x", None, Some("k-1")), t1);
}

#[test]
fn the_same_key_with_another_task_is_refused_and_a_batch_with_one_is_refused_whole() {
    let mut w = World::new();
    let s = w.session(1, 1);
    let t1 = w.submit_with(s, "x", None, Some("k-1"));
    let conflict = |r: Rejection| {
        assert!(matches!(r, Rejection::IdempotencyConflict(_)), "{r}");
        assert_eq!(r.code(), "idempotency_conflict");
        assert!(r.to_string().contains(&t1.to_string()), "{r}");
    };
    // Another payload, another priority, another queue timeout: each a different task.
    conflict(w.refused(Command::SubmitTasks {
        session: s,
        tasks: vec![new_task("y", None, Some("k-1"))],
    }));
    conflict(w.refused(Command::SubmitTasks {
        session: s,
        tasks: vec![new_task("x", Some(9), Some("k-1"))],
    }));
    conflict(w.refused(Command::SubmitTasks {
        session: s,
        tasks: vec![NewTask {
            queue_timeout_ms: Some(1_000),
            ..new_task("x", None, Some("k-1"))
        }],
    }));
    // All or nothing: the new task of the batch is not created either.
    let next = w.s.header.next_task;
    conflict(w.refused(Command::SubmitTasks {
        session: s,
        tasks: vec![
            new_task("fresh", None, Some("k-9")),
            new_task("y", None, Some("k-1")),
        ],
    }));
    assert_eq!(w.s.header.next_task, next);
    // Two tasks of one batch under one key must be the same task too.
    let r = w.refused(Command::SubmitTasks {
        session: s,
        tasks: vec![
            new_task("a", None, Some("k-5")),
            new_task("b", None, Some("k-5")),
        ],
    });
    assert!(matches!(r, Rejection::IdempotencyConflict(_)), "{r}");
    assert_eq!(keys_of(&w, s), 1);
}

#[test]
fn a_key_outlives_its_purged_task_for_the_window() {
    let mut w = World::new();
    let mut sp = spec(1, 1);
    sp.idempotency_window_ms = 3 * RETENTION_MS;
    let s = w.session_with(sp);
    let submitted_at = w.now;
    let t = w.submit_with(s, "x", None, Some("key"));
    w.ok(Command::CancelTask { task: t });
    w.advance(RETENTION_MS);
    assert!(w.s.task(t).is_none(), "purged");
    // A retry answers the first task, though it is gone; it creates nothing.
    let tasks = submitted(w.ok(Command::SubmitTasks {
        session: s,
        tasks: vec![new_task("x", None, Some("key"))],
    }));
    assert_eq!(tasks, vec![(t, false)]);
    assert_eq!(w.s.sizes().2, 0);
    // ...and still refuses another task under the key.
    assert!(matches!(
        w.refused(Command::SubmitTasks {
            session: s,
            tasks: vec![new_task("other", None, Some("key"))],
        }),
        Rejection::IdempotencyConflict(_)
    ));
    // Once the window has passed, the key names nothing.
    w.now = submitted_at + 3 * RETENTION_MS;
    w.ok(Command::Tick);
    assert_eq!(keys_of(&w, s), 0);
    let again = w.submit_with(s, "other", None, Some("key"));
    assert_ne!(again, t);
}

#[test]
fn a_key_lives_as_long_as_its_task_even_past_the_window() {
    let mut w = World::new();
    let mut sp = spec(1, 1);
    sp.retention_ms = 1_000;
    sp.idempotency_window_ms = 1_000;
    let s = w.session_with(sp);
    let t = w.submit_with(s, "x", None, Some("key"));
    w.advance(5_000);
    assert_eq!(w.state(t), TaskState::Queued, "no miner: still waiting");
    assert_eq!(w.submit_with(s, "x", None, Some("key")), t);
    w.ok(Command::CancelTask { task: t });
    w.advance(999);
    assert_eq!(w.submit_with(s, "x", None, Some("key")), t);
    w.advance(1);
    assert!(w.s.task(t).is_none());
    assert_eq!(keys_of(&w, s), 0, "gone with its task");
}

#[test]
fn closing_a_session_forgets_its_keys() {
    let mut w = World::new();
    let s = w.session(1, 1);
    let other = w.session(1, 1);
    w.submit_with(s, "x", None, Some("a"));
    w.submit_with(s, "y", None, Some("b"));
    w.submit_with(other, "z", None, Some("a"));
    assert_eq!(keys_of(&w, s), 2);
    w.ok(Command::CloseSession { session: s });
    assert_eq!(keys_of(&w, s), 0);
    assert_eq!(keys_of(&w, other), 1);
    assert!(w
        .s
        .idx
        .deadlines
        .iter()
        .all(|(_, due)| !matches!(due, super::super::tick::Due::KeyPurge(sid, _) if *sid == s)));
    // A closed session refuses submits before looking at keys.
    assert!(matches!(
        w.refused(Command::SubmitTasks {
            session: s,
            tasks: vec![new_task("x", None, Some("a"))],
        }),
        Rejection::Conflict(_)
    ));
}

#[test]
fn a_window_shorter_than_the_retention_is_refused() {
    let mut w = World::new();
    let mut sp = spec(1, 1);
    sp.idempotency_window_ms = RETENTION_MS - 1;
    let r = w.refused(Command::CreateSession(sp));
    assert!(
        matches!(&r, Rejection::Invalid(m) if m.contains("idempotency_window_ms")),
        "{r}"
    );
}
