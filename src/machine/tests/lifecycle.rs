//! The lifecycle of one task: every state, the timeouts of each step, attempts,
//! rejected and disagreeing reveals, retention.

use super::*;

#[test]
fn a_task_goes_through_every_state_with_three_miners_and_quorum_two() {
    let mut w = World::new();
    let s = w.session(3, 2);
    let miners = [w.miner(1), w.miner(1), w.miner(1)];
    assert_eq!(
        w.s.session(s).unwrap().reserved.len(),
        3,
        "a session reserves k miners"
    );
    let t = w.submit(s, "prompt");
    assert_eq!(w.state(t), TaskState::Queued);
    assert_eq!(
        w.holders(t),
        miners.to_vec(),
        "dispatched to three distinct miners by id"
    );
    assert_eq!(w.task(t).attempts, 1);

    w.ack(t, miners[0]);
    w.ack(t, miners[1]);
    assert_eq!(
        w.state(t),
        TaskState::Queued,
        "acked only when every miner acked"
    );
    w.ack(t, miners[2]);
    assert_eq!(w.state(t), TaskState::Acked);

    w.precommit(t, miners[0], "answer");
    w.precommit(t, miners[1], "answer");
    assert_eq!(
        w.state(t),
        TaskState::Acked,
        "the phase stays open until all precommit or it times out"
    );
    let early = w.refused(World::reveal_cmd(t, miners[0], "answer"));
    assert!(matches!(early, Rejection::Conflict(_)), "{early}");
    w.precommit(t, miners[2], "answer");
    assert_eq!(w.state(t), TaskState::Precommitted);

    w.reveal(t, miners[0], "answer");
    assert_eq!(w.state(t), TaskState::Committed);
    assert_eq!(w.slot(t, miners[0]), SlotState::Committed);
    w.reveal(t, miners[1], "answer");
    let task = w.task(t);
    assert_eq!(task.state, TaskState::Completed);
    assert_eq!(task.result(), Some(&b"answer"[..]));
    let states: Vec<TaskState> = task.history.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        states,
        [
            TaskState::Queued,
            TaskState::Acked,
            TaskState::Precommitted,
            TaskState::Committed,
            TaskState::Completed
        ]
    );
    for m in miners {
        assert!(
            w.s.miner(m).unwrap().active.is_empty(),
            "completion frees every miner"
        );
    }
    // The third miner is too late: the task is done and never changes again.
    let late = w.refused(World::reveal_cmd(t, miners[2], "answer"));
    assert!(matches!(late, Rejection::Conflict(_)));
    let session = w.s.session(s).unwrap();
    assert_eq!(session.counts.completed, 1);
    assert_eq!((session.open_slots, session.active_slots), (0, 0));
}

#[test]
fn an_ack_timeout_gives_the_slot_to_another_miner() {
    let mut w = World::new();
    let s = w.session(1, 1);
    let (a, b) = (w.miner(1), w.miner(1));
    let t = w.submit(s, "x");
    assert_eq!(w.holders(t), vec![a]);
    w.advance(ACK_MS - 1);
    assert_eq!(w.holders(t), vec![a]);
    w.advance(1);
    assert_eq!(w.slot(t, a), SlotState::Expired);
    assert_eq!(
        w.holders(t),
        vec![b],
        "re-queued and given to a miner that has not had it"
    );
    assert_eq!(w.task(t).attempts, 2);
    assert_eq!(w.s.miner(a).unwrap().expired, 1);
    // The expired miner can no longer act on it.
    assert!(matches!(
        w.refused(Command::Ack {
            task: t,
            auth: auth(a)
        }),
        Rejection::Conflict(_)
    ));
    w.complete(t, "ok");
}

#[test]
fn a_precommit_timeout_below_quorum_requeues_the_silent_slots() {
    let mut w = World::new();
    let s = w.session(2, 2);
    let (a, b, c) = (w.miner(1), w.miner(1), w.miner(1));
    let t = w.submit(s, "x");
    w.ack(t, a);
    w.ack(t, b);
    w.precommit(t, a, "out");
    w.advance(PRECOMMIT_MS);
    assert_eq!(w.slot(t, b), SlotState::Expired);
    assert_eq!(
        w.state(t),
        TaskState::Queued,
        "the phase reopens for the replacement"
    );
    assert_eq!(w.holders(t), vec![a, c]);
    assert_eq!(
        w.slot(t, a),
        SlotState::Precommitted,
        "a's precommit stands"
    );
    w.ack(t, c);
    assert_eq!(w.state(t), TaskState::Acked);
    w.precommit(t, c, "out");
    assert_eq!(w.state(t), TaskState::Precommitted);
    w.reveal(t, a, "out");
    w.reveal(t, c, "out");
    assert_eq!(w.state(t), TaskState::Completed);
}

