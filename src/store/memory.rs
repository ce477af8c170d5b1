//! What RocksDB holds in memory, by pool, for `/metrics`: the memtables of every
//! family, the shared block cache (and what of it is pinned), and the index and
//! filter blocks of open table files. Each pool is bounded by the store's options
//! (see `open_db` in the parent module); a node whose resident memory grows while
//! these stay flat is growing elsewhere (the state, the allocator's retained pages).

use rocksdb::DB;

use super::{CF_LOG, CF_PAYLOADS, CF_RAFT, CF_STATE, CF_TASKS};

/// Bytes RocksDB holds in memory, by pool (RocksDB's own estimates).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreMemory {
    /// Active and immutable memtables of every family, not yet flushed.
    pub memtables: u64,
    /// The block cache all families share.
    pub block_cache: u64,
    /// The part of the block cache pinned by readers (not evictable now).
    pub block_cache_pinned: u64,
    /// Index and filter blocks of the open table files (outside the block cache).
    pub table_readers: u64,
}

/// Reads RocksDB's memory properties; a property RocksDB cannot answer counts 0.
pub(crate) fn measure(db: &DB) -> StoreMemory {
    let mut m = StoreMemory::default();
    let int = |cf: &str, name: &str| {
        db.cf_handle(cf)
            .and_then(|h| db.property_int_value_cf(&h, name).ok().flatten())
            .unwrap_or(0)
    };
    for cf in [CF_LOG, CF_RAFT, CF_STATE, CF_TASKS, CF_PAYLOADS] {
        m.memtables += int(cf, "rocksdb.cur-size-all-mem-tables");
        m.table_readers += int(cf, "rocksdb.estimate-table-readers-mem");
    }
    // One cache is shared: any family reports all of it.
    m.block_cache = int(CF_STATE, "rocksdb.block-cache-usage");
    m.block_cache_pinned = int(CF_STATE, "rocksdb.block-cache-pinned-usage");
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memtables_grow_with_unflushed_writes() {
        let dir = tempfile::tempdir().unwrap();
        let db = super::super::open_db(dir.path(), super::super::Tuning::default()).unwrap();
        let before = measure(&db);
        let cf = db.cf_handle(CF_STATE).unwrap();
        for i in 0u32..2000 {
            db.put_cf(&cf, i.to_be_bytes(), [7u8; 512]).unwrap();
        }
        let after = measure(&db);
        assert!(
            after.memtables >= before.memtables + 2000 * 512,
            "{before:?} -> {after:?}"
        );
    }
}
