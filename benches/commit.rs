//! Commit rate through the group-commit path, without HTTP: three in-process nodes
//! (real RocksDB with fsync, real peer channel on loopback), and C concurrent
//! proposers on the leader each submitting one 256-byte task at a time.
//!
//! Run: `cargo bench --bench commit` (optionally `-- 1 64 256` for the concurrency
//! levels and `SQ_BENCH_SECS` for the duration of each level).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use session_queue::config::NodeConfig;
use session_queue::machine::{Command, NewTask, Response, SessionSpec};
use session_queue::node;

#[derive(Parser)]
struct Wrapper {
    #[command(flatten)]
    config: NodeConfig,
}

fn spec() -> SessionSpec {
    SessionSpec {
        owner: "bench".into(),
        redundancy: 1,
        quorum: 1,
        priority: 0,
        tag: None,
        max_nodes: 1,
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let levels: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let levels = if levels.is_empty() {
        vec![1, 64]
    } else {
        levels
    };
    let secs: f64 = std::env::var("SQ_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let dir = tempfile::tempdir()?;
    let mut listeners = Vec::new();
    for _ in 0..3 {
        let api = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let peer = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        listeners.push((api, peer));
    }
    let members = listeners
        .iter()
        .enumerate()
        .map(|(i, (a, p))| {
            format!(
                "{}={}/{}",
                i + 1,
                a.local_addr().unwrap(),
                p.local_addr().unwrap()
            )
        })
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = Vec::new();
    for (i, (api, peer)) in listeners.into_iter().enumerate() {
        let id = (i + 1).to_string();
        let data = dir.path().join(format!("n{id}"));
        let args = [
            "bench",
            "--id",
            &id,
            "--data-dir",
            data.to_str().unwrap(),
            "--cluster-secret",
            "bench-secret-0123456789",
            "--initial-cluster",
            &members,
            "--initial-cluster-state",
            "new",
        ];
        let config = Wrapper::parse_from(args).config;
        nodes.push(node::start(config, api, peer).await?);
    }
    // Wait for a leader.
    let leader = loop {
        if let Some(l) = nodes[0].node.raft.metrics().borrow().current_leader {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let leader = nodes
        .iter()
        .find(|n| n.node.id == leader)
        .unwrap()
        .node
        .clone();
    let timeout = Duration::from_secs(10);
    let session = match leader
        .proposer
        .propose(vec![Command::CreateSession(spec())], timeout)
        .await?
        .remove(0)
    {
        Ok(Response::SessionCreated { session }) => session,
        other => anyhow::bail!("{other:?}"),
    };
    println!(
        "{:>6} {:>10} {:>10} {:>9} {:>9} {:>12}",
        "procs", "commits", "commits/s", "p50 ms", "p99 ms", "cmds/batch"
    );
    for c in levels {
        let stats = leader.proposer.stats();
        let (b0, c0) = (
            stats.batches.load(Ordering::Relaxed),
            stats.commands.load(Ordering::Relaxed),
        );
        let done = Arc::new(AtomicU64::new(0));
        let until = Instant::now() + Duration::from_secs_f64(secs);
        let started = Instant::now();
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..c {
            let (leader, done) = (leader.clone(), done.clone());
            workers.spawn(async move {
                let mut h = Histogram::<u64>::new(3).unwrap();
                while Instant::now() < until {
                    let cmd = Command::SubmitTasks {
                        session,
                        tasks: vec![NewTask {
                            payload: vec![b'x'; 256].into(),
                            priority: None,
                            idempotency_key: None,
                            queue_timeout_ms: None,
                        }],
                    };
                    let t0 = Instant::now();
                    let r = leader.proposer.propose(vec![cmd], timeout).await;
                    assert!(matches!(r.as_deref(), Ok([Ok(_)])), "{r:?}");
                    h.record(t0.elapsed().as_micros() as u64).unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                }
                h
            });
        }
        let mut h = Histogram::<u64>::new(3).unwrap();
        while let Some(r) = workers.join_next().await {
            h.add(r?).unwrap();
        }
        let elapsed = started.elapsed().as_secs_f64();
        let n = done.load(Ordering::Relaxed);
        let batches = stats.batches.load(Ordering::Relaxed) - b0;
        let commands = stats.commands.load(Ordering::Relaxed) - c0;
        println!(
            "{:>6} {:>10} {:>10.0} {:>9.2} {:>9.2} {:>12.1}",
            c,
            n,
            n as f64 / elapsed,
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            commands as f64 / batches.max(1) as f64
        );
    }
    for n in nodes {
        n.stop().await;
    }
    Ok(())
}
