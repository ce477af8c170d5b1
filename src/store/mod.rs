//! Durable storage of a node: one RocksDB holding the Raft log, the Raft metadata and
//! the applied state machine, plus snapshot files beside it.
//!
//! Column families:
//! - `log`: log index (big-endian u64) → encoded entry;
//! - `raft`: the vote, the committed and purged log ids, the current snapshot's meta;
//! - `state`: the state machine's small records (header, sessions, miners,
//!   idempotency keys) and, in the same write, the last applied log id and membership;
//! - `tasks`: the records of tasks, by id;
//! - `payloads`: the payloads of tasks, raw, by id (the state in memory keeps only
//!   their lengths, see [`crate::machine::PayloadAt`]).
//!
//! Why three families for the state: the header, the sessions and the applied id
//! change with every group write, tasks and payloads arrive in id order. In one
//! family the few hot keys sorted before every task, so each flushed file spanned the
//! whole key range and every compaction into the base level rewrote all of it,
//! payloads included (about a fifth of a follower's CPU under batch submits). Apart,
//! a flush of the `tasks` and `payloads` families holds a range of new ids after
//! everything below it, and RocksDB moves such files down without rewriting them;
//! only the small `state` family is rewritten. The families are written together
//! (one `WriteBatch` per group) and flushed together (`atomic_flush`: they have no
//! write-ahead log, so a crash must never find one flushed without the others), so
//! the applied id in `state` always describes `tasks` and `payloads` too.
//!
//! Why the state machine lives in RocksDB and in memory both: the in-memory
//! [`crate::machine::State`] serves reads and applies commands in microseconds; the
//! records that applied entries changed are written to the state families in groups
//! (the changes of many entries, each record once, in one `WriteBatch` together with
//! the last applied log id: see [`group_write`]), so the on-disk state is always a
//! consistent prefix of the log. A restart loads the records
//! (about a second per million tasks), reads the payloads through once beside that
//! so a damaged payloads table is refused at start like any other table of the state
//! (the load itself never reads a payload), and replays only the log entries after
//! the last applied one, never twice. A snapshot is a RocksDB point-in-time view of
//! the state families streamed to a file, so building one never blocks apply nor sees a
//! half-applied entry.
//!
//! Durability: log appends, vote, truncate and purge are written with `sync`; the
//! completion callback of an append fires only after that sync. State-machine writes
//! skip the write-ahead log (half the bytes on the fsync path): a crash loses at most
//! the newest applied state (the unwritten group and the memtables), consistently
//! (whole batches, the three state families flushed atomically), and openraft
//! replays it from the synced log. The
//! log is purged only up to a snapshot, and building a snapshot writes the pending
//! group before it takes its view and flushes the state families right after, so
//! the durable state is never older than a snapshot and a replay never needs a
//! purged entry. Every rename (identity file, snapshot files) is followed by an fsync
//! of its directory, so a power loss cannot undo it after it was relied upon.

pub mod cluster_file;
mod event_window;
mod group_write;
mod install;
mod log_store;
mod memory;
mod miner_changes;
mod snapshot;
mod state_store;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, Options, DB};

pub use event_window::{
    EventId, EventWindow, Read as WindowRead, Recorded, Start as WindowStart,
    DEFAULT_CAPACITY as DEFAULT_EVENT_WINDOW,
};
pub use group_write::Grouping;
pub use log_store::{EncodedEntries, LogStore, Offered};
pub use memory::StoreMemory;
pub use state_store::{AppliedState, Published, StateStore};

pub(crate) const CF_LOG: &str = "log";
pub(crate) const CF_RAFT: &str = "raft";
pub(crate) const CF_STATE: &str = "state";
pub(crate) const CF_TASKS: &str = "tasks";
pub(crate) const CF_PAYLOADS: &str = "payloads";
/// The families of the applied state, written without write-ahead log and flushed
/// together (see the module documentation).
pub(crate) const STATE_FAMILIES: [&str; 3] = [CF_STATE, CF_TASKS, CF_PAYLOADS];

/// The bytes of an empty RocksDB `WriteBatch` (its sequence number and count), and
/// an upper bound of what one put adds beside its key and value (a type tag, the
/// column family id and three varint lengths): for sizing a batch up front, so that
/// RocksDB does not regrow and copy its buffer while a large batch is filled.
pub(crate) const BATCH_HEADER: usize = 12;
pub(crate) const BATCH_RECORD_OVERHEAD: usize = 16;

