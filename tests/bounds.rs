//! Bounds of what a client can grow, against real node processes: a session's queue
//! (`max_queued_tasks`, 429 `queue_full` with nothing written), through a follower so
//! the refusal is seen to come from the replicated rule, not one node's guess.

mod common;

use common::{session_spec, TestCluster};
use reqwest::StatusCode;
use serde_json::{json, Value};
use session_queue::client::b64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_session_queue_is_a_429_through_a_follower_with_nothing_written() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster
        .wait_for_leader(std::time::Duration::from_secs(10))
        .await;
    let follower = (leader + 1) % 3;
    let base = cluster.url(follower);
    let http = reqwest::Client::new();

    let mut spec = session_spec(1, 1);
    spec["max_queued_tasks"] = json!(3);
    let session = cluster
        .client_of(follower)
        .create_session(&spec)
        .await
        .unwrap();
    let task = |p: &str| json!({"payload": b64(p.as_bytes())});
    let submit = |tasks: Vec<Value>| {
        let http = http.clone();
        let url = format!("{base}/v1/sessions/{session}/tasks:batch");
        async move {
            let r = http
                .post(url)
                .json(&json!({ "tasks": tasks }))
                .send()
                .await
                .unwrap();
            let status = r.status();
            let retry = r.headers().get("retry-after").cloned();
            (status, retry, r.json::<Value>().await.unwrap())
        }
    };
    let (status, _, v) = submit(vec![task("a"), task("b")]).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");

    // Two more would make four: the whole batch is refused.
    let (status, retry, v) = submit(vec![task("c"), task("d")]).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(v["error"]["code"], "queue_full", "{v}");
    assert!(retry.is_some(), "queue_full carries Retry-After");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_queued_tasks of 3"),
        "{v}"
    );

    // Nothing was written: every node still counts two queued tasks.
    for i in 0..3 {
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
        assert_eq!(s["max_queued_tasks"], 3, "{s}");
        assert_eq!(s["submitted_total"], 2, "node {i}: {s}");
    }
    // One still fits.
    let (status, _, v) = submit(vec![task("c")]).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");

    // A bound out of range is a 400.
    let mut bad = session_spec(1, 1);
    bad["max_queued_tasks"] = json!(0);
    let r = http
        .post(format!("{base}/v1/sessions"))
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}
