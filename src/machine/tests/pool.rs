//! The node pool and reservations: growth with backlog, idle shrink, sessions below k,
//! tags, heartbeats, draining.

use std::collections::BTreeSet;

use super::*;

#[test]
fn reservation_grows_with_backlog_and_shrinks_when_idle() {
    let mut w = World::new();
    let mut sp = spec(1, 1);
    sp.max_nodes = 3;
    let s = w.session_with(sp);
    let miners: Vec<MinerId> = (0..5).map(|_| w.miner(1)).collect();
    assert_eq!(
        w.s.session(s).unwrap().reserved.len(),
        1,
        "an idle session holds k"
    );
    assert_eq!(w.s.pool().pooled, 4);

    let tasks: Vec<TaskId> = (0..6).map(|i| w.submit(s, &format!("p{i}"))).collect();
    let session = w.s.session(s).unwrap();
    assert_eq!(
        session.reserved.len(),
        3,
        "backlog grows the reservation up to max_nodes"
    );
    assert_eq!(session.active_slots, 3);
    assert_eq!(session.open_slots, 3);
    assert_eq!(w.s.pool().pooled, 2);
    let pool = w.s.pool();
    assert_eq!(pool.open_slots, 3);
    assert_eq!(pool.wanted, 0, "the session holds max_nodes");

    for &t in &tasks {
        w.complete(t, "done");
    }
    let session = w.s.session(s).unwrap();
    assert_eq!(
        session.reserved.len(),
        3,
        "not released before the idle time"
    );
    w.advance(IDLE_MS - 1);
    assert_eq!(w.s.session(s).unwrap().reserved.len(), 3);
    w.advance(1);
    let session = w.s.session(s).unwrap();
    assert_eq!(session.reserved.len(), 1, "idle: back to k");
    assert_eq!(w.s.pool().pooled, 4);
    for m in &miners {
        let m = w.s.miner(*m).unwrap();
        assert_eq!(m.reserved_by.is_some(), m.state == MinerState::Reserved);
    }

    // Closing releases everything.
    w.ok(Command::CloseSession { session: s });
    assert_eq!(w.s.pool().pooled, 5);
    assert!(w.s.session(s).unwrap().reserved.is_empty());
}

#[test]
fn a_session_below_k_is_served_first_and_borrows_idle_miners() {
    let mut w = World::new();
    let mut sp = spec(1, 1);
    sp.max_nodes = 4;
    let greedy = w.session_with(sp);
    let tasks: Vec<TaskId> = (0..4).map(|i| w.submit(greedy, &format!("g{i}"))).collect();
    let _miners: Vec<MinerId> = (0..4).map(|_| w.miner(1)).collect();
    assert_eq!(
        w.s.session(greedy).unwrap().reserved.len(),
        4,
        "its backlog grew it to four"
    );
    w.complete(tasks[0], "done");
    w.complete(tasks[1], "done");
    // Two of its miners are idle now, two busy; no other miner exists.
    let hungry = w.session(2, 2);
    let held = w.s.session(hungry).unwrap().reserved.clone();
    assert_eq!(held.len(), 2, "the newcomer borrowed the idle two");
    for m in &held {
        assert!(w.s.miner(*m).unwrap().active.is_empty());
    }
    assert_eq!(
        w.s.session(greedy).unwrap().reserved.len(),
        2,
        "the busy ones stayed"
    );
    let t = w.submit(hungry, "h");
    assert_eq!(w.holders(t).len(), 2);
    // A third session finds nothing idle to borrow...
    let third = w.session(1, 1);
    assert!(w.s.session(third).unwrap().reserved.is_empty());
    // ...and a miner coming into the pool goes to it before the greedy one grows.
    w.submit(greedy, "more backlog");
    let fresh = w.miner(1);
    assert_eq!(
        w.s.session(third).unwrap().reserved,
        BTreeSet::from([fresh])
    );
}

#[test]
fn a_tagged_session_reserves_only_miners_with_its_tag_and_waits_for_them() {
    let mut w = World::new();
    let mut sp = spec(2, 2);
    sp.tag = Some("llama-3".into());
    let s = w.session_with(sp);
    let plain = w.miner(4);
    let tagged = w.miner_tagged(4, &["llama-3", "gpu"]);
    let t = w.submit(s, "x");
    assert_eq!(w.s.session(s).unwrap().reserved, BTreeSet::from([tagged]));
    assert_eq!(w.state(t), TaskState::Queued);
    assert!(
        w.holders(t).is_empty(),
        "one tagged miner cannot take a task that needs two"
    );
    let pool = w.s.pool();
    assert_eq!(pool.wanted, 1);
    assert!(
        pool.delta > 0,
        "the scaling signal asks for another miner: {pool:?}"
    );
    assert_eq!(w.s.miner(plain).unwrap().state, MinerState::Pooled);
    let second = w.miner_tagged(1, &["llama-3"]);
    assert_eq!(w.holders(t), vec![tagged, second]);
}

#[test]
fn a_miner_that_misses_heartbeats_is_gone_and_its_slots_move() {
    let mut w = World::new();
    let s = w.session(1, 1);
    let gone = w.ok(Command::RegisterMiner {
        name: "flaky".into(),
        capacity: 1,
        tags: vec![],
        token_hash: token(MinerId(1)),
        heartbeat_timeout_ms: 5_000,
    });
    assert_eq!(gone, Response::MinerRegistered { miner: MinerId(1) });
    let t = w.submit(s, "x");
    assert_eq!(w.holders(t), vec![MinerId(1)]);
    w.now += 4_000;
    w.ok(Command::Heartbeat {
        auth: auth(MinerId(1)),
    });
    w.advance(4_999);
    assert_eq!(w.s.miner(MinerId(1)).unwrap().state, MinerState::Reserved);
    let spare = w.miner(1);
    w.advance(1);
    assert_eq!(w.s.miner(MinerId(1)).unwrap().state, MinerState::Gone);
    assert_eq!(w.holders(t), vec![spare]);
    assert_eq!(w.s.session(s).unwrap().reserved, BTreeSet::from([spare]));
    // Gone miners are forgotten after an hour.
    w.advance(limits::GONE_MINER_RETENTION_MS);
    assert!(w.s.miner(MinerId(1)).is_none());
}

#[test]
fn a_draining_miner_finishes_its_work_then_leaves() {
    let mut w = World::new();
    let s = w.session(1, 1);
    let (a, b) = (w.miner(2), w.miner(2));
    let t = w.submit(s, "x");
    assert_eq!(w.holders(t), vec![a]);
    w.ok(Command::DrainMiner { auth: auth(a) });
    assert_eq!(w.s.miner(a).unwrap().state, MinerState::Draining);
    let t2 = w.submit(s, "y");
    assert_eq!(w.holders(t2), vec![b], "no new work for a draining miner");
    w.complete(t, "done");
    assert_eq!(w.s.miner(a).unwrap().state, MinerState::Gone);
}
