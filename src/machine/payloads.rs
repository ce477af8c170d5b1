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

use bytes::Bytes;

use super::ids::TaskId;
use super::State;

/// Payloads not yet written by the store, by task: each shares the bytes of the
/// submit command it came in (applying copies nothing).
#[derive(Clone, Debug, Default)]
pub(super) struct Unwritten {
    bytes: BTreeMap<TaskId, Bytes>,
}

impl Unwritten {
    pub(super) fn insert(&mut self, id: TaskId, payload: Bytes) {
        self.bytes.insert(id, payload);
    }

    pub(super) fn remove(&mut self, id: TaskId) {
        self.bytes.remove(&id);
    }

    /// Removes `ids`, given in ascending order (a group writes its payloads in id
    /// order). A group has usually written every payload held up to its last one,
    /// so the map is split there once instead of searched and shifted per id; any
    /// payload below the split that is not in `ids` is put back.
    pub(super) fn remove_ascending(&mut self, ids: &[TaskId]) {
        debug_assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids not ascending");
        let Some(&last) = ids.last() else {
            return;
        };
        let mut above = self.bytes.split_off(&last);
        above.remove(&last);
        let upto = std::mem::replace(&mut self.bytes, above);
        let mut ids = ids.iter().peekable();
        for (id, bytes) in upto {
            while ids.next_if(|&&i| i < id).is_some() {}
            if ids.next_if_eq(&&id).is_none() {
                self.bytes.insert(id, bytes);
            }
        }
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

    /// Drops the in-memory copy of these payloads (`ids` ascending): the store has
    /// written them. The logical state does not change.
    pub fn release_payloads(&mut self, ids: &[TaskId]) {
        self.payloads.remove_ascending(ids);
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn held(ids: &[u64]) -> Unwritten {
        let mut u = Unwritten::default();
        for &id in ids {
            u.insert(TaskId(id), vec![id as u8; 3].into());
        }
        u
    }

    #[test]
    fn removing_ascending_ids_keeps_the_others_and_their_bytes() {
        let mut u = held(&[1, 2, 3, 5, 7, 9]);
        // 6 is not held; 1 is below the first removed; 7 and 9 are above.
        u.remove_ascending(&[TaskId(2), TaskId(3), TaskId(5), TaskId(6)]);
        assert_eq!(u.ids().collect::<Vec<_>>(), [1, 7, 9].map(TaskId));
        assert_eq!(u.get(TaskId(7)), Some(&[7u8, 7, 7][..]));
        u.remove_ascending(&[]);
        assert_eq!(u.len(), 3);
    }

    proptest! {
        /// The same as removing the ids one by one.
        #[test]
        fn removing_ascending_is_removing_each(
            held_ids in proptest::collection::btree_set(0u64..64, 0..40),
            removed in proptest::collection::btree_set(0u64..64, 0..40),
        ) {
            let held_ids: Vec<u64> = held_ids.into_iter().collect();
            let removed: Vec<TaskId> = removed.into_iter().map(TaskId).collect();
            let mut u = held(&held_ids);
            u.remove_ascending(&removed);
            let gone: BTreeSet<TaskId> = removed.iter().copied().collect();
            let expected: Vec<TaskId> = held_ids
                .iter()
                .map(|&i| TaskId(i))
                .filter(|i| !gone.contains(i))
                .collect();
            prop_assert_eq!(u.ids().collect::<Vec<_>>(), expected);
        }
    }
}
