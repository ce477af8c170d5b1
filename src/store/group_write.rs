//! Grouped persistence of the applied state: apply changes the in-memory
//! [`State`] at once, and the records it changed are written to the state families
//! (`state`, `tasks`, `payloads`: see [`crate::store`]) later, the changes of many
//! entries in one RocksDB write.
//!
//! Why: writing every applied batch of entries on its own encodes and writes the
//! records it changed each time, so a record changed by every entry (the header, a
//! busy session, a task going through its lifecycle) is encoded and written once per
//! entry, and every write pays RocksDB's fixed cost. Grouped, such a record is
//! encoded and written once per group.
//!
//! Why it is safe: the state families are written without a write-ahead log anyway
//! and flushed atomically (see [`crate::store`]); the synced Raft log is the
//! durable record, and the state families only spare a restart the replay of the
//! whole log. Each group is one `WriteBatch` holding every record changed since the
//! previous group *and* the applied log id and membership they correspond to, so
//! what is on disk is always the state after some applied entry. A crash loses the
//! unwritten group (and, as before, the memtables), and openraft re-applies the log
//! from the persisted applied id: the same entries give the same state. The log
//! keeps those entries: openraft purges only up to a snapshot's last entry, a
//! snapshot is a view of the state families, and the state store writes the pending
//! group before a build takes its view (and flushes the families after it).
//!
//! Payloads: a task's payload is written by the group that holds its submit, from
//! the in-memory copy the state keeps until then, and that copy is dropped once the
//! group's batch is in RocksDB (the logical state is unchanged: see
//! `crate::machine::PayloadAt`). A later group deletes the payload when the task
//! drops it (it finished) or leaves (it was purged with a kept payload). A crash
//! before a group is written loses nothing: the replay applies the submits again,
//! which hold the payloads again until written.
//!
//! When a group is written: when it holds [`Grouping::max_entries`] entries or
//! [`Grouping::max_records`] changed records (checked after each apply call), at the
//! latest [`Grouping::max_delay`] after its first entry (by a timer task, so an idle
//! node does not keep a group in memory), before a snapshot is built or installed,
//! and when the store is dropped (a clean stop).

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use openraft::StorageIOError;
use rocksdb::{WriteBatch, DB};
use tokio::sync::Notify;

use super::state_store::{keys, AppliedState};
use super::{CF_PAYLOADS, CF_STATE, CF_TASKS};
use crate::codec;
use crate::machine::{Key, TaskId};
use crate::raft::types::{LogId, StorageError, StoredMembership};

/// The most a group's batch reserves up front (a group of large payloads may still
/// grow past it).
const MAX_RESERVED_BYTES: usize = 64 << 20;

/// When a group of applied entries is written.
#[derive(Clone, Copy, Debug)]
pub struct Grouping {
    /// Most entries in one group. Bounds the replay after a crash; entries carry up
    /// to a few thousand commands, so this also keeps a group's work small next to
    /// the memtable.
    pub max_entries: u64,
    /// Most changed records in one group: bounds the `WriteBatch` (a batch endpoint
    /// entry changes thousands of records) and the memory of the pending key set.
    pub max_records: usize,
    /// The longest an applied entry waits to be written.
    pub max_delay: Duration,
}

impl Default for Grouping {
    /// 50 ms: at the entry rates where writing costs (hundreds to thousands of
    /// entries a second per node) a group holds tens of entries, and the header and
    /// session records are written a few tens of times a second instead of once per
    /// entry. Longer gains little more and only lengthens a replay.
    fn default() -> Self {
        Grouping {
            max_entries: 1024,
            max_records: 16 * 1024,
            max_delay: Duration::from_millis(50),
        }
    }
}

/// What was applied and not yet written.
struct Pending {
    /// Records changed by the entries of the group: sorted runs, one per apply
    /// call, so a record changed by several calls is here several times until
    /// [`Pending::distinct`] merges them (appending beats a set's inserts).
    keys: Vec<Key>,
    /// The last applied log id and membership: what the state in memory holds.
    applied: Option<LogId>,
    membership: StoredMembership,
    /// Entries applied since the last write, and when the first of them was.
    entries: u64,
    since: Option<Instant>,
}

