//! The load generator (`session-queue bench`): drives a running cluster over its HTTP
//! API and reports throughput and latency percentiles.
//!
//! Modes:
//! - `submit`: closed loop, C connections each submitting one task at a time;
//! - `batch`: C connections each submitting batches of `--batch-size` tasks;
//! - `lifecycle`: tasks driven through all five states by simulated miners (k per
//!   task); C tasks in flight at once; reports submit latency and submit-to-completed
//!   latency, measured from the session's event stream;
//! - `mixed`: submitters, miners and result readers at once.
//!
//! Output: a text table, and the same as JSON with `--json FILE`.

mod conn;
mod report;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, ValueEnum};
use futures_util::StreamExt;
use reqwest::Method;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{watch, Semaphore};

use crate::client::miner::{self, MinerSpec, MinerStats};
use crate::client::{b64, encode, Client};
use report::Recorder;

/// One task of a submit body.
#[derive(Serialize)]
struct NewTask<'a> {
    payload: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<String>,
}

/// A batch submit body.
#[derive(Serialize)]
struct NewTasks<'a> {
    tasks: Vec<NewTask<'a>>,
}

/// The answer to a submit, as far as the bench reads it.
#[derive(Deserialize)]
struct Submitted {
    task_id: String,
}

/// How a submitter reaches the cluster: its own lean connection to one node over
/// plain http ([`conn::Conn`]), or the failover client (https).
enum Submitter {
    Lean(conn::Conn, hyper::Uri),
    Client(Client, String),
}

impl Submitter {
    /// Submitter `i` of `client`'s nodes (node i mod n), posting to `path`.
    fn new(client: &Client, api_key: Option<&str>, i: usize, path: String) -> anyhow::Result<Self> {
        let nodes = client.nodes();
        Ok(match conn::Conn::new(&nodes[i % nodes.len()], api_key)? {
            Some(conn) => Submitter::Lean(conn, path.parse()?),
            None => Submitter::Client(client.pinned(i), path),
        })
    }

    /// Posts an encoded body; the typed answer of a success.
    async fn post<R: DeserializeOwned>(&mut self, body: Bytes) -> Result<R, String> {
        match self {
            Submitter::Lean(conn, path) => {
                let (status, answer) = conn.post(path, body).await?;
                if !status.is_success() {
                    return Err(format!("{status}"));
                }
                serde_json::from_slice(&answer).map_err(|e| e.to_string())
            }
            Submitter::Client(client, path) => client
                .ok_encoded(Method::POST, path, Some(body), None, None)
                .await
                .map_err(|e| e.to_string()),
        }
    }
}

/// The `data` of an event on the session's stream, as far as the bench reads it.
#[derive(Deserialize)]
struct EventData<'a> {
    #[serde(borrow)]
    what: Cow<'a, str>,
    #[serde(borrow, default)]
    task_id: Option<Cow<'a, str>>,
}

/// What to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Submit,
    Batch,
    Lifecycle,
    Mixed,
}

