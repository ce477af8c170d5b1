//! The Raft log, the vote and the committed/purged markers, in RocksDB.
//!
//! Every write openraft relies on for safety is synced before it is reported done:
//! an append's callback fires only after its `WriteBatch` is synced; the vote,
//! truncation and purge are synced too.
//!
//! Those writes run in place on the calling worker thread when the runtime has
//! another worker to carry on meanwhile, and in `block_in_place` only when it has
//! one ([`synced_write`]). Handing the worker's core to another thread for every
//! sync cost about four context switches per append on each node and, at one
//! connection, a tenth of a millisecond per request; at 64 connections the leader
//! answered a quarter fewer requests (docs/PERFORMANCE.md). Only one append is in
//! flight at a time (openraft's core awaits its callback), so at most one worker
//! waits on the disk. Reads that miss the cache (a follower catching up) still use
//! `block_in_place`: they can be long.
//!
//! The newest entries are also kept decoded in memory: openraft reads every entry
//! back right after appending it (once per follower to replicate it, once to apply
//! it), and serving those reads from memory saves a RocksDB read and a decode each.
//! Their encoded bytes (as written to the log) are kept beside them: the network
//! sends those to the followers ([`EncodedEntries`]) instead of encoding each entry
//! again for every follower. A follower, in turn, writes the bytes the entries
//! arrived in ([`EncodedEntries::offer`]) instead of encoding them again.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageIOError};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{index_key, BATCH_HEADER, BATCH_RECORD_OVERHEAD, CF_LOG, CF_RAFT};
use crate::codec;
use crate::raft::types::{Entry, LogId, StorageError, TypeConfig, Vote};

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"purged";

/// The newest entries, decoded and encoded: a contiguous suffix of the log.
///
/// Each entry is kept with the size it was counted with, and `bytes` is always the
/// sum of those sizes: every removal subtracts exactly what was added.
#[derive(Default)]
struct EntryCache {
    entries: BTreeMap<u64, (Entry, Bytes, usize)>,
    bytes: usize,
    /// On a follower: the bytes entries arrived in from the leader (each as
    /// [`codec::encode`] writes it), offered for the append that follows to write
    /// instead of encoding the entries again ([`EncodedEntries::offer`]). Held only
    /// while the peer channel's request is handled.
    received: BTreeMap<u64, (LogId, Bytes)>,
}

/// At most this many bytes of entries (by their encoded size) are cached: enough
/// for the entries still being replicated and applied (a few batches of at most
/// `--max-batch-bytes` each); older ones are read back from RocksDB when a follower
/// lags. Every byte here is held again by the state once applied, so a larger cache
/// costs memory per queued task for no gain.
const CACHE_BYTES: usize = 16 << 20;

impl EntryCache {
    /// Caches an entry with its encoding; counted twice its encoded size (held
    /// decoded and encoded).
    fn push(&mut self, entry: Entry, encoded: Bytes) {
        let size = 2 * encoded.len();
        if let Some((_, _, old)) = self
            .entries
            .insert(entry.log_id.index, (entry, encoded, size))
        {
            self.bytes -= old;
        }
        self.bytes += size;
        while self.bytes > CACHE_BYTES && self.entries.len() > 1 {
            let (_, (_, _, old)) = self.entries.pop_first().expect("non-empty");
            self.bytes -= old;
        }
    }

    /// The encoded bytes of the entry with this log id, if cached.
    fn encoded(&self, log_id: &LogId) -> Option<Bytes> {
        match self.entries.get(&log_id.index) {
            Some((entry, encoded, _)) if entry.log_id == *log_id => Some(encoded.clone()),
            _ => None,
        }
    }

    /// The cached entries of `[start, end)`, if the cache covers `start`.
    fn get(&self, start: u64, end: Option<u64>) -> Option<Vec<Entry>> {
        let first = *self.entries.keys().next()?;
        if start < first {
            return None;
        }
        let range = match end {
            Some(end) if end <= start => return Some(Vec::new()),
            Some(end) => self.entries.range(start..end),
            None => self.entries.range(start..),
        };
        Some(range.map(|(_, (e, _, _))| e.clone()).collect())
    }

    fn truncate_from(&mut self, index: u64) {
        let removed = self.entries.split_off(&index);
        self.bytes -= removed.values().map(|(_, _, size)| size).sum::<usize>();
    }

    fn purge_upto(&mut self, index: u64) {
        let kept = self.entries.split_off(&(index + 1));
        let purged = std::mem::replace(&mut self.entries, kept);
        self.bytes -= purged.values().map(|(_, _, size)| size).sum::<usize>();
    }

