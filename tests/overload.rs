//! Bounds on load, against real node processes: writes past the proposer's bound
//! (429 `overloaded`), writes that cannot fit one Raft entry (413), the cluster's
//! memory bound (429 `state_full`), and waiters past their bound (503
//! `too_many_waiters`; an open WebSocket counts until it closes). Every refusal is checked to have written nothing: the
//! tasks every node holds are exactly the ones acknowledged.

mod common;

use std::time::Duration;

use common::{session_spec, Options, TestCluster};
use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};
use session_queue::client::b64;

fn cluster_with(flags: &[&str]) -> Options {
    Options {
        flags: flags.iter().map(|f| f.to_string()).collect(),
        ..Options::default()
    }
}

/// Status, `Retry-After` and body of a POST.
async fn post(http: &reqwest::Client, url: String, body: Value) -> (StatusCode, bool, Value) {
    let r = http.post(url).json(&body).send().await.unwrap();
    let status = r.status();
    let retry = r.headers().contains_key("retry-after");
    (status, retry, r.json().await.unwrap_or(Value::Null))
}

/// The session's `submitted_total` on every node, once each has caught up with the
/// leader.
async fn submitted_everywhere(cluster: &TestCluster, session: &str) -> Vec<u64> {
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let mut out = Vec::new();
    for i in 0..cluster.nodes.len() {
        cluster
            .wait_caught_up(i, leader, Duration::from_secs(10))
            .await;
        let s = cluster
            .client_of(i)
            .ok(
                reqwest::Method::GET,
                &format!("/v1/sessions/{session}"),
                None,
                None,
            )
            .await
            .unwrap();
        out.push(s["submitted_total"].as_u64().unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_proposer_bound_writes_are_429_overloaded_and_nothing_is_written() {
    let cluster = TestCluster::start_with(cluster_with(&["--max-pending-proposals=2"])).await;
    let session = cluster
        .client()
        .create_session(&session_spec(1, 1))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let (mut accepted, mut overloaded) = (0u64, 0u64);
    // Bursts of concurrent submits through every node, until some are refused.
    for round in 0..20 {
        let calls = (0..60).map(|i| {
            let url = format!("{}/v1/sessions/{session}/tasks", cluster.url(i % 3));
            let body = json!({"payload": b64(format!("r{round}-{i}").as_bytes())});
            post(&http, url, body)
        });
        for (status, retry, v) in join_all(calls).await {
            match status {
                StatusCode::CREATED => accepted += 1,
                StatusCode::TOO_MANY_REQUESTS => {
                    assert_eq!(v["error"]["code"], "overloaded", "{v}");
                    assert!(retry, "overloaded carries Retry-After: {v}");
                    overloaded += 1;
                }
                other => panic!("unexpected {other}: {v}"),
            }
        }
        if overloaded > 0 {
            break;
        }
    }
    assert!(
        overloaded > 0,
        "no burst went past a bound of two waiting writes"
    );
    assert!(accepted > 0);
    // Every node holds exactly the acknowledged tasks: the refused ones wrote nothing.
    assert_eq!(
        submitted_everywhere(&cluster, &session).await,
        vec![accepted; 3]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_larger_than_one_raft_entry_is_413_and_replication_is_cut_to_its_byte_bound() {
    // Entries of at most 70,000 bytes, and replication requests of at most as much.
    let mut cluster = TestCluster::start_with(cluster_with(&[
        "--max-payload-bytes=4096",
        "--max-batch-bytes=70000",
        "--max-replication-bytes=70000",
    ]))
    .await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let follower = (leader + 1) % 3;
    let session = cluster
        .client()
        .create_session(&session_spec(1, 1))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let batch = |n: usize, tag: &str| {
        let tasks: Vec<Value> = (0..n)
            .map(|i| json!({"payload": b64(format!("{tag}-{i}-{}", "x".repeat(3990)).as_bytes())}))
            .collect();
        json!({ "tasks": tasks })
    };
    // 30 tasks of about 4,000 bytes: over one entry, through the leader and a follower.
    for i in [leader, follower] {
        let url = format!("{}/v1/sessions/{session}/tasks:batch", cluster.url(i));
        let (status, _, v) = post(&http, url, batch(30, "big")).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
        assert_eq!(v["error"]["code"], "too_large", "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains("--max-batch-bytes"), "{message}");
    }
    assert_eq!(submitted_everywhere(&cluster, &session).await, vec![0; 3]);

    // Batches that fit are taken. With a follower stopped, they pile up in the log;
    // once it resumes, each replication request carries only what fits in 70,000
    // bytes, and the follower still catches up with all of them.
    let lagging = (leader + 2) % 3;
    cluster.pause(lagging);
    let mut accepted = 0;
    for k in 0..8 {
        let url = format!("{}/v1/sessions/{session}/tasks:batch", cluster.url(leader));
        let (status, _, v) = post(&http, url, batch(12, &format!("ok{k}"))).await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        accepted += 12;
    }
    cluster.resume(lagging);
    assert_eq!(
        submitted_everywhere(&cluster, &session).await,
        vec![accepted; 3]
    );
    assert!(
        cluster
            .metric(leader, "sq_replication_requests_cut_total")
            .await
            > 0.0,
        "a replication request was cut to its byte bound"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_clusters_state_bound_new_tasks_are_429_state_full_on_every_node() {
    let cluster = TestCluster::start_with(cluster_with(&["--max-state-bytes=200000"])).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let follower = (leader + 1) % 3;
    let session = cluster
        .client()
        .create_session(&session_spec(1, 1))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let url = format!("{}/v1/sessions/{session}/tasks", cluster.url(follower));
    let mut accepted = 0u64;
    let refusal = loop {
        let payload = format!("{accepted}-{}", "p".repeat(10_000));
        let (status, retry, v) = post(
            &http,
            url.clone(),
            json!({"payload": b64(payload.as_bytes())}),
        )
        .await;
        match status {
            StatusCode::CREATED => accepted += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(retry, "state_full carries Retry-After: {v}");
                break v;
            }
            other => panic!("unexpected {other}: {v}"),
        }
        assert!(accepted < 100, "200,000 bytes of state never filled up");
    };
    assert_eq!(refusal["error"]["code"], "state_full", "{refusal}");
    assert!(
        refusal["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--max-state-bytes"),
        "{refusal}"
    );
    assert!(
        accepted >= 10,
        "about 18 tasks of 10 KB fit in 200 KB: {accepted}"
    );
    assert_eq!(
        submitted_everywhere(&cluster, &session).await,
        vec![accepted; 3]
    );
    // The leader refuses alike.
    let leader_url = format!("{}/v1/sessions/{session}/tasks", cluster.url(leader));
    let payload = "q".repeat(10_000);
    let (status, _, v) = post(
        &http,
        leader_url.clone(),
        json!({"payload": b64(payload.as_bytes())}),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(v["error"]["code"], "state_full", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_waiter_bounds_streams_and_long_polls_are_503() {
    let cluster = TestCluster::start_with(cluster_with(&[
        "--max-event-streams=2",
        "--max-long-polls=1",
    ]))
    .await;
    let node = cluster.url(0);
    let c = cluster.client_of(0);
    let session = c.create_session(&session_spec(1, 1)).await.unwrap();
    let task = c
        .ok(
            reqwest::Method::POST,
            &format!("/v1/sessions/{session}/tasks"),
            Some(&json!({"payload": b64(b"wait for me")})),
            None,
        )
        .await
        .unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    let http = reqwest::Client::new();

    // Two event streams are held; a third is refused.
    let events = format!("{node}/v1/sessions/{session}/events");
    let mut held = Vec::new();
    for _ in 0..2 {
        let r = http.get(&events).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        held.push(r);
    }
    let r = http.get(&events).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key("retry-after"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "too_many_waiters", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--max-event-streams"),
        "{v}"
    );

    // One long poll is held (the task never completes); another is refused while it
    // waits, a plain read is not, and once it answered a new one is taken. The probe
    // may reach the node before the long poll does: then both are tried again.
    let poll = format!("{node}/v1/tasks/{task}?wait=completed&timeout=3s");
    let probe = format!("{node}/v1/tasks/{task}?wait=completed&timeout=1ms");
    let mut refused = None;
    for _ in 0..10 {
        let first = tokio::spawn({
            let (http, poll) = (http.clone(), poll.clone());
            async move { http.get(poll).send().await.unwrap().status() }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let r = http.get(&probe).send().await.unwrap();
        let status = r.status();
        let v: Value = r.json().await.unwrap();
        let first = first.await.unwrap();
        if status == StatusCode::SERVICE_UNAVAILABLE && first == StatusCode::OK {
            refused = Some(v);
            break;
        }
    }
    let refused = refused.expect("a second long poll was never refused while one waited");
    assert_eq!(refused["error"]["code"], "too_many_waiters", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--max-long-polls"),
        "{refused}"
    );
    let plain = http
        .get(format!("{node}/v1/tasks/{task}"))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), StatusCode::OK, "a read that does not wait");
    let again = http
        .get(format!("{node}/v1/tasks/{task}?wait=completed&timeout=1ms"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::OK, "the place was given back");
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_websocket_holds_its_event_stream_place_until_it_closes() {
    use tokio_tungstenite::tungstenite::Error as WsError;

    let cluster = TestCluster::start_with(Options {
        nodes: 1,
        ..cluster_with(&["--max-event-streams=2"])
    })
    .await;
    let node = cluster.url(0);
    let c = cluster.client_of(0);
    let session = c.create_session(&session_spec(1, 1)).await.unwrap();
    let ws_url = format!("ws://{}/v1/sessions/{session}/events", cluster.api(0));
    let events = format!("{node}/v1/sessions/{session}/events");
    let http = reqwest::Client::new();

    // Two WebSockets are open: both places are taken for as long as they are.
    let mut open = Vec::new();
    for _ in 0..2 {
        let (ws, response) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        open.push(ws);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A third stream, WebSocket or SSE, is refused.
    match tokio_tungstenite::connect_async(&ws_url).await {
        Err(WsError::Http(response)) => {
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            // The client library keeps the body when the answer is not an upgrade.
            if let Some(body) = response.body() {
                let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
                assert_eq!(v["error"]["code"], "too_many_waiters", "{v}");
            }
        }
        Err(e) => panic!("a third WebSocket failed otherwise: {e}"),
        Ok(_) => panic!("a third WebSocket was accepted past --max-event-streams=2"),
    }
    let r = http.get(&events).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key("retry-after"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "too_many_waiters", "{v}");

    // Closing one gives its place back (the node sees the close a moment later).
    let mut first = open.remove(0);
    first.close(None).await.unwrap();
    drop(first);
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..50 {
        let r = http.get(&events).send().await.unwrap();
        status = r.status();
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status,
        StatusCode::OK,
        "the closed WebSocket's place was given back"
    );
    // The one still open is still served.
    assert!(cluster.is_running(0));
    drop(open);
}