/// Flushes the memtables of the state families to table files, atomically (one
/// point of the write sequence for all three).
pub(crate) fn flush_state(db: &DB) -> Result<(), rocksdb::Error> {
    let cfs: Vec<_> = STATE_FAMILIES
        .iter()
        .map(|name| db.cf_handle(name).expect("state column family"))
        .collect();
    let refs: Vec<_> = cfs.iter().collect();
    db.flush_cfs_opt(&refs, &rocksdb::FlushOptions::default())
}

/// Identifies this data directory: written at creation, checked at every open.
const IDENTITY_FILE: &str = "IDENTITY";

/// Why a data directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("data directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "data directory {path} belongs to node {found} of cluster {found_cluster:?}, not node {expected} of cluster \
         {expected_cluster:?}; refusing to start (point --data-dir elsewhere, or wipe it if the node was removed)"
    )]
    Foreign {
        path: PathBuf,
        found: u64,
        found_cluster: String,
        expected: u64,
        expected_cluster: String,
    },
    #[error(
        "data directory {path} is not a Session Queue data directory ({reason}); refusing to start"
    )]
    Unrecognised { path: PathBuf, reason: String },
    #[error(
        "RocksDB at {path} could not be opened{}: {source}",
        corruption_hint(source)
    )]
    Rocks {
        path: PathBuf,
        source: rocksdb::Error,
    },
    #[error("state in {path} could not be read (corrupted?): {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

fn corruption_hint(e: &rocksdb::Error) -> &'static str {
    if e.kind() == rocksdb::ErrorKind::Corruption {
        " (its files are corrupted)"
    } else {
        ""
    }
}

/// Settings of the RocksDB a node opens.
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    /// Most table files RocksDB keeps open at once (its `max_open_files`), so the
    /// store always has descriptors left however many connections the node holds
    /// (see [`crate::descriptors`]).
    pub max_open_files: i32,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            max_open_files: 256,
        }
    }
}

/// Opens (or creates) the node's storage under `dir`.
///
/// `node_id` and `cluster` are checked against the identity the directory was created
/// with, so a node never starts on another node's (or another cluster's) data.
pub async fn open(
    dir: &Path,
    node_id: u64,
    cluster: &str,
) -> Result<(LogStore, StateStore), OpenError> {
    open_tuned(dir, node_id, cluster, Tuning::default()).await
}

/// [`open`] with the given RocksDB settings.
pub async fn open_tuned(
    dir: &Path,
    node_id: u64,
    cluster: &str,
    tuning: Tuning,
) -> Result<(LogStore, StateStore), OpenError> {
    let io = |source| OpenError::Io {
        path: dir.to_path_buf(),
        source,
    };
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(io)?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            snapshot::sync_dir(parent).map_err(io)?;
        }
    }
    check_identity(dir, node_id, cluster)?;
    let db = open_db(&dir.join("db"), tuning)?;
    let db = Arc::new(db);
    let log = LogStore::new(db.clone());
    let state = StateStore::open(db, dir.join("snapshots")).await?;
    Ok((log, state))
}

