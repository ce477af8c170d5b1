//! Tests of the state machine through its public commands, plus a property test of its
//! invariants and of replica determinism.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use proptest::prelude::*;

use super::task::sha256;
use super::*;

const ACK_MS: u64 = 10_000;
const PRECOMMIT_MS: u64 = 30_000;
const COMMIT_MS: u64 = 30_000;
const IDLE_MS: u64 = 30_000;
const RETENTION_MS: u64 = 3_600_000;

fn spec(k: u8, q: u8) -> SessionSpec {
    SessionSpec {
        owner: "alice".into(),
        redundancy: k,
        quorum: q,
        priority: 0,
        tag: None,
        max_nodes: 8,
        ack_timeout_ms: ACK_MS,
        precommit_timeout_ms: PRECOMMIT_MS,
        commit_timeout_ms: COMMIT_MS,
        max_attempts: 3,
        retention_ms: RETENTION_MS,
        idle_release_ms: IDLE_MS,
    }
}

fn token(m: MinerId) -> Digest {
    sha256(&[b"token-", m.0.to_string().as_bytes()])
}

fn auth(m: MinerId) -> MinerAuth {
    MinerAuth {
        miner: m,
        token_hash: token(m),
    }
}

fn nonce(m: MinerId) -> Vec<u8> {
    format!("nonce-{}", m.0).into_bytes()
}

/// A state and a leader clock.
struct World {
    s: State,
    now: u64,
}

impl World {
    fn new() -> Self {
        World {
            s: State::new(),
            now: 1_000_000,
        }
    }

    fn run(&mut self, c: Command) -> Result<Applied, Rejection> {
        self.s.apply(&c, self.now)
    }

    fn ok(&mut self, c: Command) -> Response {
        match self.run(c.clone()) {
            Ok(a) => a.response,
            Err(e) => panic!("{c:?} refused: {e}"),
        }
    }

    /// Applies a command that must be refused, and checks that nothing changed.
    fn refused(&mut self, c: Command) -> Rejection {
        let before = self.s.encode();
        let e = self
            .run(c.clone())
            .expect_err(&format!("{c:?} must be refused"));
        assert_eq!(
            before,
            self.s.encode(),
            "{c:?} was refused but changed the state"
        );
        e
    }

    fn advance(&mut self, ms: u64) {
        self.now += ms;
        self.ok(Command::Tick);
    }

    fn session_with(&mut self, spec: SessionSpec) -> SessionId {
        match self.ok(Command::CreateSession(spec)) {
            Response::SessionCreated { session } => session,
            r => panic!("{r:?}"),
        }
    }

    fn session(&mut self, k: u8, q: u8) -> SessionId {
        self.session_with(spec(k, q))
    }

    fn miner_tagged(&mut self, capacity: u32, tags: &[&str]) -> MinerId {
        let id = MinerId(self.s.header.next_miner + 1);
        let r = self.ok(Command::RegisterMiner {
            name: format!("miner-{}", id.0),
            capacity,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            token_hash: token(id),
            heartbeat_timeout_ms: 3_600_000,
        });
        assert_eq!(r, Response::MinerRegistered { miner: id });
        id
    }

    fn miner(&mut self, capacity: u32) -> MinerId {
        self.miner_tagged(capacity, &[])
    }

    fn submit_with(
        &mut self,
        session: SessionId,
        payload: &str,
        priority: Option<i32>,
        key: Option<&str>,
    ) -> TaskId {
        match self.ok(Command::SubmitTasks {
            session,
            tasks: vec![NewTask {
                payload: payload.as_bytes().to_vec(),
                priority,
                idempotency_key: key.map(|k| k.to_string()),
            }],
        }) {
            Response::TasksSubmitted { tasks } => tasks[0].0,
            r => panic!("{r:?}"),
        }
    }

    fn submit(&mut self, session: SessionId, payload: &str) -> TaskId {
        self.submit_with(session, payload, None, None)
    }

    fn task(&self, t: TaskId) -> &Task {
        self.s.task(t).expect("task exists")
    }

    fn state(&self, t: TaskId) -> TaskState {
        self.task(t).state
    }

    /// Miners holding an active slot of the task, in slot order.
    fn holders(&self, t: TaskId) -> Vec<MinerId> {
        self.task(t)
            .assignments
            .iter()
            .filter(|a| a.state.is_active())
            .map(|a| a.miner)
            .collect()
    }

