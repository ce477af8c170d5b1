//! Snapshots: a point-in-time copy of the state families (`state`, `tasks`,
//! `payloads`) in a file, built without stopping apply, streamed to lagging nodes and
//! installed atomically.
//!
//! File format: the magic `SQSNAP\0\x01`; then frames `[u32 key len][key][u32 value
//! len][value]`, family by family, each in key order (the applied log id and
//! membership are frames too; a key's first byte names its family, see
//! `keys::family`); then
//! `[u32 0xffffffff][u64 frame count][sha256 of everything before]`. A receiver checks
//! the count and the digest before it touches its state, so a truncated or corrupted
//! transfer is refused rather than installed.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use std::sync::Mutex;

use openraft::StorageIOError;
use rocksdb::{IteratorMode, WriteOptions, DB};
use sha2::{Digest, Sha256};

use super::install;
use super::state_store::keys;
use super::{CF_RAFT, CF_STATE, STATE_FAMILIES};
use crate::codec;
use crate::machine::State;
use crate::raft::types::{LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership};

pub(super) const MAGIC: &[u8; 8] = b"SQSNAP\x00\x01";
pub(super) const END: u32 = u32::MAX;
const KEY_CURRENT: &[u8] = b"snapshot";

/// The snapshot files of a node and the pointer to the current one.
pub struct SnapshotFiles {
    db: Arc<DB>,
    dir: PathBuf,
    seq: AtomicU64,
    /// The file a snapshot is being received into.
    receiving: Mutex<Option<PathBuf>>,
    /// Held while the current snapshot is compared and replaced, so a build that
    /// began before an install cannot put its older snapshot back over it; and while
    /// an install replaces the state families, so no build takes a view of them then.
    current_lock: Mutex<()>,
    /// Tests run this between taking a build's view and flushing the state, where
    /// apply may write concurrently.
    #[cfg(test)]
    pub(super) between_view_and_flush: Mutex<Option<Box<dyn FnOnce(&DB) + Send>>>,
}

/// Makes a directory's entries (a rename, a create, an unlink in it) durable.
pub(crate) fn sync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()?;
    #[cfg(test)]
    SYNCED_DIRS
        .lock()
        .expect("synced dirs")
        .push(dir.to_path_buf());
    Ok(())
}

/// Every directory [`sync_dir`] synced, in order (tests check renames are followed).
#[cfg(test)]
pub(super) static SYNCED_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Builds a snapshot off the apply path (openraft runs it in its own task).
pub struct SnapshotBuilder {
    files: Arc<SnapshotFiles>,
}

impl SnapshotBuilder {
    pub(super) fn new(files: Arc<SnapshotFiles>) -> Self {
        SnapshotBuilder { files }
    }

    pub(super) async fn build(&mut self) -> Result<Snapshot, StorageError> {
        let files = self.files.clone();
        let (meta, file) = tokio::task::spawn_blocking(move || files.build_blocking())
            .await
            .expect("snapshot task panicked")?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        })
    }
}

/// Writes through to a file while hashing.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Hashing<W> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.hash.update(bytes);
        self.inner.write_all(bytes)
    }
    fn frame(&mut self, key: &[u8], value: &[u8]) -> std::io::Result<()> {
        self.put(&(key.len() as u32).to_le_bytes())?;
        self.put(key)?;
        self.put(&(value.len() as u32).to_le_bytes())?;
        self.put(value)
    }
}

