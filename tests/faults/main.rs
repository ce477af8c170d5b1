//! Fault injection with a no-loss checker, in the manner of Jepsen.
//!
//! Real node processes (three by default, five in the five-node variant; each in a
//! network namespace of its own when the test runs as root, so links between nodes
//! can be cut); clients submit tasks with idempotency keys and others without (a
//! unique marker in each payload), readers read them linearizably and simulated
//! miners (honest, one liar, one tamperer) drive them to completion, every request
//! through a random node, while the nemesis kills, pauses, restarts and partitions
//! nodes and cuts their power (each data directory on a lossyfs power-loss disk). Every operation goes to a history file; after healing and a drain, a
//! final scan reads every task and the checker ([`checker`]) reads the history back
//! and fails the test on any violation. See docs/FAULTS.md.
//!
//! Settings (environment): `SQ_FAULT_SECS` how long faults are injected (default
//! 45, and at least until every kind of fault has come up once), `SQ_FAULT_NODES`
//! the node count of `fault_run_loses_nothing` (default 3), `SQ_FAULT_KINDS` the
//! fault kinds to inject (comma-separated names; default all that apply),
//! `SQ_FAULT5_SECS` the fault time of the five-node variant (default 30),
//! `SQ_FAULT_DRAIN_SECS` the longest wait for every task to finish after healing
//! (default 180), `SQ_FAULT_SEED` the nemesis's seed (random by default; printed),
//! `SQ_FAULT_OUT` a directory for the history and report (kept; by default a
//! temporary directory, kept only when the run fails).
//!
//! The cluster tests of this file run one at a time (they share the machine's cores).

#[path = "../common/mod.rs"]
mod common;

mod checker;
mod history;
mod nemesis;
mod workload;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::lossy::LossyDisks;
use common::netns::NetLab;
use common::{Options, TestCluster};
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::json;
use session_queue::client::miner::infer;

use history::{Event, Kind, Recorder};
use nemesis::{settle, Fault, Nemesis};
use workload::{Behaviour, Ctx, Nodes, Outcome};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The cluster tests of this binary take turns: each runs several node processes
/// and a workload, and two at once on a small machine would starve each other.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// `SQ_FAULT_KINDS`, when set: the fault kinds to inject.
fn kinds_from_env() -> Option<Vec<Fault>> {
    let names = std::env::var("SQ_FAULT_KINDS").ok()?;
    Some(
        names
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(|n| {
                Fault::from_name(n).unwrap_or_else(|| {
                    panic!(
                        "SQ_FAULT_KINDS: unknown fault {n:?}; known: {:?}",
                        Fault::ALL.map(Fault::name)
                    )
                })
            })
            .collect(),
    )
}

/// The fault run. About a minute by default; `tests/faults.sh` runs it for longer.
/// `SQ_FAULT_NODES` sets its node count (default 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_run_loses_nothing() {
    let _turn = one_at_a_time();
    let nodes = env_u64("SQ_FAULT_NODES", 3) as usize;
    assert!(nodes >= 3, "SQ_FAULT_NODES must be at least 3");
    let net = match NetLab::create(nodes) {
        Ok(lab) => Some(lab),
        Err(e) => {
            // Under CI every fault must run; elsewhere the rest still runs.
            assert!(
                !common::under_ci(),
                "fault_run_loses_nothing: cannot create network namespaces under CI ({e})"
            );
            eprintln!(
                "[faults] cannot create network namespaces ({e}): running WITHOUT partition faults"
            );
            None
        }
    };
    // Each node's data directory on a power-loss filesystem, for the power-loss kinds.
    let disks = match LossyDisks::create(nodes) {
        Ok(disks) => Some(disks),
        Err(e) => {
            assert!(
                !common::under_ci(),
                "fault_run_loses_nothing: cannot mount power-loss disks under CI ({e})"
            );
            eprintln!("[faults] no power-loss disks ({e}): running WITHOUT power-loss faults");
            None
        }
    };
    let report = run(RunConfig {
        nodes,
        duration: Duration::from_secs(env_u64("SQ_FAULT_SECS", 45)),
        net,
        disks,
        kinds: kinds_from_env(),
        submitters: 3,
        unkeyed_submitters: 2,
        submit_pause_ms: (150, 500),
    })
    .await;
    assert!(
        report.ok(),
        "the checker found {} violations:\n{}",
        report.violations(),
        report.summary()
    );
}