    fn slot(&self, t: TaskId, m: MinerId) -> SlotState {
        self.task(t)
            .assignments
            .iter()
            .find(|a| a.miner == m)
            .expect("slot")
            .state
    }

    fn ack(&mut self, t: TaskId, m: MinerId) {
        self.ok(Command::Ack {
            task: t,
            auth: auth(m),
        });
    }

    fn precommit(&mut self, t: TaskId, m: MinerId, output: &str) {
        let hash = sha256(&[output.as_bytes(), &nonce(m)]);
        self.ok(Command::Precommit {
            task: t,
            auth: auth(m),
            hash,
        });
    }

    fn reveal_cmd(t: TaskId, m: MinerId, output: &str) -> Command {
        Command::Reveal {
            task: t,
            auth: auth(m),
            output: output.as_bytes().to_vec(),
            nonce: nonce(m),
        }
    }

    fn reveal(&mut self, t: TaskId, m: MinerId, output: &str) -> Response {
        self.ok(Self::reveal_cmd(t, m, output))
    }

    /// Drives every holder of the task through ack, precommit and reveal of `output`.
    fn complete(&mut self, t: TaskId, output: &str) {
        let holders = self.holders(t);
        for &m in &holders {
            self.ack(t, m);
        }
        for &m in &holders {
            self.precommit(t, m, output);
        }
        for &m in &holders {
            if self.state(t) != TaskState::Completed {
                self.reveal(t, m, output);
            }
        }
        assert_eq!(self.state(t), TaskState::Completed);
    }
}

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
    assert_eq!(task.result.as_deref(), Some(&b"answer"[..]));
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
fn illegal_transitions_are_refused_and_change_nothing() {
    let mut w = World::new();
    let s = w.session(2, 2);
    let (a, b, c) = (w.miner(1), w.miner(1), w.miner(1));
    let t = w.submit(s, "x");
    assert_eq!(w.holders(t), vec![a, b]);
    let conflict = |r: Rejection| assert!(matches!(r, Rejection::Conflict(_)), "{r}");

    // Not assigned to c.
    conflict(w.refused(Command::Ack {
        task: t,
        auth: auth(c),
    }));
    // Precommit and reveal before ack.
    conflict(w.refused(Command::Precommit {
        task: t,
        auth: auth(a),
        hash: [0; 32],
    }));
    conflict(w.refused(World::reveal_cmd(t, a, "x")));
    w.ack(t, a);
    conflict(w.refused(Command::Ack {
        task: t,
        auth: auth(a),
    }));
    // The phase opens only when everyone acked.
    conflict(w.refused(Command::Precommit {
        task: t,
        auth: auth(a),
        hash: [0; 32],
    }));
    w.ack(t, b);
    w.precommit(t, a, "y");
    // A second precommit.
    conflict(w.refused(Command::Precommit {
        task: t,
        auth: auth(a),
        hash: [1; 32],
    }));
    // Reveal before the phase closed.
    conflict(w.refused(World::reveal_cmd(t, a, "y")));
    w.precommit(t, b, "y");
    w.reveal(t, a, "y");
    conflict(w.refused(World::reveal_cmd(t, a, "y")));
    w.reveal(t, b, "y");
    assert_eq!(w.state(t), TaskState::Completed);
    // Any write to a completed task.
    conflict(w.refused(World::reveal_cmd(t, b, "y")));
    conflict(w.refused(Command::Ack {
        task: t,
        auth: auth(a),
    }));
    conflict(w.refused(Command::CancelTask { task: t }));

    // Unknown ids, bad tokens, bad specs.
    assert!(matches!(
        w.refused(Command::CancelTask { task: TaskId(99) }),
        Rejection::NotFound(_)
    ));
    assert!(matches!(
        w.refused(Command::CloseSession {
            session: SessionId(99)
        }),
        Rejection::NotFound(_)
    ));
    let bad = MinerAuth {
        miner: a,
        token_hash: [7; 32],
    };
    assert!(matches!(
        w.refused(Command::Heartbeat { auth: bad }),
        Rejection::Unauthorized(_)
    ));
    let nobody = MinerAuth {
        miner: MinerId(99),
        token_hash: [7; 32],
    };
    assert!(matches!(
        w.refused(Command::Heartbeat { auth: nobody }),
        Rejection::Unauthorized(_)
    ));
    for bad_spec in [spec(0, 1), spec(8, 1), spec(3, 4), spec(2, 0)] {
        assert!(matches!(
            w.refused(Command::CreateSession(bad_spec)),
            Rejection::Invalid(_)
        ));
    }
    let mut few_nodes = spec(3, 2);
    few_nodes.max_nodes = 2;
    assert!(matches!(
        w.refused(Command::CreateSession(few_nodes)),
        Rejection::Invalid(_)
    ));
    assert!(matches!(
        w.refused(Command::SubmitTasks {
            session: s,
            tasks: vec![]
        }),
        Rejection::Invalid(_)
    ));
    assert!(matches!(
        w.refused(Command::RegisterMiner {
            name: String::new(),
            capacity: 1,
            tags: vec![],
            token_hash: [0; 32],
            heartbeat_timeout_ms: 1
        }),
        Rejection::Invalid(_)
    ));
    // A closed session takes no tasks; closing twice is refused.
    w.ok(Command::CloseSession { session: s });
    conflict(w.refused(Command::SubmitTasks {
        session: s,
        tasks: vec![NewTask {
            payload: vec![],
            priority: None,
            idempotency_key: None,
        }],
    }));
    conflict(w.refused(Command::CloseSession { session: s }));
    // A gone miner can do nothing.
    w.ok(Command::DeregisterMiner { auth: auth(c) });
    conflict(w.refused(Command::Heartbeat { auth: auth(c) }));
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
        task.failure
            .as_deref()
            .unwrap()
            .contains("gave up after 2 attempts"),
        "{:?}",
        task.failure
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
        task.failure.as_deref().unwrap().starts_with("no quorum"),
        "{:?}",
        task.failure
    );
}

