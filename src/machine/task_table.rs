//! The task table: every task of the state by id, in id order, laid out for memory.
//!
//! Task ids are handed out in sequence and tasks leave about in the order they came
//! (retention runs from when they finish), so the live ids are dense. A
//! `BTreeMap<TaskId, Box<Task>>` spends about 32 bytes a task on its nodes (an 8-byte
//! key and an 8-byte pointer in nodes that ids arriving in order leave a little over
//! half full). Here ids are grouped in runs of [`RUN`] consecutive ids: a map from the
//! run's number to one allocation of [`RUN`] slots, each slot the task's pointer or
//! nothing. Dense, that is about 10 bytes a task. A run is freed when its last task
//! leaves, so the table never holds more than one run per live task: in the worst
//! case (one live task in each run) about 160 bytes a task, bounded however ids
//! are spread.
//!
//! It offers the part of `BTreeMap`'s interface the machine uses, with the same
//! meaning and the same (id) order of iteration, so what is derived from it stays
//! deterministic.

use std::collections::BTreeMap;
use std::ops::Index;

use super::ids::TaskId;
use super::task::Task;

/// Consecutive ids that share one allocation of slots (a 128-byte one).
const RUN: u64 = 16;

type Run = [Option<Box<Task>>; RUN as usize];

/// Every task, by id. See the module documentation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct TaskTable {
    runs: BTreeMap<u64, Box<Run>>,
    len: usize,
}

fn split(id: TaskId) -> (u64, usize) {
    (id.0 / RUN, (id.0 % RUN) as usize)
}

impl TaskTable {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    #[allow(clippy::borrowed_box)] // the call sites were written against a map of boxes
    pub(super) fn get(&self, id: &TaskId) -> Option<&Box<Task>> {
        let (run, slot) = split(*id);
        self.runs.get(&run)?[slot].as_ref()
    }

    pub(super) fn get_mut(&mut self, id: &TaskId) -> Option<&mut Box<Task>> {
        let (run, slot) = split(*id);
        self.runs.get_mut(&run)?[slot].as_mut()
    }

    pub(super) fn contains_key(&self, id: &TaskId) -> bool {
        self.get(id).is_some()
    }

    /// Puts `task` under `id`, returning the task it replaced.
    pub(super) fn insert(&mut self, id: TaskId, task: Box<Task>) -> Option<Box<Task>> {
        let (run, slot) = split(id);
        let old = self
            .runs
            .entry(run)
            .or_insert_with(|| Box::new(std::array::from_fn(|_| None)))[slot]
            .replace(task);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Takes the task under `id` out, freeing its run if it was the run's last.
    pub(super) fn remove(&mut self, id: &TaskId) -> Option<Box<Task>> {
        let (run, slot) = split(*id);
        let slots = self.runs.get_mut(&run)?;
        let old = slots[slot].take()?;
        if slots.iter().all(Option::is_none) {
            self.runs.remove(&run);
        }
        self.len -= 1;
        Some(old)
    }

    /// Every task, in id order.
    pub(super) fn values(&self) -> impl Iterator<Item = &Box<Task>> + '_ {
        self.runs.values().flat_map(|slots| slots.iter().flatten())
    }

    /// Every task's id, in order.
    pub(super) fn keys(&self) -> impl Iterator<Item = &TaskId> + '_ {
        self.values().map(|t| &t.id)
    }
}

impl Index<&TaskId> for TaskTable {
    type Output = Box<Task>;

    fn index(&self, id: &TaskId) -> &Box<Task> {
        self.get(id).expect("task exists")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{SessionId, TaskState};

    fn task(id: u64) -> Box<Task> {
        Box::new(Task {
            id: TaskId(id),
            session: SessionId(1),
            payload_len: None,
            priority: 0,
            idempotency_key: None,
            state: TaskState::Queued,
            assignments: Vec::new(),
            open_slots: 1,
            attempts: 0,
            phase_deadline: None,
            phase_closed: false,
            queue_timeout_ms: 0,
            queue_deadline: None,
            history: Box::new([]),
            end: None,
            created_ms: id,
        })
    }

    /// The table against a `BTreeMap` doing the same inserts and removals: same
    /// contents, same order, same answers, and runs freed as they empty.
    #[test]
    fn behaves_as_an_ordered_map_and_frees_empty_runs() {
        let mut table = TaskTable::default();
        let mut map: BTreeMap<TaskId, Box<Task>> = BTreeMap::new();
        // A deterministic mix of ids (dense, sparse, reused) and removals.
        let mut x: u64 = 12345;
        for step in 0..20_000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let id = TaskId(if step % 3 == 0 {
                (x >> 33) % 5000
            } else {
                step / 2
            });
            if (x >> 20) % 4 == 0 {
                assert_eq!(table.remove(&id), map.remove(&id));
            } else {
                assert_eq!(table.insert(id, task(id.0)), map.insert(id, task(id.0)));
            }
            assert_eq!(table.contains_key(&id), map.contains_key(&id));
            assert_eq!(table.get(&id), map.get(&id));
        }
        assert_eq!(table.len(), map.len());
        assert!(table.values().eq(map.values()));
        assert!(table.keys().eq(map.keys()));
        let ids: Vec<TaskId> = map.keys().copied().collect();
        for id in &ids {
            assert_eq!(table[id].id, *id);
            table.get_mut(id).unwrap().priority = 7;
        }
        assert!(table.values().all(|t| t.priority == 7));
        for id in ids {
            assert!(table.remove(&id).is_some());
        }
        assert_eq!(table.len(), 0);
        assert!(table.runs.is_empty(), "every run was freed");
        assert_eq!(table, TaskTable::default());
    }
}
