//! Tests of the streaming snapshot install ([`super::install`]): a snapshot larger
//! than the read buffer and the write batches, sent in chunks as openraft sends them,
//! leaves the follower with exactly the source's state, in memory and on disk; an
//! install a stop cut short is finished when the node opens again.

use std::collections::BTreeMap;

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, Membership, RaftSnapshotBuilder};
use tempfile::TempDir;
use tokio::io::AsyncWriteExt;

use super::install::KEY_INSTALLING;
use super::state_store::keys;
use super::tests::{snapshot_bytes, spec};
use super::*;
use crate::machine::{Batch, Command, NewTask, SessionId};
use crate::raft::types::{Entry, LogId, Snapshot};

fn log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

/// A membership, a session, then `batches` submits of 1,000 tasks of 256 bytes
/// (every third with an idempotency key): about 0.3 MB of snapshot a batch.
fn workload(batches: u64) -> Vec<Entry> {
    let mut entries = vec![
        Entry {
            log_id: log_id(1),
            payload: EntryPayload::Membership(Membership::new(
                vec![[1u64].into()],
                BTreeMap::new(),
            )),
        },
        Entry {
            log_id: log_id(2),
            payload: EntryPayload::Normal(Batch {
                limits: Default::default(),
                now_ms: 1000,
                commands: vec![Command::CreateSession(spec())].into(),
            }),
        },
    ];
    for b in 0..batches {
        let tasks = (0..1000u64)
            .map(|i| NewTask {
                payload: vec![(b + i) as u8; 256].into(),
                priority: Some((i % 3) as i32),
                idempotency_key: (i % 3 == 0).then(|| format!("k-{b}-{i}")),
                queue_timeout_ms: None,
            })
            .collect();
        entries.push(Entry {
            log_id: log_id(3 + b),
            payload: EntryPayload::Normal(Batch {
                limits: Default::default(),
                now_ms: 1001 + b,
                commands: vec![Command::SubmitTasks {
                    session: SessionId(1),
                    tasks,
                }]
                .into(),
            }),
        });
    }
    entries
}

/// Sends a snapshot to a state store as openraft does: chunk by chunk into the file
/// the store handed out, then install.
async fn send(snapshot: &Snapshot, bytes: &[u8], to: &mut StateStore) {
    let mut incoming = to.begin_receiving_snapshot().await.unwrap();
    for chunk in bytes.chunks(1 << 20) {
        incoming.write_all(chunk).await.unwrap();
    }
    incoming.flush().await.unwrap();
    to.install_snapshot(&snapshot.meta, incoming).await.unwrap();
}

async fn build(sm: &mut StateStore) -> (Snapshot, Vec<u8>) {
    let snapshot = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let bytes = snapshot_bytes(sm.get_current_snapshot().await.unwrap().unwrap().snapshot).await;
    (snapshot, bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_snapshot_streams_into_the_store_and_equals_the_source() {
    let leader_dir = TempDir::new().unwrap();
    let (_log, mut leader) = open(leader_dir.path(), 1, "test").await.unwrap();
    leader.apply(workload(60)).await.unwrap();
    let (snapshot, bytes) = build(&mut leader).await;
    let source = leader.state_bytes();
    // Larger than the install's read buffer and several of its write batches.
    assert!(bytes.len() > 12 << 20, "only {} bytes", bytes.len());

    // The follower holds a state of its own, which the install replaces whole.
    let dir = TempDir::new().unwrap();
    let (_flog, mut follower) = open(dir.path(), 2, "test").await.unwrap();
    follower.apply(workload(2)).await.unwrap();
    send(&snapshot, &bytes, &mut follower).await;
    assert_eq!(follower.state_bytes(), source);
    assert_eq!(
        follower.applied_state().await.unwrap().0,
        snapshot.meta.last_log_id
    );
    assert_eq!(follower.reader().read(|s| s.sizes().2), 60_000);

    // On disk too: a snapshot built from the follower's state family holds exactly
    // the frames the source sent, and a restart loads the same state.
    let (_, rebuilt) = build(&mut follower).await;
    assert_eq!(rebuilt, bytes);
    drop(follower);
    drop(_flog);
    let (_flog, mut follower) = open(dir.path(), 2, "test").await.unwrap();
    assert_eq!(follower.state_bytes(), source);
    assert_eq!(
        follower.applied_state().await.unwrap().0,
        snapshot.meta.last_log_id
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_install_cut_short_by_a_stop_is_finished_at_open() {
    let leader_dir = TempDir::new().unwrap();
    let (_log, mut leader) = open(leader_dir.path(), 1, "test").await.unwrap();
    leader.apply(workload(20)).await.unwrap();
    let (snapshot, bytes) = build(&mut leader).await;
    let source = leader.state_bytes();

    let dir = TempDir::new().unwrap();
    {
        let (_flog, mut follower) = open(dir.path(), 2, "test").await.unwrap();
        send(&snapshot, &bytes, &mut follower).await;
    }
    // Make the disk look as a stop in the middle of the replacement leaves it: the
    // marker set, the applied id and about half of the records not yet written.
    {
        let db = open_db(&dir.path().join("db"), Tuning::default()).unwrap();
        let raft = db.cf_handle(CF_RAFT).unwrap();
        let current = db
            .get_cf(raft, b"snapshot")
            .unwrap()
            .expect("current pointer");
        db.put_cf(raft, KEY_INSTALLING, &current).unwrap();
        for name in STATE_FAMILIES {
            let family = db.cf_handle(name).unwrap();
            let written: Vec<Box<[u8]>> = db
                .iterator_cf(family, rocksdb::IteratorMode::Start)
                .map(|item| item.unwrap().0)
                .collect();
            for key in written.iter().skip(written.len() / 2) {
                db.delete_cf(family, key).unwrap();
            }
        }
        let state = db.cf_handle(CF_STATE).unwrap();
        db.delete_cf(state, keys::APPLIED).unwrap();
        flush_state(&db).unwrap();
        db.flush_cf(raft).unwrap();
    }
    let (_flog, mut follower) = open(dir.path(), 2, "test").await.unwrap();
    assert_eq!(follower.state_bytes(), source);
    assert_eq!(
        follower.applied_state().await.unwrap().0,
        snapshot.meta.last_log_id
    );
    drop(follower);
    drop(_flog);
    let db = open_db(&dir.path().join("db"), Tuning::default()).unwrap();
    let raft = db.cf_handle(CF_RAFT).unwrap();
    assert!(
        db.get_cf(raft, KEY_INSTALLING).unwrap().is_none(),
        "the marker is still set after the install was finished"
    );
}
