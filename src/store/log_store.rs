//! The Raft log, the vote and the committed/purged markers, in RocksDB.
//!
//! Every write openraft relies on for safety is synced before it is reported done:
//! an append's callback fires only after its `WriteBatch` is synced; the vote,
//! truncation and purge are synced too. The blocking RocksDB calls run on the
//! blocking thread pool so the Raft core's runtime threads stay free.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageIOError};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{index_key, CF_LOG, CF_RAFT};
use crate::codec;
use crate::raft::types::{Entry, LogId, StorageError, TypeConfig, Vote};

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"purged";

/// The log store. Cheap to clone: clones share the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
}

fn synced() -> WriteOptions {
    let mut o = WriteOptions::default();
    o.set_sync(true);
    o
}

impl LogStore {
    pub(super) fn new(db: Arc<DB>) -> Self {
        LogStore { db }
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        let cf = self.db.cf_handle(CF_RAFT).expect("raft column family");
        let bytes = self.db.get_cf(cf, key).map_err(|e| StorageIOError::read(&e))?;
        bytes.map(|b| codec::decode(&b).map_err(|e| StorageIOError::read(&e).into())).transpose()
    }

    /// Writes a batch on the blocking pool, synced or not.
    async fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), rocksdb::Error> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            if sync {
                db.write_opt(batch, &synced())
            } else {
                db.write(batch)
            }
        })
        .await
        .expect("RocksDB write task panicked")
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
                Ok(Some(codec::decode(&bytes).map_err(|e| StorageIOError::read_logs(&e))?))
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
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let cf = db.cf_handle(CF_LOG).expect("log column family");
            let mut out = Vec::new();
            for item in db.iterator_cf(cf, IteratorMode::From(&index_key(start), Direction::Forward)) {
                let (key, bytes) = item.map_err(|e| StorageIOError::read_logs(&e))?;
                let index = u64::from_be_bytes(key.as_ref().try_into().map_err(|_| {
                    StorageIOError::read_logs(openraft::AnyError::error("malformed log key"))
                })?);
                if end.is_some_and(|end| index >= end) {
                    break;
                }
                let entry: Entry = codec::decode(&bytes).map_err(|e| StorageIOError::read_log_at_index(index, &e))?;
                out.push(entry);
            }
            Ok(out)
        })
        .await
        .expect("RocksDB read task panicked")
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.get_meta(KEY_PURGED)?;
        let last = self.last_entry()?.map(|e| e.log_id);
        Ok(LogState { last_purged_log_id, last_log_id: last.or(last_purged_log_id) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        self.put_meta(&mut batch, KEY_VOTE, vote);
        self.write(batch, true).await.map_err(|e| StorageIOError::write_vote(&e))?;
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
        self.write(batch, false).await.map_err(|e| StorageIOError::write(&e))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let cf = self.db.cf_handle(CF_LOG).expect("log column family");
        let mut batch = WriteBatch::default();
        for entry in entries {
            batch.put_cf(cf, index_key(entry.log_id.index), codec::encode(&entry));
        }
        // The callback fires only once the batch is on disk.
        let result = self.write(batch, true).await;
        match result {
            Ok(()) => {
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
        self.write(batch, true).await.map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let cf = self.db.cf_handle(CF_LOG).expect("log column family");
        let mut batch = WriteBatch::default();
        self.put_meta(&mut batch, KEY_PURGED, &log_id);
        batch.delete_range_cf(cf, index_key(0), index_key(log_id.index + 1));
        self.write(batch, true).await.map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}
