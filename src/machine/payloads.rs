//! The payloads of tasks the store has not written yet: the only payload bytes the
//! state holds in memory.
//!
//! Why: a queued task's payload is most of its memory (256 of about 500 bytes for a
//! typical task, and payloads may be kilobytes), yet it is read only when a miner
//! lists its assignments. So a payload is a record of its own in the store's `state`
//! family, and the state keeps only its length ([`super::Task::payload_len`], part of
//! the task's record: the footprint and `--max-state-bytes` count it). Its bytes stay
//! here from the submit until the store has written the group of entries holding
//! them, then the store takes them out ([`State::release_payloads`]).
//!
//! Determinism is untouched: what this holds depends on when the store wrote, but
//! nothing the machine decides reads it, it is never encoded, and [`State`]'s
//! equality ignores it. The logical state (every record, payloads included) is the
//! same on every replica; only where a payload's bytes are found differs.
//!
//! The store learns which payload records to write or delete from the changed keys:
//! [`super::Key::Payload`] is marked when a task is created with a payload, when a
//! finished task drops it, and when a task that kept it is purged.

use std::collections::BTreeMap;

use super::ids::TaskId;
use super::State;

/// Payloads not yet written by the store, by task.
#[derive(Clone, Debug, Default)]
pub(super) struct Unwritten {
    bytes: BTreeMap<TaskId, Box<[u8]>>,
}

impl Unwritten {
    pub(super) fn insert(&mut self, id: TaskId, payload: Box<[u8]>) {
        self.bytes.insert(id, payload);
    }

    pub(super) fn remove(&mut self, id: TaskId) {
        self.bytes.remove(&id);
    }

    pub(super) fn get(&self, id: TaskId) -> Option<&[u8]> {
        self.bytes.get(&id).map(|b| &**b)
    }

    pub(super) fn len(&self) -> usize {
        self.bytes.len()
    }

    #[cfg(test)]
    pub(super) fn ids(&self) -> impl Iterator<Item = TaskId> + '_ {
        self.bytes.keys().copied()
    }
}

/// Where a task's payload is, as the state sees it under its lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PayloadAt {
    /// The task has none (dropped when it finished, or no such task).
    Absent,
    /// Not written yet: a copy of its bytes.
    Here(Vec<u8>),
    /// In the store's `state` family (read it there; a task that finishes or is
    /// purged meanwhile may have deleted it).
    Stored,
}

impl State {
    /// The bytes of `id`'s payload if the store has not written them yet.
    pub fn unwritten_payload(&self, id: TaskId) -> Option<&[u8]> {
        self.payloads.get(id)
    }

    /// Where `id`'s payload is (copying it if it is still here).
    pub fn payload_at(&self, id: TaskId) -> PayloadAt {
        match self.tasks.get(&id) {
            Some(t) if t.payload_len.is_some() => match self.payloads.get(id) {
                Some(bytes) => PayloadAt::Here(bytes.to_vec()),
                None => PayloadAt::Stored,
            },
            _ => PayloadAt::Absent,
        }
    }

    /// Drops the in-memory copy of these payloads: the store has written them. The
    /// logical state does not change.
    pub fn release_payloads(&mut self, ids: impl IntoIterator<Item = TaskId>) {
        for id in ids {
            self.payloads.remove(id);
        }
    }

    /// How many payloads are held in memory, waiting to be written.
    pub fn unwritten_payloads(&self) -> usize {
        self.payloads.len()
    }

    /// [`State::payload_at`] of every task with a payload, in id order (to compare
    /// replicas' payloads; the state's encoding has only their lengths).
    pub fn every_payload_at(&self) -> Vec<(TaskId, PayloadAt)> {
        self.tasks
            .values()
            .filter(|t| t.payload_len.is_some())
            .map(|t| (t.id, self.payload_at(t.id)))
            .collect()
    }
}
