//! `POST /v1/miners/{id}/steps` against real node processes: a miner acks,
//! precommits and reveals a list of tasks in one call per round, each round with a
//! refused step (another miner's task, a second precommit, a reveal that does not
//! match, an unknown task) that fails only itself; and the refusals of a whole call
//! (a malformed step, too many steps, another miner's path), which write nothing.
//! And the project's simulated miners stepping in bulk (`batch_steps`, as `bench
//! lifecycle --batch-steps` runs them) finish every task at k = 3, q = 2 with a
//! dishonest miner among them.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Options, TestCluster};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use session_queue::client::miner::{self, infer, Ended, MinerSpec, MinerStats};
use session_queue::client::{b64, Client};
use session_queue::machine::sha256;

fn hash(output: &[u8], nonce: &[u8]) -> String {
    hex::encode(sha256(&[output, nonce]))
}

async fn steps(c: &Client, miner: &str, token: &str, steps: Value) -> (StatusCode, Value) {
    c.call(
        Method::POST,
        &format!("/v1/miners/{miner}/steps"),
        Some(&json!({ "steps": steps })),
        Some(token),
    )
    .await
    .expect("a steps call")
}

/// The `status` of every outcome, in order.
fn statuses(v: &Value) -> Vec<u64> {
    v["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results: {v}"))
        .iter()
        .map(|r| r["status"].as_u64().expect("a status"))
        .collect()
}

