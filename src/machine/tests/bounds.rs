//! Bounds the machine keeps on what a client can grow: a session's queue
//! (`max_queued_tasks`, refused as `queue_full` by every replica alike), and the
//! payloads of finished tasks (dropped unless the session keeps them); the work of
//! closing a session (only its own unfinished tasks are visited); the state's bound
//! on tasks (at apply) and on sessions, and the pool's on miners (before proposing).

use super::*;

fn bounded(w: &mut World, max: u64) -> SessionId {
    let mut sp = spec(1, 1);
    sp.max_queued_tasks = max;
    w.session_with(sp)
}

fn submit_cmd(session: SessionId, payloads: &[&str], key: Option<&str>) -> Command {
    Command::SubmitTasks {
        session,
        tasks: payloads.iter().map(|p| new_task(p, None, key)).collect(),
    }
}

#[test]
fn a_full_queue_refuses_submits_all_or_nothing() {
    let mut w = World::new();
    let s = bounded(&mut w, 3);
    let other = bounded(&mut w, 3);
    w.submit(s, "a");
    w.submit_with(s, "b", None, Some("kb"));
    // A batch of two would make four: refused whole, nothing created.
    let full = w.refused(submit_cmd(s, &["c", "d"], None));
    assert!(matches!(full, Rejection::QueueFull(_)), "{full}");
    assert_eq!(full.code(), "queue_full");
    assert!(full.to_string().contains("max_queued_tasks of 3"), "{full}");
    assert_eq!(w.s.session(s).unwrap().counts.queued, 2);
    // One more fits; then even one is refused.
    w.submit(s, "c");
    let one = w.refused(submit_cmd(s, &["d"], None));
    assert_eq!(one.code(), "queue_full");
    // A retry of an accepted key adds nothing, so a full queue still answers it.
    let retry = w.ok(submit_cmd(s, &["b"], Some("kb")));
    assert!(matches!(retry, Response::TasksSubmitted { ref tasks } if !tasks[0].1));
    // Another session's queue is its own.
    w.submit(other, "x");
}

#[test]
fn finishing_or_cancelling_frees_room_in_the_queue() {
    let mut w = World::new();
    let s = bounded(&mut w, 2);
    let m = w.miner(1);
    let t1 = w.submit(s, "a");
    let t2 = w.submit(s, "b");
    assert_eq!(w.holders(t1), vec![m]);
    // Dispatched but unfinished tasks count too: the bound is on unfinished work.
    w.refused(submit_cmd(s, &["c"], None));
    w.complete(t1, "out");
    let t3 = w.submit(s, "c");
    w.refused(submit_cmd(s, &["d"], None));
    w.ok(Command::CancelTask { task: t2 });
    w.submit(s, "d");
    assert_eq!(w.s.session(s).unwrap().counts.live(), 2);
    assert_ne!(t3, t2);
}

#[test]
fn the_queue_bound_is_validated() {
    let mut w = World::new();
    for bad in [0, limits::MAX_QUEUED_TASKS + 1] {
        let mut sp = spec(1, 1);
        sp.max_queued_tasks = bad;
        let r = w.refused(Command::CreateSession(sp));
        assert_eq!(r.code(), "invalid", "{r}");
        assert!(r.to_string().contains("max_queued_tasks"), "{r}");
    }
}

#[test]
fn a_finished_task_drops_its_payload_but_keeps_its_result_and_history() {
    let mut w = World::new();
    let s = w.session(1, 1);
    let _m = w.miner(2);
    let done = w.submit(s, "done");
    let cancelled = w.submit(s, "cancelled");
    assert_eq!(w.task(done).payload_len, Some(4));
    assert_eq!(w.s.unwritten_payload(done), Some(&b"done"[..]));
    assert_eq!(w.s.payload_at(done), PayloadAt::Here(b"done".to_vec()));
    // The store writes the payload record and deletes it again: both marked.
    w.s.take_dirty();
    w.complete(done, "out");
    w.ok(Command::CancelTask { task: cancelled });
    let dirty = w.s.take_dirty();
    assert!(dirty.contains(&Key::Payload(done)) && dirty.contains(&Key::Payload(cancelled)));
    let t = w.task(done);
    assert_eq!(t.payload_len, None);
    assert_eq!(t.result(), Some(&b"out"[..]));
    assert!(!t.assignments.is_empty() && t.history.len() > 2);
    assert_eq!(w.task(cancelled).payload_len, None);
    assert_eq!(w.s.unwritten_payload(done), None);
    assert_eq!(w.s.payload_at(cancelled), PayloadAt::Absent);
    // The dropped payload is written: a restored replica agrees.
    let restored = State::decode(&w.s.encode()).unwrap();
    assert_eq!(restored.task(done).unwrap().payload_len, None);
    assert_eq!(restored.encode(), w.s.encode());
}

