//! The clients of a fault run, each recording every operation it makes:
//!
//! - **submitters** push tasks with idempotency keys through random nodes and retry
//!   a key (through another random node) until a submit of it is answered with
//!   success, so an unknown outcome is always followed by a retry of the same key;
//! - **unkeyed submitters** push tasks without a key, each payload with a unique
//!   marker, and never retry one whose outcome is unknown: a second task of one
//!   payload is a write the cluster applied twice;
//! - **readers** read known tasks with `?consistency=linearizable` through random
//!   nodes and record the state, history and result they see;
//! - **miners** register, long-poll their assignments and drive them through ack,
//!   precommit and reveal through random nodes, recording each reveal's output.
//!   Honest ones reveal `infer(payload)`; a *liar* precommits and reveals an output
//!   of its own (valid, but outvoted); a *tamperer* reveals, now and then, an output
//!   that does not match its precommit (refused with 422).
//!
//! Every request has its own timeout, so a request stuck on a paused node ends as
//! `unknown` instead of hanging the worker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use session_queue::client::miner::infer;
use session_queue::client::{b64, unb64};
use session_queue::machine::sha256;

use super::history::{Event, Kind, Recorder};

/// The outcome of one request, classified for the history.
#[derive(Debug)]
pub enum Outcome {
    Ok(StatusCode, Value),
    /// Certainly not done.
    Fail(Option<u16>, String),
    /// Maybe done.
    Unknown(Option<u16>, String),
}

impl Outcome {
    pub fn kind(&self) -> Kind {
        match self {
            Outcome::Ok(..) => Kind::Ok,
            Outcome::Fail(..) => Kind::Fail,
            Outcome::Unknown(..) => Kind::Unknown,
        }
    }

    /// Puts the status and error of a failed outcome into its history line.
    pub fn annotate(&self, e: &mut Event) {
        match self {
            Outcome::Ok(status, _) => e.status = Some(status.as_u16()),
            Outcome::Fail(status, error) | Outcome::Unknown(status, error) => {
                e.status = *status;
                e.error = Some(error.chars().take(300).collect());
            }
        }
    }
}

/// The nodes' API addresses and one pooled HTTP client.
#[derive(Clone)]
pub struct Nodes {
    http: reqwest::Client,
    urls: Arc<Vec<String>>,
}

impl Nodes {
    /// `apis` are `host:port`; a request gets `timeout` (long polls included).
    pub fn new(apis: &[String], timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(1))
            .pool_idle_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .build()
            .expect("HTTP client");
        Nodes {
            http,
            urls: Arc::new(apis.iter().map(|a| format!("http://{a}")).collect()),
        }
    }

    pub fn random(&self) -> usize {
        rand::random_range(0..self.urls.len())
    }

    /// One request to node `i`, classified: 2xx ok; 4xx and 503 `unavailable` (the
    /// node says nothing was written) and refused connections fail; timeouts, broken
    /// connections, 503 `outcome_unknown` and other 5xx are unknown.
    pub async fn call(
        &self,
        i: usize,
        method: Method,
        path: &str,
        body: Option<&Value>,
        bearer: Option<&str>,
    ) -> Outcome {
        let mut req = self.http.request(method, format!("{}{path}", self.urls[i]));
        if let Some(token) = bearer {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) if e.is_connect() => return Outcome::Fail(None, format!("connect: {e}")),
            Err(e) => {
                return Outcome::Unknown(
                    None,
                    format!(
                        "{}: {e}",
                        if e.is_timeout() {
                            "timeout"
                        } else {
                            "transport"
                        }
                    ),
                )
            }
        };
        let status = resp.status();
        let text = match resp.text().await {
            Ok(t) => t,
            Err(e) => {
                return Outcome::Unknown(Some(status.as_u16()), format!("reading the answer: {e}"))
            }
        };
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() {
            if value.is_null() {
                return Outcome::Unknown(
                    Some(status.as_u16()),
                    format!("unreadable answer: {text}"),
                );
            }
            return Outcome::Ok(status, value);
        }
        let code = value["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let message = format!(
            "{code}: {}",
            value["error"]["message"].as_str().unwrap_or(&text)
        );
        if status.is_client_error()
            || (status == StatusCode::SERVICE_UNAVAILABLE && code == "unavailable")
        {
            Outcome::Fail(Some(status.as_u16()), message)
        } else {
            Outcome::Unknown(Some(status.as_u16()), message)
        }
    }
}