#[test]
fn a_repeated_idempotency_key_returns_the_first_task() {
    let mut w = World::new();
    let s = w.session(1, 1);
    let t1 = w.submit_with(s, "x", None, Some("k-1"));
    let before = w.s.session(s).unwrap().submitted_total;
    let r = w.ok(Command::SubmitTasks {
        session: s,
        tasks: vec![
            NewTask {
                payload: b"other".to_vec(),
                priority: None,
                idempotency_key: Some("k-1".into()),
            },
            NewTask {
                payload: b"new".to_vec(),
                priority: None,
                idempotency_key: Some("k-2".into()),
            },
            NewTask {
                payload: b"again".to_vec(),
                priority: None,
                idempotency_key: Some("k-2".into()),
            },
        ],
    });
    let Response::TasksSubmitted { tasks } = r else {
        panic!("{r:?}")
    };
    assert_eq!(tasks[0], (t1, false));
    assert!(tasks[1].1);
    assert_eq!(tasks[2], (tasks[1].0, false));
    assert_eq!(w.s.session(s).unwrap().submitted_total, before + 1);
    assert_eq!(w.task(t1).payload, b"x");
    // Another session's key space is its own.
    let s2 = w.session(1, 1);
    assert_ne!(w.submit_with(s2, "x", None, Some("k-1")), t1);
}

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
    // After the purge the key is free again.
    let t3 = w.submit_with(s, "z", None, Some("key"));
    assert_ne!(t3, t);
}

#[test]
fn the_state_round_trips_through_its_encoding() {
    let mut w = World::new();
    let s = w.session(2, 1);
    let (a, _b) = (w.miner(3), w.miner(3));
    let t = w.submit(s, "x");
    w.submit_with(s, "y", Some(3), Some("k"));
    w.ack(t, a);
    // A record encodes to the same bytes borrowed or owned.
    for key in [Key::Header, Key::Session(s), Key::Miner(a), Key::Task(t)] {
        assert_eq!(
            w.s.record_bytes(key),
            w.s.record(key).map(|r| crate::codec::encode_record(&r))
        );
    }
    let restored = State::decode(&w.s.encode()).unwrap();
    assert_eq!(restored, w.s);
    assert_indexes_equal(&restored, &w.s);
    assert_eq!(restored.encode(), w.s.encode());
}

// ---- invariants and the property test ----

fn assert_indexes_equal(a: &State, b: &State) {
    assert_eq!(a.idx.queues, b.idx.queues, "queues");
    assert_eq!(a.idx.deadlines, b.idx.deadlines, "deadlines");
    assert_eq!(a.idx.idempotency, b.idx.idempotency, "idempotency");
    assert_eq!(a.idx.pool, b.idx.pool, "pool");
    assert_eq!(a.idx.needy, b.idx.needy, "needy");
    assert_eq!(a.idx.depth, b.idx.depth, "depth");
    assert_eq!(a.idx.tokens, b.idx.tokens, "tokens");
}

