//! The command-line client against real node processes: a closed pipe ends it
//! quietly, errors are one line, `submit --batch` and `cancel`, and `watch` resuming
//! on another node when its node dies.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{binary, session_spec, TestCluster};
use reqwest::Method;
use serde_json::{json, Value};
use session_queue::client::{b64, Client};
use session_queue::store::EventId;

/// How long any one expected line may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(30);

/// The binary as a client of the cluster's nodes (all, or those given).
fn cli(cluster: &TestCluster, nodes: &[usize], args: &[&str]) -> Command {
    let nodes: Vec<String> = nodes.iter().map(|&i| cluster.api(i)).collect();
    let mut cmd = Command::new(binary());
    cmd.args(args)
        .env("SQ_NODES", nodes.join(","))
        .env_remove("SQ_API_KEY")
        // A backtrace, were one printed, would show up in these tests.
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null());
    cmd
}

fn stdout_json(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "{:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// A failed run's stderr: one line, `error: ...`, no panic, no backtrace.
fn one_line_error(output: &Output) -> String {
    assert!(!output.status.success());
    assert_eq!(output.status.code(), Some(1), "{:?}", output.status);
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    for noise in ["panicked", "Backtrace", "Caused by", "stack backtrace"] {
        assert!(!stderr.contains(noise), "{stderr}");
    }
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pipe_ends_the_client_quietly_and_errors_are_one_line() {
    let cluster = TestCluster::start(1).await;
    let c = cluster.client();
    let session = c.create_session(&session_spec(1, 1)).await.unwrap();
    let task = c.submit(&session, b"x", None).await.unwrap();

    // stdout is a pipe whose reading end is already closed: the first write fails.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = cli(&cluster, &[0], &["get", task.as_str()])
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{:?}: {stderr}", output.status);
    assert!(stderr.is_empty(), "{stderr}");

    // The same read, to a live pipe, prints the task.
    let output = cli(&cluster, &[0], &["get", task.as_str()])
        .output()
        .unwrap();
    assert_eq!(stdout_json(&output)["id"], task.as_str());

    // An unknown task: one line saying so.
    let output = cli(&cluster, &[0], &["get", "t-999999"]).output().unwrap();
    let stderr = one_line_error(&output);
    assert!(
        stderr.contains("404") && stderr.contains("not_found"),
        "{stderr}"
    );
    // No node at all: one line too.
    let output = Command::new(binary())
        .args(["get", task.as_str(), "--nodes", "127.0.0.1:1"])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    one_line_error(&output);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_submit_from_json_lines_or_an_array_and_cancel() {
    let cluster = TestCluster::start(1).await;
    let c = cluster.client();
    let session = c.create_session(&session_spec(1, 1)).await.unwrap();

    // JSON lines from a file: task objects and a bare string (the payload's text).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tasks.jsonl");
    let lines = format!(
        "{}\n\"plain text\"\n\n{}\n",
        json!({"payload": b64(b"first"), "priority": 3}),
        json!({"payload": b64(b"third"), "idempotency_key": "k-3"}),
    );
    std::fs::write(&file, lines).unwrap();
    let output = cli(
        &cluster,
        &[0],
        &[
            "submit",
            session.as_str(),
            "--batch",
            file.to_str().unwrap(),
        ],
    )
    .output()
    .unwrap();
    let ids: Vec<String> = stdout_json(&output)["task_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    let first = c.task(&ids[0], "").await.unwrap();
    assert_eq!(first["priority"], 3, "{first}");
    assert_eq!(first["session_id"], session.as_str());

    // A JSON array on stdin, two tasks per request.
    let mut child = cli(
        &cluster,
        &[0],
        &[
            "submit",
            session.as_str(),
            "--batch",
            "-",
            "--batch-size",
            "2",
        ],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let array = json!(["a", "b", {"payload": b64(b"c")}]).to_string();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(array.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let more = stdout_json(&output)["task_ids"].as_array().unwrap().clone();
    assert_eq!(more.len(), 3);
    let session_now = c
        .ok(Method::GET, &format!("/v1/sessions/{session}"), None, None)
        .await
        .unwrap();
    assert_eq!(session_now["counts"]["queued"], 6, "{session_now}");

    // A malformed batch is refused before anything is sent.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "[{\"priority\": 1}]").unwrap();
    let output = cli(
        &cluster,
        &[0],
        &["submit", session.as_str(), "--batch", bad.to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert!(one_line_error(&output).contains("task 1"));

    // Cancel: the task ends cancelled; a second cancel is a conflict.
    let output = cli(&cluster, &[0], &["cancel", ids[1].as_str()])
        .output()
        .unwrap();
    stdout_json(&output);
    assert_eq!(c.task(&ids[1], "").await.unwrap()["state"], "cancelled");
    let output = cli(&cluster, &[0], &["cancel", ids[1].as_str()])
        .output()
        .unwrap();
    assert!(one_line_error(&output).contains("409"));
    let session_now = c
        .ok(Method::GET, &format!("/v1/sessions/{session}"), None, None)
        .await
        .unwrap();
    assert_eq!(session_now["counts"]["queued"], 5, "{session_now}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_on_the_next_node_without_missing_or_repeating_an_event() {
    let mut cluster = TestCluster::start(3).await;
    let session = cluster
        .client()
        .create_session(&session_spec(1, 1))
        .await
        .unwrap();
    let mut child = cli(&cluster, &[0, 1, 2], &["watch", session.as_str()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next_line = |lines: &mpsc::Receiver<String>| -> Value {
        let line = lines.recv_timeout(PATIENCE).expect("a watch line in time");
        serde_json::from_str(&line).unwrap()
    };

    // The watcher follows node 1 (the first listed). Submit until it has seen one
    // event: it may connect after the first submit.
    let others = cluster.client_of(1);
    let mut submitted = vec![others.submit(&session, b"0", None).await.unwrap()];
    let first = loop {
        match lines.recv_timeout(Duration::from_millis(500)) {
            Ok(line) => break serde_json::from_str::<Value>(&line).unwrap(),
            Err(_) => submitted.push(others.submit(&session, b"again", None).await.unwrap()),
        }
    };
    // Node 1 dies; the rest go on, and the watcher resumes on node 2.
    cluster.kill(0);
    let survivors = Client::new(&[cluster.api(1), cluster.api(2)], None);
    for i in 0..3 {
        submitted.push(
            survivors
                .submit(&session, format!("after {i}").as_bytes(), None)
                .await
                .unwrap(),
        );
    }
    let mut seen = vec![first];
    let start = submitted
        .iter()
        .position(|t| seen[0]["data"]["task_id"] == t.as_str())
        .expect("the first line is one of ours");
    while seen.len() < submitted.len() - start {
        seen.push(next_line(&lines));
    }
    let tasks: Vec<&str> = seen
        .iter()
        .map(|v| v["data"]["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        tasks,
        submitted[start..]
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );
    let ids: Vec<EventId> = seen
        .iter()
        .map(|v| {
            assert_eq!(v["event"], "transition", "{v}");
            v["id"].as_str().unwrap().parse().unwrap()
        })
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("reconnecting"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `bench submit` and `bench lifecycle` against real nodes (calls spread over all
/// three): every call answered, the simulated miners complete what was submitted, and
/// the report carries the miners' counts and the load generator's own CPU per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_submits_and_its_miners_complete_the_tasks() {
    let cluster = TestCluster::start(3).await;
    let dir = tempfile::tempdir().unwrap();
    for mode in ["submit", "lifecycle"] {
        let json = dir.path().join(format!("{mode}.json"));
        let out = cli(
            &cluster,
            &[0, 1, 2],
            &[
                "bench",
                mode,
                "-c",
                "8",
                "-d",
                "2",
                "--miners",
                "2",
                "--miner-capacity",
                "8",
                "--json",
                json.to_str().unwrap(),
            ],
        )
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        let ops = report["operations"].as_array().unwrap();
        assert!(ops[0]["ok"].as_u64().unwrap() > 0, "{report}");
        assert_eq!(ops[0]["errors"], 0, "{report}");
        assert!(report["client_cpu_us_per_request"].as_f64().unwrap() > 0.0);
        if mode == "lifecycle" {
            let completed = ops[1]["ok"].as_u64().unwrap();
            assert!(completed > 0, "{report}");
            assert_eq!(ops[1]["errors"], 0, "{report}");
            assert_eq!(report["failed_tasks"], 0, "{report}");
            let miner = &report["miner"];
            assert!(miner["polls"].as_u64().unwrap() > 0, "{report}");
            // Every task a miner completed, it first saw as a new slot in a list.
            assert!(
                miner["new_slots"].as_u64().unwrap() >= completed,
                "{report}"
            );
        }
    }
}
