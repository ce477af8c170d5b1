//! A simulated miner: registers, long-polls its assignments and drives each through
//! ack, precommit and reveal, the way a real miner would. Used by `miner simulate`
//! (demos), the `lifecycle` and `mixed` benchmarks and the fault tests.
//!
//! Its "inference" is deterministic (the output is a function of the payload), so
//! honest miners agree and a quorum forms; a dishonest miner (`wrong_every`) reveals
//! an output that does not match its precommit now and then.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::{b64, string, unb64, Client, ClientError};
use crate::machine::sha256;

/// How a simulated miner behaves.
#[derive(Clone, Debug)]
pub struct MinerSpec {
    pub name: String,
    pub capacity: u32,
    pub tags: Vec<String>,
    /// Every n-th reveal is wrong (0: never).
    pub wrong_every: u64,
    /// Simulated inference time per task.
    pub work: Duration,
}

/// Counts of what the miner did.
#[derive(Debug, Default)]
pub struct MinerStats {
    pub acks: AtomicU64,
    pub precommits: AtomicU64,
    pub reveals: AtomicU64,
    pub rejected: AtomicU64,
    pub errors: AtomicU64,
    /// Reveals attempted, honest or not (decides which ones are wrong).
    pub attempted: AtomicU64,
}

/// The output a simulated miner computes for a payload.
pub fn infer(payload: &[u8]) -> Vec<u8> {
    let digest = sha256(&[b"inference:", payload]);
    format!("result:{}", hex::encode(&digest[..8])).into_bytes()
}

/// Runs one simulated miner until `stop` turns true. Returns its id.
pub async fn run(
    client: Client,
    spec: MinerSpec,
    stats: Arc<MinerStats>,
    mut stop: watch::Receiver<bool>,
) -> Result<String, ClientError> {
    let (id, token) = client
        .register_miner(&spec.name, spec.capacity, &spec.tags)
        .await?;
    let mut secrets: HashMap<String, (Vec<u8>, Vec<u8>)> = HashMap::new();
    let mut after: Option<u64> = None;
    let mut last_heartbeat = tokio::time::Instant::now();
    while !*stop.borrow() {
        let path = match after {
            Some(a) => format!("/v1/miners/{id}/assignments?wait_ms=1000&after={a}"),
            None => format!("/v1/miners/{id}/assignments?wait_ms=1000"),
        };
        let polled = tokio::select! {
            r = client.ok(Method::GET, &path, None, Some(&token)) => r,
            _ = stop.changed() => break,
        };
        let v = match polled {
            Ok(v) => v,
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                if e.status() == Some(409) || e.status() == Some(401) {
                    return Err(e); // gone or forgotten
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        after = v["applied_index"].as_u64();
        let list = v["assignments"].as_array().cloned().unwrap_or_default();
        let list_len = list.len();
        if list.is_empty() && last_heartbeat.elapsed() > Duration::from_secs(3) {
            let _ = client
                .ok(
                    Method::POST,
                    &format!("/v1/miners/{id}/heartbeat"),
                    Some(&json!({})),
                    Some(&token),
                )
                .await;
            last_heartbeat = tokio::time::Instant::now();
        }
        let live: std::collections::HashSet<String> = list
            .iter()
            .filter_map(|a| a["task_id"].as_str().map(str::to_string))
            .collect();
        secrets.retain(|t, _| live.contains(t));
        let steps = list.into_iter().map(|a| {
            let client = client.clone();
            let token = token.clone();
            let stats = stats.clone();
            let spec = spec.clone();
            let secret = a["task_id"].as_str().and_then(|t| secrets.get(t).cloned());
            async move { step(&client, &token, &a, secret, &spec, &stats).await }
        });
        let worked = list_len > 0;
        for (task, secret) in futures_util::future::join_all(steps)
            .await
            .into_iter()
            .flatten()
        {
            secrets.insert(task, secret);
        }
        // Any write of the miner counts as a heartbeat.
        if worked {
            last_heartbeat = tokio::time::Instant::now();
        }
    }
    Ok(id)
}

/// Advances one assignment as far as it can go now: an ack that opens the precommit
/// phase is followed at once by the precommit, and a precommit that closes it by the
/// reveal. Returns the (output, nonce) to remember while a reveal is still to come.
async fn step(
    client: &Client,
    token: &str,
    a: &Value,
    mut secret: Option<(Vec<u8>, Vec<u8>)>,
    spec: &MinerSpec,
    stats: &MinerStats,
) -> Option<(String, (Vec<u8>, Vec<u8>))> {
    let task = string(a, "task_id").ok()?;
    let mut slot = a["state"].as_str()?.to_string();
    let remember = |secret: Option<(Vec<u8>, Vec<u8>)>| secret.map(|s| (task.clone(), s));
    loop {
        let path = |what: &str| format!("/v1/tasks/{task}/{what}");
        let result = match slot.as_str() {
            "assigned" => client
                .ok(Method::POST, &path("ack"), Some(&json!({})), Some(token))
                .await
                .map(|v| {
                    stats.acks.fetch_add(1, Ordering::Relaxed);
                    v
                }),
            "acked" => {
                if !spec.work.is_zero() {
                    tokio::time::sleep(spec.work).await;
                }
                let output = infer(&unb64(a["payload"].as_str()?)?);
                let mut nonce = vec![0u8; 16];
                rand::rng().fill_bytes(&mut nonce);
                let hash = hex::encode(sha256(&[&output, &nonce]));
                let r = client
                    .ok(
                        Method::POST,
                        &path("precommit"),
                        Some(&json!({"hash": hash})),
                        Some(token),
                    )
                    .await;
                if r.is_ok() {
                    stats.precommits.fetch_add(1, Ordering::Relaxed);
                    secret = Some((output, nonce));
                }
                r
            }
            "precommitted" => {
                let (mut output, nonce) = secret.clone()?;
                let n = stats.attempted.fetch_add(1, Ordering::Relaxed) + 1;
                if spec.wrong_every > 0 && n % spec.wrong_every == 0 {
                    output.extend_from_slice(b"-tampered");
                }
                let body = json!({"output": b64(&output), "nonce": b64(&nonce)});
                let r = client
                    .ok(Method::POST, &path("commit"), Some(&body), Some(token))
                    .await;
                match &r {
                    Ok(_) => {
                        stats.reveals.fetch_add(1, Ordering::Relaxed);
                        return None;
                    }
                    Err(e) if e.status() == Some(422) => {
                        stats.rejected.fetch_add(1, Ordering::Relaxed);
                        return None;
                    }
                    _ => {}
                }
                r
            }
            _ => return remember(secret),
        };
        match result {
            // The task's state tells whether the next step is open yet.
            Ok(v) => match (slot.as_str(), v["state"].as_str()) {
                ("assigned", Some("acked")) => slot = "acked".into(),
                ("acked", Some("precommitted" | "committed")) => slot = "precommitted".into(),
                _ => return remember(secret),
            },
            // 409: the phase has not opened or closed yet, or the task moved on: try later.
            Err(e) if e.status() == Some(409) => return remember(secret),
            Err(_) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                return remember(secret);
            }
        }
    }
}
