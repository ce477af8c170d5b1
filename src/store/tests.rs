//! Storage tests: openraft's conformance suite on our stores, restart without double
//! apply, snapshot round trip with real state, and refusal of foreign or corrupted
//! data directories.

use std::collections::BTreeMap;

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, EntryPayload, Membership, RaftLogReader, RaftSnapshotBuilder};
use tempfile::TempDir;

use super::*;
use crate::codec;
use crate::machine::{Batch, Command, NewTask, Response, SessionSpec};
use crate::raft::types::{Entry, LogId, StorageError, TypeConfig};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateStore, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateStore), StorageError> {
        let dir = TempDir::new().expect("temp dir");
        let (log, state) = open(dir.path(), 1, "test").await.expect("open store");
        Ok((dir, log, state))
    }
}

#[test]
fn openraft_storage_suite_passes() -> Result<(), StorageError> {
    Suite::test_all(Builder)
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

/// The session every store test creates (tests vary fields by struct update).
pub(super) fn spec() -> SessionSpec {
    SessionSpec {
        owner: "o".into(),
        redundancy: 1,
        quorum: 1,
        priority: 0,
        tag: None,
        max_nodes: 4,
        ack_timeout_ms: 1000,
        precommit_timeout_ms: 1000,
        commit_timeout_ms: 1000,
        max_attempts: 3,
        retention_ms: 3_600_000,
        idle_release_ms: 1000,
        queue_timeout_ms: 0,
        idempotency_window_ms: 3_600_000,
        max_queued_tasks: 100_000_000,
        keep_finished_payloads: false,
    }
}

fn entry(index: u64, commands: Vec<Command>) -> Entry {
    Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Normal(Batch {
            limits: Default::default(),
            now_ms: 1000 + index,
            commands: commands.into(),
        }),
    }
}

/// Submit number `batch` of `n` tasks; every other one carries an idempotency key,
/// so remembered keys are records the store persists and snapshots too.
fn submit(batch: u64, n: usize) -> Command {
    Command::SubmitTasks {
        session: crate::machine::SessionId(1),
        tasks: (0..n)
            .map(|i| NewTask {
                payload: vec![i as u8; 256].into(),
                priority: None,
                idempotency_key: (i % 2 == 0).then(|| format!("k-{batch}-{i}")),
                queue_timeout_ms: None,
            })
            .collect(),
    }
}