impl Pending {
    /// Sorts the changed keys and keeps each once (RocksDB takes a batch in any
    /// order; sorted, each record is encoded and written once).
    fn distinct(&mut self) {
        // A stable sort merges the sorted runs in about linear time.
        self.keys.sort();
        self.keys.dedup();
    }
}

/// Collects the changes of applied entries and writes them in groups.
pub(super) struct GroupWriter {
    db: Arc<DB>,
    shared: Arc<AppliedState>,
    pending: Mutex<Pending>,
    /// Held from taking a group until its write is done: groups reach RocksDB in
    /// the order they were taken, so a later group is never overwritten by an
    /// earlier one. Taken before the state lock and the pending lock. It holds the
    /// size of the last group's batch: the next batch starts with that capacity, as
    /// groups under a steady load are alike, instead of regrowing (and copying) its
    /// buffer while payloads are put.
    writing: Mutex<usize>,
    /// Wakes the timer task when a group begins.
    wake: Arc<Notify>,
    grouping: Mutex<Grouping>,
}

impl GroupWriter {
    /// A writer whose pending state is `applied`/`membership` (what is on disk), and
    /// its timer task (which ends when the writer is dropped).
    pub(super) fn start(
        db: Arc<DB>,
        shared: Arc<AppliedState>,
        applied: Option<LogId>,
        membership: StoredMembership,
    ) -> Arc<Self> {
        let writer = Arc::new(GroupWriter {
            db,
            shared,
            pending: Mutex::new(Pending {
                keys: Vec::new(),
                applied,
                membership,
                entries: 0,
                since: None,
            }),
            writing: Mutex::new(0),
            wake: Arc::new(Notify::new()),
            grouping: Mutex::new(Grouping::default()),
        });
        tokio::spawn(timer(Arc::downgrade(&writer), writer.wake.clone()));
        writer
    }

    pub(super) fn set_grouping(&self, grouping: Grouping) {
        *self.grouping.lock().expect("grouping lock") = grouping;
    }

    /// Adds what `entries` applied entries changed. Call with the state's write lock
    /// held, right after applying them, so the pending group always matches the
    /// state in memory. Returns whether the group is full and should be written now.
    pub(super) fn note(
        &self,
        changed: Vec<Key>,
        applied: Option<LogId>,
        membership: &StoredMembership,
        entries: u64,
    ) -> bool {
        let grouping = *self.grouping.lock().expect("grouping lock");
        let mut p = self.pending.lock().expect("pending lock");
        if p.keys.is_empty() {
            p.keys = changed;
        } else {
            p.keys.extend(changed);
        }
        p.applied = applied;
        if p.membership != *membership {
            p.membership = membership.clone();
        }
        if p.keys.len() >= grouping.max_records {
            // Full, or only repeats: count the distinct records.
            p.distinct();
        }
        let began = p.entries == 0;
        p.entries += entries;
        let since = *p.since.get_or_insert_with(Instant::now);
        if began {
            self.wake.notify_one();
        }
        p.entries >= grouping.max_entries
            || p.keys.len() >= grouping.max_records
            || since.elapsed() >= grouping.max_delay
    }

    /// Forgets the pending group and starts over from `applied`/`membership`: an
    /// installed snapshot replaced the state and its family. Call after [`Self::write`]
    /// and before anything is applied on top of the installed state.
    pub(super) fn reset(&self, applied: Option<LogId>, membership: StoredMembership) {
        let _writing = self.writing.lock().expect("writing lock");
        let mut p = self.pending.lock().expect("pending lock");
        p.keys.clear();
        p.applied = applied;
        p.membership = membership;
        p.entries = 0;
        p.since = None;
    }