#[test]
fn a_precommit_timeout_with_quorum_closes_the_phase_without_the_laggard() {
    let mut w = World::new();
    let s = w.session(3, 2);
    let m = [w.miner(1), w.miner(1), w.miner(1)];
    let t = w.submit(s, "x");
    for x in m {
        w.ack(t, x);
    }
    w.precommit(t, m[0], "out");
    w.precommit(t, m[1], "out");
    w.advance(PRECOMMIT_MS);
    assert_eq!(w.state(t), TaskState::Precommitted);
    assert_eq!(w.slot(t, m[2]), SlotState::Expired);
    w.reveal(t, m[0], "out");
    w.reveal(t, m[1], "out");
    assert_eq!(w.state(t), TaskState::Completed);
}

#[test]
fn a_reveal_timeout_gives_the_slot_to_a_late_miner() {
    let mut w = World::new();
    let s = w.session(2, 2);
    let (a, b, c) = (w.miner(1), w.miner(1), w.miner(1));
    let t = w.submit(s, "x");
    w.ack(t, a);
    w.ack(t, b);
    w.precommit(t, a, "out");
    w.precommit(t, b, "out");
    w.reveal(t, a, "out");
    assert_eq!(w.state(t), TaskState::Committed);
    w.advance(COMMIT_MS);
    assert_eq!(w.slot(t, b), SlotState::Expired);
    assert_eq!(w.holders(t), vec![c]);
    assert_eq!(
        w.state(t),
        TaskState::Committed,
        "a reveal stands; the late miner joins the closed phase"
    );
    w.ack(t, c);
    w.precommit(t, c, "out");
    w.reveal(t, c, "out");
    assert_eq!(w.state(t), TaskState::Completed);
    assert_eq!(w.task(t).attempts, 2);
}

#[test]
fn a_task_fails_when_its_attempts_run_out() {
    let mut w = World::new();
    let mut sp = spec(1, 1);
    sp.max_attempts = 2;
    let s = w.session_with(sp);
    let _miners = [w.miner(1), w.miner(1), w.miner(1)];
    let t = w.submit(s, "x");
    w.advance(ACK_MS);
    assert_eq!(w.task(t).attempts, 2);
    w.advance(ACK_MS);
    let task = w.task(t);
    assert_eq!(task.state, TaskState::Failed);
    assert!(
        task.failure().unwrap().contains("gave up after 2 attempts"),
        "{:?}",
        task.failure()
    );
    assert!(w.s.pool().reserved >= 1);
    assert_eq!(w.s.session(s).unwrap().active_slots, 0);
}

#[test]
fn a_wrong_reveal_is_rejected_penalised_and_reassigned() {
    let mut w = World::new();
    let s = w.session(1, 1);
    let (a, b) = (w.miner(1), w.miner(1));
    let t = w.submit(s, "x");
    w.ack(t, a);
    w.precommit(t, a, "honest");
    w.advance(0);
    let before = w.s.encode();
    let r = w.reveal(t, a, "copied");
    assert!(matches!(r, Response::RevealRejected { .. }), "{r:?}");
    assert_ne!(before, w.s.encode(), "a rejected reveal is recorded");
    assert_eq!(w.slot(t, a), SlotState::Rejected);
    assert_eq!(w.s.miner(a).unwrap().recent_rejections(w.now), 1);
    assert_eq!(w.holders(t), vec![b]);
    w.complete(t, "honest");
    // The rejected miner comes last in the next choice among equals.
    let t2 = w.submit(s, "y");
    assert_eq!(w.holders(t2), vec![b]);
}

#[test]
fn disagreeing_reveals_fail_the_task() {
    let mut w = World::new();
    let s = w.session(2, 2);
    let (a, b) = (w.miner(1), w.miner(1));
    let t = w.submit(s, "x");
    w.ack(t, a);
    w.ack(t, b);
    w.precommit(t, a, "one");
    w.precommit(t, b, "two");
    w.reveal(t, a, "one");
    w.reveal(t, b, "two");
    let task = w.task(t);
    assert_eq!(task.state, TaskState::Failed);
    assert!(
        task.failure().unwrap().starts_with("no quorum"),
        "{:?}",
        task.failure()
    );
}

#[test]
fn finished_tasks_are_purged_after_retention_and_cancel_frees_miners() {
    let mut w = World::new();
    let s = w.session(1, 1);
    let m = w.miner(1);
    let t = w.submit_with(s, "x", None, Some("key"));
    w.ok(Command::CancelTask { task: t });
    assert_eq!(w.state(t), TaskState::Cancelled);
    assert!(w.s.miner(m).unwrap().active.is_empty());
    let t2 = w.submit(s, "y");
    assert_eq!(w.holders(t2), vec![m]);
    w.advance(RETENTION_MS);
    assert!(w.s.task(t).is_none(), "purged");
    assert_eq!(w.s.session(s).unwrap().counts.cancelled, 0);
    // The key's window (here the retention, from the submit) has passed too: the
    // key is free again, even for another payload.
    let t3 = w.submit_with(s, "z", None, Some("key"));
    assert_ne!(t3, t);
}
