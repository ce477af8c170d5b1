//! Tasks, their slots, and the commands miners and users send about one task.
//!
//! A task has k slots. Each slot moves assigned → acked → precommitted → committed,
//! or ends expired or rejected, in which case the slot reopens for another miner,
//! counting an attempt (see `lifecycle`; dispatch is in `dispatch`).
//!
//! The task's own state follows from its slots and its precommit phase:
//! - `Queued` until every slot is held and acked,
//! - `Acked` while the precommit phase is open,
//! - `Precommitted` once it closed (all precommitted, or q at the deadline),
//! - `Committed` from the first valid reveal,
//! - `Completed` when q reveals agree; `Failed` when they never can, when attempts run
//!   out, or when it waited in the queue past its deadline; `Cancelled` on request.
//!
//! A reveal is only taken after the phase closed, so no miner can see another's output
//! before committing to its own. Outputs are compared by `sha256(output)`.
//!
//! Each command has a pure `validate_*` half, shared with [`State::check`], and a
//! mutating half that starts by calling it.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::error::{conflict, not_found};
use super::ids::{MinerId, SessionId, TaskId};
use super::limits;
use super::tick::Due;
use super::{Digest, EventKind, MinerAuth, Rejection, Response, State};

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
    /// When this slot times out, if its next step has a deadline of its own: every
    /// active slot has one, except while the task's precommit phase is open.
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
///
/// Laid out for memory (a node may hold millions): 160 bytes, an allocator size class
/// exactly. Byte strings are boxed slices (no spare capacity), what only a finished
/// task has is boxed apart ([`TaskEnd`]), and the history is a boxed slice. Its
/// record (what the store writes and snapshots carry) keeps the flat field order of
/// earlier versions, see `task_record`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(from = "super::task_record::TaskRecord")]
pub struct Task {
    pub id: TaskId,
    pub session: SessionId,
    /// The length of its payload, until the task finishes: a finished task needs it
    /// no more (its result, history and assignments stay until retention), so it is
    /// dropped then unless the session keeps finished payloads. The bytes are a
    /// record of their own in the store, held in memory only until written (see
    /// `payloads`): the state holds about 256 bytes less a typical queued task.
    pub payload_len: Option<u32>,
    pub priority: i32,
    pub idempotency_key: Option<Box<str>>,
    pub state: TaskState,
    /// Every slot ever given out, in order. A miner may appear more than once (a slot
    /// of it expired and it took the task again), but holds at most one active slot,
    /// always its last one.
    pub assignments: Vec<Assignment>,
    /// Slots waiting for a miner.
    pub open_slots: u8,
    /// 1 at the first dispatch, one more each time lost slots go back to the queue.
    pub attempts: u32,
    /// When the open precommit phase times out.
    pub phase_deadline: Option<u64>,
    /// The precommit phase has closed: reveals are taken.
    pub phase_closed: bool,
    /// How long it may wait in the queue; 0 for no limit.
    pub queue_timeout_ms: u64,
    /// While it waits in the queue with a limit: when it fails as expired.
    pub queue_deadline: Option<u64>,
    /// Every state the task entered, with the leader time.
    pub history: Box<[(TaskState, u64)]>,
    /// How it ended, once it has.
    pub end: Option<Box<TaskEnd>>,
    pub created_ms: u64,
}

/// What a finished task keeps besides its slots and history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskEnd {
    pub result: Option<Box<[u8]>>,
    pub failure: Option<Box<str>>,
    pub finished_ms: u64,
    /// When it is purged.
    pub purge_at: u64,
}

impl Task {
    /// The agreed output of a completed task.
    pub fn result(&self) -> Option<&[u8]> {
        self.end.as_ref().and_then(|e| e.result.as_deref())
    }

    /// Why a failed or cancelled task ended.
    pub fn failure(&self) -> Option<&str> {
        self.end.as_ref().and_then(|e| e.failure.as_deref())
    }

    /// When it finished.
    pub fn finished_ms(&self) -> Option<u64> {
        self.end.as_ref().map(|e| e.finished_ms)
    }

