//! Cluster identity and the peer handshake against real node processes (issue 14):
//! a made-up member address never receives the cluster secret nor an entry; a node
//! of another cluster is refused; a node whose data directory was wiped and which is
//! restarted as `cluster/up.sh` (or a container) would does not vote, and the
//! cluster loses nothing; and docs/DEPLOY.md's replace-a-node procedure, run with the
//! binary's own `cluster remove` / `cluster add`, works end to end. And the peer
//! channel reads no body from a sender without a proven session.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{binary, session_spec, Options, TestCluster};
use reqwest::Method;
use serde_json::{json, Value};
use session_queue::client::Client;

const ADMIN: &str = "identity-test-admin-key-41ab";

fn with_admin(nodes: usize) -> Options {
    Options {
        nodes,
        env: vec![("SQ_ADMIN_KEY".into(), ADMIN.into())],
        ..Options::default()
    }
}

fn admin(cluster: &TestCluster, i: usize) -> Client {
    Client::new(&[cluster.api(i)], Some(ADMIN.to_string()))
}

/// A listener standing in for a made-up member: records every byte any connection
/// sends it and answers every request with a 200 whose body proves nothing.
fn recording_listener() -> (String, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let record = record.clone();
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
                let mut buf = [0u8; 65536];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) => return,
                        Ok(n) => {
                            record.lock().unwrap().extend_from_slice(&buf[..n]);
                            let body = [7u8; 80];
                            let head = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                                body.len()
                            );
                            let _ = stream.write_all(head.as_bytes());
                            let _ = stream.write_all(&body);
                        }
                        Err(e)
                            if e.kind() == std::io::ErrorKind::WouldBlock
                                || e.kind() == std::io::ErrorKind::TimedOut =>
                        {
                            continue
                        }
                        Err(_) => return,
                    }
                }
            });
        }
    });
    (addr, seen)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn member_ids(cluster: &TestCluster, i: usize) -> Vec<u64> {
    let v = cluster
        .client_of(i)
        .ok(Method::GET, "/v1/cluster", None, None)
        .await
        .unwrap();
    let mut ids: Vec<u64> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_made_up_member_gets_neither_the_secret_nor_an_entry() {
    let cluster = TestCluster::start_with(with_admin(3)).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let c = cluster.client_of(leader);
    let session = c.create_session(&session_spec(1, 1)).await.unwrap();
    c.submit(&session, b"before the made-up member", None)
        .await
        .unwrap();

    let (addr, seen) = recording_listener();
    // Through a follower (relayed to the leader) and through the leader.
    for via in [(leader + 1) % 3, leader] {
        let body = json!({"id": 9, "api": addr, "peer": addr});
        let (status, v) = admin(&cluster, via)
            .call(Method::POST, "/v1/cluster/members", Some(&body), None)
            .await
            .unwrap();
        assert_eq!(status.as_u16(), 409, "{v}");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("secret"), "{v}");
    }
    assert_eq!(member_ids(&cluster, leader).await, vec![1, 2, 3]);
    // Writes go on meanwhile.
    c.submit(&session, b"after the made-up member", None)
        .await
        .unwrap();

    let bytes = seen.lock().unwrap().clone();
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.contains("/peer/hello"),
        "the made-up member was asked to prove the secret: {text}"
    );
    assert!(
        !contains(&bytes, cluster.secret.as_bytes()),
        "the made-up member received the cluster secret"
    );
    for path in [
        "/raft/append",
        "/raft/vote",
        "/raft/snapshot",
        "/peer/propose",
    ] {
        assert!(!text.contains(path), "the made-up member received {path}");
    }
    assert!(!contains(&bytes, b"before the made-up member"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_cluster_is_refused() {
    let a = TestCluster::start_with(with_admin(3)).await;
    // Another cluster with the same secret (TestCluster's): a cluster id of its own.
    let b = TestCluster::start(1).await;
    let a_leader = a.wait_for_leader(Duration::from_secs(10)).await;
    let b_view = b.local_view(0).await.unwrap();
    assert_eq!(b_view["state"], "leader", "{b_view}");

    let body = json!({"id": 7, "api": b.api(0), "peer": b.peer(0)});
    let (status, v) = admin(&a, a_leader)
        .call(Method::POST, "/v1/cluster/members", Some(&body), None)
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 409, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("another cluster"),
        "{v}"
    );
    assert_eq!(member_ids(&a, a_leader).await, vec![1, 2, 3]);
    // Cluster B is untouched: still its own single leader, and it takes writes.
    let c = b.client_of(0);
    let session = c.create_session(&session_spec(1, 1)).await.unwrap();
    c.submit(&session, b"b", None).await.unwrap();
    let b_log = std::fs::read_to_string(&b.nodes[0].log).unwrap_or_default();
    assert!(
        b_log.contains("another cluster"),
        "B's node says why it refused A:\n{b_log}"
    );
}

/// Submits `n` tasks with idempotency keys through `c`; their ids.
async fn submit_keyed(c: &Client, session: &str, prefix: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for k in 0..n {
        let payload = format!("{prefix}-{k}");
        ids.push(
            c.submit(session, payload.as_bytes(), Some(&payload))
                .await
                .unwrap(),
        );
    }
    ids
}

async fn assert_term_zero(cluster: &TestCluster, i: usize, what: &str) {
    let v = cluster.local_view(i).await.expect("the wiped node answers");
    assert_eq!(
        v["term"].as_u64(),
        Some(0),
        "{what}: the wiped node took part in a term: {v}\n{}",
        cluster.logs()
    );
    assert_ne!(v["state"], "leader", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_restarted_as_up_sh_or_compose_would_does_not_vote_and_nothing_is_lost() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let wiped = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let c = cluster.client_of(leader);
    let session = c.create_session(&session_spec(1, 1)).await.unwrap();
    let mut acknowledged = submit_keyed(&c, &session, "before", 20).await;
    cluster
        .wait_caught_up(wiped, leader, Duration::from_secs(20))
        .await;

    // Its data directory is lost; up.sh starts it again under its old id.
    cluster.kill(wiped);
    cluster.wipe(wiped);
    cluster.restart(wiped);
    acknowledged.extend(submit_keyed(&c, &session, "while-blank", 10).await);
    // A few heartbeats and election timeouts go by.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_term_zero(&cluster, wiped, "restarted with existing").await;

    // The same with the command line that created the cluster (a container keeps
    // it): its old peers remember it, so it does not bootstrap again.
    cluster.kill(wiped);
    cluster.restart_as(wiped, "new");
    let deadline = Instant::now() + Duration::from_secs(20);
    let wiped_log = loop {
        let log = std::fs::read_to_string(&cluster.nodes[wiped].log).unwrap_or_default();
        if log.contains("does not bootstrap again") || Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        wiped_log.contains("does not bootstrap again"),
        "{}",
        cluster.logs()
    );
    acknowledged.extend(submit_keyed(&c, &session, "after-new", 10).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_term_zero(&cluster, wiped, "restarted with new").await;

    // The leader dies: the other follower alone with the wiped node must not get a
    // majority (the wiped node would vote for it, though it may lack entries).
    cluster.kill(leader);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let v = cluster.local_view(other).await.unwrap();
    assert_ne!(
        v["state"], "leader",
        "elected with the wiped node's vote: {v}"
    );
    assert_term_zero(&cluster, wiped, "with the leader gone").await;
    let log = std::fs::read_to_string(&cluster.nodes[wiped].log).unwrap_or_default();
    assert!(log.contains("does not vote") || log.contains("empty data directory"));

    // The old leader returns: nothing acknowledged is lost. (The wiped node is
    // stopped first: it follows no leader, which waiting for one would trip on.)
    cluster.kill(wiped);
    cluster.restart(leader);
    let now_leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
    assert_ne!(now_leader, wiped);
    let c = cluster.client_of(now_leader);
    for id in &acknowledged {
        let v = c.task(id, "?consistency=linearizable").await.unwrap();
        assert_eq!(v["id"], id.as_str(), "{v}");
    }
    let v = c
        .ok(Method::GET, &format!("/v1/sessions/{session}"), None, None)
        .await
        .unwrap();
    assert_eq!(v["submitted_total"], acknowledged.len() as u64, "{v}");
}

/// Runs the binary's client with the admin key: `session-queue cluster --nodes ... <args>`.
fn cli(cluster: &TestCluster, nodes: &[usize], args: &[&str]) -> Value {
    let nodes: Vec<String> = nodes.iter().map(|&i| cluster.api(i)).collect();
    let out = std::process::Command::new(binary())
        .arg("cluster")
        .arg("--nodes")
        .arg(nodes.join(","))
        .args(args)
        .env("SQ_ADMIN_KEY", ADMIN)
        .output()
        .expect("run the client");
    assert!(
        out.status.success(),
        "cluster {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deploy_md_replace_a_node_procedure_works_end_to_end() {
    let mut cluster = TestCluster::start_with(with_admin(3)).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let lost = (leader + 1) % 3;
    let kept = (leader + 2) % 3;
    let c = cluster.client_of(leader);
    let session = c.create_session(&session_spec(1, 1)).await.unwrap();
    let mut acknowledged = submit_keyed(&c, &session, "before", 20).await;

    // Node `lost` loses its volume and comes back blank (it does not vote).
    cluster.kill(lost);
    cluster.wipe(lost);
    cluster.restart(lost);
    acknowledged.extend(submit_keyed(&c, &session, "degraded", 5).await);

    // DEPLOY.md: stop it, remove its old id, start a node with a new id on an empty
    // directory (`--initial-cluster-state existing`), add that one.
    cluster.kill(lost);
    let lost_id = cluster.nodes[lost].id.to_string();
    let v = cli(&cluster, &[leader, kept], &["remove", &lost_id]);
    assert_eq!(v["members"].as_array().unwrap().len(), 2, "{v}");
    let fresh = cluster.spawn_new();
    let fresh_id = cluster.nodes[fresh].id.to_string();
    let v = cli(
        &cluster,
        &[kept, leader],
        &["add", &fresh_id, &cluster.api(fresh), &cluster.peer(fresh)],
    );
    let members = v["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{v}");
    assert!(members.iter().all(|m| m["voter"] == true), "{v}");
    acknowledged.extend(submit_keyed(&c, &session, "replaced", 5).await);
    cluster
        .wait_caught_up(fresh, leader, Duration::from_secs(30))
        .await;
    let f = cluster.client_of(fresh);
    for id in &acknowledged {
        f.task(id, "").await.unwrap();
    }

    // It is a voter that counts: with the old leader gone, the new node and the
    // kept one elect a leader and commit.
    cluster.kill(leader);
    let new_leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
    assert!(new_leader == fresh || new_leader == kept);
    let c = cluster.client_of(kept);
    let id = c.submit(&session, b"after", Some("after")).await.unwrap();
    acknowledged.push(id);
    for id in &acknowledged {
        c.task(id, "?consistency=linearizable").await.unwrap();
    }
    // The new node adopted the cluster's id: it is in its data directory.
    let stored = std::fs::read_to_string(cluster.nodes[fresh].data_dir.join("CLUSTER_ID")).unwrap();
    let kept_id = std::fs::read_to_string(cluster.nodes[kept].data_dir.join("CLUSTER_ID")).unwrap();
    assert_eq!(stored, kept_id);
}

/// Sends a request's head to `addr` with a body announced as `announced` bytes but
/// only a few sent, and waits up to 20 s for the answer's status line.
fn status_before_the_body(addr: &str, head: &str, announced: usize) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let request = format!("{head}content-length: {announced}\r\n\r\nsome bytes");
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = [0u8; 256];
    let n = stream.read(&mut answer).ok()?;
    let text = String::from_utf8_lossy(&answer[..n]);
    text.lines().next().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_channel_reads_no_body_from_a_sender_without_a_session() {
    // The body-read timeout is longer than the client waits: an answer can only
    // come from a refusal made before the body was read.
    let cluster = TestCluster::start_with(Options {
        nodes: 1,
        flags: vec!["--body-read-timeout-ms=60000".into()],
        ..Options::default()
    })
    .await;
    let addr = cluster.peer(0);
    let host = format!("host: {addr}\r\n");
    // A replication request of 256 MiB from a sender with no session, and one with
    // a made-up session: refused at once, the body never read.
    let no_session = format!("POST /peer/append HTTP/1.1\r\n{host}");
    let status = status_before_the_body(&addr, &no_session, 256 << 20);
    assert!(
        status.as_deref().is_some_and(|s| s.contains(" 401 ")),
        "{status:?}"
    );
    let made_up = format!(
        "POST /peer/append HTTP/1.1\r\n{host}x-sq-session: {}\r\nx-sq-from: 2\r\n",
        "ab".repeat(32)
    );
    let status = status_before_the_body(&addr, &made_up, 256 << 20);
    assert!(
        status.as_deref().is_some_and(|s| s.contains(" 401 ")),
        "{status:?}"
    );
    // A hello (open to anyone) larger than a hello can be is refused unread too.
    let hello = format!("POST /peer/hello HTTP/1.1\r\n{host}");
    let status = status_before_the_body(&addr, &hello, 1 << 20);
    assert!(
        status.as_deref().is_some_and(|s| s.contains(" 413 ")),
        "{status:?}"
    );
    // The node still serves.
    let client = cluster.client_of(0);
    client.create_session(&session_spec(1, 1)).await.unwrap();
}