pub(super) fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl SnapshotFiles {
    pub(super) fn open(db: Arc<DB>, dir: PathBuf) -> std::io::Result<Self> {
        if !dir.exists() {
            std::fs::create_dir_all(&dir)?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(SnapshotFiles {
            db,
            dir,
            seq: AtomicU64::new(0),
            receiving: Mutex::new(None),
            current_lock: Mutex::new(()),
            #[cfg(test)]
            between_view_and_flush: Mutex::new(None),
        })
    }

    fn next_name(&self, what: &str) -> String {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        format!(
            "{what}-{millis}-{}",
            self.seq.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// A fresh file to receive a snapshot into.
    pub(super) async fn incoming(&self) -> std::io::Result<tokio::fs::File> {
        let path = self.dir.join(format!("{}.tmp", self.next_name("incoming")));
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await?;
        if let Some(old) = self.receiving.lock().expect("receiving lock").replace(path) {
            let _ = std::fs::remove_file(old);
        }
        Ok(file)
    }

    /// The current snapshot, if one was built or installed.
    pub(super) async fn current(&self) -> Result<Option<Snapshot>, StorageError> {
        let cf = self.db.cf_handle(CF_RAFT).expect("raft column family");
        let Some(bytes) = self
            .db
            .get_cf(cf, KEY_CURRENT)
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?
        else {
            return Ok(None);
        };
        let (meta, name): (SnapshotMeta, String) =
            codec::decode(&bytes).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        match tokio::fs::File::open(self.dir.join(&name)).await {
            Ok(file) => Ok(Some(Snapshot {
                meta,
                snapshot: Box::new(file),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageIOError::read_snapshot(Some(meta.signature()), &e).into()),
        }
    }

    /// The meta of the current snapshot, if any.
    fn current_meta(&self) -> std::io::Result<Option<(SnapshotMeta, String)>> {
        let cf = self.db.cf_handle(CF_RAFT).expect("raft column family");
        match self.db.get_cf(cf, KEY_CURRENT).map_err(io_err)? {
            Some(bytes) => Ok(Some(codec::decode(&bytes).map_err(io_err)?)),
            None => Ok(None),
        }
    }

    /// Makes `name` (already synced, its directory too) the current snapshot, unless
    /// the current one is newer: a build that took its view before an install must
    /// not replace the installed snapshot. Deletes the files that are not current.
    /// Returns whether `name` became current.
    fn set_current(&self, meta: &SnapshotMeta, name: &str) -> std::io::Result<bool> {
        let _guard = self.current_lock.lock().expect("current lock");
        let current = self.current_meta()?;
        if let Some((cur, _)) = &current {
            if cur.last_log_id > meta.last_log_id {
                tracing::info!(
                    snapshot = %meta.snapshot_id, current = %cur.snapshot_id,
                    "dropping a snapshot older than the current one"
                );
                std::fs::remove_file(self.dir.join(name))?;
                sync_dir(&self.dir)?;
                return Ok(false);
            }
        }
        let cf = self.db.cf_handle(CF_RAFT).expect("raft column family");
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db
            .put_cf_opt(cf, KEY_CURRENT, codec::encode(&(meta, name)), &opts)
            .map_err(io_err)?;
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let file_name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if file_name.ends_with(".snap") && file_name != name {
                std::fs::remove_file(&path)?;
            }
        }
        sync_dir(&self.dir)?;
        Ok(true)
    }

    fn build_blocking(&self) -> Result<(SnapshotMeta, File), StorageError> {
        let err = |e: std::io::Error| StorageError::from(StorageIOError::write_snapshot(None, &e));
        let cf = self.db.cf_handle(CF_STATE).expect("state column family");
        // The view first, then the flush: the state is written without a write-ahead
        // log, and openraft purges the log entries this snapshot covers (but for the
        // last 1,000), so the durable state must be at least as new as the view.
        // Flushing after the view writes out everything the view holds (and whatever
        // was applied since); flushing before it would leave entries applied in
        // between in the snapshot but only in the memtable, and a crash would then
        // leave a state older than the oldest log entry.
        // Never a view of a state family an install is replacing (see `install`).
        let view = {
            let _replacing = self.current_lock.lock().expect("current lock");
            self.db.snapshot()
        };
        #[cfg(test)]
        if let Some(hook) = self.between_view_and_flush.lock().expect("hook").take() {
            hook(&self.db);
        }
        super::flush_state(&self.db).map_err(io_err).map_err(err)?;
        let get = |key: &[u8]| view.get_cf(cf, key).map_err(io_err);
        let last_applied: Option<LogId> = match get(keys::APPLIED).map_err(err)? {
            Some(b) => codec::decode(&b).map_err(io_err).map_err(err)?,
            None => None,
        };
        let membership: StoredMembership = match get(keys::MEMBERSHIP).map_err(err)? {
            Some(b) => codec::decode(&b).map_err(io_err).map_err(err)?,
            None => StoredMembership::default(),
        };
        let id = match last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, self.next_name("s")),
            None => format!("none-{}", self.next_name("s")),
        };
        let name = format!("{}.snap", id.replace(['/', ' ', ':'], "_"));
        let tmp = self.dir.join(format!("{name}.tmp"));
        let file = File::create(&tmp).map_err(err)?;
        let mut out = Hashing {
            inner: BufWriter::with_capacity(1 << 20, file),
            hash: Sha256::new(),
        };
        out.put(MAGIC).map_err(err)?;
        let mut count = 0u64;
        // Read once, front to back: keep the block cache for what is read often.
        for name in STATE_FAMILIES {
            let family = self.db.cf_handle(name).expect("state column family");
            let mut read = rocksdb::ReadOptions::default();
            read.fill_cache(false);
            for item in view.iterator_cf_opt(family, read, IteratorMode::Start) {
                let (k, v) = item.map_err(io_err).map_err(err)?;
                out.frame(&k, &v).map_err(err)?;
                count += 1;
            }
        }
        let digest = out.hash.clone().finalize();
        let mut inner = out.inner;
        inner.write_all(&END.to_le_bytes()).map_err(err)?;
        inner.write_all(&count.to_le_bytes()).map_err(err)?;
        inner.write_all(&digest).map_err(err)?;
        let file = inner.into_inner().map_err(|e| err(e.into_error()))?;
        file.sync_all().map_err(err)?;
        let path = self.dir.join(&name);
        std::fs::rename(&tmp, &path).map_err(err)?;
        sync_dir(&self.dir).map_err(err)?;
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id: id,
        };
        let file = File::open(&path).map_err(err)?;
        if !self.set_current(&meta, &name).map_err(err)? {
            // An install replaced the state meanwhile: hand back the newer snapshot.
            let _guard = self.current_lock.lock().expect("current lock");
            return match self.current_meta().map_err(err)? {
                Some((meta, name)) => Ok((meta, File::open(self.dir.join(name)).map_err(err)?)),
                None => Err(err(io_err("the current snapshot vanished"))),
            };
        }
        tracing::info!(snapshot = %meta.snapshot_id, records = count, "built snapshot");
        Ok((meta, file))
    }

    /// Checks a received snapshot, replaces the state families with it, makes it the
    /// current snapshot and returns the state it holds. Streams: neither the file nor
    /// the records are ever held whole (see [`super::install`]).
    pub(super) async fn install(
        self: &Arc<Self>,
        meta: &SnapshotMeta,
        file: tokio::fs::File,
    ) -> Result<(State, Option<LogId>, StoredMembership), StorageError> {
        let err = |e: std::io::Error| {
            StorageError::from(StorageIOError::read_snapshot(Some(meta.signature()), &e))
        };
        let mut received = file.into_std().await;
        let files = self.clone();
        let expected = meta.last_log_id;
        let name = format!("{}.snap", meta.snapshot_id.replace(['/', ' ', ':'], "_"));
        let (tmp, path) = (self.dir.join(format!("{name}.tmp")), self.dir.join(&name));
        let marker = codec::encode(&(meta, &name));
        let installed = tokio::task::spawn_blocking(move || {
            // Keep a copy as this node's current snapshot, so it can serve it in turn
            // (and finish the install from it after a stop).
            use std::io::Seek;
            received.seek(std::io::SeekFrom::Start(0))?;
            let mut copy = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            std::io::copy(&mut received, &mut copy)?;
            drop(received);
            copy.sync_all()?;
            let installed = install::decode(copy, expected)?;
            // No build takes a view of the half-written family, nor makes another
            // snapshot current (deleting this file) until the marker names it.
            let _replacing = files.current_lock.lock().expect("current lock");
            std::fs::rename(&tmp, &path)?;
            sync_dir(path.parent().expect("snapshot dir"))?;
            install::begin(&files.db, &marker)?;
            install::fill(&files.db, &path)?;
            Ok::<_, std::io::Error>(installed)
        })
        .await
        .expect("snapshot task panicked")
        .map_err(err)?;
        self.set_current(meta, &name).map_err(err)?;
        if let Some(path) = self.receiving.lock().expect("receiving lock").take() {
            let _ = std::fs::remove_file(path);
        }
        Ok(installed)
    }

    /// Finishes an install a stop interrupted (see [`super::install`]); run at open,
    /// before the state is loaded.
    pub(super) fn resume_install(&self) -> std::io::Result<()> {
        if let Some((meta, name)) = install::resume(&self.db, &self.dir)? {
            self.set_current(&meta, &name)?;
        }
        Ok(())
    }
}
