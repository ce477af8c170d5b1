//! The state's approximate size in memory, kept by the machine itself so that the
//! cluster-wide bound on it (`--max-state-bytes`, carried in every batch as
//! [`super::Limits`]) gives the same answer on every replica.
//!
//! A byte count measured by the allocator would differ from node to node; this one
//! is a pure function of the state: per task a fixed cost (the struct, its map node,
//! its index entries) plus what it holds (payload, result, revealed outputs, key,
//! failure, slots, history), and per session, miner and remembered key a fixed cost.
//! It is approximate (the constants are estimates), deterministic, and cheap: after
//! each command only the tasks it touched are counted again ([`Footprint::update`]),
//! and a restore counts them all ([`Footprint::rebuild`]).
//!
//! Only new tasks are refused when the count is at the bound (429 `state_full`):
//! refusing reveals, acks or heartbeats would keep the tasks already accepted from
//! ever finishing (and being purged), which is what frees memory.

use std::collections::{BTreeMap, HashMap};

use super::command::NewTask;
use super::ids::TaskId;
use super::task::Task;

/// A task's fixed cost: the struct, its node in the task map, its entries in the
/// queue, deadline, depth and per-session indexes.
pub const TASK_BYTES: u64 = 512;
/// One slot of a task, besides its revealed output.
pub const ASSIGNMENT_BYTES: u64 = 128;
/// One entry of a task's history.
pub const HISTORY_BYTES: u64 = 16;
/// A session (its spec, counters, reserved set).
pub const SESSION_BYTES: u64 = 2048;
/// A miner (its tags, active set, rejections).
pub const MINER_BYTES: u64 = 2048;
/// A remembered idempotency key.
pub const KEY_BYTES: u64 = 192;

/// The approximate bytes of one task.
pub fn task_bytes(t: &Task) -> u64 {
    let blob = |b: Option<&[u8]>| b.map_or(0, |b| b.len() as u64);
    let outputs: u64 = t
        .assignments
        .iter()
        .map(|a| ASSIGNMENT_BYTES + blob(a.output.as_deref()))
        .sum();
    TASK_BYTES
        + blob(t.payload.as_deref())
        + blob(t.result())
        + t.idempotency_key.as_ref().map_or(0, |k| k.len() as u64)
        + t.failure().map_or(0, |f| f.len() as u64)
        + outputs
        + t.history.len() as u64 * HISTORY_BYTES
}

/// The approximate bytes a submitted task will take once created.
pub fn new_task_bytes(t: &NewTask) -> u64 {
    TASK_BYTES
        + t.payload.len() as u64
        + t.idempotency_key.as_ref().map_or(0, |k| k.len() as u64)
        + HISTORY_BYTES
}

/// The counted bytes of every task, and their sum.
#[derive(Clone, Debug, Default)]
pub struct Footprint {
    tasks: HashMap<TaskId, u64>,
    total: u64,
}

impl Footprint {
    /// Counts `task` (now `None`: it is gone) again.
    pub fn update(&mut self, id: TaskId, task: Option<&Task>) {
        let old = match task {
            Some(t) => self.tasks.insert(id, task_bytes(t)),
            None => self.tasks.remove(&id),
        };
        let new = task.map_or(0, task_bytes);
        self.total = self.total - old.unwrap_or(0) + new;
    }

    /// Counts every task.
    pub fn rebuild(tasks: &BTreeMap<TaskId, Box<Task>>) -> Self {
        let mut f = Footprint::default();
        for (id, t) in tasks {
            f.update(*id, Some(t));
        }
        f
    }

    /// The bytes of every task.
    pub fn tasks_total(&self) -> u64 {
        self.total
    }
}
