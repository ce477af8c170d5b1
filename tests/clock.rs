//! Wall-clock jumps on the leader move no deadline (SPEC section 8, "Cluster time";
//! issue 12, rule 4): cluster time advances with the leader's monotonic clock, and
//! the wall clock only steers it slowly.
//!
//! Every node runs with libfaketime preloaded (Debian's `libfaketime`: `LD_PRELOAD`,
//! `FAKETIME_DONT_FAKE_MONOTONIC=1`, one `FAKETIME_TIMESTAMP_FILE` per node, re-read
//! at most every second by `FAKETIME_CACHE_DURATION=1`), so the test steps one node's
//! wall clock by rewriting its file (`+0`, `+2h`, `-2h`); the monotonic clock is left
//! alone, as a real clock step (NTP, an operator's `date -s`) leaves it. The test
//! process itself never preloads the library.
//!
//! That the step took effect in the node is checked, not assumed: a request to the
//! node's peer channel without the cluster secret makes it log a warning, and the
//! timestamp of that line is the node's wall clock.
//!
//! `tests/run.sh` installs `faketime` when it is missing (`cluster/install-deps.sh`).
//! Without the library the test says so and skips; under CI (`CI=true`) it fails.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Options, TestCluster};
use reqwest::Method;
use serde_json::json;
use session_queue::client::{b64, Client};
use session_queue::machine::sha256;

const TWO_HOURS_MS: i64 = 2 * 3600 * 1000;

/// libfaketime's preload library: `SQ_LIBFAKETIME`, else where the `libfaketime`
/// package put it (`dpkg -L`), else the usual places.
fn faketime_library() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SQ_LIBFAKETIME") {
        return Some(PathBuf::from(path));
    }
    let listed = std::process::Command::new("dpkg")
        .args(["-L", "libfaketime"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut candidates: Vec<PathBuf> = listed
        .lines()
        .filter(|l| l.ends_with("/libfaketime.so.1"))
        .map(PathBuf::from)
        .collect();
    candidates.extend(
        [
            "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
            "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
            "/usr/lib/faketime/libfaketime.so.1",
            "/usr/local/lib/faketime/libfaketime.so.1",
        ]
        .map(PathBuf::from),
    );
    candidates.into_iter().find(|p| p.is_file())
}

/// One libfaketime offset file per node.
struct FakeClocks {
    files: Vec<PathBuf>,
}

impl FakeClocks {
    fn new(dir: &Path, nodes: usize) -> Self {
        let clocks = FakeClocks {
            files: (1..=nodes)
                .map(|id| dir.join(format!("clock-node{id}")))
                .collect(),
        };
        for i in 0..nodes {
            clocks.set(i, "+0");
        }
        clocks
    }

    /// Node `i`'s wall clock is real time plus `offset` (libfaketime syntax).
    fn set(&self, i: usize, offset: &str) {
        // Written aside and renamed, so the library never reads half a line.
        let tmp = self.files[i].with_extension("new");
        std::fs::write(&tmp, format!("{offset}\n")).expect("write the clock file");
        std::fs::rename(&tmp, &self.files[i]).expect("replace the clock file");
    }

    /// The extra environment of node `i`.
    fn env(&self, library: &Path, i: usize) -> Vec<(String, String)> {
        vec![
            ("LD_PRELOAD".into(), library.display().to_string()),
            (
                "FAKETIME_TIMESTAMP_FILE".into(),
                self.files[i].display().to_string(),
            ),
            ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
            ("FAKETIME_CACHE_DURATION".into(), "1".into()),
        ]
    }
}

/// libfaketime keeps a shared-memory segment and a semaphore per process under
/// /dev/shm, named by pid, and a killed process leaves them behind (a later process
/// with the same pid would then fail to start it). Removed on drop, after the nodes.
#[derive(Default)]
struct ShmCleanup(Mutex<Vec<u32>>);

impl Drop for ShmCleanup {
    fn drop(&mut self) {
        for pid in self.0.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = std::fs::remove_file(format!("/dev/shm/faketime_shm_{pid}"));
            let _ = std::fs::remove_file(format!("/dev/shm/sem.faketime_sem_{pid}"));
        }
    }
}

