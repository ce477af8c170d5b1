//! The Docker Compose cluster (`cluster/docker-compose.yml`) driven for real: a task's
//! whole life against each container, the leader's container stopped (`docker stop`)
//! and then killed (`docker kill`) under a stream of idempotent submits, and a
//! container cut off its network (`docker network disconnect`) and reconnected.
//! After every fault, every acknowledged task must be readable from every node, and
//! the node that was down must catch up.
//!
//! The containers are started and torn down by `tests/compose.sh`, which passes them
//! in the environment; a plain `cargo test` skips this test (`#[ignore]`). By hand:
//!
//!     SQ_COMPOSE_APIS=127.0.0.1:17001,127.0.0.1:17002,127.0.0.1:17003 \
//!     SQ_COMPOSE_CONTAINERS=<id1>,<id2>,<id3> SQ_COMPOSE_SERVICES=node1,node2,node3 \
//!     SQ_COMPOSE_NETWORK=<network> \
//!     cargo test --release --test compose -- --ignored --nocapture

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use session_queue::client::{b64, Client, ClientError};
use session_queue::machine::sha256;

/// The compose cluster under test: container `i` serves `apis[i]`.
struct Compose {
    apis: Vec<String>,
    containers: Vec<String>,
    services: Vec<String>,
    network: String,
    api_key: Option<String>,
    started: Instant,
}

