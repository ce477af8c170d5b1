//! The task state machine: sessions, the node pool and the commit-reveal lifecycle of
//! tasks, as a pure function of the Raft log.
//!
//! [`State::apply`] takes a [`Command`] and the leader's timestamp and either changes
//! the state and returns what happened, or refuses with a [`Rejection`] and changes
//! nothing. There is no I/O, no clock, no randomness and no hash-ordered iteration
//! here: two replicas that apply the same commands hold byte-identical state
//! ([`State::encode`] shows it). Timeouts fire only when the leader proposes a
//! [`Command::Tick`].
//!
//! The state is five ordered maps (a header, sessions, miners, tasks, remembered
//! idempotency keys) plus indexes derived from them (the per-session queues, the
//! deadline index, the pool, each session's unfinished tasks). Only the maps are
//! encoded; the indexes are rebuilt on restore. Every mutation marks the entity it touched, so the store can write exactly
//! the changed records after each entry ([`State::take_dirty`]).
//!
//! Each command is decided in two halves: a pure validation (`validate_*`, taking
//! `&self`) that either refuses it or says what to do, then the mutation. [`State::check`]
//! runs only the first half, so the leader can answer a refusal without a log entry,
//! and it can never disagree with [`State::apply`], which runs both.
//!
//! The rules, briefly (see `SPEC.md` section 3 for the contract):
//! - a session reserves at least `k` pooled miners (matching its tag), more while its
//!   outstanding slots exceed the capacity of what it holds (up to `max_nodes`), and
//!   gives the extra ones back after `idle_release_ms` without work; sessions below
//!   `k` are served first, and may take an idle miner a session holds beyond its `k`;
//! - a queued task is dispatched all at once to `k` distinct reserved miners with
//!   free capacity, least-loaded first, then fewest recent rejections, then id; a task
//!   that cannot be served never holds back the ones behind it (see `dispatch`);
//! - when every slot is acked the precommit phase opens; it closes when every slot
//!   precommitted, or at its deadline if `q` did; reveals are taken only after it
//!   closes and must hash to the miner's precommit;
//! - a slot that times out (ack, late precommit, reveal) or reveals a wrong hash goes
//!   back to the queue for another miner (or, when none is free, to one whose earlier
//!   slot of it merely expired), counting one more attempt; `q` agreeing reveals
//!   complete the task; when agreement becomes impossible it fails;
//! - every held slot has a deadline except while the precommit phase is open (the
//!   phase's own deadline governs then), so no task can pin a miner forever; a task
//!   may also fail for waiting in the queue longer than its `queue_timeout_ms`;
//! - an idempotency key is remembered for the session's `idempotency_window_ms`, and
//!   the same key with another task is refused.

mod command;
mod dispatch;
mod error;
mod footprint;
mod growth;
mod idempotency;
mod ids;
mod lifecycle;
mod payloads;
mod pool;
mod session;
mod submit;
mod task;
mod task_record;
mod task_table;
mod tick;
mod view;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::mem;

use serde::{Deserialize, Serialize};

pub use command::{
    Applied, Batch, Command, Digest, Event, EventKind, Limits, MinerAuth, NewTask, Response,
    SessionSpec,
};
pub use error::Rejection;
pub use idempotency::RememberedKey;
pub use ids::{MinerId, SessionId, TaskId};
pub use payloads::PayloadAt;
pub use pool::{Miner, MinerState};
pub use session::{Session, SessionState, StateCounts};
pub use task::{sha256, Assignment, SlotState, Task, TaskEnd, TaskState};
pub use view::{PoolView, QueueDepth};

use dispatch::Queue;
use tick::Due;

