//! The state-machine store: applies committed entries to the in-memory
//! [`State`], persists what changed (in groups of entries, [`super::group_write`]),
//! and shares the applied state with readers.
//!
//! See the module documentation of [`crate::store`] for why the state is held both in
//! memory and in RocksDB. Readers go through [`AppliedState`]: a read lock held only
//! for a lookup, the applied index as a `watch` (for long polls and read-index waits),
//! the task transitions as a `broadcast`, the recent ones with their ids in an
//! [`EventWindow`] (what event streams read and resume from) and, per miner, the index
//! of the last change that concerned it ([`MinerChanges`], for miners' long polls).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageIOError};
use rocksdb::{IteratorMode, DB};
use tokio::sync::{broadcast, watch};

use super::event_window::{self, EventId, EventWindow, Recorded};
use super::group_write::{GroupWriter, Grouping};
use super::miner_changes::{self, MinerChanges};
use super::snapshot::{SnapshotBuilder, SnapshotFiles};
use super::{OpenError, CF_PAYLOADS, CF_STATE, CF_TASKS};
use crate::codec;
use crate::machine::{Event, Key, MinerId, MinerState, PayloadAt, Record, State, TaskId};
use crate::raft::types::{
    BatchResult, Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

/// Keys of the state families. Records sort as header, sessions, miners, tasks,
/// idempotency keys, then the payloads of tasks: raw bytes, not records, under keys
/// of their own after every record. Each key lives in the family [`keys::family`]
/// names by its first byte: tasks in `tasks`, payloads in `payloads` (so loading the
/// state never reads a payload: see `crate::machine::PayloadAt`), the rest in `state`.
/// Snapshots hold the keys of all three (their tags tell them apart).
pub(super) mod keys {
    use crate::machine::{Key, TaskId};
    use crate::store::{CF_PAYLOADS, CF_STATE, CF_TASKS};

    pub const APPLIED: &[u8] = &[0, b'a'];
    pub const MEMBERSHIP: &[u8] = &[0, b'm'];
    /// Everything of the family lies in `[FIRST, END)`.
    pub const FIRST: &[u8] = &[0];
    pub const END: &[u8] = &[0xff];
    /// The first byte of a task's record key, and of a payload key: what
    /// [`family`] sorts keys by.
    const TASK_TAG: u8 = 4;
    const PAYLOAD_TAG: u8 = 6;
    /// Every payload key lies in `[PAYLOADS, END)`, after every record.
    pub const PAYLOADS: &[u8] = &[PAYLOAD_TAG];

    /// The key of a task's payload: the task's id, in order, so a miner's
    /// assignments (tasks of nearby ids) read nearby keys.
    pub fn payload(id: TaskId) -> [u8; 9] {
        let mut out = [PAYLOAD_TAG; 9];
        out[1..].copy_from_slice(&id.0.to_be_bytes());
        out
    }

    pub fn is_payload(key: &[u8]) -> bool {
        key.first() == Some(&PAYLOADS[0])
    }

    /// The family a key of the state is kept in.
    pub fn family(key: &[u8]) -> &'static str {
        match key.first() {
            Some(&TASK_TAG) => CF_TASKS,
            Some(&PAYLOAD_TAG) => CF_PAYLOADS,
            _ => CF_STATE,
        }
    }

    pub fn record(key: Key) -> Vec<u8> {
        let (tag, id) = match key {
            Key::Header => return vec![1],
            Key::Session(id) => (2, id.0),
            Key::Miner(id) => (3, id.0),
            Key::Task(id) => (TASK_TAG, id.0),
            Key::Payload(id) => return payload(id).to_vec(),
            Key::Idempotency(session, hash) => {
                let mut out = Vec::with_capacity(41);
                out.push(5);
                out.extend_from_slice(&session.0.to_be_bytes());
                out.extend_from_slice(&hash);
                return out;
            }
        };
        let mut out = Vec::with_capacity(9);
        out.push(tag);
        out.extend_from_slice(&id.to_be_bytes());
        out
    }

    pub fn is_meta(key: &[u8]) -> bool {
        key.first() == Some(&0)
    }
}

/// What event streams are told, in the order it was applied.
#[derive(Clone, Debug)]
pub enum Published {
    /// A transition of a task, with the log index of the entry that caused it.
    Transition { index: u64, event: Event },
    /// The whole state was replaced by a snapshot up to `index` (a node far behind
    /// catching up): the transitions in between were not applied here one by one.
    SnapshotInstalled { index: u64 },
}