fn env_list(name: &str) -> Vec<String> {
    let v =
        std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run tests/compose.sh"));
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

impl Compose {
    fn from_env() -> Self {
        let c = Compose {
            apis: env_list("SQ_COMPOSE_APIS"),
            containers: env_list("SQ_COMPOSE_CONTAINERS"),
            services: env_list("SQ_COMPOSE_SERVICES"),
            network: std::env::var("SQ_COMPOSE_NETWORK")
                .expect("SQ_COMPOSE_NETWORK is not set: run tests/compose.sh"),
            api_key: std::env::var("SQ_API_KEY").ok().filter(|k| !k.is_empty()),
            started: Instant::now(),
        };
        assert_eq!(c.apis.len(), 3, "three APIs");
        assert_eq!(c.containers.len(), 3, "three containers");
        assert_eq!(c.services.len(), 3, "three services");
        c
    }

    fn log(&self, what: &str) {
        println!(
            "[compose {:6.1}s] {what}",
            self.started.elapsed().as_secs_f64()
        );
    }

    /// A client of container `i` only: no failover, so the container itself answers.
    fn client_of(&self, i: usize) -> Client {
        self.client_for(&[self.apis[i].clone()])
    }

    /// A client of the given containers, failing over between them.
    fn client_of_all(&self, nodes: &[usize]) -> Client {
        let apis: Vec<String> = nodes.iter().map(|&i| self.apis[i].clone()).collect();
        self.client_for(&apis)
    }

    /// Over https when `SQ_CA_FILE` names the cluster's CA (`tests/compose.sh --tls`).
    fn client_for(&self, apis: &[String]) -> Client {
        let ca = std::env::var_os("SQ_CA_FILE").map(std::path::PathBuf::from);
        Client::with_ca_file(apis, self.api_key.clone(), ca.as_deref()).expect("a client")
    }

    /// `docker ARGS`, which must succeed.
    fn docker(&self, args: &[&str]) -> String {
        self.log(&format!("docker {}", args.join(" ")));
        let out = Command::new("docker")
            .args(args)
            .output()
            .expect("run docker");
        assert!(
            out.status.success(),
            "docker {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Container `i`'s own view (`/v1/cluster?local=true`), if it answers in time.
    async fn local_view(&self, i: usize) -> Option<Value> {
        let c = self.client_of(i);
        let call = c.call(Method::GET, "/v1/cluster?local=true", None, None);
        match tokio::time::timeout(Duration::from_secs(3), call).await {
            Ok(Ok((status, v))) if status.is_success() => Some(v),
            _ => None,
        }
    }

    /// Waits until every container of `up` names the same leader, one of `up`;
    /// returns its index.
    async fn wait_leader(&self, up: &[usize], timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let mut last = Vec::new();
        loop {
            last.clear();
            for &i in up {
                last.push(self.local_view(i).await.and_then(|v| v["leader"].as_u64()));
            }
            if let Some(Some(leader)) = last.first().copied() {
                let i = leader as usize - 1;
                if last.iter().all(|l| *l == Some(leader)) && up.contains(&i) {
                    return i;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no leader agreed by containers {up:?} within {timeout:?}: {last:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The highest applied index among `nodes`.
    async fn applied(&self, nodes: &[usize]) -> u64 {
        let mut max = 0;
        for &i in nodes {
            if let Some(v) = self.local_view(i).await {
                max = max.max(v["applied_index"].as_u64().unwrap_or(0));
            }
        }
        max
    }

    /// Waits until container `i` answers and has applied at least `index`.
    async fn wait_applied(&self, i: usize, index: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.local_view(i).await;
            if v.as_ref()
                .and_then(|v| v["applied_index"].as_u64())
                .unwrap_or(0)
                >= index
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "container {} did not apply {index} within {timeout:?}: {v:?}",
                i + 1
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn precommit_hash(output: &[u8], nonce: &[u8]) -> String {
    hex::encode(sha256(&[output, nonce]))
}

/// A call that must answer `want`.
async fn expect(
    c: &Client,
    method: Method,
    path: &str,
    body: Option<Value>,
    bearer: Option<&str>,
    want: StatusCode,
) -> Value {
    let call = c.call(method.clone(), path, body.as_ref(), bearer);
    let (status, v) = tokio::time::timeout(Duration::from_secs(60), call)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer in 60 s"))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    assert_eq!(status, want, "{method} {path}: {v}");
    v
}

/// A task's whole life with every call sent to container `i`, its result read from
/// every container.
async fn task_life(cluster: &Compose, i: usize) {
    let c = cluster.client_of(i);
    let spec = json!({
        "redundancy": 3, "quorum": 2, "max_nodes": 3,
        "ack_timeout_ms": 30000, "precommit_timeout_ms": 30000, "commit_timeout_ms": 30000,
    });
    let session = expect(
        &c,
        Method::POST,
        "/v1/sessions",
        Some(spec),
        None,
        StatusCode::CREATED,
    )
    .await["id"]
        .as_str()
        .expect("session id")
        .to_string();
    let mut miners = Vec::new();
    for n in 0..3 {
        let body = json!({"name": format!("c{}-m{n}", i + 1), "capacity": 1});
        let v = expect(
            &c,
            Method::POST,
            "/v1/miners",
            Some(body),
            None,
            StatusCode::CREATED,
        )
        .await;
        miners.push((
            v["miner_id"].as_str().unwrap().to_string(),
            v["token"].as_str().unwrap().to_string(),
        ));
    }
    let payload = format!("container {}: what is 6 x 7?", i + 1);
    let body = json!({"payload": b64(payload.as_bytes())});
    let v = expect(
        &c,
        Method::POST,
        &format!("/v1/sessions/{session}/tasks"),
        Some(body),
        None,
        StatusCode::CREATED,
    )
    .await;
    let task = v["task_id"].as_str().unwrap().to_string();

    // Each miner finds the task in its assignments, and acknowledges it.
    for (id, token) in &miners {
        let path = format!("/v1/miners/{id}/assignments?wait_ms=10000");
        let v = expect(&c, Method::GET, &path, None, Some(token), StatusCode::OK).await;
        let list = v["assignments"].as_array().expect("assignments");
        assert_eq!(list.len(), 1, "miner {id}: {v}");
        assert_eq!(list[0]["task_id"], task.as_str(), "{v}");
        assert_eq!(list[0]["payload"], b64(payload.as_bytes()), "{v}");
    }
    for (_, token) in &miners {
        expect(
            &c,
            Method::POST,
            &format!("/v1/tasks/{task}/ack"),
            Some(json!({})),
            Some(token),
            StatusCode::OK,
        )
        .await;
    }
    let read = |q: &'static str| {
        let (c, task) = (c.clone(), task.clone());
        async move { c.task(&task, q).await.expect("read task") }
    };
    // Live state from a follower may lag the write it forwarded: a read-index read.
    assert_eq!(read("?consistency=linearizable").await["state"], "acked");

    // Commit-reveal: three precommits, then two matching reveals complete it.
    let output = format!("42 (from container {})", i + 1);
    for (n, (_, token)) in miners.iter().enumerate() {
        let hash = precommit_hash(output.as_bytes(), format!("nonce-{n}").as_bytes());
        let path = format!("/v1/tasks/{task}/precommit");
        expect(
            &c,
            Method::POST,
            &path,
            Some(json!({"hash": hash})),
            Some(token),
            StatusCode::OK,
        )
        .await;
    }
    assert_eq!(
        read("?consistency=linearizable").await["state"],
        "precommitted"
    );
    for (n, (_, token)) in miners.iter().enumerate().take(2) {
        let body = json!({"output": b64(output.as_bytes()), "nonce": b64(format!("nonce-{n}").as_bytes())});
        expect(
            &c,
            Method::POST,
            &format!("/v1/tasks/{task}/commit"),
            Some(body),
            Some(token),
            StatusCode::OK,
        )
        .await;
    }
    assert_eq!(
        read("?consistency=linearizable").await["state"],
        "completed"
    );

    // The result, from every container.
    for j in 0..3 {
        let v = cluster
            .client_of(j)
            .task(&task, "?wait=completed&timeout=20s")
            .await
            .expect("read result");
        assert_eq!(v["state"], "completed", "container {}: {v}", j + 1);
        assert_eq!(
            v["result"],
            b64(output.as_bytes()),
            "container {}: {v}",
            j + 1
        );
    }

    // Tidy up: the miners leave, the session closes.
    for (id, token) in &miners {
        expect(
            &c,
            Method::DELETE,
            &format!("/v1/miners/{id}"),
            None,
            Some(token),
            StatusCode::OK,
        )
        .await;
    }
    close(&c, &session).await;
    cluster.log(&format!(
        "container {}: task {task} went queued → completed; result read from all three",
        i + 1
    ));
}

/// Acknowledged submits: (idempotency key, task id).
type Acked = Arc<Mutex<Vec<(String, String)>>>;

/// Submits one task with an idempotency key, retrying the same key through
/// elections and failovers for up to `budget`; the task id once acknowledged.
async fn submit(c: &Client, session: &str, key: &str, budget: Duration) -> Result<String, String> {
    let deadline = Instant::now() + budget;
    let body = json!({"payload": b64(key.as_bytes()), "idempotency_key": key});
    let path = format!("/v1/sessions/{session}/tasks");
    let mut last = String::new();
    while Instant::now() < deadline {
        let call = c.call(Method::POST, &path, Some(&body), None);
        match tokio::time::timeout(Duration::from_secs(30), call).await {
            Ok(Ok((status, v))) if status.is_success() => {
                return v["task_id"]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("no task_id: {v}"));
            }
            // 503: unavailable (nothing written) or outcome unknown; the same key
            // makes the retry safe either way.
            Ok(Ok((status, v))) if status == StatusCode::SERVICE_UNAVAILABLE => {
                last = format!("503 {v}")
            }
            Ok(Ok((status, v))) => return Err(format!("{status}: {v}")),
            Ok(Err(ClientError::Unreachable(e))) => last = e,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => last = "no answer in 30 s".into(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("{key}: not acknowledged within {budget:?}: {last}"))
}

/// A writer submitting `prefix-N` tasks through `c` until stopped.
struct Writer {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicUsize>,
    /// The longest time one submit took to be acknowledged (retries included), ms.
    longest_ms: Arc<AtomicU64>,
    handle: tokio::task::JoinHandle<Vec<String>>,
}

fn start_writer(c: Client, session: String, prefix: String, acked: Acked) -> Writer {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let longest_ms = Arc::new(AtomicU64::new(0));
    let (s, n, longest) = (stop.clone(), count.clone(), longest_ms.clone());
    let handle = tokio::spawn(async move {
        let mut failures = Vec::new();
        let mut k = 0;
        while !s.load(Ordering::Relaxed) {
            let key = format!("{prefix}-{k}");
            k += 1;
            let t = Instant::now();
            match submit(&c, &session, &key, Duration::from_secs(20)).await {
                Ok(id) => {
                    longest.fetch_max(t.elapsed().as_millis() as u64, Ordering::Relaxed);
                    acked.lock().unwrap().push((key, id));
                    n.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => failures.push(e),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        failures
    });
    Writer {
        stop,
        count,
        longest_ms,
        handle,
    }
}

impl Writer {
    /// Waits until `more` further submits are acknowledged.
    async fn wait_for(&self, cluster: &Compose, more: usize, timeout: Duration, what: &str) {
        let target = self.count.load(Ordering::Relaxed) + more;
        let deadline = Instant::now() + timeout;
        while self.count.load(Ordering::Relaxed) < target {
            assert!(
                Instant::now() < deadline,
                "{what}: fewer than {more} submits acknowledged within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        cluster.log(&format!("{what}: {more} more submits acknowledged"));
    }

    async fn finish(self, cluster: &Compose, what: &str) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        let failures = tokio::time::timeout(Duration::from_secs(60), self.handle)
            .await
            .expect("writer stops")
            .expect("writer");
        cluster.log(&format!(
            "{what}: the writer had {} submits acknowledged; the longest took {} ms",
            self.count.load(Ordering::Relaxed),
            self.longest_ms.load(Ordering::Relaxed)
        ));
        failures
    }
}

/// Every acknowledged task is on container `i`, with its key, and a resubmit of its
/// key answers the same task without creating one.
async fn check_acked(cluster: &Compose, i: usize, session: &str, acked: &Acked, resubmit: bool) {
    let acked = acked.lock().unwrap().clone();
    // A follower may lag what the leader acknowledged: wait until it applied as much
    // as any node that answers (a node cut off cannot have applied more).
    let target = cluster.applied(&[0, 1, 2]).await;
    cluster
        .wait_applied(i, target, Duration::from_secs(30))
        .await;
    let c = cluster.client_of(i);
    for (key, id) in &acked {
        let v = c
            .task(id, "")
            .await
            .unwrap_or_else(|e| panic!("container {}: acknowledged task {id} ({key}): {e}", i + 1));
        assert_eq!(
            v["idempotency_key"],
            key.as_str(),
            "container {}: {v}",
            i + 1
        );
        assert_eq!(v["session_id"], session, "container {}: {v}", i + 1);
    }
    if resubmit {
        for (key, id) in &acked {
            let body = json!({"payload": b64(key.as_bytes()), "idempotency_key": key});
            let v = expect(
                &c,
                Method::POST,
                &format!("/v1/sessions/{session}/tasks"),
                Some(body),
                None,
                StatusCode::OK,
            )
            .await;
            assert_eq!(v["task_id"], id.as_str(), "resubmitted {key}: {v}");
            assert_eq!(v["created"], false, "resubmitted {key}: {v}");
        }
    }
    cluster.log(&format!(
        "container {}: all {} acknowledged tasks present",
        i + 1,
        acked.len()
    ));
}

fn session_for_writes() -> Value {
    json!({"redundancy": 1, "quorum": 1})
}

/// The leader's container goes down (`docker stop` or `docker kill`) while a writer
/// submits through the other two; nothing acknowledged is lost, the survivors keep
/// serving, and the container catches up when started again.
async fn leader_down(cluster: &Compose, how: &str) {
    let all = [0, 1, 2];
    let leader = cluster.wait_leader(&all, Duration::from_secs(30)).await;
    let survivors: Vec<usize> = all.iter().copied().filter(|&i| i != leader).collect();
    cluster.log(&format!("{how}: the leader is container {}", leader + 1));
    let (session, acked, writer) = writes_before_fault(cluster, &survivors, how).await;
    let down = Instant::now();
    match how {
        "stop" => cluster.docker(&["stop", "-t", "20", &cluster.containers[leader]]),
        "kill" => cluster.docker(&["kill", &cluster.containers[leader]]),
        _ => unreachable!(),
    };
    let new_leader = cluster
        .wait_leader(&survivors, Duration::from_secs(30))
        .await;
    cluster.log(&format!(
        "{how}: container {} leads {:.1}s after the fault",
        new_leader + 1,
        down.elapsed().as_secs_f64()
    ));
    writer
        .wait_for(
            cluster,
            30,
            Duration::from_secs(45),
            &format!("{how}: with the leader down"),
        )
        .await;
    survivors_hold_writes(
        cluster, writer, how, &survivors, new_leader, &session, &acked,
    )
    .await;

    // Back: the container restarts on its volume and catches up.
    let target = cluster.applied(&survivors).await;
    cluster.docker(&["start", &cluster.containers[leader]]);
    rejoins(cluster, leader, target, &session, &acked, how, "is back").await;
}

/// Before a fault: a session, 30 submits acknowledged through every container, then
/// a writer (keys `prefix-during-N`) through `through` with 10 more acknowledged.
async fn writes_before_fault(
    cluster: &Compose,
    through: &[usize],
    prefix: &str,
) -> (String, Acked, Writer) {
    let c = cluster.client_of_all(through);
    let session = c
        .create_session(&session_for_writes())
        .await
        .expect("session");
    let acked: Acked = Arc::default();
    for n in 0..30 {
        let key = format!("{prefix}-before-{n}");
        let id = submit(
            &cluster.client_of(n % 3),
            &session,
            &key,
            Duration::from_secs(20),
        )
        .await
        .expect("submit before");
        acked.lock().unwrap().push((key, id));
    }
    let writer = start_writer(
        c,
        session.clone(),
        format!("{prefix}-during"),
        acked.clone(),
    );
    writer
        .wait_for(
            cluster,
            10,
            Duration::from_secs(30),
            &format!("{prefix}: before the fault"),
        )
        .await;
    (session, acked, writer)
}

/// During the fault: the writer stops with every submit acknowledged, and each of
/// `survivors` holds every acknowledged task (the leader also answers resubmits).
async fn survivors_hold_writes(
    cluster: &Compose,
    writer: Writer,
    prefix: &str,
    survivors: &[usize],
    leader: usize,
    session: &str,
    acked: &Acked,
) {
    let failures = writer.finish(cluster, prefix).await;
    assert!(
        failures.is_empty(),
        "{prefix}: submits never acknowledged: {failures:?}"
    );
    for &i in survivors {
        check_acked(cluster, i, session, acked, i == leader).await;
    }
}

/// Container `i`, back after a fault, applies up to `target`, holds every
/// acknowledged task and takes writes again (forwarded if it no longer leads).
async fn rejoins(
    cluster: &Compose,
    i: usize,
    target: u64,
    session: &str,
    acked: &Acked,
    prefix: &str,
    back: &str,
) {
    cluster
        .wait_applied(i, target, Duration::from_secs(60))
        .await;
    cluster
        .wait_leader(&[0, 1, 2], Duration::from_secs(30))
        .await;
    cluster.log(&format!(
        "{prefix}: container {} {back} and applied index {target}",
        i + 1
    ));
    check_acked(cluster, i, session, acked, false).await;
    submit(
        &cluster.client_of(i),
        session,
        &format!("{prefix}-after"),
        Duration::from_secs(20),
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{prefix}: a write through container {} after it {back}: {e}",
            i + 1
        )
    });
    close(&cluster.client_of(i), session).await;
}

/// Closes a session of queued tasks, so later sessions get the miners.
async fn close(c: &Client, session: &str) {
    expect(
        c,
        Method::POST,
        &format!("/v1/sessions/{session}/close"),
        Some(json!({})),
        None,
        StatusCode::OK,
    )
    .await;
}

/// Container `cut` loses its network while a writer submits through the other two,
/// then gets it back (with its service name as alias, as compose gave it) and
/// catches up.
async fn network_cut(cluster: &Compose, cut: usize) {
    let all = [0, 1, 2];
    let rest: Vec<usize> = all.iter().copied().filter(|&i| i != cut).collect();
    let (session, acked, writer) = writes_before_fault(cluster, &rest, "cut").await;

    let cut_at = Instant::now();
    cluster.docker(&[
        "network",
        "disconnect",
        &cluster.network,
        &cluster.containers[cut],
    ]);
    let leader = cluster.wait_leader(&rest, Duration::from_secs(30)).await;
    cluster.log(&format!(
        "cut: container {} leads the other two {:.1}s after the cut",
        leader + 1,
        cut_at.elapsed().as_secs_f64()
    ));
    writer
        .wait_for(
            cluster,
            30,
            Duration::from_secs(45),
            "cut: with one container off the network",
        )
        .await;
    // The rest see the cut one as unreachable.
    let v = cluster
        .client_of(leader)
        .ok(Method::GET, "/v1/cluster", None, None)
        .await
        .expect("cluster status");
    let member = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == cut as u64 + 1)
        .cloned()
        .unwrap();
    assert_eq!(member["reachable"], false, "the cut container answers: {v}");
    survivors_hold_writes(cluster, writer, "cut", &rest, leader, &session, &acked).await;

    let target = cluster.applied(&rest).await;
    cluster.docker(&[
        "network",
        "connect",
        "--alias",
        &cluster.services[cut],
        &cluster.network,
        &cluster.containers[cut],
    ]);
    rejoins(cluster, cut, target, &session, &acked, "cut", "reconnected").await;
}

/// In the end all three hold the same state: same applied index, same counters.
async fn converged(cluster: &Compose) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut views = Vec::new();
        for i in 0..3 {
            views.push(
                cluster
                    .local_view(i)
                    .await
                    .map(|v| v["applied_index"].clone()),
            );
        }
        if views.iter().all(|v| v.is_some() && *v == views[0]) {
            cluster.log(&format!(
                "all three applied index {}",
                views[0].as_ref().unwrap()
            ));
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the containers did not converge: {views:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the compose cluster that tests/compose.sh starts"]
async fn the_compose_cluster_serves_and_survives_container_faults() {
    let cluster = Compose::from_env();
    cluster
        .wait_leader(&[0, 1, 2], Duration::from_secs(60))
        .await;
    // Each published port reaches the container it should.
    for i in 0..3 {
        let c = cluster.client_of(i);
        let v = c
            .http()
            .get(format!("{}/health", c.nodes()[0]))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
        assert_eq!(v["id"], i as u64 + 1, "{} answers as {v}", cluster.apis[i]);
    }
    for i in 0..3 {
        task_life(&cluster, i).await;
    }
    leader_down(&cluster, "stop").await;
    leader_down(&cluster, "kill").await;
    let leader = cluster
        .wait_leader(&[0, 1, 2], Duration::from_secs(30))
        .await;
    network_cut(&cluster, leader).await;
    // A follower cut off too.
    let leader = cluster
        .wait_leader(&[0, 1, 2], Duration::from_secs(30))
        .await;
    network_cut(&cluster, (leader + 1) % 3).await;
    converged(&cluster).await;
    // A task's whole life again, on the cluster after every fault.
    task_life(&cluster, (leader + 2) % 3).await;
}