/// Shared by every worker of a run.
pub struct Ctx {
    pub rec: Arc<Recorder>,
    pub nodes: Nodes,
    pub session: String,
    /// Acknowledged task ids, in order.
    pub known: Mutex<Vec<String>>,
    /// Submitters take no new key (they still finish the one they hold).
    pub stop_submitting: AtomicBool,
    /// Everyone stops.
    pub stop: AtomicBool,
    /// Pause between two keys of one submitter, ms (a random value in the range).
    pub submit_pause_ms: (u64, u64),
}

impl Ctx {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Invokes `e` (at a random node), runs the request, records its outcome.
    pub async fn op(
        &self,
        mut e: Event,
        method: Method,
        path: &str,
        body: Option<&Value>,
        bearer: Option<&str>,
    ) -> (Event, Outcome) {
        let node = self.nodes.random();
        e.node = Some(node);
        let e = self.rec.invoke(e);
        let outcome = self.nodes.call(node, method, path, body, bearer).await;
        let mut done = e.clone();
        outcome.annotate(&mut done);
        (done, outcome)
    }
}

async fn sleep_ms(range: (u64, u64)) {
    let ms = if range.1 > range.0 {
        rand::random_range(range.0..range.1)
    } else {
        range.0
    };
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Creates the run's session (k, q, generous timeouts, many attempts), retrying
/// through random nodes.
pub async fn create_session(rec: &Arc<Recorder>, nodes: &Nodes, spec: &Value) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let node = nodes.random();
        let mut e = Event::new("setup", "session");
        e.node = Some(node);
        let e = rec.invoke(e);
        let outcome = nodes
            .call(node, Method::POST, "/v1/sessions", Some(spec), None)
            .await;
        let mut done = e;
        outcome.annotate(&mut done);
        if let Outcome::Ok(_, v) = &outcome {
            let id = v["id"].as_str().expect("session id").to_string();
            done.session = Some(id.clone());
            done.k = spec["redundancy"].as_u64().map(|k| k as u8);
            done.q = spec["quorum"].as_u64().map(|q| q as u8);
            rec.complete(done, Kind::Ok);
            return id;
        }
        rec.complete(done, outcome.kind());
        assert!(
            Instant::now() < deadline,
            "could not create the session: {outcome:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Most attempts at one submit before a submitter gives it up (each attempt has its
/// own timeout, and everyone stops with the run).
const MAX_SUBMIT_ATTEMPTS: usize = 200;

/// A submitter: keys `c{n}-{seq}`, retried until answered with success.
pub async fn submitter(ctx: Arc<Ctx>, n: usize) {
    let process = format!("client-{n}");
    let path = format!("/v1/sessions/{}/tasks", ctx.session);
    let mut seq = 0u64;
    while !ctx.stop_submitting.load(Ordering::Relaxed) && !ctx.stopped() {
        seq += 1;
        let key = format!("c{n}-{seq}");
        let payload = format!("prompt {key} {:08x}", rand::random::<u32>());
        let body = json!({"payload": b64(payload.as_bytes()), "idempotency_key": key});
        for _ in 0..MAX_SUBMIT_ATTEMPTS {
            if ctx.stopped() {
                return;
            }
            let mut e = Event::new(&process, "submit");
            e.key = Some(key.clone());
            e.payload = Some(b64(payload.as_bytes()));
            let (mut done, outcome) = ctx.op(e, Method::POST, &path, Some(&body), None).await;
            if let Outcome::Ok(_, v) = &outcome {
                let task = v["task_id"].as_str().unwrap_or_default().to_string();
                done.task = Some(task.clone());
                done.created = v["created"].as_bool();
                done.payload = None;
                ctx.rec.complete(done, Kind::Ok);
                ctx.known.lock().unwrap().push(task);
                break;
            }
            done.payload = None;
            ctx.rec.complete(done, outcome.kind());
            sleep_ms((100, 300)).await;
        }
        sleep_ms(ctx.submit_pause_ms).await;
    }
}

/// A submitter without idempotency keys: each payload carries a unique marker
/// (`u{n}-{seq}`). A submit that certainly did not happen (`fail`) is sent again;
/// one whose outcome is unknown is never retried (it may have been applied, and
/// without a key a retry could create a second task), so every task of such a
/// payload beyond the first was applied twice by the cluster, which the checker
/// finds.
pub async fn unkeyed_submitter(ctx: Arc<Ctx>, n: usize) {
    let process = format!("client-u{n}");
    let path = format!("/v1/sessions/{}/tasks", ctx.session);
    let mut seq = 0u64;
    while !ctx.stop_submitting.load(Ordering::Relaxed) && !ctx.stopped() {
        seq += 1;
        let marker = format!("u{n}-{seq}");
        let payload = format!("prompt {marker} {:08x}", rand::random::<u32>());
        let body = json!({"payload": b64(payload.as_bytes())});
        for _ in 0..MAX_SUBMIT_ATTEMPTS {
            if ctx.stopped() {
                return;
            }
            let mut e = Event::new(&process, "submit");
            e.marker = Some(marker.clone());
            e.payload = Some(b64(payload.as_bytes()));
            let (mut done, outcome) = ctx.op(e, Method::POST, &path, Some(&body), None).await;
            done.payload = None;
            match &outcome {
                Outcome::Ok(_, v) => {
                    let task = v["task_id"].as_str().unwrap_or_default().to_string();
                    done.task = Some(task.clone());
                    done.created = v["created"].as_bool();
                    ctx.rec.complete(done, Kind::Ok);
                    ctx.known.lock().unwrap().push(task);
                    break;
                }
                Outcome::Unknown(..) => {
                    ctx.rec.complete(done, Kind::Unknown);
                    break;
                }
                Outcome::Fail(..) => {
                    ctx.rec.complete(done, Kind::Fail);
                    sleep_ms((100, 300)).await;
                }
            }
        }
        sleep_ms(ctx.submit_pause_ms).await;
    }
}

/// Reads one task linearizably through node `node` (random if `None`) as `process`
/// doing `op` (`read` or `scan`); records what it saw. Returns the task's JSON, or
/// `Some(Value::Null)` when the task does not exist, `None` when the read failed.
pub async fn read_task(
    ctx: &Ctx,
    process: &str,
    op: &str,
    task: &str,
    node: Option<usize>,
    linearizable: bool,
) -> Option<Value> {
    let node = node.unwrap_or_else(|| ctx.nodes.random());
    let mut e = Event::new(process, op);
    e.task = Some(task.to_string());
    e.node = Some(node);
    let e = ctx.rec.invoke(e);
    let query = if linearizable {
        "?consistency=linearizable"
    } else {
        ""
    };
    let outcome = ctx
        .nodes
        .call(
            node,
            Method::GET,
            &format!("/v1/tasks/{task}{query}"),
            None,
            None,
        )
        .await;
    let mut done = e;
    outcome.annotate(&mut done);
    match outcome {
        Outcome::Ok(_, v) => {
            done.state = v["state"].as_str().map(str::to_string);
            done.history = v["history"].as_array().map(|h| {
                h.iter()
                    .filter_map(|s| s["state"].as_str().map(str::to_string))
                    .collect()
            });
            done.result = v["result"].as_str().map(str::to_string);
            done.failure = v["failure"].as_str().map(str::to_string);
            done.idempotency_key = v["idempotency_key"].as_str().map(str::to_string);
            done.attempts = v["attempts"].as_u64();
            ctx.rec.complete(done, Kind::Ok);
            Some(v)
        }
        // A linearizable read that finds nothing: the task does not exist.
        Outcome::Fail(Some(404), _) if linearizable => {
            done.missing = Some(true);
            done.status = Some(404);
            done.error = None;
            ctx.rec.complete(done, Kind::Ok);
            Some(Value::Null)
        }
        outcome => {
            ctx.rec.complete(done, outcome.kind());
            None
        }
    }
}

/// A reader: linearizable reads of known tasks, recent ones more often.
pub async fn reader(ctx: Arc<Ctx>, n: usize) {
    let process = format!("reader-{n}");
    while !ctx.stopped() {
        let task = {
            let known = ctx.known.lock().unwrap();
            if known.is_empty() {
                None
            } else if rand::random_bool(0.6) {
                let recent = known.len().min(30);
                Some(known[known.len() - 1 - rand::random_range(0..recent)].clone())
            } else {
                Some(known[rand::random_range(0..known.len())].clone())
            }
        };
        match task {
            Some(task) => {
                read_task(&ctx, &process, "read", &task, None, true).await;
                sleep_ms((30, 120)).await;
            }
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// How a simulated miner behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    Honest,
    /// Precommits and reveals an output of its own: valid reveals that never agree.
    Liar,
    /// Every n-th reveal does not match its precommit (refused, 422).
    Tamper(u64),
}

struct Miner {
    ctx: Arc<Ctx>,
    name: String,
    process: String,
    behaviour: Behaviour,
    id: String,
    token: String,
    /// task -> (output, nonce), kept from the precommit to the reveal.
    secrets: HashMap<String, (Vec<u8>, Vec<u8>, Instant)>,
    reveals: u64,
}

/// A miner until the run stops.
pub async fn miner(ctx: Arc<Ctx>, name: String, behaviour: Behaviour) {
    let process = format!("miner-{name}");
    let mut m = Miner {
        ctx,
        name,
        process,
        behaviour,
        id: String::new(),
        token: String::new(),
        secrets: HashMap::new(),
        reveals: 0,
    };
    if !m.register().await {
        return;
    }
    let mut after: Option<u64> = None;
    let mut last_write = Instant::now();
    while !m.ctx.stopped() {
        let path = match after {
            Some(a) => format!("/v1/miners/{}/assignments?wait_ms=1000&after={a}", m.id),
            None => format!("/v1/miners/{}/assignments?wait_ms=1000", m.id),
        };
        let mut e = Event::new(&m.process, "poll");
        e.miner = Some(m.id.clone());
        let (mut done, outcome) = m
            .ctx
            .op(e, Method::GET, &path, None, Some(&m.token.clone()))
            .await;
        let list = match &outcome {
            Outcome::Ok(_, v) => {
                after = v["applied_index"].as_u64();
                let list = v["assignments"].as_array().cloned().unwrap_or_default();
                done.count = Some(list.len() as u64);
                m.ctx.rec.complete(done, Kind::Ok);
                list
            }
            _ => {
                m.ctx.rec.complete(done, outcome.kind());
                after = None;
                tokio::time::sleep(Duration::from_millis(100)).await;
                Vec::new()
            }
        };
        if !list.is_empty() {
            let steps: Vec<_> = list.iter().filter_map(|a| m.prepare(a)).collect();
            let results =
                futures_util::future::join_all(steps.into_iter().map(|s| m.step(s))).await;
            if results.iter().any(|ok| *ok) {
                last_write = Instant::now();
            }
        }
        m.secrets
            .retain(|_, (_, _, at)| at.elapsed() < Duration::from_secs(600));
        if last_write.elapsed() > Duration::from_secs(3) {
            last_write = Instant::now();
            m.heartbeat().await;
        }
    }
}

/// One step to take on an assignment.
enum Step {
    Ack(String),
    Precommit(String, String),
    Reveal(String, Vec<u8>, Vec<u8>),
}

impl Miner {
    async fn register(&mut self) -> bool {
        let body = json!({"name": self.name, "capacity": 4, "heartbeat_timeout_ms": 60_000});
        while !self.ctx.stopped() {
            let mut e = Event::new(&self.process, "register");
            e.name = Some(self.name.clone());
            let (mut done, outcome) = self
                .ctx
                .op(e, Method::POST, "/v1/miners", Some(&body), None)
                .await;
            if let Outcome::Ok(_, v) = &outcome {
                self.id = v["miner_id"].as_str().unwrap_or_default().to_string();
                self.token = v["token"].as_str().unwrap_or_default().to_string();
                done.miner = Some(self.id.clone());
                self.ctx.rec.complete(done, Kind::Ok);
                return true;
            }
            self.ctx.rec.complete(done, outcome.kind());
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        false
    }

    async fn heartbeat(&mut self) {
        let mut e = Event::new(&self.process, "heartbeat");
        e.miner = Some(self.id.clone());
        let path = format!("/v1/miners/{}/heartbeat", self.id);
        let (done, outcome) = self
            .ctx
            .op(
                e,
                Method::POST,
                &path,
                Some(&json!({})),
                Some(&self.token.clone()),
            )
            .await;
        self.ctx.rec.complete(done, outcome.kind());
        // Declared gone (missed heartbeats through a long outage): join again.
        if let Outcome::Fail(Some(409), msg) = &outcome {
            if msg.contains("gone") {
                self.secrets.clear();
                self.register().await;
            }
        }
    }

    /// What to do about an assignment, deciding outputs and nonces up front.
    fn prepare(&mut self, a: &Value) -> Option<Step> {
        let task = a["task_id"].as_str()?.to_string();
        // The task's own state says whether the precommit phase is open (acked) or
        // closed (precommitted, committed); stepping early would only earn a 409.
        let task_state = a["task_state"].as_str().unwrap_or_default();
        match a["state"].as_str()? {
            "assigned" => Some(Step::Ack(task)),
            "acked" if task_state != "queued" => {
                // Keep the first secret: a precommit whose outcome was unknown may
                // have been recorded with it.
                let payload = unb64(a["payload"].as_str()?)?;
                let behaviour = self.behaviour;
                let name = self.name.clone();
                let (output, nonce, _) = self.secrets.entry(task.clone()).or_insert_with(|| {
                    let output = match behaviour {
                        Behaviour::Liar => {
                            format!("lie:{name}:{}", hex::encode(&sha256(&[&payload])[..6]))
                                .into_bytes()
                        }
                        _ => infer(&payload),
                    };
                    (output, rand::random::<[u8; 16]>().to_vec(), Instant::now())
                });
                Some(Step::Precommit(task, hex::encode(sha256(&[output, nonce]))))
            }
            "precommitted" if matches!(task_state, "precommitted" | "committed") => {
                let (mut output, nonce, _) = self.secrets.get(&task)?.clone();
                self.reveals += 1;
                if let Behaviour::Tamper(n) = self.behaviour {
                    if self.reveals.is_multiple_of(n) {
                        output.extend_from_slice(b"-tampered");
                    }
                }
                Some(Step::Reveal(task, output, nonce))
            }
            _ => None,
        }
    }

    /// Takes one step; true when it was answered with success.
    async fn step(&self, step: Step) -> bool {
        let (op, task, body, output) = match step {
            Step::Ack(task) => ("ack", task, json!({}), None),
            Step::Precommit(task, hash) => ("precommit", task, json!({"hash": hash}), None),
            Step::Reveal(task, output, nonce) => (
                "reveal",
                task,
                json!({"output": b64(&output), "nonce": b64(&nonce)}),
                Some(b64(&output)),
            ),
        };
        let mut e = Event::new(&self.process, op);
        e.task = Some(task.clone());
        e.miner = Some(self.id.clone());
        e.output = output;
        if op == "precommit" {
            e.hash = body["hash"].as_str().map(str::to_string);
        }
        let path = format!(
            "/v1/tasks/{task}/{}",
            if op == "reveal" { "commit" } else { op }
        );
        let (done, outcome) = self
            .ctx
            .op(e, Method::POST, &path, Some(&body), Some(&self.token))
            .await;
        let ok = matches!(outcome, Outcome::Ok(..));
        self.ctx.rec.complete(done, outcome.kind());
        ok
    }
}
