//! Refused writes cost no log entry: against real node processes, a thousand
//! precommits before the ack, sent to the leader and a thousand more sent to a
//! follower (which forwards them), are answered 409 by the leader from its applied
//! state without proposing anything.
//!
//! The log may still grow by ticks (the leader proposes one whenever a deadline is
//! due), so the check is exact without depending on timing: during the refusals the
//! leader proposed no command at all, the log grew by exactly the batches the
//! leader proposed (each then holds nothing but a tick), and the leader counted
//! every refusal.

mod common;

use std::time::Duration;

use common::{Options, TestCluster};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use session_queue::client::Client;

/// What the leader has logged and proposed so far.
#[derive(Debug)]
struct LeaderCounts {
    term: u64,
    last_log_index: u64,
    batches: u64,
    commands: u64,
    refused: u64,
}

async fn leader_counts(cluster: &TestCluster, leader: usize) -> LeaderCounts {
    let view = cluster
        .local_view(leader)
        .await
        .expect("the leader answers");
    assert_eq!(view["state"], "leader", "{view}");
    LeaderCounts {
        term: view["term"].as_u64().unwrap(),
        last_log_index: view["last_log_index"].as_u64().unwrap(),
        batches: cluster.metric(leader, "sq_proposer_batches_total").await as u64,
        commands: cluster.metric(leader, "sq_proposer_commands_total").await as u64,
        refused: cluster
            .metric(leader, "sq_proposer_refused_commands_total")
            .await as u64,
    }
}

/// Sends `n` precommits of `task` by `token` through `client`, 10 at a time; returns
/// the statuses seen.
async fn precommits(
    client: &Client,
    task: &str,
    token: &str,
    n: usize,
) -> Vec<(StatusCode, Value)> {
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..10 {
        let (client, task, token) = (client.clone(), task.to_string(), token.to_string());
        workers.spawn(async move {
            let mut seen = Vec::new();
            for i in (w..n).step_by(10) {
                let hash = hex::encode([(i % 251) as u8; 32]);
                let answer = client
                    .call(
                        Method::POST,
                        &format!("/v1/tasks/{task}/precommit"),
                        Some(&json!({"hash": hash})),
                        Some(&token),
                    )
                    .await
                    .expect("the node answers");
                seen.push(answer);
            }
            seen
        });
    }
    let mut all = Vec::new();
    while let Some(seen) = workers.join_next().await {
        all.extend(seen.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_precommits_add_no_entry_to_the_log() {
    // Long election timeouts: the leader's lease, which refusals need, then holds
    // even on a loaded test machine.
    let cluster = TestCluster::start_with(Options {
        flags: ["--election-min-ms", "1000", "--election-max-ms", "2000"]
            .map(String::from)
            .to_vec(),
        ..Options::default()
    })
    .await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let follower = (leader + 1) % 3;
    let c = cluster.client_of(leader);

    // A task assigned to a miner that does not ack it; nothing in this setup is due
    // for ten minutes.
    let long = 600_000;
    let session = c
        .create_session(&json!({
            "redundancy": 1,
            "quorum": 1,
            "ack_timeout_ms": long,
            "precommit_timeout_ms": long,
            "commit_timeout_ms": long,
            "idle_release_ms": long,
        }))
        .await
        .unwrap();
    let miner = c
        .ok(
            Method::POST,
            "/v1/miners",
            Some(&json!({"name": "slow", "capacity": 1, "heartbeat_timeout_ms": long})),
            None,
        )
        .await
        .unwrap();
    let (miner_id, token) = (
        miner["miner_id"].as_str().unwrap().to_string(),
        miner["token"].as_str().unwrap().to_string(),
    );
    let task = c.submit(&session, b"question", None).await.unwrap();
    let assigned = c
        .ok(
            Method::GET,
            &format!("/v1/miners/{miner_id}/assignments?wait_ms=5000"),
            None,
            Some(&token),
        )
        .await
        .unwrap();
    assert_eq!(
        assigned["assignments"][0]["task_id"],
        task.as_str(),
        "{assigned}"
    );
    // Every node has applied the setup: the follower's refusals meet the same state.
    cluster
        .wait_caught_up(follower, leader, Duration::from_secs(10))
        .await;

    let before = leader_counts(&cluster, leader).await;
    let to_leader = precommits(&c, &task, &token, 1000).await;
    let to_follower = precommits(&cluster.client_of(follower), &task, &token, 1000).await;
    let after = leader_counts(&cluster, leader).await;

    for (status, body) in to_leader.iter().chain(&to_follower) {
        assert_eq!(*status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["error"]["code"], "conflict", "{body}");
    }
    assert_eq!(
        after.term, before.term,
        "the leader changed: {before:?} {after:?}"
    );
    assert_eq!(
        after.refused - before.refused,
        2000,
        "every precommit refused before proposing: {before:?} {after:?}"
    );
    assert_eq!(
        after.commands, before.commands,
        "no command proposed: {before:?} {after:?}"
    );
    // Whatever the log gained are the leader's own batches, which held no command:
    // ticks.
    assert_eq!(
        after.last_log_index - before.last_log_index,
        after.batches - before.batches,
        "the log grew by other entries than ticks: {before:?} {after:?}"
    );

    // The task is as it was: assigned, not acked, no precommit recorded.
    let v = c.task(&task, "?consistency=linearizable").await.unwrap();
    assert_eq!(v["state"], "queued", "{v}");
    assert_eq!(v["assignments"][0]["state"], "assigned", "{v}");
}
