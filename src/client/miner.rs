//! A simulated miner: registers, long-polls its assignments and drives each through
//! ack, precommit and reveal, the way a good real miner would. Used by `miner
//! simulate` (demos), the `lifecycle` and `mixed` benchmarks and the liveness tests.
//!
//! Its "inference" is deterministic (the output is a function of the payload), so
//! honest miners agree and a quorum forms; a dishonest miner (`wrong_every`) reveals
//! an output that does not match its precommit now and then.
//!
//! How it behaves toward the cluster:
//! - it heartbeats on its own schedule (a quarter of its heartbeat timeout), in a task
//!   of its own, whatever else it is doing; its other writes are not counted on;
//! - its long poll passes `after=` (the answer's `applied_index`), so it wakes only
//!   when its own assignment list may have changed;
//! - each assignment is driven by [`super::driver`]: steps only when open, a refused
//!   step parked until the list changes, failures retried with backoff; with
//!   [`MinerSpec::batch_steps`], the steps of all assignments due at once go in one
//!   `POST /v1/miners/{id}/steps` call per round;
//! - told it is gone (409 "gone", or 401 for a miner the cluster no longer knows), it
//!   stops heartbeating and polling and returns [`Ended::Gone`] with the reason;
//!   [`run_replacing`] then registers a replacement;
//! - asked to stop, it leaves (deregisters), so its unfinished slots go to other
//!   miners at once instead of at their timeouts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::backoff::Backoff;
use super::drive;
use super::driver::{self, Book, Ctx};
use super::{string, Client, ClientError};
use crate::machine::sha256;

/// How long a long poll asks the node to wait.
const POLL_WAIT: Duration = Duration::from_secs(10);
/// Failed polls and registrations: 100 ms, doubling, at most 5 s.
const POLL_BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
/// While drives run, the miner's own writes change its list and wake a waiting poll
/// at once, so polls are then sent at most this often (counted from the previous
/// poll's start); with nothing running, the next poll goes out as soon as the
/// previous one answers. A poll no longer waits for the drives of the previous list
/// to end: assignments given meanwhile are picked up within this interval.
pub const POLL_EVERY: Duration = Duration::from_millis(5);

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
    /// The heartbeat timeout to register with (`None`: the node's default). The miner
    /// heartbeats every quarter of it.
    pub heartbeat_timeout: Option<Duration>,
    /// The first this many slots it is given are ignored (never acked), as a miner
    /// that misses acks would; the ones after are served.
    pub ignore_first: u32,
    /// Steps the assignments of a list together, one `POST /v1/miners/{id}/steps`
    /// call per round ([`super::drive::drive_many`]), rather than one call per step.
    pub batch_steps: bool,
}

impl Default for MinerSpec {
    fn default() -> Self {
        MinerSpec {
            name: "miner".into(),
            capacity: 1,
            tags: Vec::new(),
            wrong_every: 0,
            work: Duration::ZERO,
            heartbeat_timeout: None,
            ignore_first: 0,
            batch_steps: false,
        }
    }
}

/// Counts of what the miner did.
#[derive(Debug, Default)]
pub struct MinerStats {
    pub acks: AtomicU64,
    pub precommits: AtomicU64,
    pub reveals: AtomicU64,
    /// Reveals refused as not matching their precommit (422).
    pub rejected: AtomicU64,
    /// Calls that got no answer, or 429 or 5xx.
    pub errors: AtomicU64,
    /// Steps refused (409 or another 4xx): each parks its task until its list changes.
    pub refused: AtomicU64,
    /// Reveals attempted, honest or not (decides which ones are wrong).
    pub attempted: AtomicU64,
    /// Requests made, by kind.
    pub registrations: AtomicU64,
    pub polls: AtomicU64,
    /// Entries in the assignment lists received, and those that were new slots.
    pub listed: AtomicU64,
    pub new_slots: AtomicU64,
    /// Time with no poll in flight while the miner was working (held back by
    /// [`POLL_EVERY`] or a poll backoff), microseconds over all miners.
    pub poll_held_us: AtomicU64,
    pub heartbeats: AtomicU64,
    pub writes: AtomicU64,
    /// Miners that left (deregistered) when asked to stop.
    pub leaves: AtomicU64,
    /// Times a miner was told it is gone.
    pub gone: AtomicU64,
    /// Slots ignored on purpose ([`MinerSpec::ignore_first`]).
    pub ignored: AtomicU64,
}

