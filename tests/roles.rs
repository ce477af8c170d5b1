//! Roles and secrets against real node processes (SPEC section 8): membership changes
//! take the admin key and nothing else, and none at all without one; miner
//! registration takes the miner key; the public example secret is refused; and the
//! nodes' logs never hold the cluster secret, a key or a miner token.

mod common;

use std::time::Duration;

use common::{binary, Options, TestCluster};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use session_queue::client::Client;

const USER: &str = "roles-test-user-key-5a1f";
const ADMIN: &str = "roles-test-admin-key-9c3e";
const MINER: &str = "roles-test-miner-key-77d2";

/// A client of node `i` calling with `key` (or none).
fn as_(cluster: &TestCluster, i: usize, key: Option<&str>) -> Client {
    Client::new(&[cluster.api(i)], key.map(str::to_string))
}

/// The member ids, as the leader sees them.
async fn member_ids(cluster: &TestCluster) -> Vec<u64> {
    let v = cluster
        .client()
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

/// `(status, error code, message)` of a call.
async fn call(
    c: &Client,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> (u16, String, String) {
    let (status, v) = c.call(method, path, body, None).await.unwrap();
    let text = |f: &str| v["error"][f].as_str().unwrap_or_default().to_string();
    (status.as_u16(), text("code"), text("message"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_admin_key_changes_membership_and_no_key_reaches_the_logs() {
    let mut cluster = TestCluster::start_with(Options {
        nodes: 3,
        api_key: Some(USER.into()),
        env: vec![
            ("SQ_ADMIN_KEY".into(), ADMIN.into()),
            ("SQ_MINER_KEY".into(), MINER.into()),
        ],
        ..Options::default()
    })
    .await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let follower = (leader + 1) % 3;
    let before = member_ids(&cluster).await;
    assert_eq!(before, vec![1, 2, 3]);
    let victim = cluster.nodes[(leader + 2) % 3].id;
    let made_up = json!({"id": 9, "api": "127.0.0.1:1", "peer": "127.0.0.1:2"});
    let remove = format!("/v1/cluster/members/{victim}");

    // No key or a wrong one: 401. The user or miner key: 403. On the leader and on a
    // follower (which would relay to the leader).
    for i in [leader, follower] {
        for (key, want) in [
            (None, 401),
            (Some("not-a-key-of-this-cluster"), 401),
            (Some(USER), 403),
            (Some(MINER), 403),
        ] {
            let c = as_(&cluster, i, key);
            let (status, code, message) =
                call(&c, Method::POST, "/v1/cluster/members", Some(&made_up)).await;
            assert_eq!(status, want, "add with {key:?}: {code} {message}");
            assert!(!code.is_empty() && !message.is_empty());
            let (status, code, message) = call(&c, Method::DELETE, &remove, None).await;
            assert_eq!(status, want, "remove with {key:?}: {code} {message}");
        }
    }
    // The user key still reads the cluster; the admin key alone does not.
    let (status, ..) = call(
        &as_(&cluster, leader, Some(ADMIN)),
        Method::GET,
        "/v1/cluster",
        None,
    )
    .await;
    assert_eq!(status, 401);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(member_ids(&cluster).await, before, "nothing changed");

    // The admin key: a real node joins through a follower, then leaves.
    let fresh = cluster.spawn_new();
    let fresh_id = cluster.nodes[fresh].id;
    let body = json!({
        "id": fresh_id,
        "api": cluster.api(fresh),
        "peer": cluster.peer(fresh),
    });
    let v = as_(&cluster, follower, Some(ADMIN))
        .ok(Method::POST, "/v1/cluster/members", Some(&body), None)
        .await
        .unwrap();
    assert_eq!(v["members"].as_array().unwrap().len(), 4, "{v}");
    assert_eq!(member_ids(&cluster).await, vec![1, 2, 3, fresh_id]);
    cluster
        .wait_caught_up(fresh, leader, Duration::from_secs(30))
        .await;
    as_(&cluster, leader, Some(ADMIN))
        .ok(
            Method::DELETE,
            &format!("/v1/cluster/members/{fresh_id}"),
            None,
            None,
        )
        .await
        .unwrap();
    // The answer may list the members before the change is applied everywhere.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while member_ids(&cluster).await != before {
        assert!(std::time::Instant::now() < deadline, "node {fresh_id} left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Miner registration: the miner key (or the user key); nothing else.
    let mut tokens = Vec::new();
    for key in [MINER, USER] {
        let (id, token) = as_(&cluster, follower, Some(key))
            .register_miner(&format!("m-{}", &key[..16]), 1, &[])
            .await
            .unwrap();
        // The miner's own calls take its token, as before.
        let (status, v) = as_(&cluster, leader, None)
            .call(
                Method::POST,
                &format!("/v1/miners/{id}/heartbeat"),
                Some(&json!({})),
                Some(&token),
            )
            .await
            .unwrap();
        assert!(status.is_success(), "{status} {v}");
        tokens.push(token);
    }
    let register = json!({"name": "intruder", "capacity": 1});
    for key in [None, Some(ADMIN), Some("not-a-key-of-this-cluster")] {
        let (status, code, _) = call(
            &as_(&cluster, leader, key),
            Method::POST,
            "/v1/miners",
            Some(&register),
        )
        .await;
        assert_eq!((status, code.as_str()), (401, "unauthorized"), "{key:?}");
    }
    // The miner key is no user key.
    let (status, ..) = call(
        &as_(&cluster, leader, Some(MINER)),
        Method::POST,
        "/v1/sessions",
        Some(&json!({})),
    )
    .await;
    assert_eq!(status, 401);

    // A graceful stop logs what it logs at the end too; then nothing secret is in
    // any node's log.
    for i in 0..cluster.nodes.len() {
        cluster.stop(i);
    }
    let secret = cluster.secret.clone();
    let mut checked = 0;
    for n in &cluster.nodes {
        let log = std::fs::read_to_string(&n.log).unwrap();
        assert!(!log.is_empty(), "node {} wrote a log", n.id);
        for needle in [secret.as_str(), USER, ADMIN, MINER]
            .into_iter()
            .chain(tokens.iter().map(String::as_str))
        {
            assert!(
                !log.contains(needle),
                "node {}'s log holds a secret ({}…)",
                n.id,
                &needle[..6]
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_admin_key_membership_over_http_is_refused_with_a_hint() {
    let cluster = TestCluster::start_with(Options {
        nodes: 1,
        api_key: Some(USER.into()),
        ..Options::default()
    })
    .await;
    let made_up = json!({"id": 5, "api": "127.0.0.1:1", "peer": "127.0.0.1:2"});
    for key in [None, Some(USER)] {
        let c = as_(&cluster, 0, key);
        let (status, code, message) =
            call(&c, Method::POST, "/v1/cluster/members", Some(&made_up)).await;
        assert_eq!((status, code.as_str()), (403, "forbidden"), "{message}");
        assert!(message.contains("--admin-key"), "{message}");
        let (status, _, message) = call(&c, Method::DELETE, "/v1/cluster/members/1", None).await;
        assert_eq!(status, 403, "{message}");
        assert!(message.contains("--admin-key"), "{message}");
    }
    assert_eq!(member_ids(&cluster).await, vec![1]);
    // Registration without a miner key: the user key, as before.
    as_(&cluster, 0, Some(USER))
        .register_miner("m", 1, &[])
        .await
        .unwrap();
    let (status, ..) = call(
        &as_(&cluster, 0, None),
        Method::POST,
        "/v1/miners",
        Some(&json!({"name": "x", "capacity": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED.as_u16());
}

#[test]
fn a_node_refuses_the_example_secret_unless_told_it_is_a_demo() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(binary())
        .args([
            "node",
            "--id=1",
            "--api-addr=127.0.0.1:0",
            "--peer-addr=127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("node1"))
        .env(
            "SQ_CLUSTER_SECRET",
            session_queue::config::EXAMPLE_CLUSTER_SECRET,
        )
        .env_remove("SQ_DEMO")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("SQ_DEMO=1"), "{err}");
    assert!(
        !err.contains(session_queue::config::EXAMPLE_CLUSTER_SECRET),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_can_come_from_a_file_which_wins_over_the_variable() {
    // Each node has another secret in its environment; only the file's is shared,
    // so the nodes form a cluster only if they use it.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster-secret");
    std::fs::write(&file, "file-secret-0123456789abcdef\n").unwrap();
    let cluster = TestCluster::start_with(Options {
        nodes: 3,
        env: vec![("SQ_CLUSTER_SECRET_FILE".into(), file.display().to_string())],
        node_env: (0..3)
            .map(|i| {
                vec![(
                    "SQ_CLUSTER_SECRET".into(),
                    format!("env-secret-of-node-{i}-xxxx"),
                )]
            })
            .collect(),
        ..Options::default()
    })
    .await;
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
    let c = cluster.client_of(leader);
    let session = c.create_session(&common::session_spec(1, 1)).await.unwrap();
    c.submit(&session, b"x", None).await.unwrap();
    assert_eq!(member_ids(&cluster).await, vec![1, 2, 3]);
    for n in &cluster.nodes {
        let log = std::fs::read_to_string(&n.log).unwrap();
        assert!(!log.contains("file-secret-0123"), "node {}", n.id);
    }
}
