//! Every task ends, whatever the pool: a lost slot may go back to a miner whose slot of
//! the task merely expired, slots of a waiting task keep deadlines, and one tick fires
//! a bounded number of deadlines.

use std::collections::BTreeSet;

use super::*;

#[test]
fn a_pool_of_exactly_k_completes_a_task_after_one_missed_ack() {
    let mut w = World::new();
    let s = w.session(3, 2);
    let m = [w.miner(1), w.miner(1), w.miner(1)];
    let t = w.submit(s, "prompt");
    assert_eq!(w.holders(t), m.to_vec());
    w.ack(t, m[0]);
    w.ack(t, m[1]);
    w.advance(ACK_MS);
    // m[2] missed its ack. No other miner exists, so the slot goes back to it.
    let task = w.task(t);
    assert_eq!(task.assignments.len(), 4, "{:?}", task.assignments);
    assert_eq!(task.assignments[2].state, SlotState::Expired);
    assert_eq!(w.holders(t), m.to_vec());
    assert_eq!(w.slot(t, m[2]), SlotState::Assigned);
    assert_eq!(task.attempts, 2);
    assert_eq!(w.s.miner(m[2]).unwrap().expired, 1, "the missed ack counts");
    assert_eq!(w.s.assignments_of(m[2])[0].1, SlotState::Assigned);
    w.ack(t, m[2]);
    assert_eq!(w.state(t), TaskState::Acked);
    for x in m {
        w.precommit(t, x, "answer");
    }
    w.reveal(t, m[2], "answer");
    w.reveal(t, m[0], "answer");
    let task = w.task(t);
    assert_eq!(task.state, TaskState::Completed);
    assert_eq!(task.result(), Some(&b"answer"[..]));
    // The pool keeps serving: the next task goes to the same three.
    let t2 = w.submit(s, "next");
    assert_eq!(w.holders(t2), m.to_vec());
}

#[test]
fn a_lost_slot_prefers_a_miner_that_never_held_the_task() {
    let mut w = World::new();
    let s = w.session(2, 2);
    let (a, b) = (w.miner(1), w.miner(1));
    let t1 = w.submit(s, "one");
    assert_eq!(w.holders(t1), vec![a, b]);
    let c = w.miner(1);
    let t2 = w.submit(s, "two");
    assert_eq!(
        w.s.session(s).unwrap().reserved,
        BTreeSet::from([a, b, c]),
        "the backlog reserved c"
    );
    assert!(w.holders(t2).is_empty(), "c alone cannot serve it");
    w.ack(t1, a);
    w.advance(ACK_MS);
    assert_eq!(
        w.holders(t1),
        vec![a, c],
        "c never held t1: it goes before b (first by id), whose slot expired"
    );
    assert!(
        w.holders(t2).is_empty(),
        "t1 came first; b alone cannot serve t2"
    );
    w.ack(t1, c);
    w.precommit(t1, a, "y");
    w.precommit(t1, c, "y");
    w.reveal(t1, a, "y");
    w.reveal(t1, c, "y");
    assert_eq!(w.state(t1), TaskState::Completed);
    assert_eq!(w.holders(t2).len(), 2);
}

#[test]
fn a_miner_whose_reveal_was_rejected_or_accepted_never_gets_the_task_again() {
    let mut w = World::new();
    let s = w.session(2, 1);
    let (a, b) = (w.miner(1), w.miner(1));
    let t = w.submit(s, "x");
    w.ack(t, a);
    w.ack(t, b);
    w.precommit(t, a, "honest");
    w.precommit(t, b, "honest");
    w.reveal(t, b, "forged");
    assert_eq!(w.slot(t, b), SlotState::Rejected);
    // The reopened slot waits: a still holds its slot, b was caught on this task.
    assert_eq!(w.task(t).open_slots, 1);
    assert_eq!(w.holders(t), vec![a]);
    assert_eq!(
        w.s.session(s).unwrap().shortfall,
        1,
        "it asks for one more miner"
    );
    assert!(w.s.pool().wanted >= 1);
    let c = w.miner(1);
    assert_eq!(w.holders(t), vec![a, c]);
    w.reveal(t, a, "honest");
    assert_eq!(w.state(t), TaskState::Completed);
}

