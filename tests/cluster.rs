//! Replication against real node processes: group commit, a restarted node catching
//! up from the log, a wiped node re-added and brought up by snapshot, membership
//! changes, the peer channel refusing requests without the cluster secret, writes
//! without a quorum answered 503 with `Retry-After`, and the leader killed while
//! submits stream in losing no acknowledged task.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{session_spec, Options, TestCluster};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use session_queue::client::Client;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_raft_entries() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let c = cluster.client_of(leader);
    let session = c.create_session(&session_spec(1, 1)).await.unwrap();
    let batches_before = cluster.metric(leader, "sq_proposer_batches_total").await;
    let commands_before = cluster.metric(leader, "sq_proposer_commands_total").await;
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..64 {
        let (c, session) = (c.clone(), session.clone());
        writers.spawn(async move {
            for n in 0..20 {
                c.submit(&session, format!("{w}-{n}").as_bytes(), None)
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(r) = writers.join_next().await {
        r.unwrap();
    }
    let batches = cluster.metric(leader, "sq_proposer_batches_total").await - batches_before;
    let commands = cluster.metric(leader, "sq_proposer_commands_total").await - commands_before;
    assert!(commands >= 1280.0, "{commands} commands");
    assert!(
        commands / batches >= 4.0,
        "64 concurrent writers should share entries: {commands} commands in {batches} batches"
    );
    let v = c
        .ok(Method::GET, &format!("/v1/sessions/{session}"), None, None)
        .await
        .unwrap();
    assert_eq!(v["submitted_total"], 1280);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_catches_up_from_the_log() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let follower = (leader + 1) % 3;
    let c = cluster.client_of(leader);
    let session = c.create_session(&session_spec(1, 1)).await.unwrap();
    let early = c.submit(&session, b"before", None).await.unwrap();
    cluster.stop(follower);
    let mut ids = Vec::new();
    for n in 0..300 {
        ids.push(
            c.submit(&session, format!("while down {n}").as_bytes(), None)
                .await
                .unwrap(),
        );
    }
    cluster.restart(follower);
    cluster
        .wait_caught_up(follower, leader, Duration::from_secs(30))
        .await;
    let f = cluster.client_of(follower);
    for id in ids.iter().chain([&early]) {
        let v = f.task(id, "").await.unwrap();
        assert_eq!(v["session_id"], session.as_str());
    }
    let v = f
        .ok(Method::GET, &format!("/v1/sessions/{session}"), None, None)
        .await
        .unwrap();
    assert_eq!(v["submitted_total"], 301);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_readded_is_brought_up_by_snapshot() {
    // Membership changes take the admin key.
    let admin = "cluster-test-admin-key";
    let mut cluster = TestCluster::start_with(Options {
        nodes: 3,
        flags: vec!["--snapshot-entries=50".into()],
        env: vec![("SQ_ADMIN_KEY".into(), admin.into())],
        ..Options::default()
    })
    .await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let victim = (leader + 2) % 3;
    let c = cluster.client_of(leader);
    let operator = Client::new(&[cluster.api(leader)], Some(admin.to_string()));
    let session = c.create_session(&session_spec(1, 1)).await.unwrap();
    let first = c
        .submit(&session, b"the very first", Some("first"))
        .await
        .unwrap();

    // The victim dies and loses its disk; it is removed from the cluster.
    cluster.kill(victim);
    cluster.wipe(victim);
    let victim_id = cluster.nodes[victim].id;
    let v = operator
        .ok(
            Method::DELETE,
            &format!("/v1/cluster/members/{victim_id}"),
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(v["members"].as_array().unwrap().len(), 2, "{v}");
    // Enough writes, one entry each, for snapshots and purged logs.
    for n in 0..300 {
        c.submit(&session, format!("n{n}").as_bytes(), None)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let leader_view = c
        .ok(Method::GET, "/v1/cluster?local=true", None, None)
        .await
        .unwrap();
    assert!(
        leader_view["snapshot_index"].as_u64().unwrap_or(0) > 100,
        "{leader_view}"
    );

    // A fresh node joins, through a follower's API (relayed to the leader).
    let fresh = cluster.spawn_new();
    let body = json!({
        "id": cluster.nodes[fresh].id,
        "api": cluster.api(fresh),
        "peer": format!("127.0.0.1:{}", cluster.nodes[fresh].peer_port),
    });
    let other = (0..3).find(|&i| i != leader && i != victim).unwrap();
    let v = Client::new(&[cluster.api(other)], Some(admin.to_string()))
        .ok(Method::POST, "/v1/cluster/members", Some(&body), None)
        .await
        .unwrap();
    assert_eq!(v["members"].as_array().unwrap().len(), 3, "{v}");
    cluster
        .wait_caught_up(fresh, leader, Duration::from_secs(30))
        .await;
    let view = cluster.local_view(fresh).await.unwrap();
    assert!(
        view["snapshot_index"].as_u64().unwrap_or(0) > 0,
        "the fresh node got a snapshot: {view}"
    );
    let f = cluster.client_of(fresh);
    let v = f.task(&first, "").await.unwrap();
    assert_eq!(v["idempotency_key"], "first");
    let v = f
        .ok(Method::GET, &format!("/v1/sessions/{session}"), None, None)
        .await
        .unwrap();
    assert_eq!(v["submitted_total"], 301);
    // And it takes part: the cluster still commits with the old leader gone.
    cluster.kill(leader);
    let new_leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
    assert!(new_leader == fresh || new_leader == other);
    cluster
        .client_of(fresh)
        .submit(&session, b"after", None)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_channel_refuses_requests_without_the_secret() {
    use session_queue::codec;
    use session_queue::raft::peer_auth::{self, Handshake, HelloReply, Signed};
    let cluster = TestCluster::start(3).await;
    let http = reqwest::Client::new();
    let node = &cluster.nodes[0];
    let url = format!("http://127.0.0.1:{}/raft/vote", node.peer_port);
    let body = codec::encode(&());
    let r = http.post(&url).body(body.clone()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // The old way, the secret itself in a header, is no longer accepted either.
    let r = http
        .post(&url)
        .header("x-sq-cluster-secret", &cluster.secret)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // A made-up session.
    let r = http
        .post(&url)
        .header(peer_auth::SESSION_HEADER, "00".repeat(32))
        .header(peer_auth::FROM_HEADER, "2")
        .header(peer_auth::SEQ_HEADER, "0")
        .header(peer_auth::MAC_HEADER, "00".repeat(32))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Meant for another node.
    let r = http
        .post(&url)
        .header("x-sq-target-node", "7")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST);
    // A forged forwarded write is refused too, and creates nothing.
    let propose = format!("http://127.0.0.1:{}/peer/propose", node.peer_port);
    let r = http.post(&propose).body(body.clone()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // A hello for another node is refused; one for this node proves the secret.
    let hello_url = format!("http://127.0.0.1:{}/peer/hello", node.peer_port);
    let wrong = Handshake::new(99, 7, None);
    let r = http
        .post(&hello_url)
        .body(codec::encode(&wrong.hello))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST);
    let hs = Handshake::new(99, node.id, None);
    let r = http
        .post(&hello_url)
        .body(codec::encode(&hs.hello))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let reply: HelloReply = codec::decode(&r.bytes().await.unwrap()).unwrap();
    assert!(
        hs.finish(b"a-wrong-secret-0123456789", &reply).is_err(),
        "the proof is bound to the secret"
    );
    let (session, cluster_id) = hs.finish(cluster.secret.as_bytes(), &reply).unwrap();
    let cluster_id = cluster_id.expect("a bootstrapped node has a cluster id");
    // Signed with the session: authenticated, then refused as undecodable.
    let signed = |cluster: &str| {
        let (seq, mac) = session.sign(&Signed {
            path: "/raft/vote",
            cluster,
            role: "",
            budget: "",
            body: &body,
            body_sha256: None,
        });
        http.post(&url)
            .header(peer_auth::SESSION_HEADER, &session.token)
            .header(peer_auth::FROM_HEADER, "99")
            .header(peer_auth::SEQ_HEADER, seq.to_string())
            .header(peer_auth::MAC_HEADER, mac)
            .header(peer_auth::CLUSTER_HEADER, cluster)
            .header(peer_auth::ROLE_HEADER, "")
            .body(body.clone())
    };
    let r = signed(&cluster_id).send().await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::BAD_REQUEST,
        "authenticated, then refused as undecodable"
    );
    // The same request from a node of another cluster is refused.
    let r = signed("another-cluster").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_shows_every_member() {
    let cluster = TestCluster::start(3).await;
    let v: Value = cluster
        .client_of(1)
        .ok(Method::GET, "/v1/cluster", None, None)
        .await
        .unwrap();
    let members = v["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{v}");
    assert!(v["leader"].as_u64().is_some());
    for m in members {
        assert_eq!(m["reachable"], true, "{v}");
        assert_eq!(m["voter"], true);
        assert!(m["applied_index"].as_u64().is_some());
    }
    let ready = reqwest::get(format!("{}/ready", cluster.url(2)))
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_quorum_writes_answer_503_with_retry_after() {
    let mut cluster = TestCluster::start_with(Options {
        nodes: 3,
        flags: vec!["--write-timeout-ms=1500".into()],
        ..Options::default()
    })
    .await;
    let session = cluster
        .client()
        .create_session(&session_spec(1, 1))
        .await
        .unwrap();
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let survivor = (leader + 1) % 3;
    // The survivor must have applied the session before the others die: its reads
    // below are local, and it cannot learn of the commit alone.
    cluster
        .wait_caught_up(survivor, leader, Duration::from_secs(10))
        .await;
    for i in 0..3 {
        if i != survivor {
            cluster.kill(i);
        }
    }
    let started = Instant::now();
    let r = reqwest::Client::new()
        .post(format!(
            "{}/v1/sessions/{session}/tasks",
            cluster.url(survivor)
        ))
        .json(&json!({"payload": "aGk="}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().get("retry-after").is_some());
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["code"] == "unavailable" || v["error"]["code"] == "outcome_unknown",
        "{v}"
    );
    assert!(started.elapsed() < Duration::from_secs(10), "bounded wait");
    // Reads of the survivor's applied state still work.
    let (s, _) = cluster
        .client_of(survivor)
        .call(Method::GET, &format!("/v1/sessions/{session}"), None, None)
        .await
        .unwrap();
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_mid_stream_loses_no_acknowledged_task() {
    let mut cluster = TestCluster::start(3).await;
    let session = cluster
        .client()
        .create_session(&session_spec(1, 1))
        .await
        .unwrap();
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;

    // Eight writers, one per node in turn, each retrying with its idempotency key.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..8 {
        let c = cluster.client().pinned(w);
        let (session, stop) = (session.clone(), stop.clone());
        writers.spawn(async move {
            let mut acknowledged = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("w{w}-{n}");
                // Retry until answered: the key makes retries safe.
                loop {
                    match c.submit(&session, key.as_bytes(), Some(&key)).await {
                        Ok(id) => {
                            acknowledged.push((key.clone(), id));
                            break;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
                n += 1;
            }
            acknowledged
        });
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.kill(leader);
    let new_leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
    assert_ne!(new_leader, leader);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    while let Some(done) = writers.join_next().await {
        acknowledged.extend(done.unwrap());
    }
    assert!(
        acknowledged.len() > 50,
        "only {} writes",
        acknowledged.len()
    );
    let ids: BTreeSet<&String> = acknowledged.iter().map(|(_, id)| id).collect();
    assert_eq!(ids.len(), acknowledged.len(), "a key created two tasks");

    // Every acknowledged task is on every survivor...
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    for &i in &survivors {
        let c = cluster.client_of(i);
        for (key, id) in &acknowledged {
            let v = c
                .task(id, "?consistency=linearizable")
                .await
                .unwrap_or_else(|e| panic!("{id} on node {i}: {e}"));
            assert_eq!(v["idempotency_key"], key.as_str());
        }
    }
    // ...and on the killed node once it is back and caught up.
    cluster.restart(leader);
    let v = cluster
        .client_of(new_leader)
        .ok(Method::GET, "/v1/cluster?local=true", None, None)
        .await
        .unwrap();
    let target = v["applied_index"].as_u64().unwrap();
    cluster
        .wait_applied(leader, target, Duration::from_secs(30))
        .await;
    let c = cluster.client_of(leader);
    for (_, id) in &acknowledged {
        let v = c.task(id, "").await.unwrap();
        assert_eq!(v["state"], "queued");
    }
    let v = c
        .ok(Method::GET, &format!("/v1/sessions/{session}"), None, None)
        .await
        .unwrap();
    assert_eq!(
        v["submitted_total"].as_u64().unwrap(),
        acknowledged.len() as u64
    );
}