#[test]
fn a_session_may_keep_finished_payloads() {
    let mut w = World::new();
    let mut sp = spec(1, 1);
    sp.keep_finished_payloads = true;
    let s = w.session_with(sp);
    let _m = w.miner(1);
    let t = w.submit(s, "kept");
    w.complete(t, "out");
    assert_eq!(w.task(t).payload_len, Some(4));
    assert_eq!(w.s.unwritten_payload(t), Some(&b"kept"[..]));
    // Written by the store, the bytes leave memory; the task still has a payload.
    w.s.release_payloads(&[t]);
    assert_eq!(w.s.payload_at(t), PayloadAt::Stored);
    // Until retention purges the task, whose payload record goes with it.
    w.s.take_dirty();
    w.advance(RETENTION_MS + 1);
    assert!(w.s.task(t).is_none());
    assert!(w.s.take_dirty().contains(&Key::Payload(t)));
    assert_eq!(w.s.payload_at(t), PayloadAt::Absent);
}

#[test]
fn closing_one_session_of_many_visits_only_its_own_unfinished_tasks() {
    let mut w = World::new();
    let _m = w.miner(1);
    let sessions: Vec<SessionId> = (0..20).map(|_| w.session(1, 1)).collect();
    let target = sessions[7];
    for (i, &s) in sessions.iter().enumerate() {
        w.ok(Command::SubmitTasks {
            session: s,
            tasks: (0..50)
                .map(|j| new_task(&format!("{i}-{j}"), None, None))
                .collect(),
        });
    }
    // Two of the target's tasks finish first: the close has no work with them.
    let mine: Vec<TaskId> =
        w.s.tasks
            .values()
            .filter(|t| t.session == target)
            .map(|t| t.id)
            .collect();
    w.ok(Command::CancelTask { task: mine[0] });
    w.ok(Command::CancelTask { task: mine[1] });
    assert_eq!(w.s.tasks.len(), 1000);
    w.s.take_dirty();

    let r = w.ok(Command::CloseSession { session: target });
    assert_eq!(
        r,
        Response::SessionClosed {
            session: target,
            cancelled: 48
        }
    );
    assert_eq!(
        w.s.step.visited, 48,
        "close visited tasks of other sessions"
    );
    // And it wrote only the target's tasks.
    let written: Vec<TaskId> =
        w.s.take_dirty()
            .into_iter()
            .filter_map(|k| match k {
                Key::Task(t) => Some(t),
                _ => None,
            })
            .collect();
    assert_eq!(written, mine[2..].to_vec());
    for s in sessions.iter().filter(|s| **s != target) {
        assert_eq!(w.s.session(*s).unwrap().counts.live(), 50);
    }
}

#[test]
fn the_state_bound_refuses_new_tasks_alike_in_check_and_apply() {
    let mut w = World::new();
    let s = w.session(1, 1);
    let _m = w.miner(1);
    let base = w.s.state_bytes();
    let t = w.submit(s, &"p".repeat(1000));
    let one = w.s.state_bytes() - base;
    assert!(one >= 1000 + footprint::TASK_BYTES, "{one}");
    // Room for one more task of this size, not two: a batch of two is refused whole.
    w.s.limits = Limits {
        max_state_bytes: w.s.state_bytes() + one + one / 2,
    };
    let (a, b) = ("a".repeat(1000), "b".repeat(1000));
    let full = w.refused(submit_cmd(s, &[&a, &b], None));
    assert!(matches!(full, Rejection::StateFull(_)), "{full}");
    assert_eq!(full.code(), "state_full");
    assert!(full.to_string().contains("--max-state-bytes"), "{full}");
    w.submit_with(s, &a, None, Some("ka"));
    assert_eq!(w.refused(submit_cmd(s, &[&b], None)).code(), "state_full");
    // A retry of a remembered key adds nothing, so it is answered even when full.
    let retry = w.ok(submit_cmd(s, &[&a], Some("ka")));
    assert!(matches!(retry, Response::TasksSubmitted { ref tasks } if !tasks[0].1));
    // A finished task drops its payload: room again.
    let before = w.s.state_bytes();
    w.complete(t, "out");
    assert!(w.s.state_bytes() < before);
    w.submit(s, &b);
}