    /// When a finished task is purged.
    pub fn purge_at(&self) -> Option<u64> {
        self.end.as_ref().map(|e| e.purge_at)
    }

    /// Appends to the history, keeping it exactly as long as it is.
    pub(super) fn record_state(&mut self, state: TaskState, at: u64) {
        let mut history = std::mem::take(&mut self.history).into_vec();
        history.push((state, at));
        self.history = history.into_boxed_slice();
    }

    /// The index of the miner's latest slot: its active one, if it holds one.
    pub fn slot(&self, miner: MinerId) -> Option<usize> {
        self.assignments.iter().rposition(|a| a.miner == miner)
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

    /// The precommit phase has neither opened nor closed: the task waits for slots
    /// to be filled or acked.
    pub(super) fn waiting(&self) -> bool {
        !self.phase_closed && self.phase_deadline.is_none()
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

impl State {
    pub(super) fn task_mut(&mut self, id: TaskId) -> &mut Task {
        self.touch_task(id, false);
        self.tasks.get_mut(&id).expect("task exists")
    }

    // ---- cancel ----

    pub(super) fn validate_cancel(&self, id: TaskId) -> Result<(), Rejection> {
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
        Ok(())
    }

    pub(super) fn cancel(&mut self, id: TaskId) -> Result<Response, Rejection> {
        self.validate_cancel(id)?;
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

    // ---- the miner's steps ----

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

    pub(super) fn validate_ack(&self, id: TaskId, auth: &MinerAuth) -> Result<usize, Rejection> {
        let i = self.own_slot(id, auth)?;
        if self.tasks[&id].assignments[i].state != SlotState::Assigned {
            return Err(conflict(format!(
                "task {id} is already acked by {}",
                auth.miner
            )));
        }
        Ok(i)
    }

    pub(super) fn ack(&mut self, id: TaskId, auth: &MinerAuth) -> Result<Response, Rejection> {
        let i = self.validate_ack(id, auth)?;
        self.touch_heartbeat(auth.miner);
        let now = self.step.now;
        let timeout = self.sessions[&self.tasks[&id].session]
            .spec
            .precommit_timeout_ms;
        // After the phase closed, a late miner has the precommit timeout to precommit.
        // Before it opened, the slot waits at most that long for the task's other
        // slots; opening the phase (maybe right below) lifts that deadline.
        let t = self.task_mut(id);
        let a = &mut t.assignments[i];
        a.state = SlotState::Acked;
        let old = a.deadline;
        a.deadline = Some(now.saturating_add(timeout));
        let new = a.deadline;
        self.set_due(old, new, Due::Slot(id, auth.miner));
        self.sync_queue(id);
        self.emit(id, Some(auth.miner), EventKind::Acked);
        self.maybe_open_phase(id);
        Ok(Response::TaskUpdated {
            task: id,
            state: self.tasks[&id].state,
        })
    }

    pub(super) fn validate_precommit(
        &self,
        id: TaskId,
        auth: &MinerAuth,
    ) -> Result<usize, Rejection> {
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
        if t.waiting() {
            return Err(conflict(format!(
                "the precommit phase of task {id} has not opened: not every miner has acked"
            )));
        }
        Ok(i)
    }

    pub(super) fn precommit(
        &mut self,
        id: TaskId,
        auth: &MinerAuth,
        hash: Digest,
    ) -> Result<Response, Rejection> {
        let i = self.validate_precommit(id, auth)?;
        let timeout = self.sessions[&self.tasks[&id].session]
            .spec
            .commit_timeout_ms;
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

    /// Validates a reveal up to (not including) its hash check, which is recorded
    /// either way; returns the slot index and the precommitted hash.
    pub(super) fn validate_reveal(
        &self,
        id: TaskId,
        auth: &MinerAuth,
        output: &[u8],
        nonce: &[u8],
    ) -> Result<(usize, Digest), Rejection> {
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
        Ok((i, expected))
    }

    pub(super) fn reveal(
        &mut self,
        id: TaskId,
        auth: &MinerAuth,
        output: &[u8],
        nonce: &[u8],
    ) -> Result<Response, Rejection> {
        let (i, expected) = self.validate_reveal(id, auth, output, nonce)?;
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
}