fn check_identity(dir: &Path, node_id: u64, cluster: &str) -> Result<(), OpenError> {
    let path = dir.join(IDENTITY_FILE);
    let expected = format!("session-queue node={node_id} cluster={cluster}\n");
    match std::fs::read_to_string(&path) {
        Ok(found) if found == expected => Ok(()),
        Ok(found) => {
            let parse = || -> Option<(u64, String)> {
                let rest = found.trim_end().strip_prefix("session-queue node=")?;
                let (node, cluster) = rest.split_once(" cluster=")?;
                Some((node.parse().ok()?, cluster.to_string()))
            };
            match parse() {
                Some((found, found_cluster)) => Err(OpenError::Foreign {
                    path: dir.to_path_buf(),
                    found,
                    found_cluster,
                    expected: node_id,
                    expected_cluster: cluster.to_string(),
                }),
                None => Err(OpenError::Unrecognised {
                    path: dir.to_path_buf(),
                    reason: format!("{IDENTITY_FILE} is malformed"),
                }),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let has_other = std::fs::read_dir(dir)
                .map_err(|source| OpenError::Io {
                    path: dir.to_path_buf(),
                    source,
                })?
                .next()
                .is_some();
            if has_other {
                return Err(OpenError::Unrecognised {
                    path: dir.to_path_buf(),
                    reason: format!("it is not empty and has no {IDENTITY_FILE} file"),
                });
            }
            // Written, synced, renamed into place and the rename made durable: a power
            // loss leaves either no identity (and nothing else) or the whole file.
            let tmp = dir.join(format!("{IDENTITY_FILE}.tmp"));
            std::fs::write(&tmp, expected.as_bytes())
                .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
                .and_then(|_| std::fs::rename(&tmp, &path))
                .and_then(|_| snapshot::sync_dir(dir))
                .map_err(|source| OpenError::Io {
                    path: dir.to_path_buf(),
                    source,
                })
        }
        Err(source) => Err(OpenError::Io {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

fn open_db(path: &Path, tuning: Tuning) -> Result<DB, OpenError> {
    // Damage RocksDB would take for a torn tail (see `wal_check`).
    match wal_check::damaged_wal(path) {
        Ok(None) => {}
        Ok(Some((log, at, next))) => {
            return Err(OpenError::Corrupt {
                path: path.to_path_buf(),
                reason: format!(
                    "write-ahead log {} is corrupt at byte {at}, and intact records follow at \
                     byte {next}: entries after the damage would be lost",
                    log.display()
                ),
            })
        }
        Err(source) => {
            return Err(OpenError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    }
    let mut opts = Options::default();
    opts.set_max_open_files(tuning.max_open_files.max(16));
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_max_background_jobs(2);
    opts.set_bytes_per_sync(1 << 20);
    // Keep the WAL small: the log family is short-lived (purged after snapshots).
    opts.set_max_total_wal_size(256 << 20);
    // Every Raft log write is synced, so only a torn last record (a write cut by a
    // power loss, never acknowledged) may be dropped at recovery. RocksDB's default
    // (point in time) also silently drops everything after a corrupted record in the
    // middle of the WAL: a node would restart without entries it had acknowledged.
    // Refuse to open instead.
    opts.set_wal_recovery_mode(rocksdb::DBRecoveryMode::TolerateCorruptedTailRecords);
    // The state families are written without write-ahead log: every flush, manual or
    // automatic, writes all of them at one point of the write sequence, so a crash
    // never finds tasks flushed with an older applied id, or the reverse.
    opts.set_atomic_flush(true);
    // Bounded memory (see `memory` in docs/PERFORMANCE.md): the state is also held
    // decoded in memory, so what RocksDB keeps is overhead. All memtables together
    // are capped (a full one is flushed when the sum passes the cap), and every
    // family shares one small block cache: the state family is read only at startup
    // and by snapshot builds (which bypass the cache), the log family mostly from the
    // log store's own cache of the newest entries.
    opts.set_db_write_buffer_size(MEMTABLES_BYTES);
    let cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES);
    let table = || {
        let mut t = rocksdb::BlockBasedOptions::default();
        t.set_block_cache(&cache);
        t
    };
    let mut log_opts = Options::default();
    log_opts.set_write_buffer_size(MEMTABLE_BYTES);
    log_opts.set_block_based_table_factory(&table());
    let mut raft_opts = Options::default();
    raft_opts.set_block_based_table_factory(&table());
    let state_opts = || {
        let mut o = Options::default();
        o.set_compression_type(rocksdb::DBCompressionType::Lz4);
        o.set_write_buffer_size(MEMTABLE_BYTES);
        o.set_block_based_table_factory(&table());
        o
    };
    let mut cfs = vec![
        ColumnFamilyDescriptor::new(CF_LOG, log_opts),
        ColumnFamilyDescriptor::new(CF_RAFT, raft_opts),
    ];
    cfs.extend(
        STATE_FAMILIES
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, state_opts())),
    );
    DB::open_cf_descriptors(&opts, path, cfs).map_err(|source| OpenError::Rocks {
        path: path.to_path_buf(),
        source,
    })
}

/// One memtable of the log or state family (RocksDB keeps up to two per family).
const MEMTABLE_BYTES: usize = 32 << 20;
/// All memtables together.
const MEMTABLES_BYTES: usize = 64 << 20;
/// The block cache all families share.
const BLOCK_CACHE_BYTES: usize = 16 << 20;

/// Big-endian key of a log index, so RocksDB's order is the log's order.
pub(crate) fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

mod wal_check;

#[cfg(test)]
mod install_tests;
#[cfg(test)]
mod payload_tests;
#[cfg(test)]
mod power_tests;
#[cfg(test)]
mod tests;