impl MinerStats {
    /// Every request made.
    pub fn requests(&self) -> u64 {
        [
            &self.registrations,
            &self.polls,
            &self.heartbeats,
            &self.writes,
            &self.leaves,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }

    /// The counts as JSON.
    pub fn to_json(&self) -> Value {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "acks": l(&self.acks),
            "precommits": l(&self.precommits),
            "reveals": l(&self.reveals),
            "rejected": l(&self.rejected),
            "errors": l(&self.errors),
            "refused": l(&self.refused),
            "registrations": l(&self.registrations),
            "polls": l(&self.polls),
            "listed": l(&self.listed),
            "new_slots": l(&self.new_slots),
            "poll_held_ms": l(&self.poll_held_us) / 1000,
            "heartbeats": l(&self.heartbeats),
            "writes": l(&self.writes),
            "leaves": l(&self.leaves),
            "gone": l(&self.gone),
            "ignored": l(&self.ignored),
        })
    }
}

/// Why a miner's run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Asked to stop.
    Stopped,
    /// The cluster declared it gone (missed heartbeats, left) or no longer knows it.
    Gone(String),
}

/// The end of a miner's run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MinerRun {
    /// Its id (`None`: stopped before it could register).
    pub id: Option<String>,
    pub ended: Ended,
}

/// The output a simulated miner computes for a payload.
pub fn infer(payload: &[u8]) -> Vec<u8> {
    let digest = sha256(&[b"inference:", payload]);
    format!("result:{}", hex::encode(&digest[..8])).into_bytes()
}

/// Whether an answer tells a miner it is gone: 409 saying so, or 401 (its token is
/// not known: a miner forgotten after it was gone).
pub fn is_gone(e: &ClientError) -> bool {
    match e {
        ClientError::Api { status: 401, .. } => true,
        ClientError::Api {
            status: 409,
            message,
            ..
        } => message.contains(" is gone"),
        _ => false,
    }
}

/// Aborts a spawned task when dropped, so nothing of a miner outlives its run.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs one simulated miner until `stop` turns true or the cluster says it is gone.
/// Errors only when registration is refused (a 4xx other than 429).
pub async fn run(
    client: Client,
    spec: MinerSpec,
    stats: Arc<MinerStats>,
    mut stop: watch::Receiver<bool>,
) -> Result<MinerRun, ClientError> {
    let Some((id, token)) = register(&client, &spec, &stats, &mut stop).await? else {
        return Ok(MinerRun {
            id: None,
            ended: Ended::Stopped,
        });
    };
    let (gone_tx, mut gone_rx) = watch::channel(None::<String>);
    let _heartbeat = AbortOnDrop(tokio::spawn(heartbeat(
        client.clone(),
        id.clone(),
        token.clone(),
        spec.heartbeat_timeout,
        stats.clone(),
        gone_tx,
    )));
    let ctx = Arc::new(Ctx {
        client,
        id: id.clone(),
        token,
        spec,
        stats,
    });
    let ended = work(&ctx, &id, &mut stop, &mut gone_rx).await;
    match ended {
        Ended::Gone(_) => {
            ctx.stats.gone.fetch_add(1, Ordering::Relaxed);
        }
        // Asked to stop: leave, so its unfinished slots go to other miners now
        // rather than at their timeouts (best effort: a stop must not hang).
        Ended::Stopped => {
            ctx.stats.leaves.fetch_add(1, Ordering::Relaxed);
            let _ = ctx
                .client
                .call_within(
                    Method::DELETE,
                    &format!("/v1/miners/{id}"),
                    None,
                    Some(&ctx.token),
                    Duration::from_secs(2),
                )
                .await;
        }
    }
    Ok(MinerRun {
        id: Some(id),
        ended,
    })
}

