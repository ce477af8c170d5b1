//! Tasks and their commit-reveal lifecycle.
//!
//! A task has k slots. A queued task is dispatched when k distinct reserved miners
//! with room can take all its open slots at once (all or nothing: a half-dispatched
//! task would hold miners while it waits, and two of them can deadlock a pool). Each
//! slot then moves assigned → acked → precommitted → committed, or ends expired or
//! rejected, in which case the slot reopens for another miner, counting an attempt.
//!
//! The task's own state follows from its slots and its precommit phase:
//! - `Queued` until every slot is held and acked,
//! - `Acked` while the precommit phase is open,
//! - `Precommitted` once it closed (all precommitted, or q at the deadline),
//! - `Committed` from the first valid reveal,
//! - `Completed` when q reveals agree; `Failed` when they never can, or attempts run out;
//!   `Cancelled` on request.
//!
//! A reveal is only taken after the phase closed, so no miner can see another's output
//! before committing to its own. Outputs are compared by `sha256(output)`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound::{Excluded, Unbounded};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::error::{conflict, invalid, not_found};
use super::ids::{MinerId, SessionId, TaskId};
use super::limits;
use super::session::SessionState;
use super::tick::Due;
use super::{Digest, EventKind, Key, MinerAuth, NewTask, Rejection, Response, State};

/// The state of a task (wire names in [`TaskState::as_str`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TaskState {
    Queued,
    Acked,
    Precommitted,
    Committed,
    Completed,
    Failed,
    Cancelled,
}

impl TaskState {
    pub const ALL: [TaskState; 7] = [
        TaskState::Queued,
        TaskState::Acked,
        TaskState::Precommitted,
        TaskState::Committed,
        TaskState::Completed,
        TaskState::Failed,
        TaskState::Cancelled,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Completed | TaskState::Failed | TaskState::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Acked => "acked",
            TaskState::Precommitted => "precommitted",
            TaskState::Committed => "committed",
            TaskState::Completed => "completed",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }
}

/// The state of one miner's slot of a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SlotState {
    Assigned,
    Acked,
    Precommitted,
    /// Revealed an output matching its precommit.
    Committed,
    /// Timed out or its miner left.
    Expired,
    /// Revealed an output that does not match its precommit.
    Rejected,
}

impl SlotState {
    /// Held by its miner and not finished.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            SlotState::Assigned | SlotState::Acked | SlotState::Precommitted
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SlotState::Assigned => "assigned",
            SlotState::Acked => "acked",
            SlotState::Precommitted => "precommitted",
            SlotState::Committed => "committed",
            SlotState::Expired => "expired",
            SlotState::Rejected => "rejected",
        }
    }
}

/// One miner's slot of a task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub miner: MinerId,
    pub state: SlotState,
    pub assigned_ms: u64,
    /// When this slot times out, if its next step has a deadline of its own.
    pub deadline: Option<u64>,
    /// sha256(output ‖ nonce) as the miner precommitted it.
    pub precommit: Option<Digest>,
    /// sha256(output) of a valid reveal.
    pub output_hash: Option<Digest>,
    /// The revealed output, kept until the task finishes.
    #[serde(with = "serde_bytes")]
    pub output: Option<Vec<u8>>,
}

/// A task. See the module documentation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    pub session: SessionId,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    pub priority: i32,
    pub idempotency_key: Option<String>,
    pub state: TaskState,
    /// Every slot ever given out, in order; a miner appears at most once.
    pub assignments: Vec<Assignment>,
    /// Slots waiting for a miner.
    pub open_slots: u8,
    /// Dispatches: 1 at the first, one more for each re-dispatch of lost slots.
    pub attempts: u32,
    /// When the open precommit phase times out.
    pub phase_deadline: Option<u64>,
    /// The precommit phase has closed: reveals are taken.
    pub phase_closed: bool,
    /// Every state the task entered, with the leader time.
    pub history: Vec<(TaskState, u64)>,
    #[serde(with = "serde_bytes")]
    pub result: Option<Vec<u8>>,
    pub failure: Option<String>,
    pub created_ms: u64,
    pub finished_ms: Option<u64>,
    /// When a finished task is purged.
    pub purge_at: Option<u64>,
}