/// Five nodes, 30 s of faults that take leadership away from a leader with writes in
/// flight: the leader and one follower cut off from the other three, the leader cut
/// off alone, the leader paused; writers write through the old leader and through
/// followers on both sides. Those are the ambiguous outcomes (an entry appended,
/// then the leader deposed) that only idempotent writes may retry: the checker must
/// find nothing lost and no key, and no payload submitted without a key, applied
/// twice. Needs network namespaces (root).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_lose_nothing_and_apply_nothing_twice_when_leaders_are_deposed() {
    let _turn = one_at_a_time();
    let net = match NetLab::create(5) {
        Ok(lab) => lab,
        Err(e) => {
            return common::cannot_run(
                "five_nodes_lose_nothing_and_apply_nothing_twice_when_leaders_are_deposed",
                &format!("cannot create network namespaces: {e}"),
            );
        }
    };
    let report = run(RunConfig {
        nodes: 5,
        duration: Duration::from_secs(env_u64("SQ_FAULT5_SECS", 30)),
        net: Some(net),
        disks: None,
        kinds: kinds_from_env().or(Some(vec![
            Fault::LeaderMinority,
            Fault::IsolateLeader,
            Fault::PauseLeader,
        ])),
        submitters: 3,
        unkeyed_submitters: 3,
        submit_pause_ms: (100, 300),
    })
    .await;
    assert!(
        report.ok(),
        "the checker found {} violations:\n{}",
        report.violations(),
        report.summary()
    );
}

/// What a fault run is made of.
struct RunConfig {
    nodes: usize,
    /// How long faults are injected (at least one of every kind).
    duration: Duration,
    /// The nodes' network namespaces (partitions), if any.
    net: Option<NetLab>,
    /// The nodes' power-loss disks (power-loss faults), if any.
    disks: Option<LossyDisks>,
    /// The fault kinds (all that apply if `None`).
    kinds: Option<Vec<Fault>>,
    /// Submitters with idempotency keys, and without.
    submitters: usize,
    unkeyed_submitters: usize,
    /// Pause between two submits of one submitter, ms.
    submit_pause_ms: (u64, u64),
}

/// Where the history and report go, and whether that directory is kept anyway.
fn output_dir() -> (PathBuf, Option<tempfile::TempDir>) {
    match std::env::var_os("SQ_FAULT_OUT") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            std::fs::create_dir_all(&dir).expect("create SQ_FAULT_OUT");
            (dir, None)
        }
        None => {
            let tmp = tempfile::Builder::new()
                .prefix("sq-faults-")
                .tempdir()
                .expect("temp dir");
            (tmp.path().to_path_buf(), Some(tmp))
        }
    }
}