/// The miner's slot of `task`, as a linearizable read on `c` shows it.
async fn slot(c: &Client, task: &str, miner: &str) -> String {
    let v = c.task(task, "?consistency=linearizable").await.unwrap();
    let slots: Vec<&str> = v["assignments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["miner_id"] == miner)
        .map(|a| a["state"].as_str().unwrap())
        .collect();
    slots.first().unwrap_or(&"none").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miner_steps_a_list_of_tasks_in_one_call_per_round_and_a_refused_step_fails_alone() {
    let cluster = TestCluster::start_with(Options {
        flags: vec!["--max-steps".into(), "8".into()],
        ..Options::default()
    })
    .await;
    let node = |i: usize| cluster.client_of(i % 3);
    let spec = |tag: &str| {
        json!({"redundancy": 1, "quorum": 1, "tag": tag, "ack_timeout_ms": 30_000,
        "precommit_timeout_ms": 30_000, "commit_timeout_ms": 30_000})
    };
    let mine = node(0).create_session(&spec("mine")).await.unwrap();
    let theirs = node(0).create_session(&spec("theirs")).await.unwrap();
    let (me, token) = node(1)
        .register_miner("stepper", 4, &["mine".to_string()])
        .await
        .unwrap();
    let (other, other_token) = node(2)
        .register_miner("other", 1, &["theirs".to_string()])
        .await
        .unwrap();
    let payloads: Vec<Vec<u8>> = (0..3).map(|i| format!("task {i}").into_bytes()).collect();
    let v = node(0)
        .ok(
            Method::POST,
            &format!("/v1/sessions/{mine}/tasks:batch"),
            Some(&json!({"tasks": payloads.iter().map(|p| json!({"payload": b64(p)})).collect::<Vec<_>>()})),
            None,
        )
        .await
        .unwrap();
    let tasks: Vec<String> = v["task_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let v = node(0)
        .ok(
            Method::POST,
            &format!("/v1/sessions/{theirs}/tasks"),
            Some(&json!({"payload": b64(b"not yours")})),
            None,
        )
        .await
        .unwrap();
    let foreign = v["task_id"].as_str().unwrap().to_string();
    // Wait until all three are assigned to this miner.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = node(1)
            .ok(
                Method::GET,
                &format!("/v1/miners/{me}/assignments?wait_ms=2000"),
                None,
                Some(&token),
            )
            .await
            .unwrap();
        if v["assignments"].as_array().unwrap().len() == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "not assigned: {v}");
    }

    // Refusals of the whole call: nothing written.
    let acks: Vec<Value> = tasks
        .iter()
        .map(|t| json!({"task_id": t, "op": "ack"}))
        .collect();
    let mut malformed = acks.clone();
    malformed.push(json!({"task_id": tasks[0], "op": "precommit"}));
    let (s, v) = steps(&node(0), &me, &token, json!(malformed)).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid")),
        "{v}"
    );
    for bad in [
        json!([{"task_id": tasks[0], "op": "ack", "hash": hash(b"o", b"n")}]),
        json!([{"task_id": tasks[0], "op": "commit", "output": b64(b"o")}]),
        json!([{"task_id": tasks[0], "op": "reveal"}]),
        json!([{"task_id": "not-a-task", "op": "ack"}]),
        json!([{"task_id": tasks[0], "op": "precommit", "hash": "xyz"}]),
        json!([{"task_id": tasks[0], "op": "ack", "extra": 1}]),
        json!([]),
    ] {
        let (s, v) = steps(&node(1), &me, &token, bad.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }
    let nine: Vec<Value> = (0..9)
        .map(|i| json!({"task_id": tasks[i % 3], "op": "ack"}))
        .collect();
    let (s, v) = steps(&node(2), &me, &token, json!(nine)).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("too_large")),
        "{v}"
    );
    // Another miner's path: 403, whatever the steps.
    let (s, v) = steps(&node(0), &other, &token, json!(acks)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    // No token: 401 before the body is read.
    let (s, _) = node(0)
        .call(
            Method::POST,
            &format!("/v1/miners/{me}/steps"),
            Some(&json!({"steps": acks})),
            None,
        )
        .await
        .unwrap();
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    for t in &tasks {
        assert_eq!(
            slot(&node(2), t, &me).await,
            "assigned",
            "a refused call wrote"
        );
    }

    // Round 1: three acks and one of another miner's task.
    let mut round = acks.clone();
    round.push(json!({"task_id": foreign, "op": "ack"}));
    let (s, v) = steps(&node(1), &me, &token, json!(round)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(statuses(&v), [200, 200, 200, 409], "{v}");
    assert_eq!(v["results"][0]["state"], "acked");
    assert_eq!(v["results"][3]["task_id"], foreign.as_str());
    assert_eq!(v["results"][3]["error"]["code"], "conflict");
    assert_eq!(slot(&node(0), &foreign, &other).await, "assigned");

    // Round 2: three precommits, a second precommit, and an unknown task.
    let nonces: Vec<Vec<u8>> = (0..3).map(|i| format!("nonce {i}").into_bytes()).collect();
    let outputs: Vec<Vec<u8>> = payloads
        .iter()
        .map(|p| [b"out of ", &p[..]].concat())
        .collect();
    let mut round: Vec<Value> = (0..3)
        .map(|i| json!({"task_id": tasks[i], "op": "precommit", "hash": hash(&outputs[i], &nonces[i])}))
        .collect();
    round.push(json!({"task_id": tasks[0], "op": "precommit", "hash": hash(b"other", b"n")}));
    round.push(json!({"task_id": "t-999999", "op": "ack"}));
    let (s, v) = steps(&node(2), &me, &token, json!(round)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(statuses(&v), [200, 200, 200, 409, 404], "{v}");
    assert_eq!(v["results"][2]["state"], "precommitted");
    assert_eq!(v["results"][3]["error"]["code"], "conflict");

    // Round 3: three reveals, the last one a lie (recorded, answered 422).
    let round: Vec<Value> = (0..3)
        .map(|i| {
            let output = if i == 2 { b"a lie".to_vec() } else { outputs[i].clone() };
            json!({"task_id": tasks[i], "op": "commit", "output": b64(&output), "nonce": b64(&nonces[i])})
        })
        .collect();
    let (s, v) = steps(&node(0), &me, &token, json!(round)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(statuses(&v), [200, 200, 422], "{v}");
    assert_eq!(v["results"][0]["state"], "completed");
    assert_eq!(v["results"][2]["error"]["code"], "reveal_mismatch");
    for i in 0..2 {
        let t = node(i + 1)
            .task(&tasks[i], "?consistency=linearizable")
            .await
            .unwrap();
        assert_eq!(t["state"], "completed", "{t}");
        assert_eq!(t["result"], b64(&outputs[i]));
    }
    assert_eq!(slot(&node(1), &tasks[2], &me).await, "rejected");

    // Steps of one task in order, in one call: ack then precommit of the foreign
    // task by its own miner.
    let (s, v) = steps(
        &node(1),
        &other,
        &other_token,
        json!([{"task_id": foreign, "op": "ack"},
               {"task_id": foreign, "op": "precommit", "hash": hash(b"x", b"y")},
               {"task_id": foreign, "op": "commit", "output": b64(b"x"), "nonce": b64(b"y")}]),
    )
    .await;
    assert_eq!(statuses(&v), [200, 200, 200], "{s} {v}");
    assert_eq!(v["results"][2]["state"], "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_miners_stepping_in_bulk_finish_every_task_with_a_dishonest_one_among_them() {
    let cluster = TestCluster::start(3).await;
    let c = cluster.client();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let stats: Vec<Arc<MinerStats>> = (0..3).map(|_| Arc::new(MinerStats::default())).collect();
    let runs: Vec<_> = (0..3)
        .map(|i| {
            let spec = MinerSpec {
                name: format!("bulk-{i}"),
                capacity: 16,
                // One miner lies on every second reveal: the two honest ones
                // still agree.
                wrong_every: if i == 0 { 2 } else { 0 },
                batch_steps: true,
                ..MinerSpec::default()
            };
            tokio::spawn(miner::run(c.pinned(i), spec, stats[i].clone(), rx.clone()))
        })
        .collect();
    let session = c
        .create_session(&json!({"redundancy": 3, "quorum": 2, "max_nodes": 3,
            "ack_timeout_ms": 10_000, "precommit_timeout_ms": 10_000, "commit_timeout_ms": 10_000}))
        .await
        .unwrap();
    let payloads: Vec<String> = (0..24).map(|i| format!("question {i}")).collect();
    let v = c
        .ok(
            Method::POST,
            &format!("/v1/sessions/{session}/tasks:batch"),
            Some(&json!({"tasks": payloads.iter().map(|p| json!({"payload": b64(p.as_bytes())})).collect::<Vec<_>>()})),
            None,
        )
        .await
        .unwrap();
    let ids: Vec<String> = v["task_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    for (id, payload) in ids.iter().zip(&payloads) {
        let v = loop {
            let v = c.task(id, "?wait=completed&timeout=5s").await.unwrap();
            if v["state"] == "completed" || Instant::now() > deadline {
                break v;
            }
        };
        assert_eq!(v["state"], "completed", "{v}");
        assert_eq!(v["result"], b64(&infer(payload.as_bytes())), "{v}");
    }
    stop.send_replace(true);
    for run in runs {
        let r = run
            .await
            .expect("a miner panicked")
            .expect("a miner failed");
        assert_eq!(r.ended, Ended::Stopped, "{r:?}");
    }
    let sum = |f: &dyn Fn(&MinerStats) -> &std::sync::atomic::AtomicU64| -> u64 {
        stats.iter().map(|s| f(s).load(Ordering::Relaxed)).sum()
    };
    let steps = sum(&|s: &MinerStats| &s.acks)
        + sum(&|s: &MinerStats| &s.precommits)
        + sum(&|s: &MinerStats| &s.reveals)
        + sum(&|s: &MinerStats| &s.rejected);
    assert!(
        sum(&|s: &MinerStats| &s.acks) >= 3 * ids.len() as u64 - 3,
        "acks: {}",
        sum(&|s: &MinerStats| &s.acks)
    );
    // The dishonest miner revealed (its lies are caught with 422, or come after
    // the honest two completed the task and are refused): the results above are
    // the honest ones either way.
    assert!(stats[0].attempted.load(Ordering::Relaxed) >= 1);
    // Stepping in bulk: fewer step calls than steps taken.
    assert!(
        sum(&|s: &MinerStats| &s.writes) < steps,
        "{} calls for {steps} steps",
        sum(&|s: &MinerStats| &s.writes)
    );
}