/// Entries: membership, a session, then `batches` submits of 10 tasks each.
pub(super) fn workload(batches: u64) -> Vec<Entry> {
    let mut entries = vec![Entry {
        log_id: log_id(1, 1),
        payload: EntryPayload::Membership(Membership::new(vec![[1u64].into()], BTreeMap::new())),
    }];
    entries.push(entry(2, vec![Command::CreateSession(spec())]));
    for i in 0..batches {
        entries.push(entry(3 + i, vec![submit(i, 10)]));
    }
    entries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_store_resumes_where_it_stopped_without_applying_twice() {
    let dir = TempDir::new().unwrap();
    let entries = workload(20);
    let bytes = {
        let (_log, mut sm) = open(dir.path(), 1, "test").await.unwrap();
        let results = sm.apply(entries[..12].to_vec()).await.unwrap();
        assert_eq!(results.len(), 12);
        assert!(matches!(
            results[1].0[0],
            Ok(Response::SessionCreated { .. })
        ));
        sm.state_bytes()
    };
    // Reopen: the applied id and every record are back, nothing replays.
    let (_log, mut sm) = open(dir.path(), 1, "test").await.unwrap();
    let (applied, membership) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 12)));
    assert_eq!(membership.log_id(), &Some(log_id(1, 1)));
    assert_eq!(sm.state_bytes(), bytes);
    assert_eq!(sm.reader().read(|s| s.sizes().2), 100);
    // Applying the rest gives the same state as applying everything once.
    sm.apply(entries[12..].to_vec()).await.unwrap();
    let reference_dir = TempDir::new().unwrap();
    let (_l, mut reference) = open(reference_dir.path(), 1, "test").await.unwrap();
    reference.apply(entries.clone()).await.unwrap();
    assert_eq!(sm.state_bytes(), reference.state_bytes());
    assert_eq!(sm.reader().read(|s| s.sizes().2), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_carries_the_whole_state_to_another_node() {
    let leader_dir = TempDir::new().unwrap();
    let (_log, mut leader) = open(leader_dir.path(), 1, "test").await.unwrap();
    let entries = workload(50);
    leader.apply(entries[..30].to_vec()).await.unwrap();
    let snapshot = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let at_snapshot = leader.state_bytes();
    // Applying more after the build does not change what the snapshot holds.
    leader.apply(entries[30..].to_vec()).await.unwrap();
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 30)));

    let follower_dir = TempDir::new().unwrap();
    let (_flog, mut follower) = open(follower_dir.path(), 2, "test").await.unwrap();
    let mut incoming = follower.begin_receiving_snapshot().await.unwrap();
    let mut source = snapshot.snapshot;
    tokio::io::copy(&mut source, &mut *incoming).await.unwrap();
    let mut events = follower.reader().subscribe_events();
    follower
        .install_snapshot(&snapshot.meta, incoming)
        .await
        .unwrap();
    assert_eq!(follower.state_bytes(), at_snapshot);
    assert_eq!(
        follower.applied_state().await.unwrap().0,
        Some(log_id(1, 30))
    );
    // Event streams learn that they skipped what the snapshot covers.
    assert!(matches!(
        *events.recv().await.unwrap(),
        Published::SnapshotInstalled { index: 30 }
    ));
    // The follower catches up from the log after the snapshot and matches the leader.
    follower.apply(entries[30..].to_vec()).await.unwrap();
    assert_eq!(follower.state_bytes(), leader.state_bytes());
    assert!(matches!(
        *events.recv().await.unwrap(),
        Published::Transition { index: 31, .. }
    ));
    // It kept the snapshot to serve it in turn, and keeps it across a restart.
    drop(follower);
    drop(_flog);
    let (_flog, mut follower) = open(follower_dir.path(), 2, "test").await.unwrap();
    let current = follower
        .get_current_snapshot()
        .await
        .unwrap()
        .expect("a current snapshot");
    assert_eq!(current.meta, snapshot.meta);
    assert_eq!(follower.state_bytes(), leader.state_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_snapshot_is_refused_and_changes_nothing() {
    let dir = TempDir::new().unwrap();
    let (_log, mut leader) = open(dir.path(), 1, "test").await.unwrap();
    leader.apply(workload(5)).await.unwrap();
    let snapshot = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let bytes = snapshot_bytes(snapshot.snapshot).await;

    let fdir = TempDir::new().unwrap();
    let (_flog, mut follower) = open(fdir.path(), 2, "test").await.unwrap();
    follower.apply(workload(1)).await.unwrap();
    let before = follower.state_bytes();
    for damage in [bytes.len() / 2, bytes.len() - 40] {
        let mut bad = bytes.clone();
        bad[damage] ^= 0x55;
        let mut incoming = follower.begin_receiving_snapshot().await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut *incoming, &bad)
            .await
            .unwrap();
        tokio::io::AsyncWriteExt::flush(&mut *incoming)
            .await
            .unwrap();
        assert!(follower
            .install_snapshot(&snapshot.meta, incoming)
            .await
            .is_err());
        assert_eq!(follower.state_bytes(), before);
    }
    let mut incoming = follower.begin_receiving_snapshot().await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut *incoming, &bytes[..bytes.len() - 10])
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::flush(&mut *incoming)
        .await
        .unwrap();
    assert!(
        follower
            .install_snapshot(&snapshot.meta, incoming)
            .await
            .is_err(),
        "a truncated snapshot"
    );
    assert_eq!(follower.state_bytes(), before);
}

/// RocksDB computes its CRC32C checksums in hardware when the build uses SSE4.2
/// (`.cargo/config.toml`), and says so in its LOG: the flags reached its C++ build.
#[tokio::test]
async fn rocksdb_checksums_in_hardware_when_the_build_uses_sse42() {
    let dir = TempDir::new().unwrap();
    let _store = open(dir.path(), 1, "test").await.unwrap();
    let log = std::fs::read_to_string(dir.path().join("db").join("LOG")).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("Fast CRC32 supported"))
        .expect("RocksDB logs how it computes CRC32C");
    if cfg!(target_arch = "x86_64") {
        let hardware = cfg!(target_feature = "sse4.2");
        assert_eq!(line.contains("Supported on x86"), hardware, "{line}");
    }
}

