//! Storage tests of what a crash or power loss may leave: the durable state never
//! older than a snapshot (whose log entries may be purged), a snapshot build racing
//! an install, renames followed by a directory sync, and the log cache's accounting.
//!
//! A crash image is a copy of the database files taken while it is open: what the
//! operating system has, without the memtables (the state family has no write-ahead
//! log, so what only a memtable holds is lost).

use std::path::Path;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, Membership, RaftLogReader, RaftSnapshotBuilder};
use tempfile::TempDir;

use super::snapshot::SYNCED_DIRS;
use super::state_store::keys;
use super::tests::snapshot_bytes;
use super::*;
use crate::machine::{Batch, Command, SessionSpec};
use crate::raft::types::{Entry, LogId};

fn log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

/// Entries 1..=n: a membership, a session, then empty batches.
fn entries(n: u64) -> Vec<Entry> {
    let spec = SessionSpec {
        max_queued_tasks: 1_000_000,
        ..super::tests::spec()
    };
    (1..=n)
        .map(|i| Entry {
            log_id: log_id(i),
            payload: match i {
                1 => EntryPayload::Membership(Membership::new(
                    vec![[1u64].into()],
                    std::collections::BTreeMap::new(),
                )),
                2 => EntryPayload::Normal(Batch {
                    limits: Default::default(),
                    now_ms: 1000,
                    commands: vec![Command::CreateSession(spec.clone())].into(),
                }),
                _ => EntryPayload::Normal(Batch {
                    limits: Default::default(),
                    now_ms: 1000 + i,
                    commands: vec![].into(),
                }),
            },
        })
        .collect()
}

