//! The OpenAPI document (`GET /v1/openapi.json`, issue 17 section 2) against the
//! real thing, with third-party tools from PyPI:
//!
//! - `openapi-spec-validator` checks the document a running node serves is valid
//!   OpenAPI 3.1, and every operation it lists is routed (no fallback 404, no 405);
//! - `schemathesis` runs against a live three-node cluster started with an API key,
//!   an admin key and a miner key: every operation with generated valid and invalid
//!   input, and a stateful phase that follows the document's links. No answer may be
//!   a 5xx other than a documented one, and every answer must match the document
//!   (status code, content type, headers, body schema).
//!
//! The tools are installed, at pinned versions, into a virtual environment under
//! `~/.cache/session-queue/venv-openapi` that the test makes itself (`tests/run.sh`
//! installs `python3-venv` when missing, see `cluster/install-deps.sh`). Without
//! Python, venv or a way to PyPI the test says so and skips; under CI (`CI=true`)
//! it fails.
//!
//! The schemathesis run is bounded by examples per operation, not by time. Its seed
//! is fixed, so a run repeats; `SQ_SCHEMATHESIS_SEED` picks another one and
//! `SQ_SCHEMATHESIS_EXAMPLES` more or fewer examples.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use common::{cannot_run, Options, TestCluster};
use reqwest::Method;
use serde_json::{json, Value};

const SCHEMATHESIS: &str = "schemathesis==4.32.5";
const VALIDATOR: &str = "openapi-spec-validator==0.9.0";

const API_KEY: &str = "openapi-test-api-key";
const ADMIN_KEY: &str = "openapi-test-admin-key";
const MINER_KEY: &str = "openapi-test-miner-key";

/// The virtual environment with the tools, made once per test process (the two
/// tests share it). `Err`: why it cannot be had here.
fn python_tools() -> Result<PathBuf, String> {
    static MADE: Mutex<Option<Result<PathBuf, String>>> = Mutex::new(None);
    let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(result) = &*made {
        return result.clone();
    }
    let result = make_venv();
    *made = Some(result.clone());
    result
}

fn make_venv() -> Result<PathBuf, String> {
    let home = std::env::var_os("HOME").ok_or("HOME is not set")?;
    let dir = Path::new(&home).join(".cache/session-queue/venv-openapi");
    let python = dir.join("bin/python");
    if !python.is_file() {
        std::fs::create_dir_all(dir.parent().unwrap()).map_err(|e| e.to_string())?;
        run(Command::new("python3").args(["-m", "venv"]).arg(&dir))
            .map_err(|e| format!("cannot make a Python venv (python3, python3-venv): {e}"))?;
    }
    run(Command::new(&python).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        SCHEMATHESIS,
        VALIDATOR,
    ]))
    .map_err(|e| format!("cannot install {SCHEMATHESIS} and {VALIDATOR} from PyPI: {e}"))?;
    Ok(dir)
}

/// Runs a command to its end; `Err` with its output when it fails.
fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| e.to_string())?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{}:\n{text}", out.status))
    }
}

