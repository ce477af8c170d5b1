//! TLS against real node processes (issue 14): a three-node cluster with https on
//! its API and mutual TLS between its nodes, its certificates made by
//! `session-queue certs`. The API flows work over https (sessions, submits,
//! batches, reads from every node, a task's whole life with a simulated miner, the
//! event stream, cluster status, a node added through a follower); a plain-HTTP
//! request gets no answer and writes nothing; and the peer channel answers no one
//! without a certificate from the peer CA: no client certificate, or one from
//! another CA, fails the handshake.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{binary, session_spec, Options, TestCluster};
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use session_queue::client::miner::{self, MinerSpec, MinerStats};
use session_queue::client::Client;
use session_queue::tls;

const ADMIN: &str = "tls-test-admin-key-4b8e";

/// Runs `session-queue certs` into `dir` for `names`.
fn certs(dir: &Path, names: &str) {
    let out = std::process::Command::new(binary())
        .args(["certs", "--out"])
        .arg(dir)
        .args(["--nodes", names])
        .output()
        .expect("run session-queue certs");
    assert!(
        out.status.success(),
        "certs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A cluster of `n` nodes (and certificates for one more) with TLS everywhere.
async fn tls_cluster(dir: &Path, n: usize) -> TestCluster {
    let names: Vec<String> = (1..=n + 1).map(|i| format!("node{i}")).collect();
    certs(dir, &names.join(","));
    let pem = |name: &str| dir.join(name).display().to_string();
    let node_env = names
        .iter()
        .map(|name| {
            vec![
                ("SQ_TLS_CERT".into(), pem(&format!("{name}.pem"))),
                ("SQ_TLS_KEY".into(), pem(&format!("{name}-key.pem"))),
                ("SQ_PEER_TLS_CERT".into(), pem(&format!("{name}.pem"))),
                ("SQ_PEER_TLS_KEY".into(), pem(&format!("{name}-key.pem"))),
            ]
        })
        .collect();
    TestCluster::start_with(Options {
        nodes: n,
        env: vec![
            ("SQ_PEER_CA".into(), pem("ca.pem")),
            ("SQ_ADMIN_KEY".into(), ADMIN.into()),
        ],
        node_env,
        ca_file: Some(dir.join("ca.pem")),
        ..Options::default()
    })
    .await
}

/// An https client of the peer channel at `addr` with this TLS config.
fn peer_http(config: rustls::ClientConfig) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// A vote request to the peer channel: `Ok(status)` if anything answered.
async fn peer_vote(client: &reqwest::Client, addr: &str) -> Result<StatusCode, reqwest::Error> {
    client
        .post(format!("https://{addr}/raft/vote"))
        .body(vec![0u8; 8])
        .send()
        .await
        .map(|r| r.status())
}

/// Reads server-sent events from `resp` until one says `what`; returns every
/// `what` seen.
async fn events_until(resp: reqwest::Response, what: &str) -> Vec<String> {
    let mut stream = resp.bytes_stream();
    let mut seen = Vec::new();
    let mut buf = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.iter().any(|s| s == what) {
        assert!(Instant::now() < deadline, "no {what} event; saw {seen:?}");
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("an event within 10 s")
            .expect("the stream stays open")
            .expect("a chunk");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data:")) {
                if let Ok(v) = serde_json::from_str::<Value>(data.trim()) {
                    if let Some(w) = v["what"].as_str() {
                        seen.push(w.to_string());
                    }
                }
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_serves_the_api_over_https_and_refuses_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    let certs_dir = dir.path().join("certs");
    let mut cluster = tls_cluster(&certs_dir, 3).await;

    // Plain HTTP to the API gets no answer, and writes nothing: the first session
    // created over https afterwards is still s-1.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for i in 0..3 {
        let refused = plain
            .post(format!("http://{}/v1/sessions", cluster.api(i)))
            .json(&json!({"redundancy": 1}))
            .send()
            .await;
        assert!(refused.is_err(), "plain HTTP answered: {refused:?}");
    }
    let c = cluster.client();
    assert!(c.nodes().iter().all(|n| n.starts_with("https://")));
    let session = c.create_session(&session_spec(1, 1)).await.unwrap();
    assert_eq!(session, "s-1");

    // The event stream of node 3, over https.
    let events = cluster
        .client_of(2)
        .http()
        .get(format!("{}/v1/sessions/{session}/events", cluster.url(2)))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    let watching = tokio::spawn(events_until(events, "completed"));

    // A submit, a batch, and reads from every node.
    let task = c.submit(&session, b"2+2", Some("k1")).await.unwrap();
    let batch = c
        .ok(
            Method::POST,
            &format!("/v1/sessions/{session}/tasks:batch"),
            Some(&json!({"tasks": [
                {"payload": session_queue::client::b64(b"a")},
                {"payload": session_queue::client::b64(b"b")},
            ]})),
            None,
        )
        .await
        .unwrap();
    assert_eq!(batch["task_ids"].as_array().unwrap().len(), 2, "{batch}");
    for i in 0..3 {
        let v = cluster
            .client_of(i)
            .task(&task, "?consistency=linearizable")
            .await
            .unwrap();
        assert_eq!(v["id"], task.as_str(), "{v}");
    }

    // A simulated miner (registration, long polls, ack, precommit, reveal, all
    // over https) completes the tasks.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stats = Arc::new(MinerStats::default());
    let worker = tokio::spawn(miner::run(
        cluster.client(),
        MinerSpec {
            name: "tls-miner".into(),
            capacity: 4,
            ..MinerSpec::default()
        },
        stats.clone(),
        stop_rx,
    ));
    let done = c.task(&task, "?wait=completed&timeout=30s").await.unwrap();
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(
        done["result"],
        session_queue::client::b64(&miner::infer(b"2+2"))
    );
    let seen = watching.await.unwrap();
    for what in [
        "submitted",
        "assigned",
        "acked",
        "precommitted",
        "completed",
    ] {
        assert!(seen.iter().any(|s| s == what), "{what} missing: {seen:?}");
    }
    stop_tx.send_replace(true);
    worker.await.unwrap().unwrap();

    // Cluster status: each node reaches the others' APIs over https itself.
    let status = cluster
        .client_of(1)
        .ok(Method::GET, "/v1/cluster", None, None)
        .await
        .unwrap();
    let members = status["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{status}");
    assert!(
        members.iter().all(|m| m["reachable"] == true),
        "a member unreachable over https: {status}"
    );

    // A fourth node joins through a follower: the follower relays the call to the
    // leader's https API, and the leader replicates to it over mutual TLS.
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let follower = (0..3).find(|&i| i != leader).unwrap();
    let fresh = cluster.spawn_new();
    let body = json!({
        "id": cluster.nodes[fresh].id,
        "api": cluster.api(fresh),
        "peer": cluster.peer(fresh),
    });
    let admin = Client::with_ca_file(
        &[cluster.api(follower)],
        Some(ADMIN.into()),
        Some(&certs_dir.join("ca.pem")),
    )
    .unwrap();
    admin
        .ok(Method::POST, "/v1/cluster/members", Some(&body), None)
        .await
        .unwrap_or_else(|e| panic!("adding node 4: {e}; logs:\n{}", cluster.logs()));
    cluster
        .wait_caught_up(fresh, leader, Duration::from_secs(30))
        .await;
    let v = cluster.client_of(fresh).task(&task, "").await.unwrap();
    assert_eq!(v["state"], "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_channel_talks_only_to_holders_of_a_peer_ca_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs_dir = dir.path().join("certs");
    let cluster = tls_cluster(&certs_dir, 3).await;
    // A CA of its own, and a certificate from it, as an intruder could make.
    let other = dir.path().join("other");
    certs(&other, "intruder");
    let ca = certs_dir.join("ca.pem");
    let peer = cluster.peer(0);

    // A node's own certificate reaches an HTTP handler: the peer answers (401, as
    // this request carries no cluster secret). So the refusals below are the TLS
    // layer's.
    let member = peer_http(
        tls::peer_client(
            &certs_dir.join("node2.pem"),
            &certs_dir.join("node2-key.pem"),
            &ca,
        )
        .unwrap(),
    );
    assert_eq!(
        peer_vote(&member, &peer).await.unwrap(),
        StatusCode::UNAUTHORIZED
    );

    let failures_before = cluster
        .metric(0, "sq_tls_handshake_failures_total{listener=\"peer\"}")
        .await;
    // No client certificate at all (the server's certificate is trusted).
    let anonymous = peer_http(tls::https_client(&ca, "ca").unwrap());
    let refused = peer_vote(&anonymous, &peer).await;
    assert!(
        refused.is_err(),
        "answered without a client certificate: {refused:?}"
    );
    // A certificate from another CA.
    let intruder = peer_http(
        tls::peer_client(
            &other.join("intruder.pem"),
            &other.join("intruder-key.pem"),
            &ca,
        )
        .unwrap(),
    );
    let refused = peer_vote(&intruder, &peer).await;
    assert!(
        refused.is_err(),
        "answered a foreign certificate: {refused:?}"
    );
    // Plain HTTP.
    let refused = reqwest::Client::new()
        .post(format!("http://{peer}/raft/vote"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(refused.is_err(), "answered plain HTTP: {refused:?}");
    let failures_after = cluster
        .metric(0, "sq_tls_handshake_failures_total{listener=\"peer\"}")
        .await;
    assert!(
        failures_after >= failures_before + 3.0,
        "handshake failures {failures_before} -> {failures_after}"
    );
    // And the cluster, whose nodes do hold such certificates, still works.
    cluster
        .client()
        .create_session(&session_spec(1, 1))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_offers_http2_by_alpn() {
    let dir = tempfile::tempdir().unwrap();
    let certs_dir = dir.path().join("certs");
    let cluster = tls_cluster(&certs_dir, 1).await;
    let mut config = tls::https_client(&certs_dir.join("ca.pem"), "ca").unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(cluster.api(0))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let stream = connector.connect(name, tcp).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
}

/// A node whose TLS files are wrong refuses to start and says which flag.
#[test]
fn a_node_with_a_mismatched_key_or_missing_file_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let certs_dir = dir.path().join("certs");
    certs(&certs_dir, "node1,node2");
    let p = |name: &str| certs_dir.join(name);
    let cases: [(&[(&str, PathBuf)], &str); 3] = [
        (
            &[
                ("--tls-cert", p("node1.pem")),
                ("--tls-key", p("node2-key.pem")),
                ("--tls-ca", p("ca.pem")),
            ],
            "does not match",
        ),
        (
            &[
                ("--peer-tls-cert", p("node1.pem")),
                ("--peer-tls-key", p("node1-key.pem")),
                ("--peer-ca", p("missing-ca.pem")),
            ],
            "--peer-ca",
        ),
        (
            &[
                ("--peer-tls-cert", p("node1.pem")),
                ("--peer-tls-key", p("node1-key.pem")),
            ],
            "go together",
        ),
    ];
    for (flags, want) in cases {
        let mut cmd = std::process::Command::new(binary());
        cmd.args(["node", "--id", "1", "--api-addr", "127.0.0.1:0"])
            .args(["--peer-addr", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .env("SQ_CLUSTER_SECRET", "tls-test-cluster-secret-0123")
            .env("RUST_LIB_BACKTRACE", "0");
        for (flag, path) in flags {
            cmd.arg(flag).arg(path);
        }
        let out = cmd.output().expect("run a node");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started with {flags:?}");
        assert!(stderr.contains(want), "{flags:?}: {stderr}");
    }
}

/// Three consecutive free loopback ports after a base (`base + 1 ..= base + 3`).
fn free_base(avoid: Option<u16>) -> u16 {
    for _ in 0..200 {
        let base = 20_000 + rand::random::<u16>() % 30_000;
        if avoid.is_some_and(|a| base.abs_diff(a) < 4) {
            continue;
        }
        let held: Vec<_> = (1..=3)
            .filter_map(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).ok())
            .collect();
        if held.len() == 3 {
            return base;
        }
    }
    panic!("no three consecutive free ports");
}

/// Stops what `cluster/up.sh` started, whatever happens to the test.
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster/down.sh"))
            .env("SQ_CLUSTER_DATA", &self.0)
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_up_tls_starts_a_tls_cluster_and_a_restart_keeps_tls() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        return common::cannot_run("cluster_up_tls", "no curl (cluster/up.sh needs it)");
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let api_base = free_base(None);
    let peer_base = free_base(Some(api_base));
    let script = |name: &str, args: &[&str]| {
        let out = std::process::Command::new("bash")
            .arg(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("cluster")
                    .join(name),
            )
            .args(args)
            .env("SQ_CLUSTER_DATA", &data)
            .env("SQ_BIN", binary())
            .env("SQ_API_PORT_BASE", api_base.to_string())
            .env("SQ_PEER_PORT_BASE", peer_base.to_string())
            .env_remove("SQ_CLUSTER_SECRET")
            .env_remove("SQ_ADMIN_KEY")
            .env_remove("SQ_API_KEY")
            .output()
            .expect("run a cluster script");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{name} {args:?} failed:\n{text}");
        text
    };
    let _down = Down(data.clone());
    let ca = data.join("tls/ca.pem");
    let nodes: Vec<String> = (1..=3)
        .map(|i| format!("127.0.0.1:{}", api_base + i))
        .collect();

    let first = script("up.sh", &["--tls"]);
    assert!(first.contains("https://"), "{first}");
    let c = Client::with_ca_file(&nodes, None, Some(&ca)).unwrap();
    let session = c.create_session(&session_spec(1, 1)).await.unwrap();
    let refused = reqwest::Client::new()
        .get(format!("http://{}/v1/cluster", nodes[0]))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(refused.is_err(), "plain HTTP answered: {refused:?}");

    // Stopped and started again without --tls: still TLS, same CA, same data.
    script("down.sh", &[]);
    let ca_pem = std::fs::read(&ca).unwrap();
    let again = script("up.sh", &[]);
    assert!(again.contains("https://"), "{again}");
    assert_eq!(std::fs::read(&ca).unwrap(), ca_pem);
    let v = Client::with_ca_file(&nodes, None, Some(&ca))
        .unwrap()
        .ok(Method::GET, &format!("/v1/sessions/{session}"), None, None)
        .await
        .unwrap();
    assert_eq!(v["id"], session.as_str());
    script("down.sh", &["--wipe"]);
}
