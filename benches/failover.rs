//! Failover: how soon after a fault on the leader the cluster acknowledges a new write.
//!
//! Three real node processes (on loopback; in network namespaces for the network
//! cut) and 8 writers spread over the nodes, each submitting tasks with idempotency
//! keys in a closed loop: a key is retried (on the next node) until it is
//! acknowledged, then the writer takes a new one. A fault hits the leader:
//!
//! - `sigkill`: SIGKILL (restarted on its data after the measurement);
//! - `sigstop`: SIGSTOP (SIGCONT after the measurement);
//! - `cut`: every link between the leader and the other nodes dropped (iptables
//!   `DROP` in network namespaces, as `tests/common/netns.rs` makes them; clients
//!   still reach every node); needs root, skipped with a note otherwise.
//!
//! The figure of a trial is the time from the fault (the signal sent; the last link
//! cut) to the first acknowledged write whose key was first tried after the fault (writes merely in flight across the
//! fault do not count). Also shown: when the surviving nodes first agreed on a new
//! leader. After each trial the fault is healed, every node catches up and the
//! writers run undisturbed for a while before the next one.
//!
//! Run (one command; it builds what it needs): `cargo bench --bench failover`.
//! Settings (environment): `SQ_FAILOVER_TRIALS` trials per fault (default 5),
//! `SQ_FAILOVER_FAULTS` which faults (default `sigkill,sigstop,cut`),
//! `SQ_FAILOVER_WRITERS` (default 8), `SQ_FAILOVER_MAX_SECS` the longest wait for
//! the first new write of a trial (default 30), `SQ_FAILOVER_FLAGS` extra node flags
//! (space-separated, e.g. timing to try), `SQ_FAILOVER_JSON` where the JSON report
//! goes (default `failover.json` in the build's target directory).
//! Method and figures: docs/FAULTS.md, "Failover".

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::netns::NetLab;
use common::{Options, TestCluster};
use serde_json::{json, Value};
use session_queue::client::b64;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Kill,
    Stop,
    Cut,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Kill => "sigkill",
            Fault::Stop => "sigstop",
            Fault::Cut => "cut",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Fault::Kill => "SIGKILL of the leader",
            Fault::Stop => "SIGSTOP of the leader",
            Fault::Cut => "network cut of the leader",
        }
    }

    /// The target of issue 12 for the first acknowledged new write.
    fn target_ms(self) -> u64 {
        match self {
            Fault::Kill => 1500,
            Fault::Stop => 2000,
            Fault::Cut => 3000,
        }
    }
}

/// What the writers share with the conductor of the trials.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    /// Bumped at the start of each trial: writers go back to their own node.
    spread: AtomicU64,
    acks: AtomicU64,
    trial: Mutex<Trial>,
}

#[derive(Default)]
struct Trial {
    fault_at: Option<Instant>,
    /// The first acknowledgement of a key first tried after the fault.
    first_new_ack: Option<Instant>,
}

impl Shared {
    fn acked(&self, first_tried: Instant) {
        let now = Instant::now();
        self.acks.fetch_add(1, Ordering::Relaxed);
        let mut t = self.trial.lock().unwrap();
        if let Some(fault) = t.fault_at {
            if first_tried >= fault && t.first_new_ack.is_none() {
                t.first_new_ack = Some(now);
            }
        }
    }
}

/// One writer: keys `w{n}-{seq}`, starting on node `n % nodes`; a key is retried on
/// the next node after any failure until acknowledged (at most 10,000 attempts).
async fn writer(n: usize, urls: Arc<Vec<String>>, session: String, shared: Arc<Shared>) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .build()
        .expect("HTTP client");
    let mut node = n % urls.len();
    let mut spread = shared.spread.load(Ordering::Relaxed);
    let mut seq = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        let now_spread = shared.spread.load(Ordering::Relaxed);
        if now_spread != spread {
            spread = now_spread;
            node = n % urls.len();
        }
        seq += 1;
        let key = format!("w{n}-{seq}");
        let body =
            json!({"payload": b64(format!("failover {key}").as_bytes()), "idempotency_key": key});
        let first_tried = Instant::now();
        for _ in 0..10_000 {
            if shared.stop.load(Ordering::Relaxed) {
                return;
            }
            let sent = http
                .post(format!("{}/v1/sessions/{session}/tasks", urls[node]))
                .json(&body)
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => {
                    shared.acked(first_tried);
                    break;
                }
                Ok(r) if r.status().is_client_error() => {
                    let status = r.status();
                    eprintln!(
                        "writer {n}: submit answered {status}: {}; this writer stops",
                        r.text().await.unwrap_or_default()
                    );
                    return;
                }
                // 5xx, timeouts, refused or broken connections: the next node.
                _ => {
                    node = (node + 1) % urls.len();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}

/// Which leader the nodes in `among` agree on (each asked for 500 ms at most).
async fn agreed_leader(cluster: &TestCluster, among: &[usize]) -> Option<u64> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .ok()?;
    let mut seen = None;
    for &i in among {
        let v: Value = http
            .get(format!("{}/v1/cluster?local=true", cluster.url(i)))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let leader = v["leader"].as_u64()?;
        if seen.is_some_and(|s| s != leader) {
            return None;
        }
        seen = Some(leader);
    }
    seen
}

