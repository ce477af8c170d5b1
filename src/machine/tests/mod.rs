//! Tests of the state machine through its public commands, one file per concern,
//! plus property tests of its invariants, of replica determinism and of `check`. This
//! file holds what they share: a session spec, miner credentials and [`World`], a
//! state with a leader clock and helpers that drive it.

mod bounds;
mod dispatch;
mod encoding;
mod idempotency;
mod invariants;
mod lifecycle;
mod listing;
mod liveness;
mod pool;
mod props;
mod queue_deadline;
mod refusals;

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
        queue_timeout_ms: 0,
        idempotency_window_ms: RETENTION_MS,
        max_queued_tasks: 1_000_000,
        keep_finished_payloads: false,
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

fn new_task(payload: &str, priority: Option<i32>, key: Option<&str>) -> NewTask {
    NewTask {
        payload: payload.as_bytes().to_vec().into(),
        priority,
        idempotency_key: key.map(|k| k.to_string()),
        queue_timeout_ms: None,
    }
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

    /// Applies a command, first checking that `check` agrees with apply: a refusal
    /// `check` foresees is exactly the one apply gives.
    fn run(&mut self, c: Command) -> Result<Applied, Rejection> {
        let checked = self.s.check(&c);
        let result = self.s.apply(&c, self.now);
        match (&checked, &result) {
            (Err(a), Err(b)) => assert_eq!(a, b, "check and apply refuse {c:?} differently"),
            (Err(a), Ok(_)) => panic!("check refused {c:?} ({a}) but apply took it"),
            (Ok(()), Err(b)) => panic!("check passed {c:?} but apply refused it: {b}"),
            (Ok(()), Ok(_)) => {}
        }
        result
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
        self.submit_task(session, new_task(payload, priority, key))
    }

    fn submit_task(&mut self, session: SessionId, task: NewTask) -> TaskId {
        match self.ok(Command::SubmitTasks {
            session,
            tasks: vec![task],
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

    /// The state of the miner's latest slot of the task.
    fn slot(&self, t: TaskId, m: MinerId) -> SlotState {
        let task = self.task(t);
        task.assignments[task.slot(m).expect("slot")].state
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