fn check_invariants(s: &State) {
    let mut counts: BTreeMap<SessionId, StateCounts> = BTreeMap::new();
    let mut open: BTreeMap<SessionId, u64> = BTreeMap::new();
    let mut active: BTreeMap<SessionId, u64> = BTreeMap::new();
    let mut held: BTreeMap<MinerId, BTreeSet<TaskId>> = BTreeMap::new();
    for t in s.tasks.values() {
        let session = &s.sessions[&t.session];
        counts.entry(t.session).or_default().add(t.state, 1);
        let miners: BTreeSet<MinerId> = t.assignments.iter().map(|a| a.miner).collect();
        assert_eq!(
            miners.len(),
            t.assignments.len(),
            "{}: a miner holds two slots",
            t.id
        );
        if t.state.is_terminal() {
            assert_eq!(t.open_slots, 0);
            assert!(
                t.phase_deadline.is_none() && t.assignments.iter().all(|a| a.deadline.is_none())
            );
        } else {
            *open.entry(t.session).or_default() += t.open_slots as u64;
            let n = t.active_slots();
            *active.entry(t.session).or_default() += n as u64;
            for a in t.assignments.iter().filter(|a| a.state.is_active()) {
                held.entry(a.miner).or_default().insert(t.id);
            }
            assert!(
                n + t.open_slots as usize <= session.k() as usize,
                "{}: more slots than k",
                t.id
            );
            if !t.phase_closed {
                assert_eq!(
                    n + t.open_slots as usize,
                    session.k() as usize,
                    "{}: slots lost before close",
                    t.id
                );
            }
            assert_eq!(
                t.state,
                t.derived_state(),
                "{}: state does not follow its slots",
                t.id
            );
        }
        if t.state == TaskState::Completed {
            let result = t.result.as_ref().expect("a completed task has a result");
            let agree = t
                .assignments
                .iter()
                .filter(|a| {
                    a.state == SlotState::Committed && a.output_hash == Some(sha256(&[result]))
                })
                .count();
            assert!(
                agree >= session.q() as usize,
                "{}: completed without q agreeing reveals",
                t.id
            );
        }
    }
    let mut depth = StateCounts::default();
    for sess in s.sessions.values() {
        assert_eq!(
            sess.counts,
            counts.get(&sess.id).copied().unwrap_or_default(),
            "{} counts",
            sess.id
        );
        assert_eq!(
            sess.open_slots,
            open.get(&sess.id).copied().unwrap_or(0),
            "{} open slots",
            sess.id
        );
        assert_eq!(
            sess.active_slots,
            active.get(&sess.id).copied().unwrap_or(0),
            "{} active slots",
            sess.id
        );
        assert!(sess.reserved.len() as u32 <= sess.spec.max_nodes);
        for m in &sess.reserved {
            let miner = &s.miners[m];
            assert_eq!(miner.reserved_by, Some(sess.id));
            assert_eq!(miner.state, MinerState::Reserved);
        }
        for st in TaskState::ALL {
            let n = match st {
                TaskState::Queued => sess.counts.queued,
                TaskState::Acked => sess.counts.acked,
                TaskState::Precommitted => sess.counts.precommitted,
                TaskState::Committed => sess.counts.committed,
                TaskState::Completed => sess.counts.completed,
                TaskState::Failed => sess.counts.failed,
                TaskState::Cancelled => sess.counts.cancelled,
            };
            depth.add(st, n as i64);
        }
    }
    assert_eq!(s.idx.depth, depth);
    for m in s.miners.values() {
        assert_eq!(
            m.active,
            held.get(&m.id).cloned().unwrap_or_default(),
            "{} active set",
            m.id
        );
        assert!(
            m.active.len() as u32 <= m.capacity,
            "{} over capacity",
            m.id
        );
        match m.state {
            MinerState::Reserved => {
                assert!(s.sessions[&m.reserved_by.unwrap()].reserved.contains(&m.id))
            }
            MinerState::Pooled => assert!(m.reserved_by.is_none() && m.active.is_empty()),
            MinerState::Draining => assert!(m.reserved_by.is_none() && !m.active.is_empty()),
            MinerState::Gone => assert!(m.reserved_by.is_none() && m.active.is_empty()),
        }
    }
    // The derived indexes equal the ones rebuilt from the entities alone.
    let mut rebuilt = s.clone();
    rebuilt.rebuild_indexes();
    assert_indexes_equal(s, &rebuilt);
}