/// The document as node `i` serves it, saved into the cluster's directory.
async fn fetch_document(cluster: &TestCluster, i: usize) -> (Value, PathBuf) {
    let response = reqwest::get(format!("{}/v1/openapi.json", cluster.url(i)))
        .await
        .expect("GET /v1/openapi.json");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let text = response.text().await.unwrap();
    let path = cluster.dir.path().join("openapi.json");
    std::fs::write(&path, &text).unwrap();
    (
        serde_json::from_str(&text).expect("the document is JSON"),
        path,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn served_document_is_valid_openapi_and_every_operation_is_routed() {
    const TEST: &str = "openapi validator test";
    let venv = match python_tools() {
        Ok(v) => v,
        Err(why) => return cannot_run(TEST, &why),
    };
    let cluster = TestCluster::start(1).await;
    let (doc, path) = fetch_document(&cluster, 0).await;
    assert_eq!(doc["openapi"], "3.1.0");

    let validated = run(Command::new(venv.join("bin/openapi-spec-validator"))
        .args(["--schema", "3.1", "--validation-errors", "all"])
        .arg(&path));
    if let Err(e) = validated {
        panic!("openapi-spec-validator refuses the served document: {e}");
    }

    // Every documented operation reaches a handler: neither the router's fallback
    // (404 "no such endpoint") nor 405. Ids name nothing, so nothing changes.
    let http = reqwest::Client::new();
    let mut operations = 0;
    for (template, item) in doc["paths"].as_object().unwrap() {
        let path = template.replace("{id}", "s-999999");
        for method in item.as_object().unwrap().keys() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let response = http
                .request(method.clone(), format!("{}{path}", cluster.url(0)))
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            assert_ne!(status, 405, "{method} {path} is documented but not routed");
            assert!(
                !(status == 404 && body.contains("no such endpoint")),
                "{method} {path} is documented but not routed"
            );
            operations += 1;
        }
    }
    assert!(operations >= 30, "only {operations} operations documented");
}

/// What the schemathesis run works on: real ids and tokens, so generated calls reach
/// the handlers' logic, not only their 404s.
struct Fixture {
    /// Tasks are submitted to it and its events streamed.
    session: String,
    /// Closed by the run.
    session_to_close: String,
    /// The miner of the run, and its token.
    miner: String,
    token: String,
    /// A second miner, drained and deregistered by the run, and its token.
    leaving_miner: String,
    leaving_token: String,
    /// A task assigned to `miner`: acked, precommitted, revealed by the run.
    task: String,
    /// A task the run cancels.
    task_to_cancel: String,
}

async fn call(
    cluster: &TestCluster,
    method: Method,
    path: &str,
    body: Option<Value>,
    bearer: &str,
) -> Value {
    let (status, value) = cluster
        .client()
        .call(method.clone(), path, body.as_ref(), Some(bearer))
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    assert!(status.is_success(), "{method} {path}: {status} {value}");
    value
}

async fn fixture(cluster: &TestCluster) -> Fixture {
    let session_body = json!({"redundancy": 1, "ack_timeout_ms": 600000,
        "precommit_timeout_ms": 600000, "commit_timeout_ms": 600000});
    let session = call(
        cluster,
        Method::POST,
        "/v1/sessions",
        Some(session_body.clone()),
        API_KEY,
    )
    .await;
    let session = session["id"].as_str().unwrap().to_string();
    let other = call(
        cluster,
        Method::POST,
        "/v1/sessions",
        Some(session_body),
        API_KEY,
    )
    .await;
    let session_to_close = other["id"].as_str().unwrap().to_string();
    let register = |name: &'static str| async move {
        let m = call(
            cluster,
            Method::POST,
            "/v1/miners",
            Some(json!({"name": name, "capacity": 64, "heartbeat_timeout_ms": 600000})),
            MINER_KEY,
        )
        .await;
        (
            m["miner_id"].as_str().unwrap().to_string(),
            m["token"].as_str().unwrap().to_string(),
        )
    };
    // The run's miner first, alone in the pool, so the tasks go to it.
    let (miner, token) = register("schemathesis-miner").await;
    let mut tasks = Vec::new();
    for key in ["fixture-1", "fixture-2"] {
        let t = call(
            cluster,
            Method::POST,
            &format!("/v1/sessions/{session}/tasks"),
            Some(json!({"payload": "aGVsbG8=", "idempotency_key": key})),
            API_KEY,
        )
        .await;
        tasks.push(t["task_id"].as_str().unwrap().to_string());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let t = call(
            cluster,
            Method::GET,
            &format!("/v1/tasks/{}", tasks[0]),
            None,
            API_KEY,
        )
        .await;
        if !t["assignments"].as_array().unwrap().is_empty() {
            assert_eq!(t["assignments"][0]["miner_id"], miner.as_str());
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "task never assigned: {t}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (leaving_miner, leaving_token) = register("leaving-miner").await;
    Fixture {
        session,
        session_to_close,
        miner,
        token,
        leaving_miner,
        leaving_token,
        task: tasks[0].clone(),
        task_to_cancel: tasks[1].clone(),
    }
}

/// The schemathesis configuration: which bearer each security scheme takes, and the
/// fixed ids of the operations that act on the fixture.
fn config(f: &Fixture) -> String {
    format!(
        r#"
request-timeout = 10.0

[auth.openapi.api_key]
bearer = "{API_KEY}"

[auth.openapi.miner_key]
bearer = "{MINER_KEY}"

# Membership changes would change the cluster under test (a member at a generated
# address): the run calls them with the API key, so they are refused (403) as
# documented, after authentication, and the cluster stays as it is.
[auth.openapi.admin_key]
bearer = "{API_KEY}"

[auth.openapi.miner_token]
bearer = "{token}"

[[operations]]
include-operation-id = ["read_session", "submit_task", "submit_batch"]
parameters = {{ "path.id" = "{session}" }}

# An event stream never ends: read it for a second, then judge what came.
[[operations]]
include-operation-id = "session_events"
parameters = {{ "path.id" = "{session}" }}
request-timeout = 1.0

[[operations]]
include-operation-id = "close_session"
parameters = {{ "path.id" = "{session_to_close}" }}

[[operations]]
include-operation-id = ["read_task", "ack_task", "precommit_task", "commit_task"]
parameters = {{ "path.id" = "{task}" }}

[[operations]]
include-operation-id = "cancel_task"
parameters = {{ "path.id" = "{task_to_cancel}" }}

[[operations]]
include-operation-id = ["read_miner", "heartbeat_miner", "miner_assignments", "miner_steps"]
parameters = {{ "path.id" = "{miner}" }}

[[operations]]
include-operation-id = ["drain_miner", "deregister_miner"]
parameters = {{ "path.id" = "{leaving_miner}" }}
headers = {{ Authorization = "Bearer {leaving_token}" }}
"#,
        session = f.session,
        session_to_close = f.session_to_close,
        task = f.task,
        task_to_cancel = f.task_to_cancel,
        miner = f.miner,
        token = f.token,
        leaving_miner = f.leaving_miner,
        leaving_token = f.leaving_token,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_server_error_and_no_answer_off_the_document() {
    const TEST: &str = "schemathesis test";
    let venv = match python_tools() {
        Ok(v) => v,
        Err(why) => return cannot_run(TEST, &why),
    };
    let cluster = TestCluster::start_with(Options {
        nodes: 3,
        api_key: Some(API_KEY.into()),
        // Long polls stay short, so generated `wait`/`timeout` values cannot outlast
        // the client's request timeout.
        flags: vec!["--max-wait-ms".into(), "1000".into()],
        env: vec![
            ("SQ_ADMIN_KEY".into(), ADMIN_KEY.into()),
            ("SQ_MINER_KEY".into(), MINER_KEY.into()),
        ],
        ..Options::default()
    })
    .await;
    let fixture = fixture(&cluster).await;
    let dir = cluster.dir.path();
    let config_path = dir.join("schemathesis.toml");
    std::fs::write(&config_path, config(&fixture)).unwrap();
    let seed = std::env::var("SQ_SCHEMATHESIS_SEED").unwrap_or_else(|_| "17".into());
    let examples = std::env::var("SQ_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "12".into());
    // Every node gets its share: a follower forwards writes, the leader runs them.
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let follower = (leader + 1) % 3;
    let reports = dir.join("schemathesis-report");
    let outcome = run(Command::new(venv.join("bin/schemathesis"))
        .current_dir(dir)
        .arg("--config-file")
        .arg(&config_path)
        .arg("run")
        .arg(format!("{}/v1/openapi.json", cluster.url(follower)))
        .args(["--url", &cluster.url(follower)])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance",
        ])
        .args(["--max-examples", &examples, "--seed", &seed])
        // One worker: with two, schemathesis parses Python sources (Hypothesis's
        // lambda descriptions) from two threads at once, and CPython 3.11's `ast`
        // keeps one recursion counter per interpreter, so a run could die on its own
        // "AST constructor recursion depth mismatch" (seen once in CI) instead of
        // testing the API.
        .args(["--workers", "1", "--no-color"])
        .args(["--suppress-health-check", "all"])
        .args(["--report", "junit", "--report-junit-path"])
        .arg(reports.join("junit.xml")));
    match outcome {
        Ok(out) => {
            let junit = std::fs::read_to_string(reports.join("junit.xml")).unwrap_or_default();
            // One test case per operation tested: 30 documented, less
            // `GET /v1/openapi.json`, which schemathesis leaves out when it loads the
            // document from that URL.
            let cases = junit.matches("<testcase").count();
            assert!(
                cases >= 29,
                "schemathesis tested only {cases} operations:\n{out}"
            );
            eprintln!("{out}");
        }
        Err(e) => panic!(
            "schemathesis found answers off the document or server errors:\n{e}\nlogs:\n{}",
            cluster.logs()
        ),
    }
    // The cluster is whole after the run: every node still answers with one leader.
    cluster.wait_for_leader(Duration::from_secs(10)).await;
}