/// The applied state, shared by the state-machine store (the only writer) and readers.
pub struct AppliedState {
    state: RwLock<State>,
    /// Where the payloads the state no longer holds are read from.
    db: Arc<DB>,
    applied: watch::Sender<u64>,
    events: broadcast::Sender<Arc<Published>>,
    window: EventWindow,
    miners: MinerChanges,
}

impl AppliedState {
    /// What RocksDB holds in memory now, by pool (for `/metrics`).
    pub fn store_memory(&self) -> super::StoreMemory {
        super::memory::measure(&self.db)
    }

    fn new(state: State, applied: u64, db: Arc<DB>) -> Self {
        let (events, _) = broadcast::channel(16 * 1024);
        AppliedState {
            state: RwLock::new(state),
            db,
            applied: watch::Sender::new(applied),
            events,
            window: EventWindow::new(event_window::DEFAULT_CAPACITY, applied),
            miners: MinerChanges::new(applied),
        }
    }

    /// The last applied index at which `miner`'s assignment list may have changed
    /// (a transition of a task it holds or held a slot of, or the miner declared gone
    /// or forgotten); derived on this node, never lower than where it started from.
    pub fn miner_changed_at(&self, miner: MinerId) -> u64 {
        self.miners.changed_at(miner)
    }

    /// Changes of [`Self::miner_changed_at`] for one miner the state holds; `None`
    /// for one it no longer holds. The state is looked at after subscribing, so a
    /// watch racing the miner's purge (which forgets the miner after taking it out
    /// of the state) leaves no entry behind: either the purge's forget comes after
    /// the subscription, or this look sees the miner gone and forgets it again.
    pub fn watch_miner(&self, miner: MinerId) -> Option<watch::Receiver<u64>> {
        let changes = self.miners.subscribe(miner);
        if self.read(|s| s.miner(miner).is_some()) {
            Some(changes)
        } else {
            drop(changes);
            self.miners.forget(miner);
            None
        }
    }

    /// How many miners the change index tracks.
    #[cfg(test)]
    pub(super) fn tracked_miners(&self) -> usize {
        self.miners.tracked()
    }

    /// Runs `f` on the applied state under a read lock; keep `f` short.
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.state.read().expect("state lock"))
    }

    /// The payloads of tasks, given where [`State::payload_at`] found each under the
    /// read lock: the copies taken then, the written ones read from the `payloads`
    /// family (one batched read, outside the lock). `None` for a task without a payload,
    /// including one that finished or was purged (deleting its payload) since.
    pub fn payloads(&self, at: Vec<(TaskId, PayloadAt)>) -> Result<Vec<Option<Vec<u8>>>, String> {
        let stored: Vec<[u8; 9]> = at
            .iter()
            .filter(|(_, at)| *at == PayloadAt::Stored)
            .map(|(id, _)| keys::payload(*id))
            .collect();
        let mut read = if stored.is_empty() {
            Vec::new()
        } else {
            let cf = self
                .db
                .cf_handle(CF_PAYLOADS)
                .expect("payloads column family");
            self.db.batched_multi_get_cf(cf, &stored, false)
        }
        .into_iter();
        at.into_iter()
            .map(|(id, at)| match at {
                PayloadAt::Absent => Ok(None),
                PayloadAt::Here(bytes) => Ok(Some(bytes)),
                PayloadAt::Stored => match read.next().expect("one read per stored payload") {
                    Ok(found) => Ok(found.map(|b| b.to_vec())),
                    Err(e) => Err(format!("reading the payload of {id}: {e}")),
                },
            })
            .collect()
    }

    /// Drops the in-memory copies of payloads the store has written.
    pub(super) fn release_payloads(&self, ids: Vec<TaskId>) {
        if !ids.is_empty() {
            self.state
                .write()
                .expect("state lock")
                .release_payloads(&ids);
        }
    }

    /// The index of the last applied log entry.
    pub fn applied_index(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Changes of the applied index.
    pub fn watch_applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Every task transition applied from now on, and every snapshot installed.
    pub fn subscribe_events(&self) -> broadcast::Receiver<Arc<Published>> {
        self.events.subscribe()
    }

    /// The recent task transitions with their ids, for event streams that resume.
    pub fn event_window(&self) -> &EventWindow {
        &self.window
    }

    /// Waits until the applied index reaches `index`; false on timeout.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> bool {
        let mut rx = self.applied.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|&applied| applied >= index))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// The state-machine store handed to openraft.