/// One random step; indices pick among what exists at that moment.
#[derive(Clone, Debug)]
enum Op {
    CreateSession {
        k: u8,
        q: u8,
        max_nodes: u32,
        tagged: bool,
    },
    CloseSession(usize),
    Submit {
        session: usize,
        n: usize,
        priority: i32,
        key: Option<u8>,
    },
    Cancel(usize),
    Register {
        capacity: u32,
        tagged: bool,
        hb: u64,
    },
    Heartbeat(usize),
    Drain(usize),
    Deregister(usize),
    Ack {
        task: usize,
        miner: usize,
    },
    Precommit {
        task: usize,
        miner: usize,
        output: u8,
    },
    Reveal {
        task: usize,
        miner: usize,
        honest: bool,
    },
    Tick(u64),
    BadToken(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (1u8..4, 1u8..4, 0u32..6, prop::bool::weighted(0.3)).prop_map(|(k, q, extra, tagged)| Op::CreateSession {
            k,
            q: q.min(k),
            max_nodes: k as u32 + extra,
            tagged
        }),
        1 => (0usize..24).prop_map(Op::CloseSession),
        3 => (0usize..8, 1usize..4, -2i32..3, proptest::option::of(0u8..6))
            .prop_map(|(session, n, priority, key)| Op::Submit { session, n, priority, key }),
        1 => (0usize..256).prop_map(Op::Cancel),
        3 => (1u32..4, prop::bool::weighted(0.3), prop_oneof![1 => Just(5_000u64), 4 => Just(600_000)])
            .prop_map(|(capacity, tagged, hb)| Op::Register { capacity, tagged, hb }),
        2 => (0usize..16).prop_map(Op::Heartbeat),
        1 => (0usize..64).prop_map(Op::Drain),
        1 => (0usize..64).prop_map(Op::Deregister),
        12 => (0usize..64, 0usize..16).prop_map(|(task, miner)| Op::Ack { task, miner }),
        12 => (0usize..64, 0usize..16, prop::sample::select(vec![0u8, 0, 0, 1])).prop_map(|(task, miner, output)| Op::Precommit { task, miner, output }),
        12 => (0usize..64, 0usize..16, prop::bool::weighted(0.9)).prop_map(|(task, miner, honest)| Op::Reveal {
            task,
            miner,
            honest
        }),
        4 => prop_oneof![
            4 => Just(0u64),
            4 => Just(1_000),
            2 => Just(5_000),
            1 => Just(11_000),
            1 => Just(31_000),
            1 => Just(4_000_000)
        ]
        .prop_map(Op::Tick),
        1 => (0usize..16).prop_map(Op::BadToken),
    ]
}

/// Turns ops into commands against the current state, remembering each precommitted
/// output so that an honest reveal can match it.
struct Driver {
    outputs: HashMap<(TaskId, MinerId), Vec<u8>>,
    now: u64,
}

fn pick<T: Copy>(items: &[T], i: usize) -> Option<T> {
    (!items.is_empty()).then(|| items[i % items.len()])
}