/// Runs a simulated miner until `stop`, registering a replacement (after a pause that
/// grows while replacements keep being declared gone soon) each time the cluster
/// declares it gone; `on_gone` is told of each. Errors when a registration is refused.
pub async fn run_replacing(
    client: Client,
    spec: MinerSpec,
    stats: Arc<MinerStats>,
    stop: watch::Receiver<bool>,
    on_gone: impl Fn(&MinerSpec, &MinerRun),
) -> Result<(), ClientError> {
    let mut pause = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let mut spec = spec;
    loop {
        let started = Instant::now();
        let run = run(client.clone(), spec.clone(), stats.clone(), stop.clone()).await?;
        if run.ended == Ended::Stopped {
            return Ok(());
        }
        on_gone(&spec, &run);
        // A replacement serves from its first assignment.
        spec.ignore_first = 0;
        if started.elapsed() > Duration::from_secs(60) {
            pause.reset();
        }
        let mut stop = stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(pause.fail()) => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
    }
}

/// Registers, retrying with backoff while no node answers or the cluster is busy.
/// `None` when stopped first.
async fn register(
    client: &Client,
    spec: &MinerSpec,
    stats: &MinerStats,
    stop: &mut watch::Receiver<bool>,
) -> Result<Option<(String, String)>, ClientError> {
    let mut body = json!({"name": spec.name, "capacity": spec.capacity, "tags": spec.tags});
    if let Some(t) = spec.heartbeat_timeout {
        body["heartbeat_timeout_ms"] = json!(t.as_millis() as u64);
    }
    let mut backoff = POLL_BACKOFF;
    loop {
        if *stop.borrow() {
            return Ok(None);
        }
        stats.registrations.fetch_add(1, Ordering::Relaxed);
        match client
            .ok_within(
                Method::POST,
                "/v1/miners",
                Some(&body),
                None,
                Duration::from_secs(10),
            )
            .await
        {
            Ok(v) => return Ok(Some((string(&v, "miner_id")?, string(&v, "token")?))),
            Err(e) if e.is_transient() => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                tokio::select! {
                    _ = tokio::time::sleep(backoff.fail()) => {}
                    _ = stop.changed() => {}
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// The heartbeat interval for a heartbeat timeout: a quarter of it.
pub fn heartbeat_every(timeout: Duration) -> Duration {
    (timeout / 4).max(Duration::from_millis(20))
}

/// Heartbeats every quarter of the heartbeat timeout (learned from the first answer
/// when not given), retrying sooner after a failure; ends when told the miner is gone,
/// sending the reason.
async fn heartbeat(
    client: Client,
    id: String,
    token: String,
    timeout: Option<Duration>,
    stats: Arc<MinerStats>,
    gone: watch::Sender<Option<String>>,
) {
    let path = format!("/v1/miners/{id}/heartbeat");
    let mut every = timeout.map(heartbeat_every);
    let mut retry = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    // Registering counted as the first heartbeat; without a known timeout, ask now.
    let mut wait = every.unwrap_or(Duration::ZERO);
    loop {
        tokio::time::sleep(wait).await;
        stats.heartbeats.fetch_add(1, Ordering::Relaxed);
        let limit = every.unwrap_or(Duration::from_secs(2));
        match client
            .ok_within(Method::POST, &path, Some(&json!({})), Some(&token), limit)
            .await
        {
            Ok(v) => {
                retry.reset();
                if let Some(ms) = v["heartbeat_timeout_ms"].as_u64() {
                    every = Some(heartbeat_every(Duration::from_millis(ms)));
                }
                wait = every.unwrap_or(Duration::from_secs(1));
            }
            Err(e) if is_gone(&e) => {
                gone.send_replace(Some(e.to_string()));
                return;
            }
            Err(_) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                // Sooner than the schedule, so one lost heartbeat does not cost the slots.
                wait = retry.fail().min(every.unwrap_or(Duration::from_secs(1)));
            }
        }
    }
}

/// One long poll of the miner's assignments.
async fn poll(client: Client, path: String, token: String) -> Result<driver::Page, ClientError> {
    client
        .ok_typed::<(), _>(
            Method::GET,
            &path,
            None,
            Some(&token),
            Some(POLL_WAIT + Duration::from_secs(10)),
        )
        .await
}

/// The miner's work loop: long-polls its list and drives each assignment, until
/// stopped or gone.
async fn work(
    ctx: &Arc<Ctx>,
    id: &str,
    stop: &mut watch::Receiver<bool>,
    gone: &mut watch::Receiver<Option<String>>,
) -> Ended {
    let mut book = Book::new(ctx.spec.ignore_first);
    // A drive of one assignment, or (batching steps) of all those due at once.
    let mut drives: JoinSet<Vec<driver::DriveEnd>> = JoinSet::new();
    // At most one poll in flight, whatever the drives are doing.
    let mut polls: JoinSet<Result<driver::Page, ClientError>> = JoinSet::new();
    let mut after: Option<u64> = None;
    let mut poll_backoff = POLL_BACKOFF;
    let mut poll_not_before = Instant::now();
    let mut last_poll = Instant::now();
    // Since when no poll has been in flight.
    let mut idle_since: Option<Instant> = None;
    loop {
        if *stop.borrow() {
            return Ended::Stopped;
        }
        if let Some(reason) = gone.borrow().clone() {
            return Ended::Gone(reason);
        }
        let now = Instant::now();
        let (due, next_retry) = book.due(now.into_std());
        if ctx.spec.batch_steps {
            if !due.is_empty() {
                drives.spawn(drive::drive_many(ctx.clone(), due));
            }
        } else {
            for d in due {
                let ctx = ctx.clone();
                drives.spawn(async move { vec![drive::drive(ctx, d).await] });
            }
        }
        let mut wake = next_retry.map(Instant::from_std);
        if polls.is_empty() {
            let at = if drives.is_empty() {
                poll_not_before
            } else {
                poll_not_before.max(last_poll + POLL_EVERY)
            };
            if at <= now {
                if let Some(since) = idle_since.take() {
                    let held = now.saturating_duration_since(since).as_micros() as u64;
                    ctx.stats.poll_held_us.fetch_add(held, Ordering::Relaxed);
                }
                last_poll = now;
                // The list is paged; a miner holds at most its capacity, so asking
                // for that many gets the whole list (the book treats it as whole).
                let limit = ctx
                    .spec
                    .capacity
                    .clamp(1, crate::machine::limits::MAX_CAPACITY);
                let path = match after {
                    Some(a) => format!(
                        "/v1/miners/{id}/assignments?wait_ms={}&limit={limit}&after={a}",
                        POLL_WAIT.as_millis()
                    ),
                    None => format!(
                        "/v1/miners/{id}/assignments?wait_ms={}&limit={limit}",
                        POLL_WAIT.as_millis()
                    ),
                };
                ctx.stats.polls.fetch_add(1, Ordering::Relaxed);
                polls.spawn(poll(ctx.client.clone(), path, ctx.token.clone()));
            } else {
                idle_since.get_or_insert(now);
                wake = Some(wake.map_or(at, |w| w.min(at)));
            }
        }
        tokio::select! {
            changed = stop.changed() => if changed.is_err() {
                return Ended::Stopped;
            },
            Ok(()) = gone.changed() => {}
            Some(joined) = drives.join_next() => {
                let ends = match joined {
                    Ok(ends) => ends,
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(_) => continue,
                };
                for end in ends {
                    if let Some(reason) = book.on_end(end, Instant::now().into_std()) {
                        return Ended::Gone(reason);
                    }
                }
            }
            Some(joined) = polls.join_next() => {
                let answer = match joined {
                    Ok(answer) => answer,
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(_) => continue,
                };
                match answer {
                    Ok(page) => {
                        poll_backoff.reset();
                        if let Some(index) = page.applied_index {
                            after = Some(index);
                        }
                        ctx.stats.listed.fetch_add(page.len() as u64, Ordering::Relaxed);
                        let known = book.new_slots;
                        let ignored = book.on_list(page.into_list(), Instant::now().into_std());
                        ctx.stats.ignored.fetch_add(ignored as u64, Ordering::Relaxed);
                        ctx.stats
                            .new_slots
                            .fetch_add(book.new_slots - known, Ordering::Relaxed);
                    }
                    Err(e) if is_gone(&e) => return Ended::Gone(e.to_string()),
                    Err(_) => {
                        ctx.stats.errors.fetch_add(1, Ordering::Relaxed);
                        poll_not_before = Instant::now() + poll_backoff.fail();
                    }
                }
            }
            _ = sleep_until(wake) => {}
        }
    }
}

/// Sleeps until `at`, or for ever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
