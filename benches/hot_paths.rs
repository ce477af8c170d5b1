//! Micro-benchmarks of the hot paths: state-machine apply, entry encode/decode, and a
//! synced RocksDB log append.
//!
//! Run: `cargo bench --bench hot_paths`.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use openraft::storage::RaftLogStorageExt;
use openraft::{CommittedLeaderId, EntryPayload, LogId};
use session_queue::codec;
use session_queue::machine::{
    sha256, Batch, Command, MinerAuth, MinerId, NewTask, Response, SessionId, SessionSpec, State,
    TaskId,
};
use session_queue::raft::types::Entry;

fn spec(k: u8) -> SessionSpec {
    SessionSpec {
        owner: "bench".into(),
        redundancy: k,
        quorum: k,
        priority: 0,
        tag: None,
        max_nodes: 64,
        ack_timeout_ms: 60_000,
        precommit_timeout_ms: 60_000,
        commit_timeout_ms: 60_000,
        max_attempts: 3,
        retention_ms: 3_600_000,
        idle_release_ms: 60_000,
        queue_timeout_ms: 0,
        idempotency_window_ms: 3_600_000,
        max_queued_tasks: 100_000_000,
        keep_finished_payloads: false,
    }
}

fn submit(session: SessionId, n: usize) -> Command {
    Command::SubmitTasks {
        session,
        tasks: (0..n)
            .map(|_| NewTask {
                payload: vec![b'x'; 256].into(),
                priority: None,
                idempotency_key: None,
                queue_timeout_ms: None,
            })
            .collect(),
    }
}

/// A state with one session and `queued` tasks waiting (no miners).
fn state_with(queued: usize) -> (State, SessionId) {
    let mut s = State::new();
    let Ok(applied) = s.apply(&Command::CreateSession(spec(1)), 1) else {
        panic!()
    };
    let Response::SessionCreated { session } = applied.response else {
        panic!()
    };
    for _ in 0..queued / 1000 {
        s.apply(&submit(session, 1000), 2).unwrap();
    }
    (s, session)
}

fn apply(c: &mut Criterion) {
    let mut g = c.benchmark_group("apply");
    g.throughput(Throughput::Elements(1));
    let (mut s, session) = state_with(100_000);
    let cmd = submit(session, 1);
    g.bench_function("submit one task (100k queued)", |b| {
        b.iter(|| s.apply(black_box(&cmd), 3).unwrap())
    });
    g.throughput(Throughput::Elements(1000));
    let cmd = submit(session, 1000);
    g.bench_function("submit a batch of 1000", |b| {
        b.iter(|| s.apply(black_box(&cmd), 3).unwrap())
    });

    // One task's whole life with k = 1: submit, ack, precommit, reveal.
    g.throughput(Throughput::Elements(1));
    let (mut s, session) = state_with(0);
    let token = sha256(&[b"t"]);
    let Response::MinerRegistered { miner } = s
        .apply(
            &Command::RegisterMiner {
                name: "m".into(),
                capacity: 4096,
                tags: vec![],
                token_hash: token,
                heartbeat_timeout_ms: 3_600_000,
            },
            1,
        )
        .unwrap()
        .response
    else {
        panic!()
    };
    let auth = MinerAuth {
        miner,
        token_hash: token,
    };
    let output = b"result".to_vec();
    let nonce = b"nonce".to_vec();
    let hash = sha256(&[&output, &nonce]);
    g.bench_function("lifecycle of one task (k=1)", |b| {
        b.iter(|| {
            let Response::TasksSubmitted { tasks } =
                s.apply(&submit(session, 1), 5).unwrap().response
            else {
                panic!()
            };
            let task: TaskId = tasks[0].0;
            s.apply(&Command::Ack { task, auth }, 5).unwrap();
            s.apply(&Command::Precommit { task, auth, hash }, 5)
                .unwrap();
            s.apply(
                &Command::Reveal {
                    task,
                    auth,
                    output: output.clone(),
                    nonce: nonce.clone(),
                },
                5,
            )
            .unwrap();
        })
    });
    let _ = MinerId(0);
    g.finish();
}

fn entry(commands: usize) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), 7),
        payload: EntryPayload::Normal(Batch {
            limits: Default::default(),
            now_ms: 1,
            commands: (0..commands).map(|_| submit(SessionId(1), 1)).collect(),
        }),
    }
}

fn codec_paths(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    for n in [64, 1024] {
        let e = entry(n);
        let bytes = codec::encode(&e);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("encode entry of {n} submits"), |b| {
            b.iter(|| codec::encode(black_box(&e)))
        });
        g.bench_function(format!("decode entry of {n} submits"), |b| {
            b.iter(|| codec::decode::<Entry>(black_box(&bytes)).unwrap())
        });
    }
    g.finish();
}

fn log_append(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _sm) = rt
        .block_on(session_queue::store::open(dir.path(), 1, "bench"))
        .unwrap();
    let mut g = c.benchmark_group("log");
    g.sample_size(30);
    let mut index = 1;
    for n in [1, 64] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("synced append of an entry of {n} submits"), |b| {
            b.iter_batched(
                || {
                    let mut e = entry(n);
                    e.log_id.index = index;
                    index += 1;
                    e
                },
                |e| rt.block_on(log.blocking_append([e])).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
    let _ = BTreeMap::<u8, u8>::new();
}

criterion_group!(benches, apply, codec_paths, log_append);
criterion_main!(benches);
