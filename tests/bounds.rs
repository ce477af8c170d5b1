//! Bounds of what a client can grow, against real node processes: a session's queue
//! (`max_queued_tasks`, 429 `queue_full` with nothing written), through a follower so
//! the refusal is seen to come from the replicated rule, not one node's guess; pages
//! of assignments; the request metrics' labels, which a client's methods and
//! paths must not grow; and the node's own upkeep of its request histograms, which
//! otherwise hold a sample per request until a scrape.

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

    // Nothing was written: every node still counts two queued tasks, once it has
    // applied what the leader had when it refused (reads are from the node's applied
    // state, so a follower may still trail the two accepted submits).
    for i in 0..3 {
        cluster
            .wait_caught_up(i, leader, std::time::Duration::from_secs(10))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignment_lists_come_in_pages() {
    let cluster = TestCluster::start(3).await;
    let c = cluster.client_of(1);
    let session = c.create_session(&session_spec(1, 1)).await.unwrap();
    let (miner, token) = c.register_miner("pager", 5, &[]).await.unwrap();
    let tasks: Vec<Value> = (0..5).map(|i| json!({"payload": b64(&[i])})).collect();
    c.ok(
        reqwest::Method::POST,
        &format!("/v1/sessions/{session}/tasks:batch"),
        Some(&json!({ "tasks": tasks })),
        None,
    )
    .await
    .unwrap();
    let list = |query: String| {
        let c = c.clone();
        let token = token.clone();
        let miner = miner.clone();
        async move {
            c.call(
                reqwest::Method::GET,
                &format!("/v1/miners/{miner}/assignments?{query}"),
                None,
                Some(&token),
            )
            .await
            .unwrap()
        }
    };
    // Wait until all five are assigned.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, v) = list("wait_ms=1000".into()).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        if v["assignments"].as_array().unwrap().len() == 5 {
            assert_eq!(v["next_after_task"], Value::Null, "{v}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not all assigned: {v}"
        );
    }
    // Pages of two: 2, 2, 1, in task order, the last without a next.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let query = match &after {
            Some(a) => format!("limit=2&after_task={a}"),
            None => "limit=2".into(),
        };
        let (status, v) = list(query).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        let page = v["assignments"].as_array().unwrap();
        assert!(page.len() <= 2, "{v}");
        seen.extend(
            page.iter()
                .map(|a| a["task_id"].as_str().unwrap().to_string()),
        );
        pages += 1;
        match v["next_after_task"].as_str() {
            Some(next) => {
                assert_eq!(Some(next), page.last().and_then(|a| a["task_id"].as_str()));
                after = Some(next.to_string());
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let mut sorted = seen.clone();
    sorted.sort_by_key(|t| t.trim_start_matches("t-").parse::<u64>().unwrap());
    sorted.dedup();
    assert_eq!(seen, sorted, "pages overlap or are out of order");
    assert_eq!(seen.len(), 5);
    // Out-of-range limits and a bad cursor are 400.
    for query in ["limit=0", "limit=4097", "after_task=nope"] {
        let (status, v) = list(query.into()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {v}");
    }
}

/// Sends only the head of a request announcing a 10 MiB body, and reads the answer:
/// a node that answers has not waited for (or read) the body.
async fn head_only(addr: &str, path: &str, token: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        10 << 20
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("answered before the body was sent")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_miner_token_is_refused_before_the_body_is_read() {
    let cluster = TestCluster::start(3).await;
    let c = cluster.client_of(0);
    let (miner, token) = c.register_miner("real", 1, &[]).await.unwrap();
    let unknown = format!("sqm_{}", "ab".repeat(32));
    for (path, token) in [
        ("/v1/tasks/t-1/commit".to_string(), unknown.as_str()),
        (format!("/v1/miners/{miner}/heartbeat"), unknown.as_str()),
        ("/v1/tasks/t-1/ack".to_string(), "not-a-token"),
    ] {
        let answer = head_only(&cluster.api(1), &path, token).await;
        assert!(answer.starts_with("HTTP/1.1 401"), "{path}: {answer}");
        assert!(answer.contains("unauthorized"), "{path}: {answer}");
    }
    // A known token gets past the check, and then the small body limit of an ack
    // applies: a 10 MiB ack is 413 (the body is refused, not applied).
    let big = json!({"pad": "x".repeat(1 << 20)});
    let (status, v) = cluster
        .client_of(1)
        .call(
            reqwest::Method::POST,
            "/v1/tasks/t-1/ack",
            Some(&big),
            Some(&token),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    // A miner registered through node 0 is known on node 2 without a read-index round.
    let (status, v) = cluster
        .client_of(2)
        .call(
            reqwest::Method::POST,
            &format!("/v1/miners/{miner}/heartbeat"),
            Some(&json!({})),
            Some(&token),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_metrics_label_only_known_methods_and_routes() {
    let cluster = TestCluster::start(1).await;
    let url = cluster.url(0);
    let http = reqwest::Client::new();
    // Any token is a valid HTTP method; each distinct one must not become a series.
    for i in 0..40 {
        let method = reqwest::Method::from_bytes(format!("SQPROBE{i}").as_bytes()).unwrap();
        let r = http
            .request(method.clone(), format!("{url}/health"))
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_client_error(),
            "{method} /health: {}",
            r.status()
        );
        let r = http
            .request(method, format!("{url}/no/such/path/{i}"))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_client_error(), "{}", r.status());
    }
    let text = cluster.metrics_text(0).await;
    assert!(
        !text.contains("SQPROBE"),
        "a client's method became a label"
    );
    assert!(
        !text.contains("/no/such/path"),
        "a client's path became a label"
    );
    let others: f64 = text
        .lines()
        .filter(|l| l.starts_with("sq_http_requests_total{") && l.contains(r#"method="other""#))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(others, 80.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_state_refuses_new_sessions_with_a_429_and_writes_nothing() {
    // Room for a few sessions (2 KiB each in the state's count) and nothing more.
    let cluster = TestCluster::start_with(common::Options {
        nodes: 1,
        flags: vec!["--max-state-bytes=10000".into()],
        ..common::Options::default()
    })
    .await;
    let url = cluster.url(0);
    let http = reqwest::Client::new();
    let create = || {
        http.post(format!("{url}/v1/sessions"))
            .json(&session_spec(1, 1))
            .send()
    };
    let mut created = 0;
    let refused = loop {
        let r = create().await.unwrap();
        if r.status() == StatusCode::CREATED {
            created += 1;
            assert!(created < 10, "the state's bound never refused a session");
            continue;
        }
        break r;
    };
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "state_full", "{body}");
    assert!(created >= 1, "no session fit at all");
    // Refused again, and the sessions listed are the ones created.
    assert_eq!(
        create().await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    let listed: Value = http
        .get(format!("{url}/v1/sessions"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let n = listed["sessions"].as_array().map_or(0, Vec::len);
    assert_eq!(n, created, "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_folds_its_request_histograms_without_being_scraped() {
    // The fold itself (and that it bounds memory) is tests/recorder.rs; this is
    // that a node runs it: at start, then every 5 s. A scrape folds too, but only
    // the node's own upkeep counts.
    let cluster = TestCluster::start(1).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let upkeeps = cluster.metric(0, "sq_metrics_upkeeps_total").await;
        if upkeeps >= 2.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{upkeeps} upkeeps after 30 s: the node does not fold its histograms"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