    /// Writes the pending group, if any: every record it changed as the state in
    /// memory holds it now, with the applied id and membership, in one batch.
    pub(super) fn write(&self) -> Result<(), StorageError> {
        let mut last_bytes = self.writing.lock().expect("writing lock");
        let cf = self.db.cf_handle(CF_STATE).expect("state column family");
        let tasks = self.db.cf_handle(CF_TASKS).expect("tasks column family");
        let payloads = self
            .db
            .cf_handle(CF_PAYLOADS)
            .expect("payloads column family");
        let mut batch = WriteBatch::with_capacity_bytes((*last_bytes).min(MAX_RESERVED_BYTES));
        // Under the state's read lock, so no entry is applied between taking the
        // group and encoding its records: they are the state after `applied`.
        // The payloads written from memory, whose copies are dropped once written.
        let mut written = Vec::new();
        let (keys, entries) = self.shared.read(|state| {
            let mut p = self.pending.lock().expect("pending lock");
            if p.entries == 0 && p.keys.is_empty() {
                return (None, 0);
            }
            p.distinct();
            let keys = std::mem::take(&mut p.keys);
            for &key in &keys {
                if let Key::Payload(id) = key {
                    payload_change(state, id, &mut batch, payloads, &mut written);
                    continue;
                }
                let k = keys::record(key);
                let family = match keys::family(&k) {
                    CF_TASKS => tasks,
                    _ => cf,
                };
                match state.record_bytes(key) {
                    Some(v) => batch.put_cf(family, k, v),
                    None => batch.delete_cf(family, k),
                }
            }
            batch.put_cf(cf, keys::APPLIED, codec::encode(&p.applied));
            batch.put_cf(cf, keys::MEMBERSHIP, codec::encode(&p.membership));
            let entries = std::mem::take(&mut p.entries);
            p.since = None;
            (Some(keys), entries)
        });
        let Some(keys) = keys else {
            return Ok(());
        };
        *last_bytes = batch.size_in_bytes();
        // No write-ahead log for the state (see the module documentation).
        let mut opts = rocksdb::WriteOptions::default();
        opts.disable_wal(true);
        if let Err(e) = self.db.write_opt(batch, &opts) {
            // Nothing of the group was written: keep it whole for the next try,
            // so a later group never carries an applied id without these records.
            let mut p = self.pending.lock().expect("pending lock");
            p.keys.extend(keys);
            p.entries += entries;
            p.since.get_or_insert_with(Instant::now);
            return Err(StorageIOError::write_state_machine(&e).into());
        }
        // In RocksDB now (its memtable, readable at once): memory need not hold them.
        self.shared.release_payloads(written);
        metrics::histogram!("sq_state_write_entries").record(entries as f64);
        metrics::histogram!("sq_state_write_records").record(keys.len() as f64);
        Ok(())
    }

    /// Entries applied and not yet written.
    #[cfg(test)]
    pub(super) fn pending_entries(&self) -> u64 {
        self.pending.lock().expect("pending lock").entries
    }
}

/// What a changed payload key writes: the bytes if the state still holds them (the
/// task was created in this group), a delete if the task no longer has a payload
/// (dropped or purged), nothing if it has one already written.
fn payload_change(
    state: &crate::machine::State,
    id: TaskId,
    batch: &mut WriteBatch,
    cf: &impl rocksdb::AsColumnFamilyRef,
    written: &mut Vec<TaskId>,
) {
    if let Some(bytes) = state.unwritten_payload(id) {
        batch.put_cf(cf, keys::payload(id), bytes);
        written.push(id);
    } else if state.task(id).is_none_or(|t| t.payload_len.is_none()) {
        batch.delete_cf(cf, keys::payload(id));
    }
}

/// Writes a group at the latest `max_delay` after it began, however quiet the node.
async fn timer(writer: Weak<GroupWriter>, wake: Arc<Notify>) {
    loop {
        wake.notified().await;
        let Some(delay) = writer
            .upgrade()
            .map(|w| w.grouping.lock().expect("grouping lock").max_delay)
        else {
            return;
        };
        tokio::time::sleep(delay).await;
        let Some(writer) = writer.upgrade() else {
            return;
        };
        if let Err(e) = writer.write() {
            // The next apply or snapshot tries again and reports it to Raft.
            tracing::warn!(error = %e, "writing the applied state");
        }
    }
}

impl Drop for GroupWriter {
    /// Ends the timer task (it holds the writer only weakly).
    fn drop(&mut self) {
        self.wake.notify_one();
    }
}
