//! Copies of what a read answers, taken under the applied state's read lock and
//! encoded (JSON, base64) only after it is released.
//!
//! Apply takes the same lock to write; encoding a task's result or a miner's
//! payloads in base64 under it would make apply wait for a reader's encoding. A copy
//! holds only what the answer shows (a task read never shows the payload), so taking
//! it costs a few small allocations and a `memcpy` of the blobs shown.

use crate::machine::{MinerId, SessionId, SlotState, Task, TaskId, TaskState};

/// What a task read shows (see [`super::wire::task_json`]).
#[derive(Clone, Debug)]
pub struct TaskRead {
    pub id: TaskId,
    pub session: SessionId,
    pub state: TaskState,
    pub priority: i32,
    pub attempts: u32,
    pub idempotency_key: Option<String>,
    pub queue_timeout_ms: u64,
    pub queue_deadline: Option<u64>,
    pub assignments: Vec<SlotRead>,
    pub result: Option<Vec<u8>>,
    pub failure: Option<String>,
    pub created_ms: u64,
    pub finished_ms: Option<u64>,
    pub history: Vec<(TaskState, u64)>,
}

/// One slot as a task read shows it.
#[derive(Clone, Copy, Debug)]
pub struct SlotRead {
    pub miner: MinerId,
    pub state: SlotState,
    pub assigned_ms: u64,
}

impl TaskRead {
    pub fn of(t: &Task) -> Self {
        TaskRead {
            id: t.id,
            session: t.session,
            state: t.state,
            priority: t.priority,
            attempts: t.attempts,
            idempotency_key: t.idempotency_key.clone(),
            queue_timeout_ms: t.queue_timeout_ms,
            queue_deadline: t.queue_deadline,
            assignments: t
                .assignments
                .iter()
                .map(|a| SlotRead {
                    miner: a.miner,
                    state: a.state,
                    assigned_ms: a.assigned_ms,
                })
                .collect(),
            result: t.result.clone(),
            failure: t.failure.clone(),
            created_ms: t.created_ms,
            finished_ms: t.finished_ms,
            history: t.history.clone(),
        }
    }
}

/// What a miner's assignment list shows of one task (see
/// [`super::wire::assignment_json`]).
#[derive(Clone, Debug)]
pub struct AssignmentRead {
    pub id: TaskId,
    pub session: SessionId,
    pub payload: Option<Vec<u8>>,
    pub state: TaskState,
}

impl AssignmentRead {
    pub fn of(t: &Task) -> Self {
        AssignmentRead {
            id: t.id,
            session: t.session,
            payload: t.payload.clone(),
            state: t.state,
        }
    }
}