#[test]
fn acked_slots_waiting_for_a_replacement_are_released_at_their_deadline() {
    let mut w = World::new();
    let mut sp = spec(3, 2);
    sp.max_attempts = 5;
    let s = w.session_with(sp);
    let (a, b, c) = (w.miner(1), w.miner(1), w.miner(1));
    let t = w.submit(s, "x");
    w.ack(t, a);
    w.ack(t, b);
    let acked_at = w.now;
    // c leaves: its slot goes back to the queue, and no miner can take it.
    w.ok(Command::DeregisterMiner { auth: auth(c) });
    assert_eq!(w.holders(t), vec![a, b]);
    assert_eq!(w.task(t).open_slots, 1);
    for m in [a, b] {
        let task = w.task(t);
        let slot = &task.assignments[task.slot(m).unwrap()];
        assert_eq!(
            slot.deadline,
            Some(acked_at + PRECOMMIT_MS),
            "a waiting acked slot has a deadline"
        );
    }
    w.advance(PRECOMMIT_MS - 1);
    assert_eq!(w.holders(t), vec![a, b], "not before its deadline");
    w.advance(1);
    // Both waited too long: released, expired, but not held against the miners.
    let task = w.task(t);
    assert!(w.holders(t).is_empty(), "{:?}", task.assignments);
    assert_eq!(task.open_slots, 3);
    assert_eq!(task.attempts, 4, "c's loss and the two releases count");
    assert_eq!(task.state, TaskState::Queued);
    for m in [a, b] {
        let miner = w.s.miner(m).unwrap();
        assert!(miner.active.is_empty(), "{m} is no longer pinned");
        assert_eq!(miner.expired, 0, "{m} did nothing wrong");
    }
    // A new miner makes a pool of three again: the task is served and completes.
    let d = w.miner(1);
    assert_eq!(
        w.holders(t),
        vec![d, a, b],
        "d never held it; a and b again"
    );
    w.complete(t, "ok");
}

#[test]
fn a_waiting_task_whose_slots_are_released_fails_on_its_attempts() {
    let mut w = World::new();
    let mut sp = spec(2, 2);
    sp.max_attempts = 2;
    let s = w.session_with(sp);
    let (a, b) = (w.miner(1), w.miner(1));
    let t = w.submit(s, "x");
    w.ack(t, a);
    w.ok(Command::DeregisterMiner { auth: auth(b) });
    assert_eq!(w.task(t).attempts, 2);
    assert_eq!(w.holders(t), vec![a], "a is pinned while the task waits");
    w.advance(PRECOMMIT_MS);
    let task = w.task(t);
    assert_eq!(task.state, TaskState::Failed);
    let failure = task.failure().unwrap();
    assert!(
        failure.starts_with("gave up after 2 attempts")
            && failure.contains("released after waiting"),
        "{failure}"
    );
    let miner = w.s.miner(a).unwrap();
    assert!(miner.active.is_empty());
    assert_eq!(miner.expired, 0);
}

#[test]
fn a_precommitted_slot_waiting_again_after_a_phase_timeout_has_a_deadline() {
    let mut w = World::new();
    let s = w.session(2, 2);
    let (a, b) = (w.miner(1), w.miner(1));
    let t = w.submit(s, "x");
    w.ack(t, a);
    w.ack(t, b);
    w.precommit(t, a, "out");
    w.advance(PRECOMMIT_MS);
    // b missed the phase; the task waits again, and b (the only free miner) takes
    // the slot again.
    assert_eq!(w.state(t), TaskState::Queued);
    assert_eq!(w.slot(t, b), SlotState::Assigned);
    let task = w.task(t);
    let slot = &task.assignments[task.slot(a).unwrap()];
    assert_eq!(slot.state, SlotState::Precommitted);
    assert_eq!(slot.deadline, Some(w.now + PRECOMMIT_MS));
    w.ack(t, b);
    let task = w.task(t);
    assert_eq!(task.state, TaskState::Acked, "the phase opens again");
    assert!(
        task.assignments.iter().all(|a| a.deadline.is_none()),
        "the phase deadline governs: {:?}",
        task.assignments
    );
    w.precommit(t, b, "out");
    w.reveal(t, a, "out");
    w.reveal(t, b, "out");
    assert_eq!(w.state(t), TaskState::Completed);
}

#[test]
fn one_tick_fires_a_bounded_number_of_deadlines_and_the_rest_stay_due() {
    let mut w = World::new();
    let s = w.session(1, 1);
    let m = w.miner(4096);
    let n = 2 * limits::MAX_FIRED_PER_TICK + 500;
    let tasks: Vec<NewTask> = (0..n)
        .map(|i| new_task(&format!("p{i}"), None, None))
        .collect();
    w.ok(Command::SubmitTasks { session: s, tasks });
    assert_eq!(w.s.miner(m).unwrap().active.len() as u64, n);
    w.now += ACK_MS;
    let mut fired = Vec::new();
    while w.s.next_deadline().is_some_and(|at| at <= w.now) {
        match w.ok(Command::Tick) {
            Response::Ticked { fired: f } => fired.push(f),
            r => panic!("{r:?}"),
        }
    }
    let cap = limits::MAX_FIRED_PER_TICK;
    assert_eq!(
        fired,
        vec![cap, cap, 500],
        "the leader's next ticks fire the rest"
    );
    // Every ack timeout fired once: each task is on its second attempt.
    assert!(w
        .s
        .tasks
        .values()
        .all(|t| t.attempts == 2 && t.state == TaskState::Queued));
}