async fn run(config: RunConfig) -> checker::Report {
    let started = Instant::now();
    let seed = env_u64("SQ_FAULT_SEED", rand::random::<u32>() as u64);
    let drain_time = Duration::from_secs(env_u64("SQ_FAULT_DRAIN_SECS", 180));
    let duration = config.duration;
    if let Some(lab) = &config.net {
        eprintln!(
            "[faults] nodes in network namespaces; partitions by {}",
            lab.method()
        );
    }
    let partitions = config.net.is_some();
    // Small snapshots, so log purges and snapshot installs happen during the run too.
    let options = Options {
        nodes: config.nodes,
        flags: vec!["--snapshot-entries=1000".into()],
        // The `wipe` fault replaces the wiped node through membership.
        env: vec![("SQ_ADMIN_KEY".into(), nemesis::ADMIN_KEY.into())],
        data_root: config.disks.as_ref().map(LossyDisks::root),
        ..Options::default()
    };
    let mut cluster = TestCluster::start_with_net(options, config.net).await;
    let (out, tmp) = output_dir();
    let history_path = out.join("history.jsonl");
    let mut nemesis = Nemesis::new(seed, partitions, config.disks, config.nodes, config.kinds);
    eprintln!(
        "[faults] {} nodes, {} s of faults ({}), seed {seed}; history: {}; node logs: {}",
        config.nodes,
        duration.as_secs(),
        nemesis.kinds().join(", "),
        history_path.display(),
        cluster.dir.path().display()
    );
    let rec = Arc::new(Recorder::create(&history_path).expect("history file"));
    let apis: Vec<String> = (0..cluster.nodes.len()).map(|i| cluster.api(i)).collect();
    // Longer than a node's write timeout (10 s), so its own 503s come back first.
    let nodes = Nodes::new(&apis, Duration::from_secs(12));

    // k = 3, q = 2; timeouts long enough that a fault does not expire every slot,
    // attempts enough that expiries never fail a task.
    let spec = json!({
        "redundancy": 3, "quorum": 2, "max_nodes": 8, "max_attempts": 50,
        "ack_timeout_ms": 15000, "precommit_timeout_ms": 15000, "commit_timeout_ms": 15000,
    });
    let session = workload::create_session(&rec, &nodes, &spec).await;
    let ctx = Arc::new(Ctx {
        rec: rec.clone(),
        nodes: nodes.clone(),
        session: session.clone(),
        known: Mutex::new(Vec::new()),
        stop_submitting: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        submit_pause_ms: config.submit_pause_ms,
    });
    let mut background = tokio::task::JoinSet::new();
    let mut behaviours = vec![Behaviour::Honest; 6];
    behaviours.push(Behaviour::Liar);
    behaviours.push(Behaviour::Tamper(4));
    for (i, b) in behaviours.into_iter().enumerate() {
        background.spawn(workload::miner(ctx.clone(), format!("sim{i}"), b));
    }
    for i in 0..2 {
        background.spawn(workload::reader(ctx.clone(), i));
    }
    let mut submitters = tokio::task::JoinSet::new();
    for i in 0..config.submitters {
        submitters.spawn(workload::submitter(ctx.clone(), i));
    }
    for i in 0..config.unkeyed_submitters {
        submitters.spawn(workload::unkeyed_submitter(ctx.clone(), i));
    }

    // Faults.
    nemesis
        .run(&mut cluster, &rec, Instant::now() + duration)
        .await;
    nemesis.heal_everything(&mut cluster);
    let mut note = Event::new("nemesis", "healed");
    note.error = Some("every fault healed".into());
    rec.info(note);
    let leader = settle(&cluster, Duration::from_secs(30)).await;
    eprintln!(
        "[faults] healed after {:.0} s; leader {leader:?}; faults {:?}",
        started.elapsed().as_secs_f64(),
        nemesis.injected
    );

    // Submitters finish the key they hold (retrying it until it is answered).
    ctx.stop_submitting.store(true, Ordering::Relaxed);
    let finish = tokio::time::timeout(Duration::from_secs(60), async {
        while submitters.join_next().await.is_some() {}
    })
    .await;
    if finish.is_err() {
        eprintln!("[faults] a submitter was still retrying after 60 s; abandoning its key");
        submitters.abort_all();
    }

    // Drain: miners keep working until every task is finished: the acknowledged
    // ones, and also those no client saw acknowledged (unknown outcomes, and any a
    // write applied twice made), so the checker sees their results.
    let acknowledged: Vec<String> = ctx.known.lock().unwrap().clone();
    let mut pending: BTreeSet<String> = acknowledged.iter().cloned().collect();
    let total = session_total(&ctx).await.unwrap_or(0);
    pending.extend((1..=total).map(|n| format!("t-{n}")));
    let all = pending.len();
    let drain_deadline = Instant::now() + drain_time;
    while !pending.is_empty() && Instant::now() < drain_deadline {
        let round: Vec<String> = pending.iter().cloned().collect();
        let finished: Vec<String> = futures_util::stream::iter(round)
            .map(|task| {
                let ctx = ctx.clone();
                async move {
                    let v = workload::read_task(&ctx, "drain", "read", &task, None, true).await;
                    let done = v.is_some_and(|v| {
                        matches!(
                            v["state"].as_str(),
                            Some("completed" | "failed" | "cancelled")
                        )
                    });
                    done.then_some(task)
                }
            })
            .buffer_unordered(8)
            .filter_map(|t| async move { t })
            .collect()
            .await;
        for t in finished {
            pending.remove(&t);
        }
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    eprintln!(
        "[faults] drained after {:.0} s: {} of {all} tasks ({} acknowledged) still unfinished",
        started.elapsed().as_secs_f64(),
        pending.len(),
        acknowledged.len()
    );
    ctx.stop.store(true, Ordering::Relaxed);
    while background.join_next().await.is_some() {}

    // The final scan: every task of the session, read linearizably.
    scan(&ctx, &cluster).await;
    nemesis.check_crashes(&mut cluster, &rec);
    rec.flush();

    let events = history::read(&history_path).expect("read the history back");
    let report = checker::check(&events, infer);
    let summary = report.summary();
    eprintln!(
        "[faults] checker report ({:.0} s in all):\n{summary}",
        started.elapsed().as_secs_f64()
    );
    std::fs::write(out.join("report.txt"), &summary).expect("write the report");
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .expect("write the report");
    if !report.ok() {
        // Keep the evidence: the history, the report and the node logs.
        for n in &cluster.nodes {
            let _ = std::fs::copy(&n.log, out.join(format!("node{}.log", n.id)));
        }
        if let Some(tmp) = tmp {
            eprintln!("[faults] kept {}", tmp.keep().display());
        }
    }
    // The nodes go before their disks (the nemesis holds those).
    drop(cluster);
    let problems = std::mem::take(&mut nemesis.problems);
    drop(nemesis);
    assert!(
        problems.is_empty(),
        "the nemesis saw what must not happen: {problems:#?}"
    );
    report
}

/// How many tasks the session created (`submitted_total`), read through random
/// nodes (at most 20 tries); recorded as a `session-read` of the `scan` process.
async fn session_total(ctx: &Arc<Ctx>) -> Option<u64> {
    let rec = &ctx.rec;
    for _ in 0..20 {
        let node = ctx.nodes.random();
        let mut e = Event::new("scan", "session-read");
        e.session = Some(ctx.session.clone());
        e.node = Some(node);
        let e = rec.invoke(e);
        let outcome = ctx
            .nodes
            .call(
                node,
                Method::GET,
                &format!("/v1/sessions/{}", ctx.session),
                None,
                None,
            )
            .await;
        let mut done = e;
        outcome.annotate(&mut done);
        if let Outcome::Ok(_, v) = &outcome {
            let total = v["submitted_total"].as_u64().unwrap_or(0);
            done.count = Some(total);
            rec.complete(done, Kind::Ok);
            return Some(total);
        }
        rec.complete(done, outcome.kind());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    None
}

/// Reads every task of the run once the workload has stopped: linearizably through
/// random nodes (`scan`), then each finished one from every node's own state once
/// they have applied the same log (`replica`), so diverging replicas show up too.
async fn scan(ctx: &Arc<Ctx>, cluster: &TestCluster) {
    let rec = &ctx.rec;
    // How many tasks the session created (ids are assigned in order from t-1).
    let total = session_total(ctx).await.unwrap_or(0);
    let known_max = ctx
        .known
        .lock()
        .unwrap()
        .iter()
        .filter_map(|t| t.strip_prefix("t-").and_then(|n| n.parse::<u64>().ok()))
        .max()
        .unwrap_or(0);
    let last = total.max(known_max) + 2;
    let finished: Vec<String> = futures_util::stream::iter(1..=last)
        .map(|n| {
            let ctx = ctx.clone();
            async move {
                let task = format!("t-{n}");
                for _ in 0..10 {
                    if let Some(v) =
                        workload::read_task(&ctx, "scan", "scan", &task, None, true).await
                    {
                        let done = matches!(
                            v["state"].as_str(),
                            Some("completed" | "failed" | "cancelled")
                        );
                        return done.then_some(task);
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                None
            }
        })
        .buffer_unordered(8)
        .filter_map(|t| async move { t })
        .collect()
        .await;

    // Every node catches up with the leader, then serves the same finished tasks.
    let target = cluster
        .local_view(0)
        .await
        .and_then(|v| v["applied_index"].as_u64())
        .unwrap_or(0);
    for i in 0..cluster.nodes.len() {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let applied = cluster
                .local_view(i)
                .await
                .and_then(|v| v["applied_index"].as_u64())
                .unwrap_or(0);
            if applied >= target {
                break;
            }
            if Instant::now() > deadline {
                let mut e = Event::new("scan", "note");
                e.error = Some(format!(
                    "node {} did not reach applied index {target} in 30 s",
                    cluster.nodes[i].id
                ));
                rec.info(e);
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let _ = futures_util::stream::iter(finished.clone())
            .map(|task| {
                let ctx = ctx.clone();
                async move {
                    workload::read_task(&ctx, "replica", "replica", &task, Some(i), false).await
                }
            })
            .buffer_unordered(8)
            .collect::<Vec<_>>()
            .await;
    }
}

/// The partition mechanism itself: a leader cut off from the majority cannot commit,
/// the majority elects another and commits, and after healing all agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_cannot_commit_and_the_majority_moves_on() {
    let _turn = one_at_a_time();
    let net = match NetLab::create(3) {
        Ok(lab) => lab,
        Err(e) => {
            return common::cannot_run(
                "an_isolated_leader_cannot_commit_and_the_majority_moves_on",
                &format!("cannot create network namespaces: {e}"),
            );
        }
    };
    let mut cluster = TestCluster::start_with_net(Options::default(), Some(net)).await;
    let old = cluster.wait_for_leader(Duration::from_secs(20)).await;
    let session = cluster
        .client_of(old)
        .create_session(&common::session_spec(1, 1))
        .await
        .unwrap();
    cluster.net.as_mut().unwrap().isolate(old);

    // The majority elects a new leader and commits.
    let others: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let new = loop {
        let mut leaders = Vec::new();
        for &i in &others {
            leaders.push(
                cluster
                    .local_view(i)
                    .await
                    .and_then(|v| v["leader"].as_u64()),
            );
        }
        if let [Some(a), Some(b)] = leaders[..] {
            if a == b && a != cluster.nodes[old].id {
                break cluster.nodes.iter().position(|n| n.id == a).unwrap();
            }
        }
        assert!(
            Instant::now() < deadline,
            "the majority elected no leader; logs:\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let during = cluster
        .client_of(new)
        .submit(&session, b"majority side", Some("m-1"))
        .await
        .unwrap();

    // The isolated old leader cannot commit: its answer is never a success.
    let nodes = Nodes::new(&[cluster.api(old)], Duration::from_secs(15));
    let body =
        json!({"payload": session_queue::client::b64(b"minority side"), "idempotency_key": "x-1"});
    let outcome = nodes
        .call(
            0,
            Method::POST,
            &format!("/v1/sessions/{session}/tasks"),
            Some(&body),
            None,
        )
        .await;
    assert!(
        !matches!(outcome, Outcome::Ok(..)),
        "a write on the isolated side succeeded: {outcome:?}"
    );
    // Nor serve a linearizable read.
    let outcome = nodes
        .call(
            0,
            Method::GET,
            &format!("/v1/tasks/{during}?consistency=linearizable"),
            None,
            None,
        )
        .await;
    assert!(
        matches!(&outcome, Outcome::Fail(Some(503), _) | Outcome::Unknown(..)),
        "a linearizable read on the isolated side was answered: {outcome:?}"
    );

    // Healed, every node agrees and has the majority's write; the minority's is not there.
    cluster.net.as_mut().unwrap().heal_all();
    cluster.wait_for_leader(Duration::from_secs(30)).await;
    let v = cluster
        .client_of(old)
        .task(&during, "?consistency=linearizable")
        .await
        .unwrap();
    assert_eq!(v["idempotency_key"], "m-1");
    let v = cluster
        .client_of(old)
        .ok(Method::GET, &format!("/v1/sessions/{session}"), None, None)
        .await
        .unwrap();
    assert_eq!(
        v["submitted_total"], 1,
        "the minority's write was not committed: {v}"
    );
    // Whatever the minority write became, retrying its key never makes a second task.
    let (status, v) = cluster
        .client_of(new)
        .call(
            Method::POST,
            &format!("/v1/sessions/{session}/tasks"),
            Some(&body),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let v = cluster
        .client_of(new)
        .ok(Method::GET, &format!("/v1/sessions/{session}"), None, None)
        .await
        .unwrap();
    assert_eq!(v["submitted_total"], 2, "{v}");
}