fn real_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// Milliseconds since 1970 of an RFC 3339 UTC time as tracing writes it
/// (`2026-11-30T11:10:20.123456Z`).
fn parse_utc_ms(text: &str) -> Option<i64> {
    let (date, time) = text.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>());
    let (hh, mm, ss) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let ms: i64 = format!("{frac:0<3}")[..3].parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000 + ms)
}

/// Node `i`'s wall clock minus real time, ms: a peer request without the cluster
/// secret makes the node log a warning, whose timestamp is its wall clock.
async fn wall_clock_offset(cluster: &TestCluster, i: usize) -> Option<i64> {
    const PROBE: &str = "without the cluster secret";
    let count = || {
        std::fs::read_to_string(&cluster.nodes[i].log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(PROBE))
            .count()
    };
    let before = count();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?;
    let sent = real_now_ms();
    let _ = http
        .post(format!("http://{}/peer/read-index", cluster.peer(i)))
        .send()
        .await;
    let answered = real_now_ms();
    for _ in 0..20 {
        let log = std::fs::read_to_string(&cluster.nodes[i].log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(PROBE)).collect();
        if lines.len() > before {
            let stamp = lines.last()?.split_whitespace().next()?;
            let node_ms = parse_utc_ms(stamp)?;
            return Some(node_ms - (sent + answered) / 2);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Steps node `i`'s wall clock to `offset` and waits (at most 10 s) until the node
/// shows it (within a minute of `expect_ms`); the offset it shows, if it does.
async fn step_clock(
    cluster: &TestCluster,
    clocks: &FakeClocks,
    i: usize,
    offset: &str,
    expect_ms: i64,
) -> Result<i64, String> {
    clocks.set(i, offset);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = None;
    while Instant::now() < deadline {
        seen = wall_clock_offset(cluster, i).await;
        if seen.is_some_and(|o| (o - expect_ms).abs() < 60_000) {
            return Ok(seen.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(format!(
        "node {}'s wall clock did not step to {offset} (it shows an offset of {seen:?} ms)",
        cluster.nodes[i].id
    ))
}

/// A miner that heartbeats on its own every 500 ms through one node until stopped,
/// recording every heartbeat that is not a success.
struct Heartbeats {
    id: String,
    token: String,
    stop: Arc<AtomicBool>,
    ok: Arc<Mutex<u64>>,
    failures: Arc<Mutex<Vec<String>>>,
}

async fn register(c: &Client, name: &str, heartbeat_timeout_ms: u64) -> (String, String) {
    let v = c
        .ok(
            Method::POST,
            "/v1/miners",
            Some(
                &json!({"name": name, "capacity": 2, "heartbeat_timeout_ms": heartbeat_timeout_ms}),
            ),
            None,
        )
        .await
        .expect("register a miner");
    (
        v["miner_id"].as_str().unwrap().to_string(),
        v["token"].as_str().unwrap().to_string(),
    )
}

fn heartbeat_every_500ms(node_api: String, id: String, token: String) -> Heartbeats {
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(Mutex::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let hb = Heartbeats {
        id: id.clone(),
        token: token.clone(),
        stop: stop.clone(),
        ok: ok.clone(),
        failures: failures.clone(),
    };
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("HTTP client");
        let url = format!("http://{node_api}/v1/miners/{id}/heartbeat");
        // At most ten minutes of heartbeats; the test stops them long before.
        for _ in 0..1200 {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let at = Instant::now();
            match http
                .post(&url)
                .bearer_auth(&token)
                .json(&json!({}))
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => *ok.lock().unwrap() += 1,
                Ok(r) => {
                    let status = r.status();
                    let body = r.text().await.unwrap_or_default();
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("miner {id}: heartbeat answered {status}: {body}"));
                }
                Err(e) => failures
                    .lock()
                    .unwrap()
                    .push(format!("miner {id}: heartbeat failed: {e}")),
            }
            tokio::time::sleep(Duration::from_millis(500).saturating_sub(at.elapsed())).await;
        }
    });
    hb
}

/// A miner's state as it reads itself (`pooled`, `reserved`, `gone`...).
async fn miner_state(c: &Client, id: &str, token: &str) -> String {
    match c
        .ok(Method::GET, &format!("/v1/miners/{id}"), None, Some(token))
        .await
    {
        Ok(v) => v["state"].as_str().unwrap_or("?").to_string(),
        Err(e) => format!("unreadable ({e})"),
    }
}

/// Finds the miner the task went to and drives it through ack, precommit and reveal.
async fn complete_task(c: &Client, miners: &[Heartbeats], task: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let miner = 'found: loop {
        for m in miners {
            let v = c
                .ok(
                    Method::GET,
                    &format!("/v1/miners/{}/assignments", m.id),
                    None,
                    Some(&m.token),
                )
                .await
                .map_err(|e| e.to_string())?;
            let list = v["assignments"].as_array().cloned().unwrap_or_default();
            if list.iter().any(|a| a["task_id"] == task) {
                break 'found m;
            }
        }
        if Instant::now() > deadline {
            return Err(format!("task {task} was assigned to no miner in 20 s"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (output, nonce) = (b"forty-two".as_slice(), b"nonce-1".as_slice());
    let hash = hex::encode(sha256(&[output, nonce]));
    for (step, body) in [
        ("ack", json!({})),
        ("precommit", json!({"hash": hash})),
        (
            "commit",
            json!({"output": b64(output), "nonce": b64(nonce)}),
        ),
    ] {
        c.ok(
            Method::POST,
            &format!("/v1/tasks/{task}/{step}"),
            Some(&body),
            Some(&miner.token),
        )
        .await
        .map_err(|e| format!("{step} of {task}: {e}"))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_wall_clock_jumps_move_no_deadline() {
    const TEST: &str = "leader_wall_clock_jumps_move_no_deadline";
    let Some(library) = faketime_library() else {
        return common::cannot_run(
            TEST,
            "libfaketime is not installed (apt-get install faketime; tests/run.sh does it)",
        );
    };
    let dir = tempfile::Builder::new()
        .prefix("sq-clock-")
        .tempdir()
        .expect("temp dir");
    let clocks = FakeClocks::new(dir.path(), 3);
    let shm = ShmCleanup::default();
    let cluster = TestCluster::start_with(Options {
        nodes: 3,
        node_env: (0..3).map(|i| clocks.env(&library, i)).collect(),
        ..Options::default()
    })
    .await;
    shm.0
        .lock()
        .unwrap()
        .extend((0..3).filter_map(|i| cluster.pid(i)));
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
    let c = cluster.client();
    let mut problems: Vec<String> = Vec::new();

    // The preload is in effect and the clock file is read: the leader shows +0.
    if let Err(e) = step_clock(&cluster, &clocks, leader, "+0", 0).await {
        panic!(
            "libfaketime does not act on the node: {e}\n{}",
            cluster.logs()
        );
    }

    // Three miners, 3 s heartbeat timeout, each heartbeating every 500 ms through
    // its own node; a session keeping finished tasks for 60 s, with one completed.
    let mut miners = Vec::new();
    for i in 0..3 {
        let (id, token) = register(&cluster.client_of(i), &format!("hb{i}"), 3000).await;
        miners.push(heartbeat_every_500ms(cluster.api(i), id, token));
    }
    let session = c
        .create_session(&json!({
            "redundancy": 1, "quorum": 1, "retention_ms": 60_000,
            "ack_timeout_ms": 30_000, "precommit_timeout_ms": 30_000, "commit_timeout_ms": 30_000,
        }))
        .await
        .expect("create a session");
    let task = c
        .submit(&session, b"what is six times seven?", Some("clock-1"))
        .await
        .expect("submit");
    complete_task(&c, &miners, &task)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    let v = c
        .task(&task, "?consistency=linearizable")
        .await
        .expect("read");
    assert_eq!(v["state"], "completed", "{v}");

    // The leader's wall clock jumps two hours ahead, then two hours behind.
    for (offset, expect_ms) in [("+2h", TWO_HOURS_MS), ("-2h", -TWO_HOURS_MS)] {
        let jumped = Instant::now();
        match step_clock(&cluster, &clocks, leader, offset, expect_ms).await {
            Ok(seen) => eprintln!(
                "[clock] node {}'s wall clock at {offset} (seen offset {:.1} s)",
                cluster.nodes[leader].id,
                seen as f64 / 1000.0
            ),
            Err(e) => panic!("{e}\n{}", cluster.logs()),
        }
        tokio::time::sleep(Duration::from_secs(5).saturating_sub(jumped.elapsed())).await;
    }

    // Nothing moved: every heartbeat answered, no miner gone, the result still there.
    for m in &miners {
        let failures = m.failures.lock().unwrap().clone();
        if let Some(first) = failures.first() {
            problems.push(format!(
                "{} heartbeats failed (of {}); the first: {first}",
                failures.len(),
                failures.len() as u64 + *m.ok.lock().unwrap()
            ));
        }
        let state = miner_state(&c, &m.id, &m.token).await;
        if !matches!(state.as_str(), "pooled" | "reserved") {
            problems.push(format!(
                "miner {} is {state} although it heartbeated every 500 ms ({} answered)",
                m.id,
                m.ok.lock().unwrap()
            ));
        }
    }
    match c.task(&task, "?consistency=linearizable").await {
        Ok(v) if v["state"] == "completed" => {}
        Ok(v) => problems.push(format!("the completed task {task} changed: {v}")),
        Err(e) => problems.push(format!(
            "the completed task {task} (retention 60 s) is gone after 10 s: {e}"
        )),
    }
    let now_leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    if now_leader != leader {
        problems.push(format!(
            "leadership moved from node {} to node {} during the clock steps",
            cluster.nodes[leader].id, cluster.nodes[now_leader].id
        ));
    }

    // A miner that really stops heartbeating is still declared gone, in about its
    // timeout (3 s after its last heartbeat; waited for generously), and not before.
    let (id, token) = register(&cluster.client_of(0), "stops", 3000).await;
    let late = heartbeat_every_500ms(cluster.api(0), id.clone(), token.clone());
    tokio::time::sleep(Duration::from_millis(1600)).await;
    late.stop.store(true, Ordering::Relaxed);
    let stopped = Instant::now();
    let gone_after = loop {
        let state = miner_state(&c, &id, &token).await;
        if state == "gone" {
            break Some(stopped.elapsed());
        }
        if stopped.elapsed() > Duration::from_secs(25) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    match gone_after {
        Some(after) if after < Duration::from_millis(2000) => problems.push(format!(
            "miner {id} was declared gone {:.1} s after it stopped, before its 3 s timeout",
            after.as_secs_f64()
        )),
        Some(after) => eprintln!(
            "[clock] a miner that stopped was declared gone {:.1} s later (timeout 3 s)",
            after.as_secs_f64()
        ),
        None => problems.push(format!(
            "miner {id} stopped heartbeating (3 s timeout) and was not declared gone in 25 s"
        )),
    }
    for m in &miners {
        m.stop.store(true, Ordering::Relaxed);
    }
    assert!(
        problems.is_empty(),
        "after the leader's wall clock jumped +2 h then -2 h:\n  {}\nlogs:\n{}",
        problems.join("\n  "),
        cluster.logs()
    );
    drop(cluster);
    drop(shm);
}

#[test]
fn log_timestamps_parse() {
    assert_eq!(parse_utc_ms("1970-01-01T00:00:00.000000Z"), Some(0));
    assert_eq!(
        parse_utc_ms("2026-11-30T11:10:20.123456Z"),
        Some(1_796_037_020_123)
    );
    assert_eq!(parse_utc_ms("2000-03-01T00:00:01Z"), Some(951_868_801_000));
    assert_eq!(parse_utc_ms("nonsense"), None);
}