#[test]
fn the_state_bound_comes_from_the_batch_and_the_count_survives_a_restore() {
    let mut w = World::new();
    let s = w.session(1, 1);
    let _m = w.miner(1);
    let t = w.submit(s, &"x".repeat(5000));
    w.complete(t, &"y".repeat(3000));
    w.submit_with(s, &"z".repeat(700), None, Some("k"));
    // A restored state (as after a restart or a snapshot) counts the same bytes.
    let restored = State::decode(&w.s.encode()).unwrap();
    assert_eq!(restored.state_bytes(), w.s.state_bytes());
    // Every replica applies the bound the batch carries, whatever it held before.
    let batch = |max_state_bytes| Batch {
        now_ms: w.now,
        commands: vec![submit_cmd(s, &["tiny"], None)].into(),
        limits: Limits { max_state_bytes },
    };
    let mut replica = restored;
    let refused = replica.apply_batch(&batch(1));
    assert!(
        matches!(&refused[0], Err(Rejection::StateFull(_))),
        "{refused:?}"
    );
    let taken = replica.apply_batch(&batch(u64::MAX));
    assert!(taken[0].is_ok(), "{taken:?}");
}

#[test]
fn a_new_session_past_the_state_bound_is_refused_before_proposing_never_at_apply() {
    let mut w = World::new();
    let s = w.session(1, 1);
    w.submit(s, &"p".repeat(1000));
    let create = Command::CreateSession(spec(1, 1));
    // Room for half a session: the leader refuses to propose it.
    let half = Limits {
        max_state_bytes: w.s.state_bytes() + footprint::SESSION_BYTES / 2,
    };
    let full = w.s.bound_growth(&create, &half).unwrap_err();
    assert_eq!(full.code(), "state_full");
    assert!(full.to_string().contains("--max-state-bytes"), "{full}");
    // Room for one: proposed.
    let one = Limits {
        max_state_bytes: w.s.state_bytes() + footprint::SESSION_BYTES,
    };
    assert!(w.s.bound_growth(&create, &one).is_ok());
    // Commands these bounds do not concern pass whatever the room.
    assert!(w.s.bound_growth(&Command::Tick, &half).is_ok());
    // Apply does not check it: an entry holding such a session (an older leader
    // proposed it) does on every replica what it always did.
    w.s.limits = half;
    w.session(1, 1);
}

#[test]
fn the_pool_takes_at_most_max_miners_whatever_the_state_bound() {
    let mut w = World::new();
    // The state bound does not apply to miners: a full state must still take the
    // miners that finish its tasks.
    let full_state = Limits { max_state_bytes: 0 };
    let register = |id: u64| Command::RegisterMiner {
        name: format!("m{id}"),
        capacity: 1,
        tags: vec![],
        token_hash: token(MinerId(id)),
        heartbeat_timeout_ms: 60_000,
    };
    assert!(w.s.bound_growth(&register(1), &full_state).is_ok());
    for _ in 0..limits::MAX_MINERS {
        w.miner(1);
    }
    let next = w.s.header.next_miner + 1;
    let full = w.s.bound_growth(&register(next), &full_state).unwrap_err();
    assert_eq!(full.code(), "state_full");
    assert!(full.to_string().contains("65536 miners"), "{full}");
    // One deregistered (gone, then forgotten an hour later): room again.
    w.ok(Command::DeregisterMiner {
        auth: auth(MinerId(1)),
    });
    w.advance(limits::GONE_MINER_RETENTION_MS + 1);
    // (The others' heartbeats lapsed by then too: a tick fires a bounded number.)
    for _ in 0..200 {
        if w.s.miner(MinerId(1)).is_none() {
            break;
        }
        w.advance(1);
    }
    assert!(w.s.miner(MinerId(1)).is_none());
    assert!(w.s.bound_growth(&register(next), &full_state).is_ok());
}