/// One trial's figures, ms after the fault.
struct Figures {
    first_write_ms: Option<u64>,
    new_leader_ms: Option<u64>,
}

async fn trial(
    cluster: &mut TestCluster,
    shared: &Arc<Shared>,
    fault: Fault,
    max_wait: Duration,
) -> Figures {
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
    let old_id = cluster.nodes[leader].id;
    let others: Vec<usize> = (0..cluster.nodes.len()).filter(|&i| i != leader).collect();
    // Writers back on their own nodes, and writing.
    shared.spread.fetch_add(1, Ordering::Relaxed);
    let before = shared.acks.load(Ordering::Relaxed);
    let steady = Instant::now() + Duration::from_secs(30);
    tokio::time::sleep(Duration::from_secs(2)).await;
    while shared.acks.load(Ordering::Relaxed) < before + 50 && Instant::now() < steady {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The fault is in effect once the signal is sent, or once the last link is cut
    // (cutting takes a few iptables calls, while which the leader may still commit).
    match fault {
        Fault::Kill => cluster.kill(leader),
        Fault::Stop => cluster.pause(leader),
        Fault::Cut => cluster.net.as_mut().expect("network lab").isolate(leader),
    }
    let fault_at = Instant::now();
    *shared.trial.lock().unwrap() = Trial {
        fault_at: Some(fault_at),
        first_new_ack: None,
    };
    let mut new_leader_ms = None;
    let mut first_write_ms = None;
    while fault_at.elapsed() < max_wait && (new_leader_ms.is_none() || first_write_ms.is_none()) {
        if new_leader_ms.is_none() {
            if let Some(l) = agreed_leader(cluster, &others).await {
                if l != old_id {
                    new_leader_ms = Some(fault_at.elapsed().as_millis() as u64);
                }
            }
        }
        if let Some(at) = shared.trial.lock().unwrap().first_new_ack {
            first_write_ms = Some(at.duration_since(fault_at).as_millis() as u64);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Heal, and let every node catch up before the next trial.
    match fault {
        Fault::Kill => cluster.restart(leader),
        Fault::Stop => cluster.resume(leader),
        Fault::Cut => cluster.net.as_mut().expect("network lab").heal_all(),
    }
    shared.trial.lock().unwrap().fault_at = None;
    let now = cluster.wait_for_leader(Duration::from_secs(60)).await;
    for i in 0..cluster.nodes.len() {
        cluster
            .wait_caught_up(i, now, Duration::from_secs(60))
            .await;
    }
    Figures {
        first_write_ms,
        new_leader_ms,
    }
}

fn median(values: &[u64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_unstable();
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2] as f64),
        n => Some((v[n / 2 - 1] + v[n / 2]) as f64 / 2.0),
    }
}

fn secs(ms: Option<f64>) -> String {
    ms.map_or("-".into(), |ms| format!("{:.2} s", ms / 1000.0))
}

async fn run() {
    let trials = env_u64("SQ_FAILOVER_TRIALS", 5) as usize;
    let writers = env_u64("SQ_FAILOVER_WRITERS", 8) as usize;
    let max_wait = Duration::from_secs(env_u64("SQ_FAILOVER_MAX_SECS", 30));
    let flags: Vec<String> = std::env::var("SQ_FAILOVER_FLAGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let faults: Vec<Fault> = std::env::var("SQ_FAILOVER_FAULTS")
        .unwrap_or_else(|_| "sigkill,sigstop,cut".into())
        .split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(|f| match f {
            "sigkill" | "kill" => Fault::Kill,
            "sigstop" | "stop" => Fault::Stop,
            "cut" => Fault::Cut,
            other => panic!("SQ_FAILOVER_FAULTS: unknown fault {other:?} (sigkill, sigstop, cut)"),
        })
        .collect();
    println!(
        "failover: 3 nodes, {writers} writers, {trials} trials per fault, node flags {flags:?}"
    );

    let mut results: Vec<(Fault, Vec<Figures>, Option<String>)> = Vec::new();
    for &fault in &faults {
        let net = if fault == Fault::Cut {
            match NetLab::create(3) {
                Ok(lab) => Some(lab),
                Err(e) => {
                    println!(
                        "{}: skipped: cannot create network namespaces ({e})",
                        fault.name()
                    );
                    results.push((fault, Vec::new(), Some(format!("skipped: {e}"))));
                    continue;
                }
            }
        } else {
            None
        };
        let options = Options {
            nodes: 3,
            flags: flags.clone(),
            ..Options::default()
        };
        let mut cluster = TestCluster::start_with_net(options, net).await;
        let session = cluster
            .client()
            .create_session(&json!({"redundancy": 1, "quorum": 1}))
            .await
            .expect("create a session");
        let urls: Arc<Vec<String>> = Arc::new((0..3).map(|i| cluster.url(i)).collect());
        let shared = Arc::new(Shared::default());
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..writers {
            tasks.spawn(writer(n, urls.clone(), session.clone(), shared.clone()));
        }
        let mut figures = Vec::new();
        for t in 1..=trials {
            let f = trial(&mut cluster, &shared, fault, max_wait).await;
            println!(
                "{} trial {t}: first new write acknowledged after {}, new leader agreed after {}",
                fault.name(),
                f.first_write_ms
                    .map_or(format!("more than {} s", max_wait.as_secs()), |ms| secs(
                        Some(ms as f64)
                    )),
                secs(f.new_leader_ms.map(|ms| ms as f64)),
            );
            figures.push(f);
        }
        shared.stop.store(true, Ordering::Relaxed);
        // Writers stop at their next attempt; those stuck on a request are dropped.
        let _ = tokio::time::timeout(Duration::from_secs(20), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tasks.abort_all();
        drop(cluster);
        results.push((fault, figures, None));
    }

    // The report.
    println!();
    println!(
        "{:<28} {:>7} {:>10} {:>10} {:>14} {:>8}",
        "fault (first new write)", "trials", "median", "max", "leader median", "target"
    );
    let mut report = serde_json::Map::new();
    for (fault, figures, note) in &results {
        let writes: Vec<u64> = figures.iter().filter_map(|f| f.first_write_ms).collect();
        let leaders: Vec<u64> = figures.iter().filter_map(|f| f.new_leader_ms).collect();
        let missed = figures.len() - writes.len();
        // A trial with no new write within the wait counts as the wait itself, so
        // the median and the maximum never look better than they were.
        let mut counted = writes.clone();
        counted.extend(std::iter::repeat_n(max_wait.as_millis() as u64, missed));
        let (med, max) = (median(&counted), counted.iter().max().map(|&m| m as f64));
        let max_text = if missed > 0 {
            format!(">{}", secs(max))
        } else {
            secs(max)
        };
        println!(
            "{:<28} {:>7} {:>10} {:>10} {:>14} {:>8}",
            fault.describe(),
            figures.len(),
            secs(med),
            max_text,
            secs(median(&leaders)),
            format!("≤ {:.1} s", fault.target_ms() as f64 / 1000.0),
        );
        if let Some(note) = note {
            println!("    {note}");
        }
        report.insert(
            fault.name().into(),
            json!({
                "fault": fault.describe(),
                "trials": figures.len(),
                "first_new_write_ms": figures.iter().map(|f| f.first_write_ms).collect::<Vec<_>>(),
                "new_leader_ms": figures.iter().map(|f| f.new_leader_ms).collect::<Vec<_>>(),
                "median_ms": med,
                "max_ms": max,
                "trials_without_a_new_write": missed,
                "leader_median_ms": median(&leaders),
                "target_ms": fault.target_ms(),
                "met": note.is_none() && max.is_some_and(|m| m <= fault.target_ms() as f64),
                "note": note,
            }),
        );
    }
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let doc = json!({
        "benchmark": "failover",
        "nodes": 3,
        "writers": writers,
        "trials": trials,
        "max_wait_ms": max_wait.as_millis() as u64,
        "node_flags": flags,
        "commit": commit,
        "faults": report,
    });
    let path = std::env::var_os("SQ_FAILOVER_JSON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            // The binary under test lives in <target>/release/.
            let bin = common::binary();
            bin.parent()
                .and_then(|p| p.parent())
                .map_or_else(|| "failover.json".into(), |t| t.join("failover.json"))
        });
    let text = serde_json::to_string_pretty(&doc).expect("JSON");
    std::fs::write(&path, &text).expect("write the JSON report");
    println!("\n{text}\n(written to {})", path.display());
}

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(run());
}