pub struct StateStore {
    db: Arc<DB>,
    shared: Arc<AppliedState>,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    files: Arc<SnapshotFiles>,
    /// Writes the changed records to the state families, in groups of entries.
    writer: Arc<GroupWriter>,
}

type Loaded = (State, Option<LogId>, StoredMembership);

/// Reads the applied state from the `state` and `tasks` families.
pub(super) fn load(db: &DB) -> Result<Loaded, String> {
    let mut last_applied = None;
    let mut membership = StoredMembership::default();
    let mut failed = None;
    // Read once, front to back, past the block cache; each record is decoded
    // straight into the state, never all held decoded (or encoded) beside it. The
    // payloads (a family of their own) are not read: they stay on disk.
    let read = || {
        let mut read = rocksdb::ReadOptions::default();
        read.fill_cache(false);
        read
    };
    let state = db.cf_handle(CF_STATE).expect("state column family");
    let tasks = db.cf_handle(CF_TASKS).expect("tasks column family");
    let mut items = db
        .iterator_cf_opt(state, read(), IteratorMode::Start)
        .chain(db.iterator_cf_opt(tasks, read(), IteratorMode::Start));
    let records = std::iter::from_fn(|| loop {
        let mut step = |item: Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>| -> Result<Option<Record>, String> {
            let (key, value) = item.map_err(|e| e.to_string())?;
            if key.as_ref() == keys::APPLIED {
                last_applied =
                    codec::decode(&value).map_err(|e| format!("last applied id: {e}"))?;
            } else if key.as_ref() == keys::MEMBERSHIP {
                membership = codec::decode(&value).map_err(|e| format!("membership: {e}"))?;
            } else {
                let record = codec::decode_record(&value)
                    .map_err(|e| format!("record {key:?}: {e}"))?;
                return Ok(Some(record));
            }
            Ok(None)
        };
        match step(items.next()?) {
            Ok(Some(record)) => return Some(record),
            Ok(None) => continue,
            Err(e) => {
                failed = Some(e);
                return None;
            }
        }
    });
    let state = State::from_records(records);
    match failed {
        Some(e) => Err(e),
        None => Ok((state, last_applied, membership)),
    }
}

/// Reads every payload once, front to back, with RocksDB's checksums on, and
/// returns how many bytes they hold.
///
/// Why: [`load`] never reads the `payloads` family (the state in memory keeps only
/// payload lengths), so without this a damaged payloads table would go unnoticed
/// until a miner's assignment list met it, long after the node had started and
/// reported itself ready. Reading the family at start refuses such a store, as a
/// damaged `state` or `tasks` table is refused. Past the block cache, with a large
/// readahead: the reads are sequential, and they run beside [`load`] (see
/// [`StateStore::open`]).
pub(super) fn verify_payloads(db: &DB) -> Result<u64, String> {
    let cf = db.cf_handle(CF_PAYLOADS).expect("payloads column family");
    let mut read = rocksdb::ReadOptions::default();
    read.fill_cache(false);
    read.set_verify_checksums(true);
    read.set_readahead_size(VERIFY_READAHEAD);
    let mut items = db.raw_iterator_cf_opt(cf, read);
    items.seek_to_first();
    let mut bytes = 0u64;
    while items.valid() {
        bytes += items.value().map_or(0, |v| v.len() as u64);
        items.next();
    }
    items
        .status()
        .map_err(|e| format!("payloads family: {e}"))?;
    Ok(bytes)
}

/// Readahead of [`verify_payloads`]: large reads of a sequential scan.
const VERIFY_READAHEAD: usize = 2 << 20;