/// Hard limits of the machine itself. The HTTP layer enforces its own (configurable,
/// lower) limits first; these only keep a bad command from growing the state.
pub mod limits {
    /// Largest payload or revealed output.
    pub const MAX_BLOB_BYTES: usize = 64 << 20;
    /// Most tasks in one submit.
    pub const MAX_TASKS_PER_SUBMIT: usize = 100_000;
    /// Longest name, owner, tag or idempotency key.
    pub const MAX_LABEL_BYTES: usize = 256;
    /// Most tags of a miner.
    pub const MAX_TAGS: usize = 32;
    /// Most miners per task.
    pub const MAX_REDUNDANCY: u8 = 7;
    /// Largest `max_nodes` of a session.
    pub const MAX_NODES: u32 = 1024;
    /// Largest miner capacity.
    pub const MAX_CAPACITY: u32 = 4096;
    /// Longest timeout or retention of any kind: 30 days.
    pub const MAX_DURATION_MS: u64 = 30 * 24 * 3600 * 1000;
    /// Largest `max_queued_tasks` of a session.
    pub const MAX_QUEUED_TASKS: u64 = 100_000_000;
    /// Largest `max_attempts`.
    pub const MAX_ATTEMPTS: u32 = 1000;
    /// A rejection counts as recent for this long.
    pub const REJECTION_WINDOW_MS: u64 = 3600 * 1000;
    /// Most miners registered at once (gone ones count until forgotten), a bound
    /// on proposing a registration ([`super::State::bound_growth`]). Not bound by
    /// `--max-state-bytes`: a full state must still take new miners, or the tasks
    /// it holds could not finish and free it.
    pub const MAX_MINERS: usize = 65_536;
    /// Gone miners are forgotten after this long.
    pub const GONE_MINER_RETENTION_MS: u64 = 3600 * 1000;
    /// Throughput is measured over this window.
    pub const THROUGHPUT_WINDOW_MS: u64 = 60 * 1000;
    /// Most deadlines one `Tick` fires; the rest stay due and fire in the next ticks,
    /// so one entry's apply stays short however many deadlines pass at once.
    pub const MAX_FIRED_PER_TICK: u64 = 1000;
}

/// Counters and the clock of the machine.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The newest leader timestamp applied; time never runs backwards.
    pub now_ms: u64,
    pub next_session: u64,
    pub next_miner: u64,
    pub next_task: u64,
    /// Completed tasks per second over the last minute (second → count), for the
    /// scaling signal.
    pub completions: BTreeMap<u64, u64>,
}

/// The key of one encoded record: what the store writes after an entry is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    Header,
    Session(SessionId),
    Miner(MinerId),
    Task(TaskId),
    /// A remembered idempotency key: its session and the sha256 of the key.
    Idempotency(SessionId, Digest),
    /// A task's payload, a record of its own (see `payloads`): written from the
    /// in-memory copy when the task was created, deleted when the task drops it.
    /// Not a [`Record`]: [`State::record`] has nothing under it.
    Payload(TaskId),
}

/// One record of the encoded state, as the store persists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    Header(Header),
    Session(Session),
    Miner(Miner),
    Task(Task),
    Idempotency(RememberedKey),
}

