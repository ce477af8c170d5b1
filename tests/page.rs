//! The operator page (`GET /`) and the listings behind it, against real node
//! processes started with an API key:
//!
//! - the page and its two files are served without a key, with a strict CSP, while
//!   `GET /v1/sessions` and `GET /v1/pool/miners` need the key and page through
//!   sessions (with their tasks per state) and miners, newest first;
//! - in a real browser (`operator_page_in_a_browser`, ignored by a plain `cargo
//!   test`): headless Chromium from Debian, driven by Selenium from a venv, loads the
//!   page of a live three-node cluster with simulated miners working, is refused a
//!   wrong key, enters the right one, and the test checks what the page shows against
//!   the API: three members, one leader (the cluster's), the term, the session and its
//!   task counts, a throughput figure; it saves a screenshot to
//!   `docs/operator-page.png`. `tests/page.sh` installs Chromium, its driver and
//!   Selenium and runs it:
//!
//!     tests/page.sh

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{binary, cannot_run, session_spec, Options, TestCluster};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use session_queue::client::{b64, Client};

const KEY: &str = "page-test-api-key-0123456789";

async fn keyed_cluster() -> TestCluster {
    TestCluster::start_with(Options {
        api_key: Some(KEY.into()),
        ..Options::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_needs_no_key_and_the_listings_do() {
    let cluster = keyed_cluster().await;
    let http = reqwest::Client::new();
    for (path, kind) in [
        ("/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/style.css", "text/css"),
    ] {
        let r = http
            .get(format!("{}{path}", cluster.url(1)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path} without a key");
        let header = |name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        assert!(header("content-type").starts_with(kind), "{path}");
        assert!(
            header("content-security-policy").contains("script-src 'self'"),
            "{path}"
        );
        let body = r.text().await.unwrap();
        assert!(!body.is_empty());
    }

    let anonymous = Client::new(&[cluster.api(0)], None);
    for path in ["/v1/sessions", "/v1/pool/miners"] {
        let (status, _) = anonymous.call(Method::GET, path, None, None).await.unwrap();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} without the key");
    }

    let c = cluster.client();
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(c.create_session(&session_spec(1, 1)).await.unwrap());
    }
    for i in 0..2 {
        c.submit(&sessions[2], format!("p{i}").as_bytes(), None)
            .await
            .unwrap();
    }
    let (miner, token) = c.register_miner("lister", 2, &[]).await.unwrap();

    // Read from another node than the writes went to: the listing is of applied state.
    let reader = cluster.client_of(2);
    cluster.wait_caught_up(2, 0, Duration::from_secs(10)).await;
    let v = reader
        .ok(Method::GET, "/v1/sessions", None, None)
        .await
        .unwrap();
    let ids: Vec<&str> = v["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![&sessions[2], &sessions[1], &sessions[0]],
        "newest first"
    );
    assert_eq!(v["next_before"], Value::Null, "nothing older");
    let newest = &v["sessions"][0];
    let counts = &newest["counts"];
    let held: u64 = [
        "queued",
        "acked",
        "precommitted",
        "committed",
        "completed",
        "failed",
        "cancelled",
    ]
    .iter()
    .map(|s| counts[*s].as_u64().unwrap())
    .sum();
    assert_eq!(held, 2, "its two tasks, per state: {counts}");
    assert_eq!(newest["submitted_total"], 2);

    // Pages: one at a time, following the cursor.
    let v = reader
        .ok(Method::GET, "/v1/sessions?limit=2", None, None)
        .await
        .unwrap();
    assert_eq!(v["sessions"].as_array().unwrap().len(), 2);
    assert_eq!(v["next_before"], json!(sessions[1]));
    let v = reader
        .ok(
            Method::GET,
            &format!("/v1/sessions?limit=2&before={}", sessions[1]),
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(v["sessions"][0]["id"], json!(sessions[0]));
    assert_eq!(v["next_before"], Value::Null);
    for bad in [
        "/v1/sessions?limit=0",
        "/v1/sessions?limit=1001",
        "/v1/sessions?before=m-1",
        "/v1/sessions?colour=blue",
        "/v1/pool/miners?before=s-1",
    ] {
        let (status, body) = reader.call(Method::GET, bad, None, None).await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }

    let v = reader
        .ok(Method::GET, "/v1/pool/miners", None, None)
        .await
        .unwrap();
    let miners = v["miners"].as_array().unwrap();
    assert_eq!(miners.len(), 1);
    assert_eq!(miners[0]["id"], json!(miner));
    assert_eq!(miners[0]["name"], "lister");
    assert!(
        !v.to_string().contains(&token),
        "a listing never shows a token"
    );
}

/// Simulated miners (`session-queue miner simulate`), stopped when dropped.
struct Miners(Child);

impl Drop for Miners {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium, chromedriver and Selenium: run tests/page.sh"]
async fn operator_page_in_a_browser() {
    let test = "operator_page_in_a_browser";
    let Ok(python) = std::env::var("SQ_PAGE_PYTHON") else {
        cannot_run(test, "SQ_PAGE_PYTHON is not set (tests/page.sh sets it up)");
        return;
    };
    let cluster = keyed_cluster().await;
    let c = cluster.client();
    let session = c.create_session(&session_spec(2, 2)).await.unwrap();
    let nodes: Vec<String> = (0..3).map(|i| cluster.api(i)).collect();
    let _miners = Miners(
        Command::new(binary())
            .args(["miner", "simulate", "--count", "3", "--capacity", "4"])
            .env("SQ_NODES", nodes.join(","))
            .env("SQ_API_KEY", KEY)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(cluster.dir.path().join("miners.log")).unwrap())
            .spawn()
            .expect("start simulated miners"),
    );

    // Work while the browser looks: a few tasks at a time, until it is done.
    let done = Arc::new(AtomicBool::new(false));
    let submitted = Arc::new(AtomicU64::new(0));
    let feeder = {
        let (c, session, done, submitted) =
            (c.clone(), session.clone(), done.clone(), submitted.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !done.load(Ordering::Relaxed) {
                let tasks: Vec<Value> = (0..4)
                    .map(|i| json!({"payload": b64(format!("task {n}-{i}").as_bytes())}))
                    .collect();
                // Counted when sent: a batch whose answer is lost may still be applied.
                submitted.fetch_add(4, Ordering::Relaxed);
                let _ = c
                    .ok(
                        Method::POST,
                        &format!("/v1/sessions/{session}/tasks:batch"),
                        Some(&json!({"tasks": tasks})),
                        None,
                    )
                    .await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let screenshot = std::env::var("SQ_PAGE_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_path("docs/operator-page.png"));
    let script = repo_path("tests/page/check_page.py");
    let url = format!("{}/", cluster.url(0));
    let run = tokio::task::spawn_blocking({
        let (session, screenshot) = (session.clone(), screenshot.clone());
        move || {
            Command::new(python)
                .arg(script)
                .args(["--url", &url, "--key", KEY, "--session", &session])
                .arg("--screenshot")
                .arg(screenshot)
                .stdin(Stdio::null())
                .output()
        }
    })
    .await
    .unwrap()
    .expect("run the browser check");
    done.store(true, Ordering::Relaxed);
    feeder.await.unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "the browser check failed ({}):\n{stderr}\n{}",
        run.status,
        cluster.logs()
    );
    let seen: Value = serde_json::from_slice(&run.stdout).unwrap_or_else(|e| {
        panic!(
            "the browser check printed no JSON ({e}):\n{}\n{stderr}",
            String::from_utf8_lossy(&run.stdout)
        )
    });
    eprintln!("the page showed: {seen:#}");

    // What the page showed, against the cluster's own answers.
    let status = c.ok(Method::GET, "/v1/cluster", None, None).await.unwrap();
    let members = seen["members"].as_array().expect("members");
    assert_eq!(members.len(), 3, "three members: {seen}");
    let leaders: Vec<&Value> = members.iter().filter(|m| m["role"] == "leader").collect();
    assert_eq!(leaders.len(), 1, "exactly one leader: {seen}");
    assert_eq!(
        leaders[0]["id"].as_str().unwrap(),
        status["leader"].to_string(),
        "the page's leader is the cluster's"
    );
    assert_eq!(seen["leader"], json!(format!("node {}", status["leader"])));
    for m in members {
        assert!(
            m["role"] == "leader" || m["role"] == "follower",
            "a voter is leader or follower: {m}"
        );
        let applied: u64 = m["applied_index"].as_str().unwrap().parse().unwrap();
        assert!(applied > 0, "{m}");
        let lag: u64 = m["lag"].as_str().unwrap().parse().unwrap();
        assert!(lag <= applied, "{m}");
        assert_eq!(m["term"], json!(status["term"].to_string()), "{m}");
    }
    assert_eq!(seen["term"], json!(status["term"].to_string()));

    let row = &seen["session"];
    assert_eq!(row["id"], json!(session), "{seen}");
    let count = |state: &str| -> u64 {
        row["counts"][state]
            .as_str()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {state} count in {row}"))
    };
    let states = [
        "queued",
        "acked",
        "precommitted",
        "committed",
        "completed",
        "failed",
        "cancelled",
    ];
    let held: u64 = states.iter().map(|s| count(s)).sum();
    let shown_submitted: u64 = row["submitted"].as_str().unwrap().parse().unwrap();
    assert_eq!(held, shown_submitted, "every task counted once: {row}");
    assert!(count("completed") > 0, "completed tasks shown: {row}");
    assert!(
        shown_submitted <= submitted.load(Ordering::Relaxed),
        "no more tasks than were sent: {row}"
    );

    let throughput: f64 = seen["throughput"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no throughput figure: {seen}"));
    assert!(throughput > 0.0, "a live throughput figure: {seen}");
    assert!(
        seen["miners"].as_u64().unwrap() >= 3,
        "the pool's miners listed: {seen}"
    );
    assert!(
        seen["wrong_key_refused"] == json!(true),
        "a wrong key is refused: {seen}"
    );
    let png = std::fs::read(&screenshot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
}