impl Driver {
    fn command(&mut self, s: &State, op: &Op) -> Option<Command> {
        let sessions: Vec<SessionId> = s.sessions.keys().copied().collect();
        let miners: Vec<MinerId> = s.miners.keys().copied().collect();
        let tasks: Vec<TaskId> = s.tasks.keys().copied().collect();
        // Miner ops mostly target a slot that is held, so the lifecycle progresses;
        // one in five picks any task and miner, to exercise refusals.
        let held: Vec<(TaskId, MinerId)> = s
            .tasks
            .values()
            .filter(|t| !t.state.is_terminal())
            .flat_map(|t| {
                t.assignments
                    .iter()
                    .filter(|a| a.state.is_active())
                    .map(move |a| (t.id, a.miner))
            })
            .collect();
        let holder = |task: usize, miner: usize| -> Option<(TaskId, MinerId)> {
            if miner % 5 == 4 || held.is_empty() {
                Some((pick(&tasks, task)?, pick(&miners, miner)?))
            } else {
                pick(&held, task)
            }
        };
        Some(match *op {
            Op::CreateSession {
                k,
                q,
                max_nodes,
                tagged,
            } => {
                let mut sp = spec(k, q);
                sp.max_nodes = max_nodes;
                sp.max_attempts = 3;
                sp.retention_ms = 200_000;
                sp.tag = tagged.then(|| "gpu".to_string());
                Command::CreateSession(sp)
            }
            Op::CloseSession(i) => Command::CloseSession {
                session: pick(&sessions, i)?,
            },
            Op::Submit {
                session,
                n,
                priority,
                key,
            } => Command::SubmitTasks {
                session: pick(&sessions, session)?,
                tasks: (0..n)
                    .map(|j| NewTask {
                        payload: vec![j as u8; j],
                        priority: (priority != 0).then_some(priority),
                        idempotency_key: key.map(|k| format!("key-{}", k as usize + j)),
                    })
                    .collect(),
            },
            Op::Cancel(i) => Command::CancelTask {
                task: pick(&tasks, i)?,
            },
            Op::Register {
                capacity,
                tagged,
                hb,
            } => {
                let id = MinerId(s.header.next_miner + 1);
                Command::RegisterMiner {
                    name: format!("m{}", id.0),
                    capacity,
                    tags: if tagged { vec!["gpu".into()] } else { vec![] },
                    token_hash: token(id),
                    heartbeat_timeout_ms: hb,
                }
            }
            Op::Heartbeat(i) => Command::Heartbeat {
                auth: auth(pick(&miners, i)?),
            },
            Op::Drain(i) => Command::DrainMiner {
                auth: auth(pick(&miners, i)?),
            },
            Op::Deregister(i) => Command::DeregisterMiner {
                auth: auth(pick(&miners, i)?),
            },
            Op::Ack { task, miner } => {
                let (task, m) = holder(task, miner)?;
                Command::Ack {
                    task,
                    auth: auth(m),
                }
            }
            Op::Precommit {
                task,
                miner,
                output,
            } => {
                let (task, m) = holder(task, miner)?;
                let out = vec![b'A' + output];
                let hash = sha256(&[&out, &nonce(m)]);
                self.outputs.insert((task, m), out);
                Command::Precommit {
                    task,
                    auth: auth(m),
                    hash,
                }
            }
            Op::Reveal {
                task,
                miner,
                honest,
            } => {
                let (task, m) = holder(task, miner)?;
                let mut output = self
                    .outputs
                    .get(&(task, m))
                    .cloned()
                    .unwrap_or_else(|| b"A".to_vec());
                if !honest {
                    output.push(b'!');
                }
                Command::Reveal {
                    task,
                    auth: auth(m),
                    output,
                    nonce: nonce(m),
                }
            }
            Op::Tick(ms) => {
                self.now += ms;
                Command::Tick
            }
            Op::BadToken(i) => Command::Heartbeat {
                auth: MinerAuth {
                    miner: pick(&miners, i)?,
                    token_hash: [3; 32],
                },
            },
        })
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_commands_keep_the_invariants_and_replicas_agree(ops in prop::collection::vec(op(), 1..400)) {
        let mut primary = State::new();
        let mut replica = State::new();
        let mut driver = Driver { outputs: HashMap::new(), now: 1_000_000 };
        let mut finished: BTreeMap<TaskId, Task> = BTreeMap::new();
        let mut restored_midway: Option<(State, usize)> = None;
        let mut log: Vec<(Command, u64)> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let Some(cmd) = driver.command(&primary, op) else { continue };
            let now = driver.now;
            let before = primary.encode();
            let result = primary.apply(&cmd, now);
            let replica_result = replica.apply(&cmd, now);
            prop_assert_eq!(result.is_ok(), replica_result.is_ok());
            if result.is_err() {
                prop_assert_eq!(&before, &primary.encode(), "a refused {:?} changed the state", cmd);
            }
            log.push((cmd, now));
            check_invariants(&primary);
            // A finished task never changes, until it is purged.
            for (id, t) in &finished {
                if let Some(now) = primary.task(*id) {
                    prop_assert_eq!(now, t, "finished task {} changed", id);
                }
            }
            for t in primary.tasks.values().filter(|t| t.state.is_terminal()) {
                finished.entry(t.id).or_insert_with(|| t.clone());
            }
            if i == ops.len() / 2 {
                restored_midway = Some((State::decode(&primary.encode()).unwrap(), log.len()));
            }
        }
        prop_assert_eq!(primary.encode(), replica.encode(), "replicas diverged");
        // A replica restored from a midway snapshot, then fed the rest, agrees too.
        if let Some((mut restored, from)) = restored_midway {
            for (cmd, now) in &log[from..] {
                let _ = restored.apply(cmd, *now);
            }
            prop_assert_eq!(primary.encode(), restored.encode(), "restored replica diverged");
            assert_indexes_equal(&primary, &restored);
        }
    }
}
