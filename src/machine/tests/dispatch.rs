//! Dispatch order and head-of-line freedom: priority, FIFO, and tasks that cannot be
//! served never holding back those behind them.

use super::*;

#[test]
fn higher_priority_first_then_first_in_first_out() {
    let mut w = World::new();
    let s = w.session(1, 1);
    let a = w.submit_with(s, "a", Some(0), None);
    let b = w.submit_with(s, "b", Some(5), None);
    let c = w.submit_with(s, "c", Some(5), None);
    let d = w.submit_with(s, "d", Some(1), None);
    let m = w.miner(1);
    let mut order = Vec::new();
    for _ in 0..4 {
        let t = w.s.assignments_of(m)[0].0.id;
        order.push(t);
        w.complete(t, "ok");
    }
    assert_eq!(order, vec![b, c, d, a]);
}

/// A task of a k = 2, q = 2 session on miners a and b that then needs a third
/// miner: a revealed for it, b's reveal was rejected, so neither may take its slot.
fn unservable_without_a_third_miner(w: &mut World, s: SessionId, priority: i32) -> TaskId {
    let t = w.submit_with(s, "x", Some(priority), None);
    let holders = w.holders(t);
    assert_eq!(holders.len(), 2, "a fresh task is served at once");
    let (a, b) = (holders[0], holders[1]);
    w.ack(t, a);
    w.ack(t, b);
    w.precommit(t, a, "x");
    w.precommit(t, b, "x");
    w.reveal(t, a, "x");
    w.reveal(t, b, "forged");
    assert_eq!(w.task(t).open_slots, 1);
    assert!(w.holders(t).is_empty());
    t
}

#[test]
fn an_unservable_task_never_blocks_the_ones_behind_it() {
    let mut w = World::new();
    let s = w.session(2, 2);
    let (a, b) = (w.miner(1), w.miner(1));
    // More unservable tasks at the head of the queue than any scan window: each new
    // one is still served at once, behind the earlier ones of its own priority.
    let stuck: Vec<TaskId> = (0..100)
        .map(|_| unservable_without_a_third_miner(&mut w, s, 5))
        .collect();
    assert_eq!(w.s.session(s).unwrap().counts.committed, 100);
    assert_eq!(w.s.session(s).unwrap().open_slots, 100);
    // A fresh task of lower priority is served by a and b at once.
    let low = w.submit_with(s, "low", Some(0), None);
    assert_eq!(w.holders(low), vec![a, b]);
    // The head asks for one more miner; the one that comes serves the head first.
    assert_eq!(w.s.session(s).unwrap().shortfall, 1);
    let c = w.miner(1);
    assert_eq!(w.holders(stuck[0]), vec![c]);
    w.ack(stuck[0], c);
    w.precommit(stuck[0], c, "x");
    w.reveal(stuck[0], c, "x");
    assert_eq!(w.state(stuck[0]), TaskState::Completed);
    assert_eq!(w.holders(stuck[1]), vec![c], "then the next, in order");
}

#[test]
fn a_servable_partial_task_goes_before_fresh_ones_behind_it_but_not_before_older_ones() {
    let mut w = World::new();
    let s = w.session(2, 2);
    let (a, b, c) = (w.miner(1), w.miner(1), w.miner(1));
    let first = w.submit(s, "first");
    let second = w.submit(s, "second");
    assert_eq!(w.holders(first), vec![a, b]);
    assert!(w.holders(second).is_empty());
    // first loses b's slot: its open slot and second (fresh, needs two) compete for
    // b and c. first is older: it takes one, and second waits.
    w.ack(first, a);
    w.advance(ACK_MS);
    assert_eq!(w.holders(first), vec![a, c]);
    assert!(w.holders(second).is_empty());
    let high = w.submit_with(s, "urgent", Some(9), None);
    assert!(w.holders(high).is_empty(), "only b has room");
    w.ack(first, c);
    w.precommit(first, a, "y");
    w.precommit(first, c, "y");
    w.reveal(first, a, "y");
    // a is free: with b, the urgent task goes first.
    assert_eq!(w.holders(high), vec![a, b]);
    w.reveal(first, c, "y");
    assert!(w.holders(second).is_empty());
}

#[test]
fn dispatch_looks_at_few_tasks_however_long_the_queue() {
    let mut w = World::new();
    let s = w.session(2, 2);
    let tasks: Vec<NewTask> = (0..10_000)
        .map(|i| new_task(&format!("p{i}"), None, None))
        .collect();
    w.ok(Command::SubmitTasks { session: s, tasks });
    // One miner: no task can be served, and none is looked at (one open lane
    // needs two miners).
    let a = w.miner(1);
    assert_eq!(w.s.step.examined, 0);
    let b = w.miner(1);
    assert!(w.s.step.examined <= 2, "{}", w.s.step.examined);
    let t = w.s.assignments_of(a)[0].0.id;
    assert_eq!(w.holders(t), vec![a, b]);
    // Completing it frees both, and the next one is served looking at one or two.
    w.complete(t, "ok");
    assert!(w.s.step.examined <= 2, "{}", w.s.step.examined);
    assert_eq!(w.s.session(s).unwrap().active_slots, 2);
}