impl Task {
    fn slot(&self, miner: MinerId) -> Option<usize> {
        self.assignments.iter().position(|a| a.miner == miner)
    }

    /// Slots held and unfinished.
    pub fn active_slots(&self) -> usize {
        if self.state.is_terminal() {
            return 0;
        }
        self.assignments
            .iter()
            .filter(|a| a.state.is_active())
            .count()
    }

    fn queue_key(&self) -> (Reverse<i32>, TaskId) {
        (Reverse(self.priority), self.id)
    }

    /// The state its slots and phase imply (for a task not finished).
    pub(super) fn derived_state(&self) -> TaskState {
        if self.phase_closed {
            if self
                .assignments
                .iter()
                .any(|a| a.state == SlotState::Committed)
            {
                TaskState::Committed
            } else {
                TaskState::Precommitted
            }
        } else if self.phase_deadline.is_some() {
            TaskState::Acked
        } else {
            TaskState::Queued
        }
    }
}

/// sha256 of the given parts, concatenated.
pub fn sha256(parts: &[&[u8]]) -> Digest {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// How many queued tasks one dispatch pass looks at past a head it cannot serve.
const SCHEDULE_SCAN: usize = 64;

impl State {
    pub(super) fn task_mut(&mut self, id: TaskId) -> &mut Task {
        self.dirty.insert(Key::Task(id));
        self.tasks.get_mut(&id).expect("task exists")
    }

    // ---- commands ----

    pub(super) fn submit(
        &mut self,
        session: SessionId,
        tasks: &[NewTask],
    ) -> Result<Response, Rejection> {
        let s = self
            .sessions
            .get(&session)
            .ok_or_else(|| not_found(format!("unknown session {session}")))?;
        if s.state == SessionState::Closed {
            return Err(conflict(format!("session {session} is closed")));
        }
        if tasks.is_empty() {
            return Err(invalid("no tasks to submit"));
        }
        if tasks.len() > limits::MAX_TASKS_PER_SUBMIT {
            return Err(Rejection::TooLarge(format!(
                "at most {} tasks per submit",
                limits::MAX_TASKS_PER_SUBMIT
            )));
        }
        for t in tasks {
            if t.payload.len() > limits::MAX_BLOB_BYTES {
                return Err(Rejection::TooLarge(format!(
                    "payload over {} bytes",
                    limits::MAX_BLOB_BYTES
                )));
            }
            if let Some(key) = &t.idempotency_key {
                if key.is_empty() || key.len() > limits::MAX_LABEL_BYTES {
                    return Err(invalid(format!(
                        "idempotency_key must be 1..={} bytes",
                        limits::MAX_LABEL_BYTES
                    )));
                }
            }
        }
        let (k, default_priority) = (s.k(), s.spec.priority);
        let now = self.step.now;
        let mut out = Vec::with_capacity(tasks.len());
        let mut created = 0u64;
        for new in tasks {
            if let Some(key) = &new.idempotency_key {
                if let Some(&existing) = self.idx.idempotency.get(&(session, key.clone())) {
                    out.push((existing, false));
                    continue;
                }
            }
            self.header.next_task += 1;
            let id = TaskId(self.header.next_task);
            let task = Task {
                id,
                session,
                payload: new.payload.clone(),
                priority: new.priority.unwrap_or(default_priority),
                idempotency_key: new.idempotency_key.clone(),
                state: TaskState::Queued,
                assignments: Vec::with_capacity(k as usize),
                open_slots: k,
                attempts: 0,
                phase_deadline: None,
                phase_closed: false,
                history: vec![(TaskState::Queued, now)],
                result: None,
                failure: None,
                created_ms: now,
                finished_ms: None,
                purge_at: None,
            };
            if let Some(key) = &task.idempotency_key {
                self.idx.idempotency.insert((session, key.clone()), id);
            }
            self.idx
                .queues
                .entry(session)
                .or_default()
                .insert(task.queue_key());
            self.idx.depth.add(TaskState::Queued, 1);
            self.tasks.insert(id, task);
            self.emit(id, None, EventKind::Submitted);
            self.mark(Key::Task(id));
            out.push((id, true));
            created += 1;
        }
        self.mark(Key::Header);
        let s = self.session_mut(session);
        s.counts.queued += created;
        s.submitted_total += created;
        s.open_slots += created * k as u64;
        self.step.touched.insert(session);
        Ok(Response::TasksSubmitted { tasks: out })
    }

    pub(super) fn cancel(&mut self, id: TaskId) -> Result<Response, Rejection> {
        let task = self
            .tasks
            .get(&id)
            .ok_or_else(|| not_found(format!("unknown task {id}")))?;
        if task.state.is_terminal() {
            return Err(conflict(format!(
                "task {id} is already {}",
                task.state.as_str()
            )));
        }
        self.finish(
            id,
            TaskState::Cancelled,
            None,
            Some("cancelled by the user".into()),
        );
        Ok(Response::TaskUpdated {
            task: id,
            state: TaskState::Cancelled,
        })
    }

    /// Checks that the miner may act on its slot of the task; returns the slot index.
    fn own_slot(&self, id: TaskId, auth: &MinerAuth) -> Result<usize, Rejection> {
        self.authenticate(auth)?;
        let task = self
            .tasks
            .get(&id)
            .ok_or_else(|| not_found(format!("unknown task {id}")))?;
        if task.state.is_terminal() {
            return Err(conflict(format!(
                "task {id} is already {}",
                task.state.as_str()
            )));
        }
        let i = task.slot(auth.miner).ok_or_else(|| {
            conflict(format!("task {id} is not assigned to miner {}", auth.miner))
        })?;
        match task.assignments[i].state {
            SlotState::Expired => Err(conflict(format!(
                "the assignment of task {id} to {} expired",
                auth.miner
            ))),
            SlotState::Rejected => Err(conflict(format!(
                "the reveal of {} for task {id} was rejected",
                auth.miner
            ))),
            _ => Ok(i),
        }
    }

    pub(super) fn ack(&mut self, id: TaskId, auth: &MinerAuth) -> Result<Response, Rejection> {
        let i = self.own_slot(id, auth)?;
        if self.tasks[&id].assignments[i].state != SlotState::Assigned {
            return Err(conflict(format!(
                "task {id} is already acked by {}",
                auth.miner
            )));
        }
        self.touch_heartbeat(auth.miner);
        let now = self.step.now;
        let timeout = self.sessions[&self.tasks[&id].session]
            .spec
            .precommit_timeout_ms;
        let t = self.task_mut(id);
        let late = t.phase_closed;
        let a = &mut t.assignments[i];
        a.state = SlotState::Acked;
        let old = a.deadline;
        a.deadline = late.then(|| now.saturating_add(timeout));
        let new = a.deadline;
        self.set_due(old, new, Due::Slot(id, auth.miner));
        self.emit(id, Some(auth.miner), EventKind::Acked);
        self.maybe_open_phase(id);
        Ok(Response::TaskUpdated {
            task: id,
            state: self.tasks[&id].state,
        })
    }

    pub(super) fn precommit(
        &mut self,
        id: TaskId,
        auth: &MinerAuth,
        hash: Digest,
    ) -> Result<Response, Rejection> {
        let i = self.own_slot(id, auth)?;
        let t = &self.tasks[&id];
        match t.assignments[i].state {
            SlotState::Assigned => {
                return Err(conflict(format!("ack task {id} before precommitting")))
            }
            SlotState::Acked => {}
            _ => {
                return Err(conflict(format!(
                    "{} already precommitted task {id}",
                    auth.miner
                )))
            }
        }
        if !t.phase_closed && t.phase_deadline.is_none() {
            return Err(conflict(format!(
                "the precommit phase of task {id} has not opened: not every miner has acked"
            )));
        }
        let timeout = self.sessions[&t.session].spec.commit_timeout_ms;
        self.touch_heartbeat(auth.miner);
        let now = self.step.now;
        let t = self.task_mut(id);
        let late = t.phase_closed;
        let a = &mut t.assignments[i];
        a.state = SlotState::Precommitted;
        a.precommit = Some(hash);
        let old = a.deadline;
        a.deadline = late.then(|| now.saturating_add(timeout));
        let new = a.deadline;
        self.set_due(old, new, Due::Slot(id, auth.miner));
        self.emit(id, Some(auth.miner), EventKind::Precommitted);
        let t = &self.tasks[&id];
        if !t.phase_closed
            && t.assignments
                .iter()
                .filter(|a| a.state.is_active())
                .all(|a| a.state == SlotState::Precommitted)
        {
            self.close_phase(id);
        }
        Ok(Response::TaskUpdated {
            task: id,
            state: self.tasks[&id].state,
        })
    }

    pub(super) fn reveal(
        &mut self,
        id: TaskId,
        auth: &MinerAuth,
        output: &[u8],
        nonce: &[u8],
    ) -> Result<Response, Rejection> {
        let i = self.own_slot(id, auth)?;
        if output.len() > limits::MAX_BLOB_BYTES || nonce.len() > limits::MAX_LABEL_BYTES {
            return Err(Rejection::TooLarge("output or nonce too large".into()));
        }
        let t = &self.tasks[&id];
        match t.assignments[i].state {
            SlotState::Precommitted => {}
            SlotState::Committed => {
                return Err(conflict(format!(
                    "{} already revealed task {id}",
                    auth.miner
                )))
            }
            _ => return Err(conflict(format!("precommit task {id} before revealing"))),
        }
        if !t.phase_closed {
            return Err(conflict(format!(
                "the precommit phase of task {id} is still open: reveal after every miner precommitted or the \
                 precommit timeout"
            )));
        }
        let expected = t.assignments[i]
            .precommit
            .expect("precommitted slot has a hash");
        self.touch_heartbeat(auth.miner);
        if sha256(&[output, nonce]) != expected {
            self.end_slot(id, i, SlotState::Rejected);
            let now = self.step.now;
            let m = self.miner_mut(auth.miner);
            m.rejections.push(now);
            if m.rejections.len() > 32 {
                m.rejections.remove(0);
            }
            self.emit(id, Some(auth.miner), EventKind::RevealRejected);
            self.reopen(
                id,
                1,
                &format!(
                    "miner {} revealed an output that does not match its precommit",
                    auth.miner
                ),
            );
            self.evaluate(id);
            return Ok(Response::RevealRejected {
                task: id,
                state: self.tasks[&id].state,
            });
        }
        self.end_slot(id, i, SlotState::Committed);
        let t = self.task_mut(id);
        t.assignments[i].output_hash = Some(sha256(&[output]));
        t.assignments[i].output = Some(output.to_vec());
        self.miner_mut(auth.miner).revealed += 1;
        self.refresh_state(id);
        self.emit(id, Some(auth.miner), EventKind::Revealed);
        self.evaluate(id);
        Ok(Response::TaskUpdated {
            task: id,
            state: self.tasks[&id].state,
        })
    }

    // ---- the lifecycle ----

    /// Dispatches the session's queued tasks to its reserved miners with room, in
    /// queue order, until no miner has room or `SCHEDULE_SCAN` tasks in a row could
    /// not be served (each needs miners it has not had yet).
    pub(super) fn schedule(&mut self, sid: SessionId) {
        let Some(s) = self.sessions.get(&sid) else {
            return;
        };
        if s.state == SessionState::Closed {
            return;
        }
        let now = self.step.now;
        // Miners with room, in choice order: least loaded, fewest recent rejections, id.
        let mut free: BTreeSet<(usize, u64, MinerId)> = s
            .reserved
            .iter()
            .map(|m| &self.miners[m])
            .filter(|m| m.has_room())
            .map(|m| (m.active.len(), m.recent_rejections(now), m.id))
            .collect();
        let mut shortfall = s.shortfall;
        let mut after: Option<(Reverse<i32>, TaskId)> = None;
        let mut skipped = 0;
        let mut first = true;
        'scan: while !free.is_empty() && skipped < SCHEDULE_SCAN {
            let chunk: Vec<(Reverse<i32>, TaskId)> = match self.idx.queues.get(&sid) {
                Some(q) => match after {
                    Some(key) => q
                        .range((Excluded(key), Unbounded))
                        .take(SCHEDULE_SCAN)
                        .copied()
                        .collect(),
                    None => q.iter().take(SCHEDULE_SCAN).copied().collect(),
                },
                None => Vec::new(),
            };
            if chunk.is_empty() {
                break;
            }
            for key in chunk {
                after = Some(key);
                let task = &self.tasks[&key.1];
                let need = task.open_slots as usize;
                let served = |m: &MinerId| task.slot(*m).is_some();
                if first {
                    let eligible = self.sessions[&sid]
                        .reserved
                        .iter()
                        .filter(|m| !served(m))
                        .count();
                    shortfall = need.saturating_sub(eligible) as u32;
                    first = false;
                }
                let chosen: Vec<(usize, u64, MinerId)> = free
                    .iter()
                    .filter(|c| !served(&c.2))
                    .take(need)
                    .copied()
                    .collect();
                if chosen.len() < need {
                    skipped += 1;
                    if skipped >= SCHEDULE_SCAN {
                        break 'scan;
                    }
                    continue;
                }
                skipped = 0;
                let miners: Vec<MinerId> = chosen.iter().map(|c| c.2).collect();
                self.assign(key.1, &miners);
                for (load, rejections, m) in chosen {
                    free.remove(&(load, rejections, m));
                    if self.miners[&m].has_room() {
                        free.insert((load + 1, rejections, m));
                    }
                }
                if free.is_empty() {
                    break 'scan;
                }
            }
        }
        if shortfall != self.sessions[&sid].shortfall {
            self.session_mut(sid).shortfall = shortfall;
            self.step.touched.insert(sid);
        }
    }

    fn assign(&mut self, id: TaskId, miners: &[MinerId]) {
        let now = self.step.now;
        let t = &self.tasks[&id];
        let sid = t.session;
        let s = &self.sessions[&sid];
        let ack_timeout = s.spec.ack_timeout_ms;
        let n = miners.len() as u8;
        let queue_key = t.queue_key();
        for &m in miners {
            self.miner_mut(m).active.insert(id);
        }
        let deadline = now.saturating_add(ack_timeout);
        let t = self.task_mut(id);
        for &m in miners {
            t.assignments.push(Assignment {
                miner: m,
                state: SlotState::Assigned,
                assigned_ms: now,
                deadline: Some(deadline),
                precommit: None,
                output_hash: None,
                output: None,
            });
        }
        t.open_slots -= n;
        if t.attempts == 0 {
            t.attempts = 1;
        }
        let drained = t.open_slots == 0;
        for &m in miners {
            self.set_due(None, Some(deadline), Due::Slot(id, m));
        }
        if drained {
            self.dequeue(sid, queue_key);
        }
        let s = self.session_mut(sid);
        s.open_slots -= n as u64;
        s.active_slots += n as u64;
        for &m in miners {
            self.emit(id, Some(m), EventKind::Assigned);
        }
    }

    fn dequeue(&mut self, sid: SessionId, key: (Reverse<i32>, TaskId)) {
        if let Some(q) = self.idx.queues.get_mut(&sid) {
            q.remove(&key);
            if q.is_empty() {
                self.idx.queues.remove(&sid);
            }
        }
    }

    /// Opens the precommit phase once every slot is held and acked.
    fn maybe_open_phase(&mut self, id: TaskId) {
        let t = &self.tasks[&id];
        if t.phase_closed
            || t.phase_deadline.is_some()
            || t.open_slots > 0
            || t.assignments.iter().any(|a| a.state == SlotState::Assigned)
        {
            return;
        }
        let at = self
            .step
            .now
            .saturating_add(self.sessions[&t.session].spec.precommit_timeout_ms);
        self.task_mut(id).phase_deadline = Some(at);
        self.set_due(None, Some(at), Due::Phase(id));
        self.refresh_state(id);
        self.emit(id, None, EventKind::PhaseOpened);
    }

    /// Closes the precommit phase: reveals are taken from now on, each precommitted
    /// slot has `commit_timeout` to reveal, and acked slots that did not precommit
    /// are dropped.
    pub(super) fn close_phase(&mut self, id: TaskId) {
        let now = self.step.now;
        let t = &self.tasks[&id];
        let commit_timeout = self.sessions[&t.session].spec.commit_timeout_ms;
        let laggards: Vec<usize> = (0..t.assignments.len())
            .filter(|&i| t.assignments[i].state == SlotState::Acked)
            .collect();
        for i in laggards {
            let miner = self.tasks[&id].assignments[i].miner;
            self.end_slot(id, i, SlotState::Expired);
            self.emit(id, Some(miner), EventKind::Expired);
        }
        let old_phase = self.tasks[&id].phase_deadline;
        let deadline = now.saturating_add(commit_timeout);
        let t = self.task_mut(id);
        t.phase_closed = true;
        t.phase_deadline = None;
        let mut dues = Vec::new();
        for a in t
            .assignments
            .iter_mut()
            .filter(|a| a.state == SlotState::Precommitted)
        {
            dues.push((a.miner, a.deadline));
            a.deadline = Some(deadline);
        }
        self.set_due(old_phase, None, Due::Phase(id));
        for (miner, old) in dues {
            self.set_due(old, Some(deadline), Due::Slot(id, miner));
        }
        self.refresh_state(id);
        self.emit(id, None, EventKind::PhaseClosed);
    }

    /// The precommit phase timed out: close it if q precommitted, otherwise drop the
    /// slots that did not and send them back to the queue.
    pub(super) fn phase_timeout(&mut self, id: TaskId) {
        let t = &self.tasks[&id];
        let q = self.sessions[&t.session].q() as usize;
        let precommitted = t
            .assignments
            .iter()
            .filter(|a| a.state == SlotState::Precommitted)
            .count();
        if precommitted >= q {
            self.close_phase(id);
            self.evaluate(id);
            return;
        }
        let laggards: Vec<usize> = (0..t.assignments.len())
            .filter(|&i| t.assignments[i].state == SlotState::Acked)
            .collect();
        let n = laggards.len() as u8;
        for i in laggards {
            let miner = self.tasks[&id].assignments[i].miner;
            self.end_slot(id, i, SlotState::Expired);
            self.emit(id, Some(miner), EventKind::Expired);
        }
        self.task_mut(id).phase_deadline = None;
        let k = self.sessions[&self.tasks[&id].session].k();
        self.reopen(
            id,
            n,
            &format!("precommit timeout: {precommitted} of {k} miners precommitted, {q} needed"),
        );
        self.refresh_state(id);
    }

    /// A slot's own deadline passed (ack, late precommit, or reveal).
    pub(super) fn slot_timeout(&mut self, id: TaskId, miner: MinerId) {
        let Some(i) = self.tasks[&id].slot(miner) else {
            return;
        };
        let what = match self.tasks[&id].assignments[i].state {
            SlotState::Assigned => "ack",
            SlotState::Acked => "precommit",
            SlotState::Precommitted => "reveal",
            _ => return,
        };
        self.task_mut(id).assignments[i].deadline = None;
        self.expire_slot(id, miner, EventKind::Expired);
        self.reopen(id, 1, &format!("{what} timeout of miner {miner}"));
        self.evaluate(id);
    }

    /// Ends a miner's active slot as expired (its miner gone or its time up).
    pub(super) fn expire_slot(&mut self, id: TaskId, miner: MinerId, kind: EventKind) {
        let Some(i) = self.tasks[&id].slot(miner) else {
            return;
        };
        if !self.tasks[&id].assignments[i].state.is_active() || self.tasks[&id].state.is_terminal()
        {
            return;
        }
        self.end_slot(id, i, SlotState::Expired);
        self.miner_mut(miner).expired += 1;
        self.emit(id, Some(miner), kind);
    }

    /// Moves an active slot to a final state and frees its miner.
    fn end_slot(&mut self, id: TaskId, i: usize, state: SlotState) {
        let t = self.task_mut(id);
        let sid = t.session;
        let a = &mut t.assignments[i];
        debug_assert!(a.state.is_active());
        a.state = state;
        let (miner, old) = (a.miner, a.deadline.take());
        self.set_due(old, None, Due::Slot(id, miner));
        self.miner_mut(miner).active.remove(&id);
        self.session_mut(sid).active_slots -= 1;
        self.step.touched.insert(sid);
        self.maybe_finish_drain(miner);
    }

    /// Sends `n` lost slots back to the queue, one more attempt; fails the task when
    /// its attempts are used up.
    pub(super) fn reopen(&mut self, id: TaskId, n: u8, reason: &str) {
        let t = &self.tasks[&id];
        if t.state.is_terminal() || n == 0 {
            return;
        }
        let max = self.sessions[&t.session].spec.max_attempts;
        if t.attempts >= max {
            let failure = format!("gave up after {} attempts; last: {reason}", t.attempts);
            self.finish(id, TaskState::Failed, None, Some(failure));
            return;
        }
        let sid = t.session;
        let was_queued = t.open_slots > 0;
        let t = self.task_mut(id);
        t.attempts += 1;
        t.open_slots += n;
        // A slot lost while the precommit phase is open: the phase waits again until
        // the replacement has acked.
        let reset_phase = if t.phase_closed {
            None
        } else {
            t.phase_deadline.take()
        };
        let key = t.queue_key();
        self.set_due(reset_phase, None, Due::Phase(id));
        if !was_queued {
            self.idx.queues.entry(sid).or_default().insert(key);
        }
        self.session_mut(sid).open_slots += n as u64;
        self.step.touched.insert(sid);
        self.refresh_state(id);
        self.emit(id, None, EventKind::Requeued);
    }

    /// After a reveal or a lost slot in the reveal phase: complete on q agreeing
    /// reveals, fail when no q can agree any more.
    pub(super) fn evaluate(&mut self, id: TaskId) {
        let t = &self.tasks[&id];
        if t.state.is_terminal() || !t.phase_closed {
            return;
        }
        let q = self.sessions[&t.session].q() as usize;
        let mut groups: BTreeMap<Digest, (usize, usize)> = BTreeMap::new();
        for (i, a) in t.assignments.iter().enumerate() {
            if let (SlotState::Committed, Some(h)) = (a.state, a.output_hash) {
                groups.entry(h).or_insert((0, i)).0 += 1;
            }
        }
        if let Some((_, first)) = groups.values().find(|(count, _)| *count >= q) {
            let result = t.assignments[*first].output.clone();
            self.finish(id, TaskState::Completed, result, None);
            return;
        }
        let best = groups.values().map(|(c, _)| *c).max().unwrap_or(0);
        let pending = t.active_slots() + t.open_slots as usize;
        if best + pending < q {
            let failure = format!(
                "no quorum: {} valid reveals in {} disagreeing outputs, {} pending, {q} must agree",
                groups.values().map(|(c, _)| c).sum::<usize>(),
                groups.len(),
                pending
            );
            self.finish(id, TaskState::Failed, None, Some(failure));
        }
    }

    /// Moves a task to a final state, freeing its miners and its queue place.
    pub(super) fn finish(
        &mut self,
        id: TaskId,
        state: TaskState,
        result: Option<Vec<u8>>,
        failure: Option<String>,
    ) {
        let now = self.step.now;
        let t = &self.tasks[&id];
        let sid = t.session;
        let retention = self.sessions[&sid].spec.retention_ms;
        let (open, key, phase) = (t.open_slots, t.queue_key(), t.phase_deadline);
        let held: Vec<(MinerId, Option<u64>)> = t
            .assignments
            .iter()
            .filter(|a| a.state.is_active())
            .map(|a| (a.miner, a.deadline))
            .collect();
        if open > 0 {
            self.dequeue(sid, key);
        }
        for (miner, deadline) in &held {
            self.set_due(*deadline, None, Due::Slot(id, *miner));
            self.miner_mut(*miner).active.remove(&id);
        }
        self.set_due(phase, None, Due::Phase(id));
        let purge_at = now.saturating_add(retention);
        self.set_due(None, Some(purge_at), Due::TaskPurge(id));
        let t = self.task_mut(id);
        t.open_slots = 0;
        t.phase_deadline = None;
        for a in t.assignments.iter_mut() {
            a.deadline = None;
            a.output = None;
        }
        t.result = result;
        t.failure = failure;
        t.finished_ms = Some(now);
        t.purge_at = Some(purge_at);
        self.transition(id, state);
        let s = self.session_mut(sid);
        s.open_slots -= open as u64;
        s.active_slots -= held.len() as u64;
        self.step.touched.insert(sid);
        if state == TaskState::Completed {
            let second = now / 1000;
            let oldest = now.saturating_sub(limits::THROUGHPUT_WINDOW_MS) / 1000;
            let c = &mut self.header.completions;
            *c.entry(second).or_insert(0) += 1;
            while c.first_key_value().is_some_and(|(s, _)| *s < oldest) {
                c.pop_first();
            }
            self.mark(Key::Header);
        }
        let kind = match state {
            TaskState::Completed => EventKind::Completed,
            TaskState::Failed => EventKind::Failed,
            _ => EventKind::Cancelled,
        };
        self.emit(id, None, kind);
        for (miner, _) in held {
            self.maybe_finish_drain(miner);
        }
    }

    /// Re-derives a live task's state from its slots and phase.
    fn refresh_state(&mut self, id: TaskId) {
        let t = &self.tasks[&id];
        if !t.state.is_terminal() {
            let derived = t.derived_state();
            self.transition(id, derived);
        }
    }

    /// Records a change of a task's state in its history and the counters.
    fn transition(&mut self, id: TaskId, state: TaskState) {
        let now = self.step.now;
        let t = &self.tasks[&id];
        let old = t.state;
        if old == state {
            return;
        }
        let sid = t.session;
        let t = self.task_mut(id);
        t.state = state;
        t.history.push((state, now));
        self.idx.depth.add(old, -1);
        self.idx.depth.add(state, 1);
        let s = self.session_mut(sid);
        s.counts.add(old, -1);
        s.counts.add(state, 1);
    }

    /// Forgets a finished task whose retention has passed.
    pub(super) fn purge_task(&mut self, id: TaskId) {
        let Some(t) = self.tasks.remove(&id) else {
            return;
        };
        self.mark(Key::Task(id));
        if let Some(key) = t.idempotency_key {
            self.idx.idempotency.remove(&(t.session, key));
        }
        self.idx.depth.add(t.state, -1);
        if self.sessions.contains_key(&t.session) {
            self.session_mut(t.session).counts.add(t.state, -1);
        }
    }
}
