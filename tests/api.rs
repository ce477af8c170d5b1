//! The HTTP API against real node processes: a task's whole life with every write
//! sent to a different node, reads from every node, every error status, queue
//! deadlines and idempotency conflicts. (Writes without a quorum and the leader
//! killed mid-stream are in `cluster.rs`.)

mod common;

use std::time::{Duration, Instant};

use common::{session_spec, Options, TestCluster};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use session_queue::client::{b64, Client};
use session_queue::machine::sha256;

/// A miner as a test drives it: its id, token and the client of one node.
struct TestMiner {
    id: String,
    token: String,
}

async fn register(c: &Client, name: &str) -> TestMiner {
    let (id, token) = c.register_miner(name, 4, &[]).await.expect("register");
    TestMiner { id, token }
}

async fn miner_call(c: &Client, m: &TestMiner, path: &str, body: Value) -> (StatusCode, Value) {
    c.call(Method::POST, path, Some(&body), Some(&m.token))
        .await
        .expect("call")
}

fn precommit_hash(output: &[u8], nonce: &[u8]) -> String {
    hex::encode(sha256(&[output, nonce]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_lives_its_whole_life_with_each_write_on_a_different_node() {
    let cluster = TestCluster::start(3).await;
    let node = |i: usize| cluster.client_of(i % 3);

    let session = node(0).create_session(&session_spec(3, 2)).await.unwrap();
    let miners = [
        register(&node(0), "m1").await,
        register(&node(1), "m2").await,
        register(&node(2), "m3").await,
    ];
    let payload = b"What is the capital of France?";
    let (status, v) = node(1)
        .call(
            Method::POST,
            &format!("/v1/sessions/{session}/tasks"),
            Some(&json!({"payload": b64(payload)})),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let task = v["task_id"].as_str().unwrap().to_string();

    // Every miner sees its assignment, from a node other than the one that created it.
    for (i, m) in miners.iter().enumerate() {
        let v = node(i + 1)
            .ok(
                Method::GET,
                &format!("/v1/miners/{}/assignments?wait_ms=5000", m.id),
                None,
                Some(&m.token),
            )
            .await
            .unwrap();
        let list = v["assignments"].as_array().unwrap();
        assert_eq!(list.len(), 1, "{v}");
        assert_eq!(list[0]["task_id"], task.as_str());
        assert_eq!(list[0]["payload"], b64(payload));
        assert_eq!(list[0]["state"], "assigned");
    }
    // Later, once every node has written it to its store (within 50 ms of the
    // submit) and dropped it from memory, the payload is read back from the store.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for (i, m) in miners.iter().enumerate() {
        let v = node(i + 2)
            .ok(
                Method::GET,
                &format!("/v1/miners/{}/assignments", m.id),
                None,
                Some(&m.token),
            )
            .await
            .unwrap();
        assert_eq!(v["assignments"][0]["payload"], b64(payload), "{v}");
    }
    let state = |v: &Value| v["state"].as_str().unwrap().to_string();
    let read = |i: usize| {
        let c = node(i);
        let task = task.clone();
        async move { c.task(&task, "?consistency=linearizable").await.unwrap() }
    };
    assert_eq!(state(&read(0).await), "queued");

    for (i, m) in miners.iter().enumerate() {
        let (s, v) = miner_call(&node(i), m, &format!("/v1/tasks/{task}/ack"), json!({})).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    assert_eq!(state(&read(1).await), "acked");

    let output = b"Paris";
    let nonces: Vec<Vec<u8>> = (0..3).map(|i| format!("nonce-{i}").into_bytes()).collect();
    for (i, m) in miners.iter().enumerate().take(2) {
        let hash = precommit_hash(output, &nonces[i]);
        let (s, v) = miner_call(
            &node(i + 1),
            m,
            &format!("/v1/tasks/{task}/precommit"),
            json!({"hash": hash}),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    // No reveal before the precommit phase closes.
    let early = json!({"output": b64(output), "nonce": b64(&nonces[0])});
    let (s, v) = miner_call(
        &node(2),
        &miners[0],
        &format!("/v1/tasks/{task}/commit"),
        early.clone(),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let hash = precommit_hash(output, &nonces[2]);
    let (s, _) = miner_call(
        &node(0),
        &miners[2],
        &format!("/v1/tasks/{task}/precommit"),
        json!({"hash": hash}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(state(&read(2).await), "precommitted");

    let (s, v) = miner_call(
        &node(2),
        &miners[0],
        &format!("/v1/tasks/{task}/commit"),
        early,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(state(&read(0).await), "committed");
    let reveal = json!({"output": b64(output), "nonce": b64(&nonces[1])});
    let (s, v) = miner_call(
        &node(0),
        &miners[1],
        &format!("/v1/tasks/{task}/commit"),
        reveal,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "completed");

    // The result, from every node's own applied state.
    for i in 0..3 {
        let v = node(i)
            .task(&task, "?wait=completed&timeout=10s")
            .await
            .unwrap();
        assert_eq!(v["state"], "completed", "node {i}: {v}");
        assert_eq!(v["result"], b64(output));
        assert!(v["applied_index"].as_u64().unwrap() > 0);
        let states: Vec<&str> = v["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["state"].as_str().unwrap())
            .collect();
        assert_eq!(
            states,
            ["queued", "acked", "precommitted", "committed", "completed"]
        );
    }
    // Writes to a completed task are refused.
    let late = json!({"output": b64(output), "nonce": b64(&nonces[2])});
    let (s, _) = miner_call(
        &node(1),
        &miners[2],
        &format!("/v1/tasks/{task}/commit"),
        late,
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let v = node(2)
        .ok(Method::GET, &format!("/v1/sessions/{session}"), None, None)
        .await
        .unwrap();
    assert_eq!(v["counts"]["completed"], 1);
}

/// Asserts an error answer: status, JSON error object, and its code.
fn expect_error(status: StatusCode, v: &Value, want: StatusCode, code: &str) {
    assert_eq!(status, want, "{v}");
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_answers_its_status_and_changes_nothing() {
    let cluster = TestCluster::start_with(Options {
        nodes: 3,
        flags: vec![
            "--max-payload-bytes=1024".into(),
            "--max-batch-tasks=5".into(),
            "--max-body-bytes=65536".into(),
        ],
        ..Options::default()
    })
    .await;
    let c = cluster.client_of(1);
    let http = reqwest::Client::new();
    let url = cluster.url(1);
    let session = c.create_session(&session_spec(1, 1)).await.unwrap();
    let submit = format!("/v1/sessions/{session}/tasks");

    // 400: malformed JSON, bad base64, unknown field, bad values.
    let r = http
        .post(format!("{url}{submit}"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    let s = r.status();
    expect_error(
        s,
        &r.json().await.unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid",
    );
    for body in [
        json!({"payload": "***"}),
        json!({"payload": "aGk=", "colour": "blue"}),
        json!({"payload": 5}),
        json!({"payload": "aGk=", "idempotency_key": ""}),
        json!({"payload": "aGk=", "priority": 1e10}),
    ] {
        let (s, v) = c
            .call(Method::POST, &submit, Some(&body), None)
            .await
            .unwrap();
        expect_error(s, &v, StatusCode::BAD_REQUEST, "invalid");
    }
    for spec in [
        json!({"redundancy": 0}),
        json!({"redundancy": 3, "quorum": 4}),
        json!({"redundancy": 9}),
    ] {
        let (s, v) = c
            .call(Method::POST, "/v1/sessions", Some(&spec), None)
            .await
            .unwrap();
        expect_error(s, &v, StatusCode::BAD_REQUEST, "invalid");
    }
    let (s, v) = c
        .call(Method::GET, "/v1/tasks/t-1?wait=forever", None, None)
        .await
        .unwrap();
    expect_error(s, &v, StatusCode::BAD_REQUEST, "invalid");

    // 413: payload, batch and body over their limits.
    let (s, v) = c
        .call(
            Method::POST,
            &submit,
            Some(&json!({"payload": b64(&[0u8; 1025])})),
            None,
        )
        .await
        .unwrap();
    expect_error(s, &v, StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    let six: Vec<Value> = (0..6).map(|_| json!({"payload": "aGk="})).collect();
    let (s, v) = c
        .call(
            Method::POST,
            &format!("{submit}:batch"),
            Some(&json!({"tasks": six})),
            None,
        )
        .await
        .unwrap();
    expect_error(s, &v, StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    let r = http
        .post(format!("{url}{submit}"))
        .body(vec![b' '; 70_000])
        .send()
        .await
        .unwrap();
    let s = r.status();
    expect_error(
        s,
        &r.json().await.unwrap(),
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
    );

    // 404: unknown ids and paths.
    for path in [
        "/v1/tasks/t-999999",
        "/v1/tasks/nonsense",
        "/v1/sessions/s-999",
        "/v1/nothing-here",
    ] {
        let (s, v) = c.call(Method::GET, path, None, None).await.unwrap();
        expect_error(s, &v, StatusCode::NOT_FOUND, "not_found");
    }
    let (s, v) = c
        .call(
            Method::POST,
            "/v1/sessions/s-999/tasks",
            Some(&json!({"payload": "aGk="})),
            None,
        )
        .await
        .unwrap();
    expect_error(s, &v, StatusCode::NOT_FOUND, "not_found");

    // 401 and 403: miner calls without a token, with a bad one, on another miner.
    let a = register(&c, "a").await;
    let b = register(&c, "b").await;
    let task = c.submit(&session, b"x", None).await.unwrap();
    let (s, v) = c
        .call(
            Method::POST,
            &format!("/v1/tasks/{task}/ack"),
            Some(&json!({})),
            None,
        )
        .await
        .unwrap();
    expect_error(s, &v, StatusCode::UNAUTHORIZED, "unauthorized");
    let (s, v) = c
        .call(
            Method::POST,
            &format!("/v1/tasks/{task}/ack"),
            Some(&json!({})),
            Some("sqm_forged"),
        )
        .await
        .unwrap();
    expect_error(s, &v, StatusCode::UNAUTHORIZED, "unauthorized");
    let (s, v) = c
        .call(
            Method::GET,
            &format!("/v1/miners/{}/assignments", b.id),
            None,
            Some(&a.token),
        )
        .await
        .unwrap();
    expect_error(s, &v, StatusCode::FORBIDDEN, "forbidden");
    let (s, v) = c
        .call(
            Method::POST,
            &format!("/v1/miners/{}/heartbeat", a.id),
            Some(&json!({})),
            Some(&b.token),
        )
        .await
        .unwrap();
    expect_error(s, &v, StatusCode::FORBIDDEN, "forbidden");

    // 409: illegal transitions, each leaving the task as it was.
    let holder = c.task(&task, "?consistency=linearizable").await.unwrap()["assignments"][0]
        ["miner_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (owner, other) = if holder == a.id { (&a, &b) } else { (&b, &a) };
    let before = c.task(&task, "?consistency=linearizable").await.unwrap();
    let hash = precommit_hash(b"out", b"n");
    for (m, path, body) in [
        (other, "ack", json!({})),
        (owner, "precommit", json!({"hash": hash})),
        (
            owner,
            "commit",
            json!({"output": b64(b"out"), "nonce": b64(b"n")}),
        ),
    ] {
        let (s, v) = miner_call(&c, m, &format!("/v1/tasks/{task}/{path}"), body).await;
        expect_error(s, &v, StatusCode::CONFLICT, "conflict");
    }
    let after = c.task(&task, "?consistency=linearizable").await.unwrap();
    assert_eq!(before["state"], after["state"]);
    assert_eq!(before["assignments"], after["assignments"]);
    // A malformed precommit hash is a 400.
    let (s, v) = miner_call(
        &c,
        owner,
        &format!("/v1/tasks/{task}/precommit"),
        json!({"hash": "abc"}),
    )
    .await;
    expect_error(s, &v, StatusCode::BAD_REQUEST, "invalid");

    // 422: a reveal that does not match its precommit, recorded as rejected.
    assert_eq!(
        miner_call(&c, owner, &format!("/v1/tasks/{task}/ack"), json!({}))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        miner_call(
            &c,
            owner,
            &format!("/v1/tasks/{task}/precommit"),
            json!({"hash": hash})
        )
        .await
        .0,
        StatusCode::OK
    );
    let (s, v) = miner_call(
        &c,
        owner,
        &format!("/v1/tasks/{task}/commit"),
        json!({"output": b64(b"forged"), "nonce": b64(b"n")}),
    )
    .await;
    expect_error(s, &v, StatusCode::UNPROCESSABLE_ENTITY, "reveal_mismatch");
    let v = c.task(&task, "?consistency=linearizable").await.unwrap();
    let slot = v["assignments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["miner_id"] == owner.id.as_str())
        .unwrap()
        .clone();
    assert_eq!(slot["state"], "rejected", "{v}");

    // 409 on a second cancel, after a first one succeeds.
    assert_eq!(
        c.call(
            Method::POST,
            &format!("/v1/tasks/{task}/cancel"),
            None,
            None
        )
        .await
        .unwrap()
        .0,
        StatusCode::OK
    );
    let (s, v) = c
        .call(
            Method::POST,
            &format!("/v1/tasks/{task}/cancel"),
            None,
            None,
        )
        .await
        .unwrap();
    expect_error(s, &v, StatusCode::CONFLICT, "conflict");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_guards_user_calls_and_miner_registration() {
    let cluster = TestCluster::start_with(Options {
        api_key: Some("k3y-for-tests".into()),
        ..Options::default()
    })
    .await;
    let anonymous = Client::new(&[cluster.api(0)], None);
    for (method, path, body) in [
        (Method::POST, "/v1/sessions", Some(json!({}))),
        (Method::GET, "/v1/cluster", None),
        (Method::POST, "/v1/miners", Some(json!({"name": "m"}))),
        (Method::GET, "/metrics", None),
    ] {
        let (s, v) = anonymous
            .call(method, path, body.as_ref(), None)
            .await
            .unwrap();
        expect_error(s, &v, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let (s, v) = anonymous
        .call(
            Method::POST,
            "/v1/sessions",
            Some(&json!({})),
            Some("wrong"),
        )
        .await
        .unwrap();
    expect_error(s, &v, StatusCode::UNAUTHORIZED, "unauthorized");
    // With the key everything works; health needs none.
    let c = cluster.client();
    let session = c.create_session(&session_spec(1, 1)).await.unwrap();
    c.submit(&session, b"x", None).await.unwrap();
    assert_eq!(
        anonymous
            .call(Method::GET, "/health", None, None)
            .await
            .unwrap()
            .0,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_wait_for_completion_and_events_stream_every_transition() {
    let cluster = TestCluster::start(3).await;
    let c = cluster.client_of(2);
    let session = c.create_session(&session_spec(1, 1)).await.unwrap();
    let events = reqwest::Client::new()
        .get(format!("{}/v1/sessions/{session}/events", cluster.url(0)))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    let task = c.submit(&session, b"2+2", Some("once")).await.unwrap();
    // The same key and task again: the same task, nothing new. (The same key with
    // another payload is refused: see the idempotency test below.)
    assert_eq!(
        c.submit(&session, b"2+2", Some("once")).await.unwrap(),
        task
    );

    // A router long-polls the result on node 1 while a miner works through node 2.
    let router = cluster.client_of(0);
    let waiting = {
        let task = task.clone();
        tokio::spawn(async move { router.task(&task, "?wait=completed&timeout=20s").await })
    };
    let m = register(&cluster.client_of(1), "worker").await;
    let m1 = cluster.client_of(1);
    let v = m1
        .ok(
            Method::GET,
            &format!("/v1/miners/{}/assignments?wait_ms=5000", m.id),
            None,
            Some(&m.token),
        )
        .await
        .unwrap();
    assert_eq!(v["assignments"][0]["task_id"], task.as_str());
    miner_call(&m1, &m, &format!("/v1/tasks/{task}/ack"), json!({})).await;
    miner_call(
        &m1,
        &m,
        &format!("/v1/tasks/{task}/precommit"),
        json!({"hash": precommit_hash(b"4", b"n")}),
    )
    .await;
    let (s, _) = miner_call(
        &m1,
        &m,
        &format!("/v1/tasks/{task}/commit"),
        json!({"output": b64(b"4"), "nonce": b64(b"n")}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let v = waiting.await.unwrap().unwrap();
    assert_eq!(v["state"], "completed");
    assert_eq!(v["result"], b64(b"4"));

    // The event stream of node 1 saw the task through every state.
    let mut stream = events.bytes_stream();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    use futures_util::StreamExt;
    let mut buf = String::new();
    while !seen.contains(&"completed".to_string()) && Instant::now() < deadline {
        let chunk = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data:")) {
                let v: Value = serde_json::from_str(data.trim()).unwrap();
                assert_eq!(v["task_id"], task.as_str());
                seen.push(v["what"].as_str().unwrap().to_string());
            }
        }
    }
    for what in [
        "submitted",
        "assigned",
        "acked",
        "precommitted",
        "revealed",
        "completed",
    ] {
        assert!(
            seen.contains(&what.to_string()),
            "{what} missing from {seen:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_deadlines_and_idempotency_keys_answer_as_documented() {
    let cluster = TestCluster::start(3).await;
    let c = cluster.client_of(0);
    // Sent through another node, so refusals also cross the forwarding path.
    let other = cluster.client_of(1);

    // Session settings: defaults, and a window shorter than the retention refused.
    let mut spec = session_spec(1, 1);
    spec["queue_timeout_ms"] = json!(1000);
    spec["retention_ms"] = json!(600_000);
    let session = c.create_session(&spec).await.unwrap();
    let v = c
        .ok(Method::GET, &format!("/v1/sessions/{session}"), None, None)
        .await
        .unwrap();
    assert_eq!(v["queue_timeout_ms"], 1000, "{v}");
    assert_eq!(
        v["idempotency_window_ms"], 600_000,
        "defaults to the retention: {v}"
    );
    let mut short = session_spec(1, 1);
    short["retention_ms"] = json!(600_000);
    short["idempotency_window_ms"] = json!(599_999);
    let (s, v) = c
        .call(Method::POST, "/v1/sessions", Some(&short), None)
        .await
        .unwrap();
    expect_error(s, &v, StatusCode::BAD_REQUEST, "invalid");

    // No miner: the task fails as expired at its queue deadline; one that overrides
    // it with 0 keeps waiting.
    let submit = format!("/v1/sessions/{session}/tasks");
    let (s, v) = c
        .call(
            Method::POST,
            &submit,
            Some(&json!({"payload": "YQ=="})),
            None,
        )
        .await
        .unwrap();
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let expiring = v["task_id"].as_str().unwrap().to_string();
    let (s, v) = c
        .call(
            Method::POST,
            &submit,
            Some(&json!({"payload": "Yg==", "queue_timeout_ms": 0})),
            None,
        )
        .await
        .unwrap();
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let waiting = v["task_id"].as_str().unwrap().to_string();
    let v = c
        .task(&expiring, "?wait=completed&timeout=20s")
        .await
        .unwrap();
    assert_eq!(v["state"], "failed", "{v}");
    assert!(
        v["failure"].as_str().unwrap().starts_with("expired:"),
        "{v}"
    );
    let v = c.task(&waiting, "?consistency=linearizable").await.unwrap();
    assert_eq!(v["state"], "queued", "{v}");
    assert_eq!(v["queue_timeout_ms"], 0, "{v}");
    assert_eq!(v["queue_deadline_ms"], Value::Null, "{v}");

    // Idempotency: a retry answers the first task; another payload under the key is
    // a 409 idempotency_conflict, alone or in a batch (which then creates nothing).
    let body = json!({"payload": "eA==", "idempotency_key": "k-1", "queue_timeout_ms": 0});
    let (s, v) = c
        .call(Method::POST, &submit, Some(&body), None)
        .await
        .unwrap();
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let first = v["task_id"].clone();
    let (s, v) = other
        .call(Method::POST, &submit, Some(&body), None)
        .await
        .unwrap();
    assert_eq!(
        (s, &v["task_id"], &v["created"]),
        (StatusCode::OK, &first, &json!(false))
    );
    let (s, v) = other
        .call(
            Method::POST,
            &submit,
            Some(&json!({"payload": "eQ==", "idempotency_key": "k-1", "queue_timeout_ms": 0})),
            None,
        )
        .await
        .unwrap();
    expect_error(s, &v, StatusCode::CONFLICT, "idempotency_conflict");
    let batch = json!({"tasks": [
        {"payload": "eg==", "idempotency_key": "k-2"},
        {"payload": "eQ==", "idempotency_key": "k-1", "queue_timeout_ms": 0},
    ]});
    let (s, v) = c
        .call(Method::POST, &format!("{submit}:batch"), Some(&batch), None)
        .await
        .unwrap();
    expect_error(s, &v, StatusCode::CONFLICT, "idempotency_conflict");
    // The batch's new key was not taken: submitting it now creates its task.
    let (s, v) = c
        .call(
            Method::POST,
            &submit,
            Some(&json!({"payload": "eg==", "idempotency_key": "k-2"})),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        (s, &v["created"]),
        (StatusCode::CREATED, &json!(true)),
        "{v}"
    );
}
