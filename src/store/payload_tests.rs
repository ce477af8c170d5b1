//! Payloads live in the `payloads` family, not in memory: written with the group that
//! holds their submit and then dropped from memory, read back from the family, kept
//! by a restart and a snapshot install, deleted when their task drops them (or, kept
//! by the session, when it is purged). A payload deleted between a reader's look
//! and its read is simply absent.

use std::collections::BTreeMap;

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, Membership, RaftSnapshotBuilder};
use tempfile::TempDir;

use super::state_store::keys;
use super::*;
use crate::machine::{
    sha256, Batch, Command, MinerAuth, MinerId, NewTask, PayloadAt, SessionId, SessionSpec, TaskId,
};
use crate::raft::types::{Entry, LogId};

const RETENTION_MS: u64 = 60_000;

fn log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

fn spec(keep_finished_payloads: bool) -> SessionSpec {
    SessionSpec {
        ack_timeout_ms: 3_600_000,
        precommit_timeout_ms: 3_600_000,
        commit_timeout_ms: 3_600_000,
        retention_ms: RETENTION_MS,
        idle_release_ms: 3_600_000,
        idempotency_window_ms: RETENTION_MS,
        max_queued_tasks: 1000,
        keep_finished_payloads,
        ..super::tests::spec()
    }
}

fn auth() -> MinerAuth {
    MinerAuth {
        miner: MinerId(1),
        token_hash: sha256(&[b"token"]),
    }
}

fn payload(i: u64) -> Vec<u8> {
    (0..256).map(|j| (i * 7 + j) as u8).collect()
}

/// The submit of task `i` alone, with its own payload.
fn submit_one(i: u64) -> Vec<Command> {
    vec![Command::SubmitTasks {
        session: SessionId(1),
        tasks: vec![NewTask {
            payload: payload(i).into(),
            priority: None,
            idempotency_key: None,
            queue_timeout_ms: None,
        }],
    }]
}

/// Applies entries one at a time, numbering them from where the store is.
struct Log {
    next: u64,
}

impl Log {
    async fn apply(&mut self, sm: &mut StateStore, now_ms: u64, commands: Vec<Command>) {
        let entry = Entry {
            log_id: log_id(self.next),
            payload: EntryPayload::Normal(Batch {
                limits: Default::default(),
                now_ms,
                commands: commands.into(),
            }),
        };
        self.next += 1;
        let results = sm.apply(vec![entry]).await.unwrap();
        for r in &results[0].0 {
            assert!(r.is_ok(), "{r:?}");
        }
    }
}

/// A store with a miner and a session, then tasks 1-3 submitted; groups are written
/// only when a test says so.
async fn store_with_tasks(dir: &TempDir, keep: bool) -> (LogStore, StateStore, Log) {
    let (log_store, mut sm) = open(dir.path(), 1, "test").await.unwrap();
    sm.set_grouping(Grouping {
        max_entries: u64::MAX,
        max_records: usize::MAX,
        max_delay: std::time::Duration::from_secs(3600),
    });
    let membership = Entry {
        log_id: log_id(1),
        payload: EntryPayload::Membership(Membership::new(vec![[1u64].into()], BTreeMap::new())),
    };
    sm.apply(vec![membership]).await.unwrap();
    let mut log = Log { next: 2 };
    log.apply(&mut sm, 1000, vec![Command::CreateSession(spec(keep))])
        .await;
    log.apply(
        &mut sm,
        1001,
        vec![Command::RegisterMiner {
            name: "m".into(),
            capacity: 8,
            tags: vec![],
            token_hash: auth().token_hash,
            heartbeat_timeout_ms: 3_600_000,
        }],
    )
    .await;
    let tasks = (1..=3)
        .map(|i| NewTask {
            payload: payload(i).into(),
            priority: None,
            idempotency_key: None,
            queue_timeout_ms: None,
        })
        .collect();
    log.apply(
        &mut sm,
        1002,
        vec![Command::SubmitTasks {
            session: SessionId(1),
            tasks,
        }],
    )
    .await;
    (log_store, sm, log)
}