/// Copies the database files as they are now (a crash image) and opens the copy.
///
/// RocksDB may flush while the files are copied. A crash leaves every table its
/// MANIFEST names (a table is synced before it is named), but a copy could take a
/// MANIFEST naming a table written after the directory was listed. So each pass
/// copies tables and logs first and the files that name them (MANIFEST, CURRENT)
/// last, and passes repeat until no file appeared during one.
fn crash_image(db_dir: &Path, into: &Path) -> rocksdb::DB {
    std::fs::create_dir_all(into).unwrap();
    let list = || -> std::collections::BTreeSet<std::ffi::OsString> {
        std::fs::read_dir(db_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect()
    };
    let names_others = |n: &std::ffi::OsString| {
        let n = n.to_string_lossy();
        n.starts_with("MANIFEST") || n == "CURRENT"
    };
    let mut listed = list();
    loop {
        let (last, first): (Vec<_>, Vec<_>) = listed.iter().partition(|n| names_others(n));
        for name in first.into_iter().chain(last) {
            match std::fs::copy(db_dir.join(name), into.join(name)) {
                Ok(_) => {}
                // RocksDB deleted an obsolete file (a flushed WAL, a compacted
                // table) between the listing and the copy: as if it went first.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("copying {}: {e}", db_dir.join(name).display()),
            }
        }
        let now = list();
        if now.is_subset(&listed) {
            break;
        }
        listed = now;
    }
    open_db(into, Tuning::default()).unwrap()
}

fn durable_applied(db: &rocksdb::DB) -> Option<LogId> {
    let cf = db.cf_handle(CF_STATE).unwrap();
    let bytes = db.get_cf(cf, keys::APPLIED).unwrap()?;
    crate::codec::decode(&bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_never_covers_state_that_is_not_on_disk() {
    let dir = TempDir::new().unwrap();
    let (_log, mut sm) = open(dir.path(), 1, "test").await.unwrap();
    sm.apply(entries(20)).await.unwrap();
    // Apply goes on while the snapshot is built: it writes a newer applied id (as
    // every apply does: no write-ahead log) between the build's view and its flush.
    *sm.snapshot_files().between_view_and_flush.lock().unwrap() = Some(Box::new(|db| {
        let cf = db.cf_handle(CF_STATE).unwrap();
        let mut opts = rocksdb::WriteOptions::default();
        opts.disable_wal(true);
        db.put_cf_opt(
            cf,
            keys::APPLIED,
            crate::codec::encode(&Some(log_id(40))),
            &opts,
        )
        .unwrap();
    }));
    let snapshot = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let image = TempDir::new().unwrap();
    let crashed = crash_image(&dir.path().join("db"), image.path());
    // openraft may now purge the log up to the snapshot: a restart from the durable
    // state must not need an entry at or before the snapshot's last one.
    let durable = durable_applied(&crashed);
    assert!(
        durable >= snapshot.meta.last_log_id,
        "the snapshot covers up to {:?}, the durable state only {durable:?}",
        snapshot.meta.last_log_id
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_that_began_before_an_install_does_not_replace_it() {
    // A snapshot at 30 from another node.
    let leader_dir = TempDir::new().unwrap();
    let (_llog, mut leader) = open(leader_dir.path(), 1, "test").await.unwrap();
    leader.apply(entries(30)).await.unwrap();
    let newer = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let newer_bytes = snapshot_bytes(newer.snapshot).await;

    // This node, at 10, begins a build; the newer snapshot is installed while the
    // build has its view but has not finished.
    let dir = TempDir::new().unwrap();
    let (_log, mut sm) = open(dir.path(), 2, "test").await.unwrap();
    sm.apply(entries(10)).await.unwrap();
    let files = sm.snapshot_files();
    let (meta, bytes) = (newer.meta.clone(), newer_bytes.clone());
    let installer = files.clone();
    let received = dir.path().join("received");
    *files.between_view_and_flush.lock().unwrap() = Some(Box::new(move |_db| {
        std::fs::write(&received, &bytes).unwrap();
        let file = tokio::fs::File::from_std(std::fs::File::open(&received).unwrap());
        tokio::runtime::Handle::current()
            .block_on(installer.install(&meta, file))
            .unwrap();
    }));
    let built = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    // The build hands back the installed snapshot, which stays current, file and all.
    assert_eq!(built.meta, newer.meta);
    let current = sm.get_current_snapshot().await.unwrap().expect("current");
    assert_eq!(current.meta, newer.meta);
    assert_eq!(snapshot_bytes(current.snapshot).await, newer_bytes);
    let snaps = std::fs::read_dir(dir.path().join("snapshots"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "snap")
        })
        .count();
    assert_eq!(snaps, 1, "the older built snapshot was left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renames_are_followed_by_a_sync_of_their_directory() {
    let root = TempDir::new().unwrap();
    let dir = root.path().join("node");
    let synced = |path: &Path| SYNCED_DIRS.lock().unwrap().iter().any(|d| d == path);
    let (_log, mut sm) = open(&dir, 1, "test").await.unwrap();
    // The identity file was renamed into the new data directory.
    assert!(synced(&dir), "the data directory was not synced");
    assert!(
        synced(root.path()),
        "the data directory's creation was not synced"
    );
    sm.apply(entries(5)).await.unwrap();
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert!(
        synced(&dir.join("snapshots")),
        "the snapshot directory was not synced after a snapshot's rename"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_cache_counts_exactly_what_it_holds() {
    let dir = TempDir::new().unwrap();
    let (mut log, _sm) = open(dir.path(), 1, "test").await.unwrap();
    let check = |log: &LogStore, entries: usize| {
        let (bytes, encoded, held) = log.cache_accounting();
        assert_eq!(held, entries);
        assert_eq!(bytes, encoded, "the cache's byte count drifted");
    };
    let all = entries(60);
    log.blocking_append(all[..40].to_vec()).await.unwrap();
    check(&log, 40);
    // A new leader overwrites the tail.
    log.truncate(log_id(31)).await.unwrap();
    check(&log, 30);
    log.blocking_append(all[30..50].to_vec()).await.unwrap();
    check(&log, 50);
    // Appending over cached entries (a follower re-receiving them).
    log.blocking_append(all[45..60].to_vec()).await.unwrap();
    check(&log, 60);
    log.purge(log_id(20)).await.unwrap();
    check(&log, 40);
}

/// Copies a data directory as a crash would leave it (see [`crash_image`]: what
/// only a memtable or the process's memory holds is lost) into `into`.
fn crash_copy(data_dir: &Path, into: &Path) {
    std::fs::create_dir_all(into.join("snapshots")).unwrap();
    std::fs::copy(data_dir.join("IDENTITY"), into.join("IDENTITY")).unwrap();
    drop(crash_image(&data_dir.join("db"), &into.join("db")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_groups_replays_the_log_to_the_same_state() {
    let entries = super::tests::workload(38); // 40 entries
                                              // A store that never crashes applies everything.
    let reference_dir = TempDir::new().unwrap();
    let (_rlog, mut reference) = open(reference_dir.path(), 1, "test").await.unwrap();
    reference.apply(entries.clone()).await.unwrap();

    // This one writes a group every 16 entries (never by time), applies the entries
    // in calls of 3, and crashes with 8 of them applied in memory only.
    let dir = TempDir::new().unwrap();
    let (mut log, mut sm) = open(dir.path(), 1, "test").await.unwrap();
    sm.set_grouping(grouping(16, std::time::Duration::from_secs(3600)));
    log.blocking_append(entries.clone()).await.unwrap();
    for chunk in entries.chunks(3) {
        sm.apply(chunk.to_vec()).await.unwrap();
    }
    assert_eq!(sm.state_bytes(), reference.state_bytes());
    // Groups close after the calls that reach 16 entries: after entries 18 and 36.
    assert_eq!(sm.written_applied(), Some(log_id(36)));
    assert_eq!(sm.pending_entries(), 4);
    sm.flush_state_family();
    let image = TempDir::new().unwrap();
    crash_copy(dir.path(), image.path());
    drop((log, sm));

    // The restarted node resumes from the written group and openraft re-applies
    // the rest of the log (applied here as its state machine worker would).
    let (mut log, mut sm) = open(image.path(), 1, "test").await.unwrap();
    let (applied, membership) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(36)), "the last written group");
    assert_eq!(membership.log_id(), &Some(log_id(1)));
    let next = applied.map_or(1, |l| l.index + 1);
    let rest = log
        .get_log_reader()
        .await
        .try_get_log_entries(next..=40)
        .await
        .unwrap();
    assert_eq!(rest.len(), 4);
    sm.apply(rest).await.unwrap();
    assert_eq!(sm.state_bytes(), reference.state_bytes());
    // And the records it writes are those of the reference, byte for byte.
    drop((log, sm));
    drop((_rlog, reference));
    let (ours, want) = (
        open_db(&image.path().join("db"), Tuning::default()).unwrap(),
        open_db(&reference_dir.path().join("db"), Tuning::default()).unwrap(),
    );
    assert_eq!(families(&ours), families(&want));
}

/// The contents of the state families, family by family.
fn families(db: &rocksdb::DB) -> Vec<Vec<(Box<[u8]>, Box<[u8]>)>> {
    STATE_FAMILIES
        .iter()
        .map(|name| {
            let cf = db.cf_handle(name).unwrap();
            db.iterator_cf(cf, rocksdb::IteratorMode::Start)
                .map(Result::unwrap)
                .collect()
        })
        .collect()
}

/// Entries 1..=n: a membership, a session, then one task a entry with a 1 MiB
/// payload (so a few dozen fill a memtable).
fn large_submits(n: u64) -> Vec<Entry> {
    let mut all = entries(2);
    all.extend((3..=n).map(|i| {
        Entry {
            log_id: log_id(i),
            payload: EntryPayload::Normal(Batch {
                limits: Default::default(),
                now_ms: 1000 + i,
                commands: vec![Command::SubmitTasks {
                    session: crate::machine::SessionId(1),
                    tasks: vec![crate::machine::NewTask {
                        payload: (0..1u32 << 20)
                            .map(|j| (j * 31 + i as u32) as u8)
                            .collect::<Vec<u8>>()
                            .into(),
                        priority: None,
                        idempotency_key: None,
                        queue_timeout_ms: None,
                    }],
                }]
                .into(),
            }),
        }
    }));
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_rocksdb_starts_itself_writes_the_state_families_at_one_entry() {
    // Every entry is a group of its own; nothing is flushed by hand. The payloads
    // family's memtable fills first (a 1 MiB payload, a short task record, a few
    // hot keys a group), and RocksDB flushes it on its own: without an atomic flush
    // the payloads would reach the disk without the tasks and applied id that
    // describe them (or, the other way round, an applied id without its tasks).
    let dir = TempDir::new().unwrap();
    let (_log, mut sm) = open(dir.path(), 1, "test").await.unwrap();
    sm.set_grouping(grouping(1, std::time::Duration::from_secs(3600)));
    let all = large_submits(48);
    for entry in &all {
        sm.apply(vec![entry.clone()]).await.unwrap();
    }
    let payloads_flushed = |db: &rocksdb::DB| {
        db.live_files()
            .unwrap()
            .iter()
            .any(|f| f.column_family_name == CF_PAYLOADS)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !payloads_flushed(sm.db()) {
        assert!(
            std::time::Instant::now() < deadline,
            "RocksDB did not flush the payloads family"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let image = TempDir::new().unwrap();
    let crashed = crash_image(&dir.path().join("db"), image.path());
    let durable = durable_applied(&crashed).expect("the flush wrote an applied id");
    assert!(durable.index < 48, "everything was flushed: {durable:?}");

    // A store that applied exactly the entries up to the durable applied id holds,
    // family by family, what the crash image holds.
    let reference_dir = TempDir::new().unwrap();
    let (_rlog, mut reference) = open(reference_dir.path(), 1, "test").await.unwrap();
    reference
        .apply(all[..durable.index as usize].to_vec())
        .await
        .unwrap();
    reference.write_group();
    assert_eq!(families(&crashed), families(reference.db()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_node_writes_its_group_within_the_delay() {
    let dir = TempDir::new().unwrap();
    let (_log, mut sm) = open(dir.path(), 1, "test").await.unwrap();
    sm.set_grouping(grouping(u64::MAX, std::time::Duration::from_millis(50)));
    sm.apply(super::tests::workload(3)).await.unwrap();
    assert_eq!(sm.pending_entries(), 5, "nothing full yet");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sm.written_applied() != Some(log_id(5)) {
        assert!(
            std::time::Instant::now() < deadline,
            "the group was not written in time: {:?}",
            sm.written_applied()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(sm.pending_entries(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_build_writes_the_pending_group_first() {
    let dir = TempDir::new().unwrap();
    let (_log, mut sm) = open(dir.path(), 1, "test").await.unwrap();
    sm.set_grouping(grouping(u64::MAX, std::time::Duration::from_secs(3600)));
    sm.apply(super::tests::workload(10)).await.unwrap();
    assert_eq!(sm.written_applied(), None);
    let snapshot = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(12)));
    let image = TempDir::new().unwrap();
    let crashed = crash_image(&dir.path().join("db"), image.path());
    assert_eq!(durable_applied(&crashed), Some(log_id(12)));
}

/// A grouping bounded only by `max_entries` and `max_delay`.
fn grouping(max_entries: u64, max_delay: std::time::Duration) -> Grouping {
    Grouping {
        max_entries,
        max_records: usize::MAX,
        max_delay,
    }
}