/// Flags of `session-queue bench`.
#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    #[arg(value_enum)]
    pub mode: Mode,
    /// Nodes to drive (host:port of their API); connection i goes to node i mod n.
    #[arg(
        long,
        env = "SQ_NODES",
        value_delimiter = ',',
        default_value = "127.0.0.1:7001"
    )]
    pub nodes: Vec<String>,
    #[arg(long, env = "SQ_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The CA of the nodes' API certificates: given, `host:port` nodes are driven
    /// over https.
    #[arg(long, env = "SQ_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// Concurrent connections (submit, batch) or tasks in flight (lifecycle, mixed).
    #[arg(long, short = 'c', default_value_t = 64)]
    pub connections: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 256)]
    pub payload: usize,
    /// How long to run, seconds.
    #[arg(long, short = 'd', default_value_t = 10.0)]
    pub duration: f64,
    /// Tasks per call in batch mode.
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
    /// Miners per task (k) in lifecycle and mixed modes; q = k.
    #[arg(long, default_value_t = 1)]
    pub redundancy: u8,
    /// Simulated miners in lifecycle and mixed modes.
    #[arg(long, default_value_t = 8)]
    pub miners: usize,
    /// Tasks each simulated miner works on at once.
    #[arg(long, default_value_t = 64)]
    pub miner_capacity: u32,
    /// Lifecycle and mixed modes: each simulated miner steps the assignments due at
    /// once in one `POST /v1/miners/{id}/steps` call per round (all acks, then all
    /// precommits, then all reveals) instead of one call per step.
    #[arg(long)]
    pub batch_steps: bool,
    /// Give every submitted task a unique idempotency key.
    #[arg(long)]
    pub idempotency_keys: bool,
    /// Retention of finished tasks in the session the bench creates, ms (a soak uses
    /// a short one, so finished tasks are purged while it runs).
    #[arg(long, default_value_t = 600_000)]
    pub retention_ms: u64,
    /// Lifecycle and mixed modes: submit at most this many tasks a second in all
    /// (a steady rate for soaks); 0: as fast as the tasks in flight allow.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Submit into this session instead of creating one.
    #[arg(long)]
    pub session: Option<String>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// Runs a benchmark and prints (and optionally writes) its report.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let client = Client::with_ca_file(&args.nodes, args.api_key.clone(), args.ca_file.as_deref())?;
    let cpu = report::cpu_time();
    let mut report = match args.mode {
        Mode::Submit | Mode::Batch => submit(&client, &args).await?,
        Mode::Lifecycle | Mode::Mixed => lifecycle(&client, &args).await?,
    };
    // The load generator's own CPU per request (setup included), to compare clients.
    let cpu = report::cpu_time().saturating_sub(cpu).as_secs_f64();
    let requests = report["operations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|op| op["operation"] != "completed")
        .map(|op| op["ok"].as_u64().unwrap_or(0) + op["errors"].as_u64().unwrap_or(0))
        .sum::<u64>()
        + report["miner_requests"].as_u64().unwrap_or(0);
    report["client_cpu_s"] = json!(cpu);
    report["requests"] = json!(requests);
    report["client_cpu_us_per_request"] = json!(cpu * 1e6 / requests.max(1) as f64);
    let printed = report::print_text(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(printed?)
}

fn payload(size: usize) -> String {
    b64(&vec![b'x'; size])
}

async fn create_session(client: &Client, args: &BenchArgs) -> anyhow::Result<String> {
    if let Some(s) = &args.session {
        return Ok(s.clone());
    }
    let k = args.redundancy;
    let spec = json!({
        "owner": "bench",
        "redundancy": k,
        "quorum": k,
        "max_nodes": (args.miners as u32).max(k as u32),
        "retention_ms": args.retention_ms,
        "idle_release_ms": 600_000,
        // Submit and batch runs queue far more than the default bound of unfinished
        // tasks per session (1,000,000) without miners to finish them.
        "max_queued_tasks": 100_000_000,
    });
    Ok(client
        .create_session(&spec)
        .await
        .context("creating the benchmark session")?)
}

fn base(args: &BenchArgs) -> Value {
    json!({
        "mode": format!("{:?}", args.mode).to_lowercase(),
        "nodes": args.nodes,
        "tls": args.ca_file.is_some(),
        "connections": args.connections,
        "payload_bytes": args.payload,
        "batch_size": if args.mode == Mode::Batch { Some(args.batch_size) } else { None },
        "redundancy": args.redundancy,
        "batch_steps": matches!(args.mode, Mode::Lifecycle | Mode::Mixed) && args.batch_steps,
    })
}

/// Closed-loop submits, one task or one batch per call.
async fn submit(client: &Client, args: &BenchArgs) -> anyhow::Result<Value> {
    let session = create_session(client, args).await?;
    let duration = Duration::from_secs_f64(args.duration);
    let rec = Arc::new(Recorder::new(if args.mode == Mode::Batch {
        "batch"
    } else {
        "submit"
    }));
    let body_payload = payload(args.payload);
    let batch = args.mode == Mode::Batch;
    let started = Instant::now();
    let until = started + duration;
    let seq = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for i in 0..args.connections {
        let rec = rec.clone();
        let seq = seq.clone();
        let path = if batch {
            format!("/v1/sessions/{session}/tasks:batch")
        } else {
            format!("/v1/sessions/{session}/tasks")
        };
        let mut submitter = Submitter::new(client, args.api_key.as_deref(), i, path)?;
        let (keys, size, body_payload) =
            (args.idempotency_keys, args.batch_size, body_payload.clone());
        workers.spawn(async move {
            let task = |n: u64| NewTask {
                payload: &body_payload,
                idempotency_key: keys.then(|| format!("bench-{n}")),
            };
            // Without keys every call sends the same body: encode it once.
            let same = (!keys).then(|| {
                let body = if batch {
                    encode(&NewTasks {
                        tasks: (0..size as u64).map(task).collect(),
                    })
                } else {
                    encode(&task(0))
                };
                body.expect("a bench body encodes")
            });
            while Instant::now() < until {
                let items = if batch { size as u64 } else { 1 };
                let first = seq.fetch_add(items, Ordering::Relaxed);
                let body = match &same {
                    Some(body) => body.clone(),
                    None if batch => encode(&NewTasks {
                        tasks: (first..first + items).map(task).collect(),
                    })
                    .expect("a bench body encodes"),
                    None => encode(&task(first)).expect("a bench body encodes"),
                };
                let t0 = Instant::now();
                // The answer is checked for success, not read.
                match submitter.post::<IgnoredAny>(body).await {
                    Ok(_) => rec.ok(t0.elapsed(), items),
                    Err(_) => rec.error(),
                }
            }
        });
    }
    let bar = report::progress(duration, rec.name);
    report::drive_progress(bar, started, until, &rec).await;
    while workers.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    let mut out = base(args);
    out["duration_s"] = json!(elapsed.as_secs_f64());
    out["session"] = json!(session);
    out["operations"] = json!([rec.summary(elapsed)]);
    Ok(out)
}

/// Submit-to-completed timing of tasks, matched from the submit answers and the
/// session's event stream (whichever arrives second closes the pair).
#[derive(Default)]
struct Pending {
    started: HashMap<String, Instant>,
    finished_early: HashMap<String, (Instant, bool)>,
}

/// Tasks through their whole life, by simulated miners; `mixed` adds readers.
async fn lifecycle(client: &Client, args: &BenchArgs) -> anyhow::Result<Value> {
    let session = create_session(client, args).await?;
    let duration = Duration::from_secs_f64(args.duration);
    let (stop_tx, stop_rx) = watch::channel(false);
    let miner_stats = Arc::new(MinerStats::default());
    let mut miners = tokio::task::JoinSet::new();
    for i in 0..args.miners {
        let spec = MinerSpec {
            name: format!("bench-miner-{i}"),
            capacity: args.miner_capacity,
            batch_steps: args.batch_steps,
            ..MinerSpec::default()
        };
        // A miner declared gone is replaced, and counted in the report.
        miners.spawn(miner::run_replacing(
            client.pinned(i),
            spec,
            miner_stats.clone(),
            stop_rx.clone(),
            |spec, run| {
                tracing::warn!(miner = %spec.name, id = ?run.id, ended = ?run.ended, "a bench miner was declared gone; registering a replacement")
            },
        ));
    }

    let submit_rec = Arc::new(Recorder::new("submit"));
    let done_rec = Arc::new(Recorder::new("completed"));
    let read_rec = Arc::new(Recorder::new("read"));
    let failed = Arc::new(AtomicU64::new(0));
    let pending = Arc::new(Mutex::new(Pending::default()));
    let inflight = Arc::new(Semaphore::new(args.connections));
    let recent: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));

    // The event stream closes each task's timing and frees its in-flight permit.
    let events = {
        let node = client.nodes()[0].clone();
        let (pending, done_rec, failed, inflight, recent) = (
            pending.clone(),
            done_rec.clone(),
            failed.clone(),
            inflight.clone(),
            recent.clone(),
        );
        let mut req = client
            .http()
            .get(format!("{node}/v1/sessions/{session}/events"))
            // The stream lasts the whole run, past the client's call timeout.
            .timeout(Duration::from_secs(365 * 24 * 3600));
        if let Some(key) = &args.api_key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.context("opening the event stream")?;
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut body = resp.bytes_stream();
            let mut buf = String::new();
            loop {
                let chunk = tokio::select! {
                    c = body.next() => c,
                    _ = stop.changed() => break,
                };
                let Some(Ok(chunk)) = chunk else { break };
                buf.push_str(&String::from_utf8_lossy(&chunk));
                // Every whole event in the buffer, then what they took drained at once.
                let mut used = 0;
                while let Some(len) = buf[used..].find("\n\n") {
                    let event = &buf[used..used + len];
                    used += len + 2;
                    let Some(data) = event.lines().find_map(|l| l.strip_prefix("data:")) else {
                        continue;
                    };
                    let Ok(ev) = serde_json::from_str::<EventData>(data.trim()) else {
                        continue;
                    };
                    if !matches!(&*ev.what, "completed" | "failed" | "cancelled") {
                        continue;
                    }
                    let ok = ev.what == "completed";
                    let task = ev.task_id.unwrap_or_default().into_owned();
                    let now = Instant::now();
                    let start = {
                        let mut p = pending.lock().expect("pending lock");
                        match p.started.remove(&task) {
                            Some(s) => Some(s),
                            None => {
                                p.finished_early.insert(task.clone(), (now, ok));
                                None
                            }
                        }
                    };
                    if let Some(start) = start {
                        finish(&done_rec, &failed, &inflight, start, now, ok);
                        let mut r = recent.lock().expect("recent lock");
                        if r.len() >= 4096 {
                            r.remove(0);
                        }
                        r.push(task);
                    }
                }
                buf.drain(..used);
            }
        })
    };

    let started = Instant::now();
    let until = started + duration;
    let mut workers = tokio::task::JoinSet::new();
    let submitters = if args.mode == Mode::Mixed {
        (args.connections / 2).max(1)
    } else {
        args.connections
    };
    let body_payload = payload(args.payload);
    // With a rate, submit number n (over all submitters) waits until n / rate
    // seconds into the run.
    let interval = (args.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / args.rate));
    let submitted = Arc::new(AtomicU64::new(0));
    for i in 0..submitters {
        let submitted = submitted.clone();
        let (rec, pending, inflight, done_rec, failed) = (
            submit_rec.clone(),
            pending.clone(),
            inflight.clone(),
            done_rec.clone(),
            failed.clone(),
        );
        let path = format!("/v1/sessions/{session}/tasks");
        let mut submitter = Submitter::new(client, args.api_key.as_deref(), i, path)?;
        let body = encode(&NewTask {
            payload: &body_payload,
            idempotency_key: None,
        })?;
        workers.spawn(async move {
            while Instant::now() < until {
                let Ok(permit) = tokio::time::timeout(
                    until.saturating_duration_since(Instant::now()),
                    inflight.acquire(),
                )
                .await
                else {
                    break;
                };
                permit.expect("semaphore open").forget();
                if let Some(interval) = interval {
                    let n = submitted.fetch_add(1, Ordering::Relaxed);
                    let at = started + interval.mul_f64(n as f64);
                    if at >= until {
                        break;
                    }
                    tokio::time::sleep_until(at.into()).await;
                }
                let t0 = Instant::now();
                match submitter.post::<Submitted>(body.clone()).await {
                    Ok(Submitted { task_id: task }) => {
                        rec.ok(t0.elapsed(), 1);
                        let early = {
                            let mut p = pending.lock().expect("pending lock");
                            match p.finished_early.remove(&task) {
                                Some(e) => Some(e),
                                None => {
                                    p.started.insert(task, t0);
                                    None
                                }
                            }
                        };
                        if let Some((end, ok)) = early {
                            finish(&done_rec, &failed, &inflight, t0, end, ok);
                        }
                    }
                    _ => {
                        rec.error();
                        inflight.add_permits(1);
                    }
                }
            }
        });
    }
    if args.mode == Mode::Mixed {
        for i in 0..(args.connections / 2).max(1) {
            let client = client.pinned(i + 1);
            let (rec, recent) = (read_rec.clone(), recent.clone());
            workers.spawn(async move {
                let mut n = i;
                while Instant::now() < until {
                    let task = {
                        let r = recent.lock().expect("recent lock");
                        (!r.is_empty()).then(|| r[n % r.len()].clone())
                    };
                    n = n.wrapping_add(7919);
                    let Some(task) = task else {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    };
                    let t0 = Instant::now();
                    match client.task(&task, "").await {
                        Ok(v) if v["state"] == "completed" => rec.ok(t0.elapsed(), 1),
                        _ => rec.error(),
                    }
                }
            });
        }
    }
    let bar = report::progress(duration, "completed");
    report::drive_progress(bar, started, until, &done_rec).await;
    while workers.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    // Counted over the run only; stragglers finishing after it are not.
    let mut operations = vec![submit_rec.summary(elapsed), done_rec.summary(elapsed)];
    if args.mode == Mode::Mixed {
        operations.push(read_rec.summary(elapsed));
    }
    stop_tx.send_replace(true);
    while miners.join_next().await.is_some() {}
    events.abort();
    let mut out = base(args);
    out["duration_s"] = json!(elapsed.as_secs_f64());
    out["session"] = json!(session);
    out["miners"] = json!(args.miners);
    out["miner_capacity"] = json!(args.miner_capacity);
    out["failed_tasks"] = json!(failed.load(Ordering::Relaxed));
    out["miner_errors"] = json!(miner_stats.errors.load(Ordering::Relaxed));
    out["miner_refused"] = json!(miner_stats.refused.load(Ordering::Relaxed));
    out["miners_gone"] = json!(miner_stats.gone.load(Ordering::Relaxed));
    out["miner_requests"] = json!(miner_stats.requests());
    out["completed"] = json!(done_rec.ok.load(Ordering::Relaxed));
    out["miner"] = miner_stats.to_json();
    out["operations"] = json!(operations);
    Ok(out)
}

fn finish(
    done: &Recorder,
    failed: &AtomicU64,
    inflight: &Semaphore,
    start: Instant,
    end: Instant,
    ok: bool,
) {
    if ok {
        done.ok(end.saturating_duration_since(start), 1);
    } else {
        failed.fetch_add(1, Ordering::Relaxed);
        done.error();
    }
    inflight.add_permits(1);
}
