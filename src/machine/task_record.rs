//! The record shape of a [`Task`]: the flat field list the store writes and snapshots
//! carry, kept flat while the in-memory `Task` was made compact (boxed slices, the
//! end of a finished task boxed apart), so the record format changes only when the
//! fields do. Format version 5 (`codec::FORMAT_VERSION`) replaced the payload's
//! bytes by their length: the bytes are a record of their own (see
//! `super::payloads`), so rewriting a task as it moves through its lifecycle never
//! rewrites its payload.
//!
//! `Task` serializes by reference in this shape (no clone per write) and
//! deserializes through [`TaskRecord`].

use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

use super::ids::{SessionId, TaskId};
use super::task::{Assignment, Task, TaskEnd, TaskState};

/// A task as it is encoded, field for field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct TaskRecord {
    pub id: TaskId,
    pub session: SessionId,
    pub payload_len: Option<u32>,
    pub priority: i32,
    pub idempotency_key: Option<String>,
    pub state: TaskState,
    pub assignments: Vec<Assignment>,
    pub open_slots: u8,
    pub attempts: u32,
    pub phase_deadline: Option<u64>,
    pub phase_closed: bool,
    pub queue_timeout_ms: u64,
    pub queue_deadline: Option<u64>,
    pub history: Vec<(TaskState, u64)>,
    #[serde(with = "serde_bytes")]
    pub result: Option<Vec<u8>>,
    pub failure: Option<String>,
    pub created_ms: u64,
    pub finished_ms: Option<u64>,
    pub purge_at: Option<u64>,
}

impl From<TaskRecord> for Task {
    fn from(r: TaskRecord) -> Self {
        // Only finishing a task sets its end (all four fields at once).
        let end = r.finished_ms.map(|finished_ms| {
            Box::new(TaskEnd {
                result: r.result.map(Vec::into_boxed_slice),
                failure: r.failure.map(String::into_boxed_str),
                finished_ms,
                purge_at: r.purge_at.unwrap_or(finished_ms),
            })
        });
        Task {
            id: r.id,
            session: r.session,
            payload_len: r.payload_len,
            priority: r.priority,
            idempotency_key: r.idempotency_key.map(String::into_boxed_str),
            state: r.state,
            assignments: r.assignments,
            open_slots: r.open_slots,
            attempts: r.attempts,
            phase_deadline: r.phase_deadline,
            phase_closed: r.phase_closed,
            queue_timeout_ms: r.queue_timeout_ms,
            queue_deadline: r.queue_deadline,
            history: r.history.into_boxed_slice(),
            end,
            created_ms: r.created_ms,
        }
    }
}

fn bytes(b: Option<&[u8]>) -> Option<&serde_bytes::Bytes> {
    b.map(serde_bytes::Bytes::new)
}

impl Serialize for Task {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let end = self.end.as_deref();
        let mut st = s.serialize_struct("TaskRecord", 19)?;
        st.serialize_field("id", &self.id)?;
        st.serialize_field("session", &self.session)?;
        st.serialize_field("payload_len", &self.payload_len)?;
        st.serialize_field("priority", &self.priority)?;
        st.serialize_field("idempotency_key", &self.idempotency_key.as_deref())?;
        st.serialize_field("state", &self.state)?;
        st.serialize_field("assignments", &self.assignments)?;
        st.serialize_field("open_slots", &self.open_slots)?;
        st.serialize_field("attempts", &self.attempts)?;
        st.serialize_field("phase_deadline", &self.phase_deadline)?;
        st.serialize_field("phase_closed", &self.phase_closed)?;
        st.serialize_field("queue_timeout_ms", &self.queue_timeout_ms)?;
        st.serialize_field("queue_deadline", &self.queue_deadline)?;
        st.serialize_field("history", &self.history)?;
        st.serialize_field("result", &bytes(end.and_then(|e| e.result.as_deref())))?;
        st.serialize_field("failure", &end.and_then(|e| e.failure.as_deref()))?;
        st.serialize_field("created_ms", &self.created_ms)?;
        st.serialize_field("finished_ms", &end.map(|e| e.finished_ms))?;
        st.serialize_field("purge_at", &end.map(|e| e.purge_at))?;
        st.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;
    use crate::machine::{MinerId, SlotState};

    fn record(finished: bool) -> TaskRecord {
        TaskRecord {
            id: TaskId(7),
            session: SessionId(2),
            payload_len: (!finished).then_some(3),
            priority: -3,
            idempotency_key: Some("key".into()),
            state: if finished {
                TaskState::Failed
            } else {
                TaskState::Acked
            },
            assignments: vec![Assignment {
                miner: MinerId(4),
                state: SlotState::Committed,
                assigned_ms: 10,
                deadline: Some(20),
                precommit: Some([9; 32]),
                output_hash: Some([8; 32]),
                output: Some(vec![5, 6]),
            }],
            open_slots: 1,
            attempts: 2,
            phase_deadline: Some(30),
            phase_closed: true,
            queue_timeout_ms: 40,
            queue_deadline: Some(50),
            history: vec![(TaskState::Queued, 1), (TaskState::Acked, 2)],
            result: finished.then(|| vec![7; 5]),
            failure: finished.then(|| "no quorum".into()),
            created_ms: 1,
            finished_ms: finished.then_some(60),
            purge_at: finished.then_some(70),
        }
    }

    #[test]
    fn a_task_encodes_exactly_as_its_flat_record() {
        for finished in [false, true] {
            let flat = record(finished);
            let task = Task::from(flat.clone());
            assert_eq!(task.end.is_some(), finished);
            let bytes = codec::encode(&flat);
            assert_eq!(codec::encode(&task), bytes);
            assert_eq!(codec::decode::<Task>(&bytes).unwrap(), task);
            assert_eq!(codec::decode::<TaskRecord>(&bytes).unwrap(), flat);
        }
    }

    #[test]
    fn a_task_takes_one_small_allocation() {
        // 160 bytes is an allocator size class (mimalloc's and glibc's chunk sizes
        // alike); one byte more costs 32 a task.
        assert!(
            std::mem::size_of::<Task>() <= 160,
            "{}",
            std::mem::size_of::<Task>()
        );
    }
}