impl StateStore {
    pub(super) async fn open(db: Arc<DB>, snapshot_dir: PathBuf) -> Result<Self, OpenError> {
        let files = SnapshotFiles::open(db.clone(), snapshot_dir.clone()).map_err(|source| {
            OpenError::Io {
                path: snapshot_dir.clone(),
                source,
            }
        })?;
        let files = Arc::new(files);
        let (loader, resumer) = (db.clone(), files.clone());
        let (state, last_applied, membership) = tokio::task::spawn_blocking(move || {
            resumer
                .resume_install()
                .map_err(|e| format!("finishing an interrupted snapshot install: {e}"))?;
            // The payloads are checked on a thread of their own while the records
            // load: two sequential reads of different files.
            let started = std::time::Instant::now();
            std::thread::scope(|scope| -> Result<Loaded, String> {
                let verified = scope.spawn(|| {
                    let bytes = verify_payloads(&loader)?;
                    Ok::<_, String>((bytes, started.elapsed()))
                });
                let loaded = load(&loader);
                let load_ms = started.elapsed().as_millis() as u64;
                let verified = verified
                    .join()
                    .unwrap_or_else(|_| Err("verifying the payloads panicked".into()));
                let loaded = loaded?;
                let (bytes, verify) = verified?;
                tracing::info!(
                    load_ms,
                    payload_bytes = bytes,
                    verify_ms = verify.as_millis() as u64,
                    "state loaded, payloads verified"
                );
                Ok(loaded)
            })
        })
        .await
        .expect("load task panicked")
        .map_err(|reason| OpenError::Corrupt {
            path: db.path().to_path_buf(),
            reason,
        })?;
        let applied = last_applied.map_or(0, |l| l.index);
        let shared = Arc::new(AppliedState::new(state, applied, db.clone()));
        let writer =
            GroupWriter::start(db.clone(), shared.clone(), last_applied, membership.clone());
        Ok(StateStore {
            db,
            shared,
            last_applied,
            membership,
            files,
            writer,
        })
    }

    /// When applied entries are written (the default suits a node; tests change it).
    pub fn set_grouping(&self, grouping: Grouping) {
        self.writer.set_grouping(grouping);
    }

    /// The read handle for the API.
    pub fn reader(&self) -> Arc<AppliedState> {
        self.shared.clone()
    }
}

impl RaftStateMachine<TypeConfig> for StateStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let mut results = Vec::new();
        let mut events = Vec::new();
        let mut recorded = Vec::new();
        // (miner, index) of every change that concerns a miner's assignment list.
        let mut touched: Vec<(MinerId, u64)> = Vec::new();
        // Event streams and long polls are rare; skip building events nobody reads.
        let publish = self.shared.events.receiver_count() > 0;
        let last_index;
        // Miners declared gone (or forgotten) learn it from their long poll at once.
        let mut forgotten = Vec::new();
        let full = {
            let mut state = self.shared.state.write().expect("state lock");
            let mut applied = 0u64;
            for entry in entries {
                applied += 1;
                let index = entry.log_id.index;
                self.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => results.push(BatchResult::default()),
                    EntryPayload::Normal(batch) => {
                        let outcomes = state.apply_batch(&batch);
                        // Ids: the entry's index and the position among its events.
                        let mut pos = 0u32;
                        for applied in outcomes.iter().flatten() {
                            for event in &applied.events {
                                touched.extend(
                                    miner_changes::concerned(&state, event)
                                        .into_iter()
                                        .map(|m| (m, index)),
                                );
                                recorded.push(Recorded {
                                    id: EventId { index, pos },
                                    event: event.clone(),
                                });
                                pos = pos.saturating_add(1);
                            }
                        }
                        let mut out = Vec::with_capacity(outcomes.len());
                        for outcome in outcomes {
                            out.push(outcome.map(|applied| {
                                if publish {
                                    events.extend(applied.events.into_iter().map(|event| {
                                        Arc::new(Published::Transition { index, event })
                                    }));
                                }
                                applied.response
                            }));
                        }
                        results.push(BatchResult(out));
                    }
                    EntryPayload::Membership(m) => {
                        self.membership = StoredMembership::new(Some(entry.log_id), m);
                        results.push(BatchResult::default());
                    }
                }
            }
            last_index = self.last_applied.map_or(0, |l| l.index);
            let dirty = state.take_dirty();
            for &key in &dirty {
                if let Key::Miner(id) = key {
                    match state.miner(id) {
                        None => forgotten.push(id),
                        Some(m) if m.state == MinerState::Gone => touched.push((id, last_index)),
                        Some(_) => {}
                    }
                }
            }
            // Still under the write lock: the pending group matches the state.
            self.writer
                .note(dirty, self.last_applied, &self.membership, applied)
        };
        if full {
            self.writer.write()?;
        }
        for (miner, index) in touched {
            self.shared.miners.touch(miner, index);
        }
        for miner in forgotten {
            self.shared.miners.forget(miner);
        }
        if let Some(last) = self.last_applied {
            self.shared.applied.send_replace(last.index);
        }
        self.shared.window.record(recorded);
        for event in events {
            let _ = self.shared.events.send(event);
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // The build's view must hold everything applied: openraft purges the log up
        // to the snapshot it builds (minus what it keeps), so the family must not
        // trail it. If this write fails, the view is older, never inconsistent.
        if let Err(e) = self.writer.write() {
            tracing::warn!(error = %e, "writing the applied state before a snapshot");
        }
        SnapshotBuilder::new(self.files.clone())
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let file = self
            .files
            .incoming()
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        // No group of the state being replaced may land on the installed family.
        self.writer.write()?;
        let (state, last_applied, membership) = self.files.install(meta, *snapshot).await?;
        self.writer.reset(last_applied, membership.clone());
        let old = std::mem::replace(&mut *self.shared.state.write().expect("state lock"), state);
        // Freeing a large state takes a while: not under the lock, not on this task.
        tokio::task::spawn_blocking(move || drop(old));
        self.last_applied = last_applied;
        self.membership = membership;
        let index = last_applied.map_or(0, |l| l.index);
        self.shared.read(|state| {
            self.shared
                .miners
                .reset(index, |m| state.miner(m).is_some())
        });
        self.shared.applied.send_replace(index);
        self.shared.window.reset(index);
        let _ = self
            .shared
            .events
            .send(Arc::new(Published::SnapshotInstalled { index }));
        tracing::info!(snapshot = %meta.snapshot_id, last = ?meta.last_log_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        self.files.current().await
    }
}