/// A borrowed [`Record`], encoded to the same bytes without cloning the entity.
#[derive(Serialize)]
enum RecordRef<'a> {
    Header(&'a Header),
    Session(&'a Session),
    Miner(&'a Miner),
    Task(&'a Task),
    Idempotency(&'a RememberedKey),
}

/// Indexes derived from the entities; never encoded, rebuilt on restore.
#[derive(Clone, Debug, Default)]
struct Indexes {
    /// Per session, the tasks with open slots (see `dispatch`).
    queues: HashMap<SessionId, Queue>,
    /// Every pending deadline.
    deadlines: BTreeSet<(u64, Due)>,
    /// Miners in the pool, free to be reserved.
    pool: BTreeSet<MinerId>,
    /// Sessions holding fewer miners than they want.
    needy: BTreeSet<SessionId>,
    /// Tasks per state, all sessions.
    depth: StateCounts,
    /// A miner's token hash → the miner, so a token alone identifies its miner.
    tokens: HashMap<Digest, MinerId>,
    /// Per session, its unfinished tasks, so closing a session visits only its own
    /// tasks (never every task of the cluster). No entry for a session without any.
    unfinished: HashMap<SessionId, BTreeSet<TaskId>>,
    /// The approximate bytes of every task (see `footprint`).
    footprint: footprint::Footprint,
}

/// What one apply is doing: its time, the transitions it caused and what it touched.
#[derive(Clone, Debug, Default)]
struct Step {
    now: u64,
    events: Vec<Event>,
    /// Sessions whose demand or reservation changed: rebalanced and scheduled at the end.
    touched: BTreeSet<SessionId>,
    /// A miner came into the pool: needy sessions may take it.
    pool_grew: bool,
    /// Queued tasks dispatch looked at, so tests can see a long queue costs little.
    #[cfg(test)]
    examined: usize,
    /// Tasks closing a session looked at, so tests can see it visits only its own.
    #[cfg(test)]
    visited: usize,
}

/// The replicated state. See the module documentation.
#[derive(Clone, Debug, Default)]
pub struct State {
    header: Header,
    sessions: BTreeMap<SessionId, Session>,
    miners: BTreeMap<MinerId, Miner>,
    /// Boxed, in runs of consecutive ids (see `task_table`).
    tasks: task_table::TaskTable,
    /// Remembered idempotency keys, by session and sha256 of the key.
    keys: BTreeMap<(SessionId, Digest), RememberedKey>,
    /// Payloads the store has not written yet (never encoded, not compared).
    payloads: payloads::Unwritten,
    idx: Indexes,
    step: Step,
    /// The keys the command being applied changed (a set: the first touch of a task
    /// in a command matters, see `touch_task`).
    dirty: BTreeSet<Key>,
    /// The keys earlier commands changed since [`State::take_dirty`], in the order
    /// they were applied, repeats included: appending is cheaper than a second set,
    /// and they are sorted once when taken.
    changed: Vec<Key>,
    /// The bounds of the batch being applied (never encoded: every batch carries them).
    limits: Limits,
}

impl PartialEq for State {
    fn eq(&self, other: &Self) -> bool {
        self.header == other.header
            && self.sessions == other.sessions
            && self.miners == other.miners
            && self.tasks == other.tasks
            && self.keys == other.keys
    }
}

impl State {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one command at the leader's time `now_ms`. On `Err` nothing changed.
    pub fn apply(&mut self, cmd: &Command, now_ms: u64) -> Result<Applied, Rejection> {
        // This command's changes are counted apart from the earlier ones, so the
        // footprint looks again at exactly the tasks it touched: the first touch of a
        // task in this command took its old count off (`touch_task`), and its new
        // count is added here.
        // Anything marked outside a command belongs to the earlier ones.
        self.changed.extend(mem::take(&mut self.dirty));
        let result = self.apply_one(cmd, now_ms);
        for key in mem::take(&mut self.dirty) {
            if let Key::Task(id) = key {
                if let Some(t) = self.tasks.get(&id) {
                    self.idx.footprint.add(t);
                }
            }
            self.changed.push(key);
        }
        result
    }

    fn apply_one(&mut self, cmd: &Command, now_ms: u64) -> Result<Applied, Rejection> {
        self.step = Step {
            now: now_ms.max(self.header.now_ms),
            ..Step::default()
        };
        let result = match cmd {
            Command::CreateSession(spec) => self.create_session(spec),
            Command::CloseSession { session } => self.close_session(*session),
            Command::SubmitTasks { session, tasks } => self.submit(*session, tasks),
            Command::CancelTask { task } => self.cancel(*task),
            Command::RegisterMiner {
                name,
                capacity,
                tags,
                token_hash,
                heartbeat_timeout_ms,
            } => self.register_miner(name, *capacity, tags, *token_hash, *heartbeat_timeout_ms),
            Command::Heartbeat { auth } => self.heartbeat(auth),
            Command::DrainMiner { auth } => self.drain_miner(auth),
            Command::DeregisterMiner { auth } => self.deregister_miner(auth),
            Command::Ack { task, auth } => self.ack(*task, auth),
            Command::Precommit { task, auth, hash } => self.precommit(*task, auth, *hash),
            Command::Reveal {
                task,
                auth,
                output,
                nonce,
            } => self.reveal(*task, auth, output, nonce),
            Command::Tick => Ok(self.tick()),
        };
        match result {
            Ok(response) => {
                self.settle();
                if self.header.now_ms != self.step.now {
                    self.header.now_ms = self.step.now;
                    self.dirty.insert(Key::Header);
                }
                Ok(Applied {
                    response,
                    events: mem::take(&mut self.step.events),
                })
            }
            Err(rejection) => {
                debug_assert!(self.step.events.is_empty() && self.step.touched.is_empty());
                Err(rejection)
            }
        }
    }

    /// Whether `cmd` would certainly be refused by [`State::apply`] on this state, without
    /// changing anything: the leader answers such a write at once instead of spending a
    /// log entry on it. `Ok` promises nothing (apply still checks everything); an `Err`
    /// is the rejection apply would give now.
    ///
    /// It runs the same validation as apply (the first half of each command), on the
    /// same state, so an `Err` here is exactly the `Err` apply would return. Nothing
    /// it looks at depends on the time, so the leader's stamp does not matter. A
    /// reveal whose hash does not match its precommit passes: apply records it.
    pub fn check(&self, cmd: &Command) -> Result<(), Rejection> {
        self.check_within(cmd, &self.limits)
    }

    /// [`State::check`] under the bounds a batch will carry (the leader checks with
    /// the limits it is about to stamp).
    pub fn check_within(&self, cmd: &Command, limits: &Limits) -> Result<(), Rejection> {
        match cmd {
            Command::CreateSession(spec) => session::validate_spec(spec),
            Command::CloseSession { session } => self.validate_close(*session),
            Command::SubmitTasks { session, tasks } => {
                self.validate_submit(*session, tasks, limits).map(drop)
            }
            Command::CancelTask { task } => self.validate_cancel(*task),
            Command::RegisterMiner {
                name,
                capacity,
                tags,
                token_hash,
                heartbeat_timeout_ms,
            } => self.validate_register(name, *capacity, tags, token_hash, *heartbeat_timeout_ms),
            Command::Heartbeat { auth }
            | Command::DrainMiner { auth }
            | Command::DeregisterMiner { auth } => self.authenticate(auth).map(drop),
            Command::Ack { task, auth } => self.validate_ack(*task, auth).map(drop),
            Command::Precommit { task, auth, .. } => self.validate_precommit(*task, auth).map(drop),
            Command::Reveal {
                task,
                auth,
                output,
                nonce,
            } => self.validate_reveal(*task, auth, output, nonce).map(drop),
            Command::Tick => Ok(()),
        }
    }

    /// Applies every command of a batch in order.
    pub fn apply_batch(&mut self, batch: &Batch) -> Vec<Result<Applied, Rejection>> {
        self.limits = batch.limits;
        batch
            .commands
            .iter()
            .map(|c| self.apply(c, batch.now_ms))
            .collect()
    }

    /// After a command: rebalance the reservations of the sessions it touched (and of
    /// the needy ones if the pool grew), then dispatch their queued tasks.
    fn settle(&mut self) {
        loop {
            if mem::take(&mut self.step.pool_grew) {
                let needy: Vec<SessionId> = self.idx.needy.iter().copied().collect();
                self.step.touched.extend(needy);
            }
            // Sessions holding fewer than k miners go first, so no session grows
            // beyond its minimum while another cannot run a task at all.
            let below_k = self.step.touched.iter().copied().find(|id| {
                self.sessions
                    .get(id)
                    .is_some_and(|s| (s.reserved.len() as u32) < s.k() as u32)
            });
            let Some(session) = below_k.or_else(|| self.step.touched.first().copied()) else {
                break;
            };
            self.step.touched.remove(&session);
            self.rebalance(session);
            self.schedule(session);
        }
    }

    /// The state's approximate size in memory, bytes (see `footprint`): what
    /// `--max-state-bytes` bounds. The same on every replica that applied the same log.
    pub fn state_bytes(&self) -> u64 {
        self.idx.footprint.tasks_total()
            + self.sessions.len() as u64 * footprint::SESSION_BYTES
            + self.miners.len() as u64 * footprint::MINER_BYTES
            + self.keys.len() as u64 * footprint::KEY_BYTES
    }

    /// The leader's time of the last applied command.
    pub fn now_ms(&self) -> u64 {
        self.header.now_ms
    }

    /// The earliest pending deadline: the leader proposes a tick once it has passed.
    pub fn next_deadline(&self) -> Option<u64> {
        self.idx.deadlines.first().map(|(at, _)| *at)
    }

    /// The keys changed since the last call, sorted, each once: the records the
    /// store must rewrite.
    pub fn take_dirty(&mut self) -> Vec<Key> {
        let mut keys = mem::take(&mut self.changed);
        keys.extend(mem::take(&mut self.dirty));
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// The current record under `key`, or `None` if it no longer exists.
    pub fn record(&self, key: Key) -> Option<Record> {
        match key {
            Key::Header => Some(Record::Header(self.header.clone())),
            Key::Session(id) => self.sessions.get(&id).cloned().map(Record::Session),
            Key::Miner(id) => self.miners.get(&id).cloned().map(Record::Miner),
            Key::Task(id) => self.tasks.get(&id).map(|t| Record::Task((**t).clone())),
            Key::Idempotency(session, hash) => self
                .keys
                .get(&(session, hash))
                .cloned()
                .map(Record::Idempotency),
            Key::Payload(_) => None,
        }
    }

    /// The encoded record under `key` (as [`crate::codec::encode_record`] would encode
    /// [`State::record`]), or `None` if it no longer exists (always for a payload: see
    /// [`State::unwritten_payload`]).
    pub fn record_bytes(&self, key: Key) -> Option<Vec<u8>> {
        let record = match key {
            Key::Header => RecordRef::Header(&self.header),
            Key::Session(id) => RecordRef::Session(self.sessions.get(&id)?),
            Key::Miner(id) => RecordRef::Miner(self.miners.get(&id)?),
            Key::Task(id) => RecordRef::Task(&**self.tasks.get(&id)?),
            Key::Idempotency(session, hash) => {
                RecordRef::Idempotency(self.keys.get(&(session, hash))?)
            }
            Key::Payload(_) => return None,
        };
        Some(crate::codec::encode(&record))
    }

    /// Every key of a record, in order: header, sessions, miners, tasks, idempotency
    /// keys (payloads are not records of the state's encoding).
    fn record_keys(&self) -> impl Iterator<Item = Key> + '_ {
        std::iter::once(Key::Header)
            .chain(self.sessions.keys().map(|id| Key::Session(*id)))
            .chain(self.miners.keys().map(|id| Key::Miner(*id)))
            .chain(self.tasks.keys().map(|id| Key::Task(*id)))
            .chain(self.keys.keys().map(|(s, h)| Key::Idempotency(*s, *h)))
    }

    /// Rebuilds a state from its records (in any order), deriving the indexes.
    pub fn from_records(records: impl IntoIterator<Item = Record>) -> Self {
        let mut state = State::new();
        for record in records {
            match record {
                Record::Header(h) => state.header = h,
                Record::Session(s) => {
                    state.sessions.insert(s.id, s);
                }
                Record::Miner(m) => {
                    state.miners.insert(m.id, m);
                }
                Record::Task(t) => {
                    state.tasks.insert(t.id, Box::new(t));
                }
                Record::Idempotency(k) => {
                    state.keys.insert((k.session, k.key_hash), k);
                }
            }
        }
        state.rebuild_indexes();
        state
    }

    fn rebuild_indexes(&mut self) {
        let mut idx = Indexes::default();
        for s in self.sessions.values() {
            if let Some(at) = s.idle_deadline {
                idx.deadlines.insert((at, Due::Idle(s.id)));
            }
            if let Some(at) = s.purge_at {
                idx.deadlines.insert((at, Due::SessionPurge(s.id)));
            }
        }
        for m in self.miners.values() {
            if let Some(at) = m.deadline() {
                idx.deadlines.insert((at, m.due()));
            }
            if m.state == MinerState::Pooled {
                idx.pool.insert(m.id);
            }
            idx.tokens.insert(m.token_hash, m.id);
        }
        for t in self.tasks.values() {
            idx.depth.add(t.state, 1);
            if !t.state.is_terminal() {
                idx.unfinished.entry(t.session).or_default().insert(t.id);
            }
            if let Some(lane) = t.lane() {
                idx.queues
                    .entry(t.session)
                    .or_default()
                    .insert(lane, t.queue_key());
            }
            if let Some(at) = t.phase_deadline {
                idx.deadlines.insert((at, Due::Phase(t.id)));
            }
            if let Some(at) = t.queue_deadline {
                idx.deadlines.insert((at, Due::Queue(t.id)));
            }
            if let Some(at) = t.purge_at() {
                idx.deadlines.insert((at, Due::TaskPurge(t.id)));
            }
            for a in &t.assignments {
                if let Some(at) = a.deadline {
                    idx.deadlines.insert((at, Due::Slot(t.id, a.miner)));
                }
            }
        }
        for k in self.keys.values() {
            idx.deadlines
                .insert((k.expires_ms, Due::KeyPurge(k.session, k.key_hash)));
        }
        idx.footprint = footprint::Footprint::rebuild(&self.tasks);
        self.idx = idx;
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in ids {
            self.update_needy(id);
        }
    }

    /// The whole state as bytes, in a canonical order. Two replicas that applied the
    /// same commands return the same bytes. Payloads are not in it (only their
    /// lengths, in the tasks): they are records of the store (see `payloads`).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for key in self.record_keys() {
            let bytes = self.record_bytes(key).expect("listed keys exist");
            out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            out.extend_from_slice(&bytes);
        }
        out
    }

    /// The inverse of [`State::encode`].
    pub fn decode(mut bytes: &[u8]) -> Result<Self, crate::codec::CodecError> {
        let mut records = Vec::new();
        while !bytes.is_empty() {
            if bytes.len() < 8 {
                return Err(crate::codec::CodecError::Truncated);
            }
            let len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
            let rest = &bytes[8..];
            if rest.len() < len {
                return Err(crate::codec::CodecError::Truncated);
            }
            records.push(crate::codec::decode_record(&rest[..len])?);
            bytes = &rest[len..];
        }
        Ok(Self::from_records(records))
    }

    // ---- small helpers shared by the submodules ----

    fn mark(&mut self, key: Key) {
        self.dirty.insert(key);
    }

    /// Marks a task as changed by this command before it changes (or leaves): the
    /// first time in a command, its count comes off the footprint (added back, as it
    /// is then, when the command is done; see [`State::apply`]). `dirty` holds only
    /// this command's keys while it applies. A task created by this command must be
    /// touched right after it is inserted, before anything else touches it (its old
    /// count is nothing).
    fn touch_task(&mut self, id: TaskId, created: bool) {
        if self.dirty.insert(Key::Task(id)) && !created {
            if let Some(t) = self.tasks.get(&id) {
                self.idx.footprint.remove(t);
            }
        }
    }

    fn emit(&mut self, id: TaskId, miner: Option<MinerId>, what: EventKind) {
        let task = &self.tasks[&id];
        self.step.events.push(Event {
            task: id,
            session: task.session,
            state: task.state,
            miner,
            what,
            at_ms: self.step.now,
        });
    }

    fn set_due(&mut self, old: Option<u64>, new: Option<u64>, due: Due) {
        if old == new {
            return;
        }
        if let Some(at) = old {
            self.idx.deadlines.remove(&(at, due));
        }
        if let Some(at) = new {
            self.idx.deadlines.insert((at, due));
        }
    }

    /// Checks a miner's credentials: it exists, the token matches, it is not gone.
    fn authenticate(&self, auth: &MinerAuth) -> Result<&Miner, Rejection> {
        let miner = self
            .miners
            .get(&auth.miner)
            .ok_or_else(|| Rejection::Unauthorized(format!("unknown miner {}", auth.miner)))?;
        if !constant_time_eq(&miner.token_hash, &auth.token_hash) {
            return Err(Rejection::Unauthorized(format!(
                "bad token for miner {}",
                auth.miner
            )));
        }
        if miner.state == MinerState::Gone {
            return Err(error::conflict(format!(
                "miner {} is gone (missed heartbeats or left); register again",
                auth.miner
            )));
        }
        Ok(miner)
    }
}

fn constant_time_eq(a: &Digest, b: &Digest) -> bool {
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests;