    /// What the cache believes it holds, and the encoded size of what it does hold.
    #[cfg(test)]
    fn accounting(&self) -> (usize, usize) {
        let encoded = self.entries.values().map(|(e, bytes, _)| {
            assert_eq!(
                bytes.as_ref(),
                codec::encode(e),
                "the cached bytes encode the entry"
            );
            2 * bytes.len()
        });
        (self.bytes, encoded.sum())
    }
}

/// A read handle on the log store's cache of encoded entries, for the network.
#[derive(Clone)]
pub struct EncodedEntries(Arc<Mutex<EntryCache>>);

impl EncodedEntries {
    /// The bytes the entry with this log id was written to the log as (what
    /// [`codec::encode`] gives for it), if it is still cached. A log id names one
    /// entry only: an entry truncated and replaced has another.
    pub fn get(&self, log_id: &LogId) -> Option<Bytes> {
        self.0.lock().expect("cache lock").encoded(log_id)
    }

    /// Offers the bytes these entries arrived in (each exactly as [`codec::encode`]
    /// writes the entry with that log id), so that appending them writes those
    /// bytes instead of encoding each entry again; withdrawn when the returned
    /// guard drops, once openraft has handled the request. A log id names one
    /// entry, so an offer can never stand for another entry.
    pub fn offer(&self, entries: impl IntoIterator<Item = (LogId, Bytes)>) -> Offered {
        let mut cache = self.0.lock().expect("cache lock");
        let mut ids = Vec::new();
        for (log_id, bytes) in entries {
            cache.received.insert(log_id.index, (log_id, bytes));
            ids.push(log_id);
        }
        Offered {
            cache: self.0.clone(),
            ids,
        }
    }
}

/// Entries offered to the next append ([`EncodedEntries::offer`]); dropping it
/// withdraws those the append did not take.
pub struct Offered {
    cache: Arc<Mutex<EntryCache>>,
    ids: Vec<LogId>,
}

impl Drop for Offered {
    fn drop(&mut self) {
        let mut cache = self.cache.lock().expect("cache lock");
        for id in &self.ids {
            if cache.received.get(&id.index).is_some_and(|(l, _)| l == id) {
                cache.received.remove(&id.index);
            }
        }
    }
}

/// The log store. Cheap to clone: clones share the database and the cache.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    cache: Arc<Mutex<EntryCache>>,
}

