//! The state's approximate size in memory, kept by the machine itself so that the
//! cluster-wide bound on it (`--max-state-bytes`, carried in every batch as
//! [`super::Limits`]) gives the same answer on every replica.
//!
//! A byte count measured by the allocator would differ from node to node; this one
//! is a pure function of the state: per task a fixed cost (the struct, its map node,
//! its index entries) plus what it holds (payload, result, revealed outputs, key,
//! failure, slots, history), and per session, miner and remembered key a fixed cost.
//! A payload counts by its length although its bytes live in the store once written
//! (see `payloads`): the bound then also bounds the store's disk, and the count never
//! depends on when a node wrote.
//! It is approximate (the constants are estimates), deterministic, and cheap: a
//! command takes off a task's count when it first touches the task
//! ([`Footprint::remove`]) and adds the task's new count when it is done
//! ([`Footprint::add`]), so only the tasks it touched are counted again; a restore
//! counts them all ([`Footprint::rebuild`]). Only the sum is kept, not a count per
//! task: a map of every task to its count cost about 36 bytes a task (36 MiB for a
//! million queued tasks), and a task's count is a pure function of the task, so it
//! can always be computed again from the task before it changes.
//!
//! Only new tasks are refused at apply when the count is at the bound (429
//! `state_full`), and new sessions before they are proposed (see `growth`):
//! refusing reveals, acks, heartbeats or new miners would keep the tasks already
//! accepted from ever finishing (and being purged), which is what frees memory.
//! Miners are bounded by their number instead ([`super::limits::MAX_MINERS`]).

use super::command::NewTask;
use super::task::Task;
use super::task_table::TaskTable;

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
        + t.payload_len.map_or(0, u64::from)
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

/// The sum of the counted bytes of every task.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    total: u64,
}

impl Footprint {
    /// Takes a task's count off, before the task changes or leaves.
    pub fn remove(&mut self, task: &Task) {
        self.total = self.total.saturating_sub(task_bytes(task));
    }

    /// Adds a task's count, once it was created or changed.
    pub fn add(&mut self, task: &Task) {
        self.total += task_bytes(task);
    }

    /// Counts every task.
    pub(super) fn rebuild(tasks: &TaskTable) -> Self {
        let mut f = Footprint::default();
        for t in tasks.values() {
            f.add(t);
        }
        f
    }

    /// The bytes of every task.
    pub fn tasks_total(&self) -> u64 {
        self.total
    }
}
