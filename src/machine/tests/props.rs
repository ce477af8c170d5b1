//! Property tests: random command sequences keep the invariants, replicas (and a
//! replica restored midway) agree byte for byte, `check` refuses exactly what apply
//! refuses, and every task ends.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;

use super::invariants::{assert_indexes_equal, check_invariants};
use super::*;

/// One random step; indices pick among what exists at that moment.
#[derive(Clone, Debug)]
enum Op {
    CreateSession {
        k: u8,
        q: u8,
        max_nodes: u32,
        tagged: bool,
        queue_timeout: u64,
        window_extra: u64,
        max_queued: u64,
    },
    CloseSession(usize),
    Submit {
        session: usize,
        n: usize,
        priority: i32,
        key: Option<u8>,
        queue_timeout: Option<u64>,
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
        1 => (
            (1u8..4, 1u8..4, 0u32..6, prop::bool::weighted(0.3)),
            prop::sample::select(vec![0u64, 0, 20_000, 60_000]),
            prop::sample::select(vec![0u64, 100_000]),
            prop::sample::select(vec![1_000_000u64, 1_000_000, 2, 5]),
        )
            .prop_map(|((k, q, extra, tagged), queue_timeout, window_extra, max_queued)| Op::CreateSession {
                k,
                q: q.min(k),
                max_nodes: k as u32 + extra,
                tagged,
                queue_timeout,
                window_extra,
                max_queued,
            }),
        1 => (0usize..24).prop_map(Op::CloseSession),
        3 => (
            (0usize..8, 1usize..4, -2i32..3, proptest::option::of(0u8..6)),
            proptest::option::weighted(0.2, prop::sample::select(vec![0u64, 15_000])),
        )
            .prop_map(|((session, n, priority, key), queue_timeout)| Op::Submit {
                session,
                n,
                priority,
                key,
                queue_timeout,
            }),
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
                queue_timeout,
                window_extra,
                max_queued,
            } => {
                let mut sp = spec(k, q);
                sp.max_queued_tasks = max_queued;
                sp.keep_finished_payloads = max_queued == 5;
                sp.max_nodes = max_nodes;
                sp.max_attempts = 3;
                sp.retention_ms = 200_000;
                sp.idempotency_window_ms = 200_000 + window_extra;
                sp.queue_timeout_ms = queue_timeout;
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
                queue_timeout,
            } => Command::SubmitTasks {
                session: pick(&sessions, session)?,
                // The same key comes back with other payloads and priorities too, so
                // both retries and conflicts happen.
                tasks: (0..n)
                    .map(|j| NewTask {
                        payload: vec![j as u8; j].into(),
                        priority: (priority != 0).then_some(priority),
                        idempotency_key: key.map(|k| format!("key-{}", k as usize + j)),
                        queue_timeout_ms: queue_timeout,
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
            let checked = primary.check(&cmd);
            let result = primary.apply(&cmd, now);
            let replica_result = replica.apply(&cmd, now);
            prop_assert_eq!(result.is_ok(), replica_result.is_ok());
            // `check` refuses exactly what apply refuses, with the same rejection.
            prop_assert_eq!(&checked, &result.as_ref().map(drop).map_err(Clone::clone), "check and apply disagree on {:?}", cmd);
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
                finished.entry(t.id).or_insert_with(|| (**t).clone());
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

/// What a well-behaved miner does next, if anything: the first held slot (by task,
/// then miner) it can move a step.
fn next_step(s: &State) -> Option<Command> {
    for t in s.tasks.values().filter(|t| !t.state.is_terminal()) {
        for a in t.assignments.iter().filter(|a| a.state.is_active()) {
            let m = a.miner;
            let cmd = match a.state {
                SlotState::Assigned => Command::Ack {
                    task: t.id,
                    auth: auth(m),
                },
                SlotState::Acked if !t.waiting() => Command::Precommit {
                    task: t.id,
                    auth: auth(m),
                    hash: sha256(&[b"ok", &nonce(m)]),
                },
                SlotState::Precommitted if t.phase_closed => Command::Reveal {
                    task: t.id,
                    auth: auth(m),
                    output: b"ok".to_vec(),
                    nonce: nonce(m),
                },
                _ => continue,
            };
            return Some(cmd);
        }
    }
    None
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// A pool of exactly k miners whose members sometimes miss a step (they let time
    /// pass instead), then behave: every task ends, and with no miss every task
    /// completes. Each task either completes or fails with a reason; none waits on.
    #[test]
    fn a_pool_of_exactly_k_ends_every_task(
        k in 1u8..4,
        n in 1usize..6,
        steps in prop::collection::vec(prop::bool::weighted(0.8), 0..60),
    ) {
        let mut w = World::new();
        let q = k / 2 + 1;
        let s = w.session(k, q);
        for _ in 0..k {
            w.miner(1);
        }
        let tasks: Vec<TaskId> = (0..n).map(|i| w.submit(s, &format!("p{i}"))).collect();
        let missed = steps.iter().filter(|act| !**act).count();
        for act in steps {
            match next_step(&w.s) {
                Some(cmd) if act => { w.ok(cmd); }
                _ => w.advance(ACK_MS + 1),
            }
            check_invariants(&w.s);
        }
        // From now on every miner behaves; time passes only when nobody can act.
        let mut rounds = 0;
        while tasks.iter().any(|t| !w.state(*t).is_terminal()) {
            rounds += 1;
            prop_assert!(rounds < 10_000, "tasks still live: {:?}", tasks.iter().map(|t| w.task(*t)).collect::<Vec<_>>());
            match next_step(&w.s) {
                Some(cmd) => { w.ok(cmd); }
                None => w.advance(1_000),
            }
            check_invariants(&w.s);
        }
        for t in &tasks {
            let task = w.task(*t);
            match task.state {
                TaskState::Completed => prop_assert_eq!(task.result(), Some(&b"ok"[..])),
                TaskState::Failed => prop_assert!(missed > 0 && task.failure().is_some(), "{:?}", task),
                other => prop_assert!(false, "{} ended {:?}", t, other),
            }
        }
    }
}