/// Runs blocking work: in place on a multi-threaded runtime (other tasks move to
/// other threads meanwhile), directly otherwise.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Runs a synced write (see the module doc): in place while another worker can run
/// the node's other tasks, in `block_in_place` on a runtime of one worker, directly
/// off a multi-threaded runtime.
fn synced_write<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h)
            if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
                && h.metrics().num_workers() < 2 =>
        {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

fn synced() -> WriteOptions {
    let mut o = WriteOptions::default();
    o.set_sync(true);
    o
}

impl LogStore {
    /// The cache's byte count and the encoded size of the entries it holds (equal
    /// unless its accounting drifted), and how many entries it holds.
    #[cfg(test)]
    pub(super) fn cache_accounting(&self) -> (usize, usize, usize) {
        let cache = self.cache.lock().expect("cache lock");
        let (bytes, encoded) = cache.accounting();
        (bytes, encoded, cache.entries.len())
    }

    /// How many offered entry bytes are held.
    #[cfg(test)]
    pub(super) fn offers_held(&self) -> usize {
        self.cache.lock().expect("cache lock").received.len()
    }

    pub(super) fn new(db: Arc<DB>) -> Self {
        LogStore {
            db,
            cache: Arc::default(),
        }
    }

    /// The encoded entries this store caches, for the network to send.
    pub fn encoded_entries(&self) -> EncodedEntries {
        EncodedEntries(self.cache.clone())
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        let cf = self.db.cf_handle(CF_RAFT).expect("raft column family");
        let bytes = self
            .db
            .get_cf(cf, key)
            .map_err(|e| StorageIOError::read(&e))?;
        bytes
            .map(|b| codec::decode(&b).map_err(|e| StorageIOError::read(&e).into()))
            .transpose()
    }

    /// Writes a batch, synced or not.
    async fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), rocksdb::Error> {
        synced_write(|| {
            if sync {
                self.db.write_opt(batch, &synced())
            } else {
                self.db.write(batch)
            }
        })
    }

    fn put_meta<T: Serialize>(&self, batch: &mut WriteBatch, key: &[u8], value: &T) {
        let cf = self.db.cf_handle(CF_RAFT).expect("raft column family");
        batch.put_cf(cf, key, codec::encode(value));
    }

    fn last_entry(&self) -> Result<Option<Entry>, StorageError> {
        let cf = self.db.cf_handle(CF_LOG).expect("log column family");
        match self.db.iterator_cf(cf, IteratorMode::End).next() {
            None => Ok(None),
            Some(item) => {
                let (_, bytes) = item.map_err(|e| StorageIOError::read_logs(&e))?;
                Ok(Some(
                    codec::decode(&bytes).map_err(|e| StorageIOError::read_logs(&e))?,
                ))
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&x) => x,
            Bound::Excluded(&x) => x + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&x) => Some(x.saturating_add(1)),
            Bound::Excluded(&x) => Some(x),
            Bound::Unbounded => None,
        };
        if let Some(cached) = self.cache.lock().expect("cache lock").get(start, end) {
            return Ok(cached);
        }
        blocking(|| {
            let cf = self.db.cf_handle(CF_LOG).expect("log column family");
            let mut out = Vec::new();
            for item in self.db.iterator_cf(
                cf,
                IteratorMode::From(&index_key(start), Direction::Forward),
            ) {
                let (key, bytes) = item.map_err(|e| StorageIOError::read_logs(&e))?;
                let index = u64::from_be_bytes(key.as_ref().try_into().map_err(|_| {
                    StorageIOError::read_logs(openraft::AnyError::error("malformed log key"))
                })?);
                if end.is_some_and(|end| index >= end) {
                    break;
                }
                let entry: Entry = codec::decode(&bytes)
                    .map_err(|e| StorageIOError::read_log_at_index(index, &e))?;
                out.push(entry);
            }
            Ok(out)
        })
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.get_meta(KEY_PURGED)?;
        let last = self.last_entry()?.map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        self.put_meta(&mut batch, KEY_VOTE, vote);
        self.write(batch, true)
            .await
            .map_err(|e| StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(KEY_VOTE)
    }

    /// The committed id lets a restarted node re-apply up to it before it hears from
    /// the leader. It needs no sync: losing it only delays that.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        self.put_meta(&mut batch, KEY_COMMITTED, &committed);
        self.write(batch, false)
            .await
            .map_err(|e| StorageIOError::write(&e))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let cf = self.db.cf_handle(CF_LOG).expect("log column family");
        // The bytes a follower received the entries in, where offered (taken under
        // the lock); the others are encoded outside it.
        let offered: Vec<(Entry, Option<Bytes>)> = {
            let mut cache = self.cache.lock().expect("cache lock");
            entries
                .into_iter()
                .map(|entry| {
                    let bytes = match cache.received.remove(&entry.log_id.index) {
                        Some((log_id, bytes)) if log_id == entry.log_id => Some(bytes),
                        _ => None,
                    };
                    (entry, bytes)
                })
                .collect()
        };
        let appended: Vec<(Entry, Bytes)> = offered
            .into_iter()
            .map(|(entry, bytes)| {
                let bytes = bytes.unwrap_or_else(|| Bytes::from(codec::encode_sized(&entry)));
                (entry, bytes)
            })
            .collect();
        let size: usize = appended
            .iter()
            .map(|(_, bytes)| 8 + bytes.len() + BATCH_RECORD_OVERHEAD)
            .sum();
        // Sized up front (an 8-byte index key, the entry, the put's own bytes): a
        // batch of large entries would otherwise regrow and copy RocksDB's buffer.
        let mut batch = WriteBatch::with_capacity_bytes(BATCH_HEADER + size);
        for (entry, bytes) in &appended {
            batch.put_cf(cf, index_key(entry.log_id.index), bytes);
        }
        // The callback fires only once the batch is on disk.
        let result = self.write(batch, true).await;
        match result {
            Ok(()) => {
                let mut cache = self.cache.lock().expect("cache lock");
                for (entry, bytes) in appended {
                    // Appends are contiguous; anything cached at or after them is stale.
                    cache.truncate_from(entry.log_id.index);
                    cache.push(entry, bytes);
                }
                drop(cache);
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(&e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let cf = self.db.cf_handle(CF_LOG).expect("log column family");
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf, index_key(log_id.index), index_key(u64::MAX));
        batch.delete_cf(cf, index_key(u64::MAX));
        self.cache
            .lock()
            .expect("cache lock")
            .truncate_from(log_id.index);
        self.write(batch, true)
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let cf = self.db.cf_handle(CF_LOG).expect("log column family");
        let mut batch = WriteBatch::default();
        self.put_meta(&mut batch, KEY_PURGED, &log_id);
        batch.delete_range_cf(cf, index_key(0), index_key(log_id.index + 1));
        self.write(batch, true)
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.cache
            .lock()
            .expect("cache lock")
            .purge_upto(log_id.index);
        Ok(())
    }
}