/// What a reader gets for these tasks' payloads: the look under the lock, the
/// read after it.
fn read(sm: &StateStore, ids: &[u64]) -> Vec<Option<Vec<u8>>> {
    let reader = sm.reader();
    let at = reader.read(|s| {
        ids.iter()
            .map(|&i| (TaskId(i), s.payload_at(TaskId(i))))
            .collect()
    });
    reader.payloads(at).unwrap()
}

/// The keys in the `payloads` family (each a payload's key: nothing else is there).
fn stored_payloads(sm: &StateStore) -> Vec<Vec<u8>> {
    let cf = sm.db().cf_handle(CF_PAYLOADS).unwrap();
    sm.db()
        .iterator_cf(cf, rocksdb::IteratorMode::Start)
        .map(|item| item.unwrap().0.to_vec())
        .inspect(|k| assert!(keys::is_payload(k), "not a payload key: {k:?}"))
        .collect()
}

fn complete(task: u64) -> Vec<Command> {
    let (output, nonce) = (b"out".to_vec(), b"nonce".to_vec());
    let task = TaskId(task);
    vec![
        Command::Ack { task, auth: auth() },
        Command::Precommit {
            task,
            auth: auth(),
            hash: sha256(&[&output, &nonce]),
        },
        Command::Reveal {
            task,
            auth: auth(),
            output,
            nonce,
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_leave_memory_once_written_and_read_back_from_the_family() {
    let dir = TempDir::new().unwrap();
    let (_log, sm, _) = store_with_tasks(&dir, false).await;
    let want: Vec<Option<Vec<u8>>> = (1..=3).map(|i| Some(payload(i))).collect();
    // Not written yet: in memory, and not in the family.
    assert_eq!(sm.reader().read(|s| s.unwritten_payloads()), 3);
    assert_eq!(
        sm.reader().read(|s| s.payload_at(TaskId(1))),
        PayloadAt::Here(payload(1))
    );
    assert!(stored_payloads(&sm).is_empty());
    assert_eq!(read(&sm, &[1, 2, 3]), want);
    let before = sm.state_bytes();

    sm.write_group();
    assert_eq!(sm.reader().read(|s| s.unwritten_payloads()), 0);
    assert_eq!(
        sm.reader().read(|s| s.payload_at(TaskId(2))),
        PayloadAt::Stored
    );
    assert_eq!(stored_payloads(&sm).len(), 3);
    assert_eq!(read(&sm, &[1, 2, 3]), want);
    // A task without one (never was) reads as absent.
    assert_eq!(read(&sm, &[9]), vec![None]);
    // The logical state did not change.
    assert_eq!(sm.state_bytes(), before);

    // A restart loads the records, not the payloads, and reads them back.
    drop(sm);
    drop(_log);
    let (_log, sm) = open(dir.path(), 1, "test").await.unwrap();
    assert_eq!(sm.reader().read(|s| s.unwritten_payloads()), 0);
    assert_eq!(read(&sm, &[1, 2, 3]), want);
    assert_eq!(sm.state_bytes(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_task_deletes_its_payload_record() {
    let dir = TempDir::new().unwrap();
    let (_l, mut sm, mut log) = store_with_tasks(&dir, false).await;
    sm.write_group();
    log.apply(&mut sm, 1003, complete(1)).await;
    log.apply(&mut sm, 1004, vec![Command::CancelTask { task: TaskId(2) }])
        .await;
    sm.write_group();
    assert_eq!(
        stored_payloads(&sm),
        vec![keys::payload(TaskId(3)).to_vec()]
    );
    assert_eq!(read(&sm, &[1, 2, 3]), vec![None, None, Some(payload(3))]);

    // Submitted and finished within one group: never written at all.
    log.apply(&mut sm, 1005, submit_one(4)).await;
    log.apply(&mut sm, 1006, vec![Command::CancelTask { task: TaskId(4) }])
        .await;
    sm.write_group();
    assert_eq!(sm.reader().read(|s| s.unwritten_payloads()), 0);
    assert_eq!(stored_payloads(&sm).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_payload_stays_until_its_task_is_purged() {
    let dir = TempDir::new().unwrap();
    let (_l, mut sm, mut log) = store_with_tasks(&dir, true).await;
    log.apply(&mut sm, 1003, complete(1)).await;
    sm.write_group();
    assert_eq!(stored_payloads(&sm).len(), 3);
    assert_eq!(read(&sm, &[1]), vec![Some(payload(1))]);
    // Retention passes: the finished task and its payload record go.
    log.apply(&mut sm, 1003 + RETENTION_MS + 1, vec![Command::Tick])
        .await;
    sm.write_group();
    assert!(sm.reader().read(|s| s.task(TaskId(1)).is_none()));
    assert_eq!(stored_payloads(&sm).len(), 2);
    assert_eq!(read(&sm, &[1, 2]), vec![None, Some(payload(2))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_deleted_between_look_and_read_is_absent() {
    let dir = TempDir::new().unwrap();
    let (_l, mut sm, mut log) = store_with_tasks(&dir, false).await;
    sm.write_group();
    let reader = sm.reader();
    let look = reader.read(|s| {
        vec![
            (TaskId(1), s.payload_at(TaskId(1))),
            (TaskId(2), s.payload_at(TaskId(2))),
        ]
    });
    assert_eq!(look[0].1, PayloadAt::Stored);
    // The task finishes and its group is written before the reader reads.
    log.apply(&mut sm, 1003, complete(1)).await;
    sm.write_group();
    assert_eq!(reader.payloads(look).unwrap(), vec![None, Some(payload(2))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_carries_the_payloads_and_the_installer_holds_none_in_memory() {
    let dir = TempDir::new().unwrap();
    let (_l, mut leader, mut log) = store_with_tasks(&dir, false).await;
    // One payload written, one finished, one applied but not yet written: the
    // build writes the pending group first.
    leader.write_group();
    log.apply(&mut leader, 1003, complete(1)).await;
    log.apply(&mut leader, 1004, submit_one(4)).await;
    let snapshot = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let source = leader.state_bytes();

    let fdir = TempDir::new().unwrap();
    let (_fl, mut follower) = open(fdir.path(), 2, "test").await.unwrap();
    let mut incoming = follower.begin_receiving_snapshot().await.unwrap();
    let mut data = snapshot.snapshot;
    tokio::io::copy(&mut data, &mut *incoming).await.unwrap();
    follower
        .install_snapshot(&snapshot.meta, incoming)
        .await
        .unwrap();
    assert_eq!(follower.reader().read(|s| s.unwritten_payloads()), 0);
    assert_eq!(follower.state_bytes(), source);
    assert_eq!(
        read(&follower, &[1, 2, 3, 4]),
        vec![None, Some(payload(2)), Some(payload(3)), Some(payload(4))]
    );
    assert_eq!(stored_payloads(&follower), stored_payloads(&leader));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_payloads_table_is_refused_at_start() {
    // The records load without reading a payload, so only the check at start can
    // see a damaged payloads table before a miner's assignment list does.
    let dir = TempDir::new().unwrap();
    drop(store_with_tasks(&dir, false).await);
    let (_log, sm) = open(dir.path(), 1, "test").await.unwrap();
    assert_eq!(
        read(&sm, &[1, 2, 3]),
        (1..=3).map(|i| Some(payload(i))).collect::<Vec<_>>()
    );
    let table = sm
        .db()
        .live_files()
        .unwrap()
        .into_iter()
        .find(|f| f.column_family_name == CF_PAYLOADS)
        .expect("a payloads table (a clean stop flushes the family)");
    drop((_log, sm));

    // Garbage in its first data block: caught by the block's checksum when read.
    let path = dir
        .path()
        .join("db")
        .join(table.name.trim_start_matches('/'));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[16..48].fill(0x5a);
    std::fs::write(&path, bytes).unwrap();
    let err = open(dir.path(), 1, "test")
        .await
        .err()
        .expect("a damaged payloads table");
    assert!(matches!(err, OpenError::Corrupt { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("payloads") && message.contains("orrupt"),
        "{message}"
    );
}