impl Drop for StateStore {
    /// A clean stop writes the pending group and flushes the (unlogged) state, so a
    /// restart need not replay.
    fn drop(&mut self) {
        if let Err(e) = self.writer.write() {
            tracing::warn!(error = %e, "writing the applied state on stop");
        }
        if let Err(e) = super::flush_state(&self.db) {
            tracing::warn!(error = %e, "flushing the state on stop");
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        self.build().await
    }
}

impl StateStore {
    /// The snapshot files, for tests that interleave a build with other work.
    #[cfg(test)]
    pub(super) fn snapshot_files(&self) -> Arc<SnapshotFiles> {
        self.files.clone()
    }

    /// Entries applied and not yet written to the state families.
    #[cfg(test)]
    pub(super) fn pending_entries(&self) -> u64 {
        self.writer.pending_entries()
    }

    /// The applied id written to the `state` family (memtable included).
    #[cfg(test)]
    pub(super) fn written_applied(&self) -> Option<LogId> {
        let cf = self.db.cf_handle(CF_STATE).expect("state column family");
        let bytes = self.db.get_cf(cf, keys::APPLIED).expect("read applied")?;
        codec::decode(&bytes).expect("decode applied")
    }

    /// Flushes the state families' memtables to their files (as RocksDB does when
    /// one fills), so a crash image holds what was written.
    #[cfg(test)]
    pub(super) fn flush_state_family(&self) {
        super::flush_state(&self.db).expect("flush state families");
    }

    /// The records of the current state and the payloads of its tasks (wherever
    /// they are: in memory or in the `payloads` family), for tests comparing replicas.
    pub fn state_bytes(&self) -> Vec<u8> {
        let (mut out, at) = self.shared.read(|s| (s.encode(), s.every_payload_at()));
        let ids: Vec<TaskId> = at.iter().map(|(id, _)| *id).collect();
        let payloads = self.shared.payloads(at).expect("read payloads");
        for (id, payload) in ids.into_iter().zip(payloads) {
            let payload = payload.unwrap_or_else(|| panic!("the payload of {id} is missing"));
            out.extend_from_slice(&id.0.to_le_bytes());
            out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
            out.extend_from_slice(&payload);
        }
        out
    }

    /// The store's RocksDB, for tests that look at the state families.
    #[cfg(test)]
    pub(super) fn db(&self) -> &DB {
        &self.db
    }

    /// Writes the pending group now, as a full group or the timer would.
    #[cfg(test)]
    pub(super) fn write_group(&self) {
        self.writer.write().expect("write the group");
    }
}
