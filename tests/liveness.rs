//! Liveness with real node processes and the project's own simulated miners: every
//! task ends (served, or failed with a reason) in a pool of exactly k miners, one of
//! which misses an ack or stops entirely; the simulated miner does not hammer the
//! cluster while it waits on others; a miner's long poll with `after=` wakes only for
//! changes that concern that miner.
//!
//! The waits are generous bounds on liveness, not timing targets.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestCluster;
use reqwest::Method;
use serde_json::{json, Value};
use session_queue::client::miner::{self, infer, Ended, MinerRun, MinerSpec, MinerStats};
use session_queue::client::{b64, Client, ClientError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long any task may take to end in these tests.
const TASK_BOUND: Duration = Duration::from_secs(60);

/// Simulated miners of one test, each stoppable on its own.
struct Miners {
    stop: watch::Sender<bool>,
    stats: Vec<Arc<MinerStats>>,
    runs: Vec<JoinHandle<Result<MinerRun, ClientError>>>,
}

impl Miners {
    fn start(client: &Client, specs: Vec<MinerSpec>) -> Self {
        let (stop, rx) = watch::channel(false);
        let mut stats = Vec::new();
        let mut runs = Vec::new();
        for (i, spec) in specs.into_iter().enumerate() {
            let s = Arc::new(MinerStats::default());
            runs.push(tokio::spawn(miner::run(
                client.pinned(i),
                spec,
                s.clone(),
                rx.clone(),
            )));
            stats.push(s);
        }
        Miners { stop, stats, runs }
    }

    /// Stops every miner still running; each must end as asked, not as gone.
    async fn finish(self) {
        self.stop.send_replace(true);
        for run in self.runs {
            match run.await {
                Ok(Ok(r)) => assert_eq!(r.ended, Ended::Stopped, "{r:?}"),
                Ok(Err(e)) => panic!("a miner failed: {e}"),
                Err(e) if e.is_cancelled() => {} // stopped by the test on purpose
                Err(e) => panic!("a miner panicked: {e}"),
            }
        }
    }
}

fn spec(name: &str) -> MinerSpec {
    MinerSpec {
        name: name.into(),
        capacity: 4,
        heartbeat_timeout: Some(Duration::from_secs(3)),
        ..MinerSpec::default()
    }
}

/// Waits until `n` miners are registered and pooled or reserved.
async fn wait_for_miners(c: &Client, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = c.ok(Method::GET, "/v1/pool", None, None).await.unwrap();
        let live =
            v["pool"]["pooled"].as_u64().unwrap_or(0) + v["pool"]["reserved"].as_u64().unwrap_or(0);
        if live >= n {
            return;
        }
        assert!(Instant::now() < deadline, "miners did not register: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads a task until it is finished, at most `bound`; panics if it is not.
async fn wait_finished(c: &Client, task: &str, bound: Duration) -> Value {
    let deadline = Instant::now() + bound;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let v = c
            .task(
                task,
                &format!("?wait=completed&timeout={}ms", left.as_millis().max(1)),
            )
            .await
            .unwrap();
        if matches!(
            v["state"].as_str(),
            Some("completed" | "failed" | "cancelled")
        ) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "task {task} did not end within {bound:?}: {v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_exactly_k_completes_every_task_when_one_miner_misses_its_first_ack() {
    let cluster = TestCluster::start(3).await;
    let c = cluster.client();
    // The README's shape: three miners for k = 3, q = 2; one ignores its first slot.
    let mut specs = vec![spec("late"), spec("m2"), spec("m3")];
    specs[0].ignore_first = 1;
    let miners = Miners::start(&c, specs);
    wait_for_miners(&c, 3).await;
    let session = c
        .create_session(&json!({
            "redundancy": 3,
            "quorum": 2,
            "max_nodes": 3,
            "ack_timeout_ms": 1000,
            "precommit_timeout_ms": 2000,
            "commit_timeout_ms": 2000,
            "max_attempts": 5,
        }))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for n in 0..4 {
        let payload = format!("question {n}");
        let id = c.submit(&session, payload.as_bytes(), None).await.unwrap();
        tasks.push((id, payload));
    }
    for (id, payload) in &tasks {
        let v = wait_finished(&c, id, TASK_BOUND).await;
        assert_eq!(v["state"], "completed", "{v}");
        assert_eq!(v["result"], b64(&infer(payload.as_bytes())), "{v}");
    }
    // The late miner really missed an ack (a slot of it was lost and dispatched
    // again), and then served.
    let late = &miners.stats[0];
    assert_eq!(late.ignored.load(Ordering::Relaxed), 1);
    assert!(late.acks.load(Ordering::Relaxed) >= 1);
    let mut missed = false;
    for (id, _) in &tasks {
        let v = c.task(id, "").await.unwrap();
        missed |= v["attempts"].as_u64().unwrap_or(0) >= 2
            || v["assignments"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["state"] == "expired");
    }
    assert!(
        missed,
        "no slot was lost: the late miner did not miss its ack"
    );
    for s in &miners.stats {
        assert_eq!(
            s.gone.load(Ordering::Relaxed),
            0,
            "a miner was declared gone"
        );
    }
    miners.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_of_k_miners_stopped_every_task_fails_with_a_reason() {
    let cluster = TestCluster::start(3).await;
    let c = cluster.client();
    let miners = Miners::start(&c, vec![spec("m1"), spec("m2"), spec("quits")]);
    wait_for_miners(&c, 3).await;
    // With k = 3 no task can be served without a third miner: each must fail (after
    // its attempts, or waiting unassigned past its queue deadline), never wait for good.
    let session = c
        .create_session(&json!({
            "redundancy": 3,
            "quorum": 2,
            "max_nodes": 3,
            "ack_timeout_ms": 1000,
            "precommit_timeout_ms": 1000,
            "commit_timeout_ms": 1000,
            "max_attempts": 3,
            "queue_timeout_ms": 3000,
        }))
        .await
        .unwrap();
    // The third miner stops entirely: no more polls, acks or heartbeats.
    miners.runs[2].abort();
    let mut tasks = Vec::new();
    for n in 0..4 {
        tasks.push(
            c.submit(&session, format!("question {n}").as_bytes(), None)
                .await
                .unwrap(),
        );
    }
    for id in &tasks {
        let v = wait_finished(&c, id, TASK_BOUND).await;
        assert_eq!(v["state"], "failed", "{v}");
        let reason = v["failure"].as_str().unwrap_or_default();
        assert!(!reason.is_empty(), "failed without a reason: {v}");
    }
    miners.finish().await;
}

/// The sum, over every node, of `sq_http_requests_total` for one route.
async fn requests_on(cluster: &TestCluster, route: &str) -> f64 {
    let mut total = 0.0;
    for i in 0..cluster.nodes.len() {
        let text = reqwest::get(format!("{}/metrics", cluster.url(i)))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        total += text
            .lines()
            .filter(|l| l.starts_with("sq_http_requests_total{"))
            .filter(|l| l.contains(&format!("route=\"{route}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    total
}

async fn applied_index(c: &Client) -> u64 {
    let v = c
        .ok(Method::GET, "/v1/cluster?local=true", None, None)
        .await
        .unwrap();
    v["applied_index"].as_u64().unwrap()
}

/// A miner registered by hand (the test acts for it).
async fn manual_miner(c: &Client, name: &str, tags: &[&str]) -> (String, String) {
    let body = json!({"name": name, "capacity": 4, "tags": tags, "heartbeat_timeout_ms": 60_000});
    let v = c
        .ok(Method::POST, "/v1/miners", Some(&body), None)
        .await
        .unwrap();
    (
        v["miner_id"].as_str().unwrap().to_string(),
        v["token"].as_str().unwrap().to_string(),
    )
}

/// Writes of others that the miner under test must not be woken by: a second miner's
/// heartbeats and submits to a session no miner serves.
fn noise(c: &Client, miner: (String, String), session: String) -> JoinHandle<()> {
    let c = c.clone();
    tokio::spawn(async move {
        loop {
            c.ok(
                Method::POST,
                &format!("/v1/miners/{}/heartbeat", miner.0),
                Some(&json!({})),
                Some(&miner.1),
            )
            .await
            .unwrap();
            c.submit(&session, b"noise", None).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_miner_waiting_on_another_does_not_hammer_the_cluster() {
    let cluster = TestCluster::start(3).await;
    let c = cluster.client();
    // A second session that nothing serves, for noise.
    let idle = c
        .create_session(&json!({"tag": "nobody-serves-this"}))
        .await
        .unwrap();
    // k = 2: the simulated miner and one the test holds, which never acks for now.
    let other = manual_miner(&c, "holdout", &[]).await;
    let mut sim = spec("sim");
    sim.heartbeat_timeout = Some(Duration::from_secs(4));
    let miners = Miners::start(&c, vec![sim]);
    wait_for_miners(&c, 2).await;
    let session = c
        .create_session(&json!({
            "redundancy": 2,
            "quorum": 2,
            "max_nodes": 2,
            "ack_timeout_ms": 120_000,
            "precommit_timeout_ms": 120_000,
            "commit_timeout_ms": 120_000,
        }))
        .await
        .unwrap();
    let task = c.submit(&session, b"wait for me", None).await.unwrap();
    // The simulated miner acks; the task then waits on the holdout.
    let stats = miners.stats[0].clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    while stats.acks.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "the simulated miner never acked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let noisy = noise(&c, other.clone(), idle);
    let before_index = applied_index(&c).await;
    let before_polls = requests_on(&cluster, "/v1/miners/{id}/assignments").await;
    let before_writes = stats.writes.load(Ordering::Relaxed);
    let before_heartbeats = stats.heartbeats.load(Ordering::Relaxed);
    let window = Duration::from_secs(5);
    tokio::time::sleep(window).await;
    let polls = requests_on(&cluster, "/v1/miners/{id}/assignments").await - before_polls;
    let writes = stats.writes.load(Ordering::Relaxed) - before_writes;
    let heartbeats = stats.heartbeats.load(Ordering::Relaxed) - before_heartbeats;
    let entries = applied_index(&c).await - before_index;
    noisy.abort();
    eprintln!("in {window:?}: {entries} entries applied; the miner: {polls} polls, {writes} writes, {heartbeats} heartbeats");

    // Meanwhile the cluster applied plenty, none of it this miner's business.
    assert!(entries >= 50, "too little noise to tell: {entries} entries");
    assert_eq!(
        writes, 0,
        "the miner wrote while its task waited on another miner"
    );
    assert!(
        polls <= 3.0,
        "{polls} polls in {window:?} while nothing concerned the miner ({entries} entries applied)"
    );
    // A quarter of its 4 s heartbeat timeout: about five, whatever else happens.
    assert!(
        (3..=7).contains(&heartbeats),
        "{heartbeats} heartbeats in {window:?}"
    );
    assert_eq!(requests_on(&cluster, "/v1/tasks/{id}/precommit").await, 0.0);

    // The holdout acks: the precommit phase opens, and the simulated miner (woken by
    // a change of its own task) precommits.
    c.ok(
        Method::POST,
        &format!("/v1/tasks/{task}/ack"),
        Some(&json!({})),
        Some(&other.1),
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while stats.precommits.load(Ordering::Relaxed) == 0 {
        assert!(
            Instant::now() < deadline,
            "the simulated miner never precommitted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stats.refused.load(Ordering::Relaxed), 0);
    assert_eq!(stats.gone.load(Ordering::Relaxed), 0);
    miners.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_after_an_index_wakes_only_for_its_own_miner() {
    let cluster = TestCluster::start(3).await;
    let c = cluster.client_of(1);
    let idle = c
        .create_session(&json!({"tag": "nobody-serves-this"}))
        .await
        .unwrap();
    let me = manual_miner(&c, "me", &["mine"]).await;
    let other = manual_miner(&c, "other", &[]).await;
    let session = c
        .create_session(&json!({"tag": "mine", "ack_timeout_ms": 120_000}))
        .await
        .unwrap();
    let poll = |after: u64, wait_ms: u64| {
        let (c, me) = (c.clone(), me.clone());
        async move {
            let t0 = Instant::now();
            let v = c
                .ok(
                    Method::GET,
                    &format!(
                        "/v1/miners/{}/assignments?wait_ms={wait_ms}&after={after}",
                        me.0
                    ),
                    None,
                    Some(&me.1),
                )
                .await;
            (v, t0.elapsed())
        }
    };
    let first = c
        .ok(
            Method::GET,
            &format!("/v1/miners/{}/assignments", me.0),
            None,
            Some(&me.1),
        )
        .await
        .unwrap();
    let index = first["applied_index"].as_u64().unwrap();
    assert_eq!(first["assignments"], json!([]));

    // Others' writes go on for the whole wait: it runs to its end.
    let noisy = noise(&c, other.clone(), idle.clone());
    let (v, took) = poll(index, 3000).await;
    let v = v.unwrap();
    noisy.abort();
    assert!(
        took >= Duration::from_millis(2900),
        "woken after {took:?} by writes that do not concern the miner: {v}"
    );
    assert_eq!(v["assignments"], json!([]));
    let index2 = v["applied_index"].as_u64().unwrap();
    assert!(
        index2 > index + 20,
        "no noise was applied: {index} -> {index2}"
    );

    // A task for this miner wakes it at once (well before the wait ends).
    let waiting = tokio::spawn(poll(index2, 50_000));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let task = c.submit(&session, b"for me", None).await.unwrap();
    let (v, took) = waiting.await.unwrap();
    let v = v.unwrap();
    assert!(
        took < Duration::from_secs(40),
        "not woken by its own assignment"
    );
    let list = v["assignments"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{v}");
    assert_eq!(list[0]["task_id"], task.as_str());
    assert_eq!(list[0]["state"], "assigned");
    assert_eq!(list[0]["task_state"], "queued");
    assert!(list[0]["assigned_ms"].as_u64().is_some(), "{v}");
    let index3 = v["applied_index"].as_u64().unwrap();

    // Its own refused write changes nothing, and does not wake it either.
    let waiting = tokio::spawn(poll(index3, 2000));
    let refused = c
        .call(
            Method::POST,
            &format!("/v1/tasks/{task}/precommit"),
            Some(&json!({"hash": "00".repeat(32)})),
            Some(&me.1),
        )
        .await
        .unwrap();
    assert_eq!(refused.0.as_u16(), 409, "{:?}", refused.1);
    let (v, took) = waiting.await.unwrap();
    assert!(
        took >= Duration::from_millis(1900),
        "woken by a refused write: {v:?}"
    );

    // Its own ack does (the slot changed), from any node.
    let waiting = tokio::spawn(poll(index3, 50_000));
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster
        .client_of(2)
        .ok(
            Method::POST,
            &format!("/v1/tasks/{task}/ack"),
            Some(&json!({})),
            Some(&me.1),
        )
        .await
        .unwrap();
    let (v, took) = waiting.await.unwrap();
    let v = v.unwrap();
    assert!(took < Duration::from_secs(40));
    assert_eq!(v["assignments"][0]["state"], "acked", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miner_declared_gone_stops_and_is_replaced() {
    let mut cluster = TestCluster::start(3).await;
    let others = cluster.client_of(1);
    // The miner reaches the cluster through node 1 only; that node freezes, so its
    // heartbeats stop arriving and the others declare it gone.
    let through = cluster.client_of(0);
    let (stop, rx) = watch::channel(false);
    let stats = Arc::new(MinerStats::default());
    let mut sim = spec("cut-off");
    sim.heartbeat_timeout = Some(Duration::from_secs(2));
    let ends = Arc::new(std::sync::Mutex::new(Vec::<MinerRun>::new()));
    let run = tokio::spawn({
        let ends = ends.clone();
        miner::run_replacing(through, sim, stats.clone(), rx, move |_, run| {
            ends.lock().unwrap().push(run.clone())
        })
    });
    wait_for_miners(&others, 1).await;
    cluster.pause(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(v) = others.ok(Method::GET, "/v1/pool", None, None).await {
            if v["pool"]["gone"].as_u64().unwrap_or(0) >= 1 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the cut-off miner was not declared gone"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.resume(0);
    // Back in touch, it is told it is gone: its run ends saying why, and a
    // replacement registers.
    let deadline = Instant::now() + Duration::from_secs(30);
    while ends.lock().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the miner never learned it is gone"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let end = ends.lock().unwrap()[0].clone();
    match &end.ended {
        Ended::Gone(why) => assert!(why.contains("gone"), "{why}"),
        other => panic!("ended {other:?}"),
    }
    assert_eq!(stats.gone.load(Ordering::Relaxed), 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = others
            .ok(Method::GET, "/v1/pool", None, None)
            .await
            .unwrap();
        if v["pool"]["pooled"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no replacement registered: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.send_replace(true);
    run.await.unwrap().unwrap();
    assert_eq!(
        ends.lock().unwrap().len(),
        1,
        "declared gone more than once"
    );
}