/// A follower's log writes the bytes its entries arrived in when they are offered
/// under their log id, encodes the others itself (an offer under another log id is
/// not theirs), and holds no offer once the request is done.
#[tokio::test]
async fn offered_entry_bytes_are_written_as_they_arrived() {
    use openraft::storage::RaftLogStorageExt;
    let dir = TempDir::new().unwrap();
    let (mut log, _sm) = open(dir.path(), 1, "test").await.unwrap();
    let entries = workload(3);
    let encoded = log.encoded_entries();
    let arrived: Vec<bytes::Bytes> = entries.iter().map(|e| codec::encode(e).into()).collect();
    {
        let _offered = encoded.offer([
            (entries[2].log_id, arrived[2].clone()),
            // Another term's entry at index 4: not entry 4.
            (log_id(7, 4), bytes::Bytes::from_static(b"not this entry")),
            // Never appended.
            (log_id(1, 99), arrived[0].clone()),
        ]);
        log.blocking_append(entries.clone()).await.unwrap();
        assert_eq!(log.offers_held(), 1, "the append took its own offers");
    }
    assert_eq!(log.offers_held(), 0, "withdrawn with the request");
    let cached = encoded.get(&entries[2].log_id).unwrap();
    assert_eq!(
        cached.as_ptr(),
        arrived[2].as_ptr(),
        "the bytes as they arrived"
    );
    for (entry, bytes) in entries.iter().zip(&arrived) {
        assert_eq!(encoded.get(&entry.log_id).unwrap(), bytes);
    }
    drop((log, _sm));
    // On disk too: a reopened store reads every entry back.
    let (mut log, _sm) = open(dir.path(), 1, "test").await.unwrap();
    let read = log.try_get_log_entries(1..6).await.unwrap();
    let read: Vec<Vec<u8>> = read.iter().map(codec::encode).collect();
    let want: Vec<Vec<u8>> = arrived.iter().map(|b| b.to_vec()).collect();
    assert_eq!(read, want);
}

#[tokio::test]
async fn appended_entries_read_back_and_survive_reopen() {
    let dir = TempDir::new().unwrap();
    {
        let (mut log, _sm) = open(dir.path(), 1, "test").await.unwrap();
        use openraft::storage::RaftLogStorageExt;
        log.blocking_append(workload(3)).await.unwrap();
    }
    let (mut log, _sm) = open(dir.path(), 1, "test").await.unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(log_id(1, 5)));
    let entries = log.try_get_log_entries(2..4).await.unwrap();
    assert_eq!(
        entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
        vec![2, 3]
    );
}

#[tokio::test]
async fn a_foreign_or_unknown_data_directory_is_refused() {
    let dir = TempDir::new().unwrap();
    drop(open(dir.path(), 1, "alpha").await.unwrap());
    let err = open(dir.path(), 2, "alpha")
        .await
        .err()
        .expect("another node's data");
    assert!(matches!(err, OpenError::Foreign { found: 1, .. }), "{err}");
    let err = open(dir.path(), 1, "beta")
        .await
        .err()
        .expect("another cluster's data");
    assert!(err.to_string().contains("cluster"), "{err}");

    let stranger = TempDir::new().unwrap();
    std::fs::write(stranger.path().join("something"), b"x").unwrap();
    let err = open(stranger.path(), 1, "alpha")
        .await
        .err()
        .expect("not ours");
    assert!(matches!(err, OpenError::Unrecognised { .. }), "{err}");

    // A corrupted state record is reported, not panicked on.
    let dir2 = TempDir::new().unwrap();
    {
        let (_log, mut sm) = open(dir2.path(), 1, "alpha").await.unwrap();
        sm.apply(workload(1)).await.unwrap();
    }
    {
        let db = open_db(&dir2.path().join("db"), Tuning::default()).unwrap();
        let cf = db.cf_handle(CF_TASKS).unwrap();
        db.put_cf(cf, [4u8, 0, 0, 0, 0, 0, 0, 0, 1], b"\x06garbage")
            .unwrap();
    }
    let err = open(dir2.path(), 1, "alpha")
        .await
        .err()
        .expect("corrupt state");
    assert!(matches!(err, OpenError::Corrupt { .. }), "{err}");
}

/// Every byte of a snapshot's data.
pub(super) async fn snapshot_bytes(mut data: Box<tokio::fs::File>) -> Vec<u8> {
    let mut bytes = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut data, &mut bytes)
        .await
        .unwrap();
    bytes
}

#[tokio::test]
async fn watching_a_miner_the_state_does_not_hold_leaves_nothing_behind() {
    let dir = TempDir::new().unwrap();
    let (_log, mut sm) = open(dir.path(), 1, "test").await.unwrap();
    let mut entries = workload(0);
    entries.push(entry(
        3,
        vec![Command::RegisterMiner {
            name: "m".into(),
            capacity: 1,
            tags: vec![],
            token_hash: crate::machine::sha256(&[b"m"]),
            heartbeat_timeout_ms: 10_000,
        }],
    ));
    let results = sm.apply(entries).await.unwrap();
    let miner = match results[2].0[0] {
        Ok(Response::MinerRegistered { miner }) => miner,
        ref r => panic!("{r:?}"),
    };
    let applied = sm.reader();
    let held = applied.watch_miner(miner);
    assert!(held.is_some(), "a miner the state holds is watched");
    assert_eq!(applied.tracked_miners(), 1);
    // A miner purged (or never there) between a poll's authentication and its
    // watch: no watch, and no entry left for it.
    let forgotten = crate::machine::MinerId(miner.0 + 1000);
    assert!(applied.watch_miner(forgotten).is_none());
    assert_eq!(applied.tracked_miners(), 1);
}
