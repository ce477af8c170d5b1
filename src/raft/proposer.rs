//! Group commit: one task per node that packs concurrent clients' commands into one
//! Raft entry, so a burst of N requests costs about one entry and one fsync per node.
//!
//! Every write of the node goes through [`Proposer::propose`]. The proposer task
//! takes whatever proposals are waiting (up to a count and a byte bound) and sends
//! them as one [`Batch`]: on the leader through `client_write`, on a follower to the
//! leader's peer channel, where they join the leader's own next batch. The first
//! proposal goes out at once; while batches are in flight (at most
//! `max_inflight`), the next one fills. Each caller gets the results of its own
//! commands back, in order.
//!
//! The leader stamps each batch with its clock and, when the state's earliest
//! deadline has passed, appends a [`Command::Tick`].
//!
//! Failures: a batch that certainly did not commit (no leader, the leader stepped
//! down before appending, the peer was unreachable) is retried until the caller's
//! deadline, then answered [`ProposeError::NoLeader`]. A batch whose fate is unknown
//! (a timeout after it was sent) is answered [`ProposeError::Unknown`]: retrying it
//! blindly could apply it twice.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::error::{ClientWriteError, RaftError};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use super::network::{paths, PeerClient, PeerError};
use super::types::{CommandResult, NodeId, Raft};
use crate::machine::{Batch, Command};
use crate::store::AppliedState;

/// Why a write was not done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ProposeError {
    #[error("no leader could be reached in time; retry later")]
    NoLeader,
    /// Answered to a forwarded batch by a node that is not (or no longer) the leader.
    #[error("this node is not the leader")]
    NotLeader,
    #[error("the write may or may not have been applied ({0}); retry it with an idempotency key")]
    Unknown(String),
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error("raft failed: {0}")]
    Fatal(String),
}

/// Tuning of the proposer.
#[derive(Clone, Copy, Debug)]
pub struct ProposerConfig {
    pub max_commands: usize,
    pub max_bytes: usize,
    pub max_inflight: usize,
    pub tick: Duration,
    /// A leader that has not heard from a quorum for this long (the longest election
    /// timeout: by then the others may have elected someone else) proposes nothing new.
    pub quorum_lost_after: Duration,
}

type Reply = oneshot::Sender<Result<Vec<CommandResult>, ProposeError>>;

struct Proposal {
    commands: Vec<Command>,
    bytes: usize,
    deadline: Instant,
    /// Came from another node: only ever proposed locally, by the leader.
    forwarded: bool,
    reply: Reply,
}

/// The handle every writer uses. Cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Proposal>,
    stats: Arc<Stats>,
}

/// Counters of the proposer, for metrics.
#[derive(Default)]
pub struct Stats {
    pub batches: std::sync::atomic::AtomicU64,
    pub commands: std::sync::atomic::AtomicU64,
    pub forwarded_batches: std::sync::atomic::AtomicU64,
    pub ticks: std::sync::atomic::AtomicU64,
}

impl Proposer {
    /// Starts the proposer task of this node.
    pub fn start(
        id: NodeId,
        raft: Raft,
        state: Arc<AppliedState>,
        peers: PeerClient,
        config: ProposerConfig,
        tasks: &mut JoinSet<()>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(65_536);
        let stats = Arc::new(Stats::default());
        let worker = Worker {
            id,
            raft,
            state,
            peers,
            config,
            rx,
            pending: VecDeque::new(),
            inflight: JoinSet::new(),
            last_tick: Instant::now(),
            retry_at: None,
            stats: stats.clone(),
        };
        tasks.spawn(worker.run());
        Proposer { tx, stats }
    }

    /// Proposes commands and waits until they are committed and applied (or refused).
    pub async fn propose(
        &self,
        commands: Vec<Command>,
        timeout: Duration,
    ) -> Result<Vec<CommandResult>, ProposeError> {
        self.submit(commands, timeout, false).await
    }

    /// A batch forwarded by another node: proposed only if this node leads.
    pub async fn propose_forwarded(
        &self,
        commands: Vec<Command>,
        timeout: Duration,
    ) -> Result<Vec<CommandResult>, ProposeError> {
        self.submit(commands, timeout, true).await
    }

    async fn submit(
        &self,
        commands: Vec<Command>,
        timeout: Duration,
        forwarded: bool,
    ) -> Result<Vec<CommandResult>, ProposeError> {
        let (reply, rx) = oneshot::channel();
        let bytes = commands.iter().map(Command::approx_size).sum();
        let proposal = Proposal {
            commands,
            bytes,
            deadline: Instant::now() + timeout,
            forwarded,
            reply,
        };
        self.tx
            .send(proposal)
            .await
            .map_err(|_| ProposeError::ShuttingDown)?;
        // Pending proposals are answered ShuttingDown when the proposer stops; a reply
        // dropped unanswered belonged to a batch in flight, which may have committed.
        rx.await.map_err(|_| {
            ProposeError::Unknown("the node stopped while the write was in flight".into())
        })?
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }
}

/// Where a batch goes.
enum Route {
    Local,
    Forward(NodeId, String),
    Nowhere,
}

/// What came of a batch.
enum Outcome {
    Done(Vec<CommandResult>),
    /// Certainly not applied: try again.
    Retry,
    Failed(ProposeError),
}

struct Worker {
    id: NodeId,
    raft: Raft,
    state: Arc<AppliedState>,
    peers: PeerClient,
    config: ProposerConfig,
    rx: mpsc::Receiver<Proposal>,
    pending: VecDeque<Proposal>,
    inflight: JoinSet<(Vec<(usize, Proposal)>, Outcome)>,
    last_tick: Instant,
    retry_at: Option<Instant>,
    stats: Arc<Stats>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Worker {
    async fn run(mut self) {
        let mut metrics = self.raft.metrics();
        let mut open = true;
        loop {
            let wake = self
                .retry_at
                .unwrap_or_else(|| Instant::now() + self.config.tick);
            tokio::select! {
                received = self.rx.recv(), if open => match received {
                    Some(p) => self.pending.push_back(p),
                    None => open = false,
                },
                Some(done) = self.inflight.join_next(), if !self.inflight.is_empty() => {
                    match done {
                        Ok((proposals, outcome)) => self.deliver(proposals, outcome),
                        Err(e) => tracing::error!(error = %e, "proposer batch task failed"),
                    }
                }
                changed = metrics.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.retry_at = None;
                }
                _ = tokio::time::sleep_until(wake.into()) => {
                    self.retry_at = None;
                }
            }
            while let Ok(p) = self.rx.try_recv() {
                self.pending.push_back(p);
            }
            if !open && self.pending.is_empty() && self.inflight.is_empty() {
                break;
            }
            self.expire();
            if self.retry_at.is_none() {
                self.dispatch();
            }
        }
        // Proposals never sent anywhere: certainly not applied.
        self.rx.close();
        while let Ok(p) = self.rx.try_recv() {
            self.pending.push_back(p);
        }
        for p in self.pending.drain(..) {
            let _ = p.reply.send(Err(ProposeError::ShuttingDown));
        }
    }

    /// Answers proposals whose deadline passed while they waited for a leader.
    fn expire(&mut self) {
        let now = Instant::now();
        // The common case, nothing expired, costs a scan and no moves.
        if !self.pending.iter().any(|p| p.deadline <= now) {
            return;
        }
        let mut kept = VecDeque::with_capacity(self.pending.len());
        for p in self.pending.drain(..) {
            if p.deadline <= now {
                let _ = p.reply.send(Err(ProposeError::NoLeader));
            } else {
                kept.push_back(p);
            }
        }
        self.pending = kept;
    }

    fn route(&self) -> Route {
        let m = self.raft.metrics();
        let m = m.borrow();
        match m.current_leader {
            Some(leader) if leader == self.id && m.state.is_leader() => {
                let lost = m
                    .millis_since_quorum_ack
                    .is_some_and(|ms| ms > self.config.quorum_lost_after.as_millis() as u64);
                if lost {
                    Route::Nowhere
                } else {
                    Route::Local
                }
            }
            Some(leader) if leader != self.id => {
                match m.membership_config.membership().get_node(&leader) {
                    Some(node) => Route::Forward(leader, node.peer.clone()),
                    None => Route::Nowhere,
                }
            }
            _ => Route::Nowhere,
        }
    }

    fn tick_due(&self) -> bool {
        self.last_tick.elapsed() >= self.config.tick
            && self
                .state
                .read(|s| s.next_deadline())
                .is_some_and(|at| at <= now_ms())
    }

    fn dispatch(&mut self) {
        while self.inflight.len() < self.config.max_inflight {
            let route = self.route();
            if !matches!(route, Route::Local) {
                // Forwarded batches run only on the leader.
                let (forwarded, rest): (VecDeque<_>, VecDeque<_>) =
                    self.pending.drain(..).partition(|p| p.forwarded);
                self.pending = rest;
                for p in forwarded {
                    let _ = p.reply.send(Err(ProposeError::NotLeader));
                }
            }
            let tick = matches!(route, Route::Local) && self.tick_due();
            if self.pending.is_empty() && !tick {
                return;
            }
            let mut taken: Vec<(usize, Proposal)> = Vec::new();
            let (mut count, mut bytes) = (0usize, 0usize);
            while let Some(p) = self.pending.front() {
                let fits = count + p.commands.len() <= self.config.max_commands
                    && bytes + p.bytes <= self.config.max_bytes;
                if !taken.is_empty() && !fits {
                    break;
                }
                let p = self.pending.pop_front().expect("front exists");
                count += p.commands.len();
                bytes += p.bytes;
                taken.push((p.commands.len(), p));
            }
            let deadline = taken.iter().map(|(_, p)| p.deadline).min();
            match route {
                Route::Nowhere => {
                    // Wait for a leader: metrics changes wake us; retry a little later anyway.
                    for (_, p) in taken.into_iter().rev() {
                        self.pending.push_front(p);
                    }
                    self.retry_at = Some(Instant::now() + Duration::from_millis(50));
                    return;
                }
                Route::Local => {
                    // Cloned, not moved: a batch the leader refuses before appending is retried.
                    let mut commands: Vec<Command> = Vec::with_capacity(count + 1);
                    for (_, p) in taken.iter() {
                        commands.extend(p.commands.iter().cloned());
                    }
                    if tick {
                        commands.push(Command::Tick);
                        self.last_tick = Instant::now();
                        self.stats
                            .ticks
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    self.count_batch(count, false);
                    let raft = self.raft.clone();
                    let timeout = deadline.map_or(Duration::from_secs(10), |d| {
                        d.saturating_duration_since(Instant::now())
                    });
                    self.inflight.spawn(async move {
                        let batch = Batch {
                            now_ms: now_ms(),
                            commands,
                        };
                        let outcome =
                            match tokio::time::timeout(timeout, raft.client_write(batch)).await {
                                Ok(Ok(resp)) => Outcome::Done(resp.data.0),
                                Ok(Err(RaftError::APIError(
                                    ClientWriteError::ForwardToLeader(_),
                                ))) => Outcome::Retry,
                                // Raft stopped (a storage error) with the batch handed to it:
                                // it may have been appended and replicated, so it may commit.
                                Ok(Err(e)) => Outcome::Failed(ProposeError::Unknown(format!(
                                    "raft failed: {e}"
                                ))),
                                Err(_) => Outcome::Failed(ProposeError::Unknown(
                                    "timed out waiting for commit".into(),
                                )),
                            };
                        (taken, outcome)
                    });
                }
                Route::Forward(leader, addr) => {
                    let mut commands: Vec<Command> = Vec::with_capacity(count);
                    for (_, p) in taken.iter() {
                        commands.extend(p.commands.iter().cloned());
                    }
                    self.count_batch(count, true);
                    let peers = self.peers.clone();
                    let budget = deadline.map_or(Duration::from_secs(10), |d| {
                        d.saturating_duration_since(Instant::now())
                    });
                    self.inflight.spawn(async move {
                        let result: Result<Result<Vec<CommandResult>, ProposeError>, PeerError> =
                            peers
                                .call(
                                    leader,
                                    &addr,
                                    paths::PROPOSE,
                                    &commands,
                                    budget + Duration::from_millis(200),
                                    Some(budget),
                                )
                                .await;
                        let outcome = match result {
                            Ok(Ok(results)) => Outcome::Done(results),
                            Ok(Err(
                                ProposeError::NotLeader
                                | ProposeError::NoLeader
                                | ProposeError::ShuttingDown,
                            )) => Outcome::Retry,
                            Ok(Err(e)) => Outcome::Failed(e),
                            Err(PeerError::Unreachable(..)) => Outcome::Retry,
                            Err(e @ PeerError::Failed(..)) => {
                                Outcome::Failed(ProposeError::Unknown(e.to_string()))
                            }
                        };
                        (taken, outcome)
                    });
                }
            }
        }
    }

    fn count_batch(&self, commands: usize, forwarded: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        self.stats.batches.fetch_add(1, Relaxed);
        self.stats.commands.fetch_add(commands as u64, Relaxed);
        if forwarded {
            self.stats.forwarded_batches.fetch_add(1, Relaxed);
        }
        metrics::histogram!("sq_proposer_batch_commands").record(commands as f64);
    }

    /// Hands each proposal its share of the results, or requeues them for a retry.
    fn deliver(&mut self, proposals: Vec<(usize, Proposal)>, outcome: Outcome) {
        match outcome {
            Outcome::Done(results) => {
                let mut results = results.into_iter();
                for (n, p) in proposals {
                    let mine: Vec<CommandResult> = results.by_ref().take(n).collect();
                    if mine.len() != n {
                        let _ = p
                            .reply
                            .send(Err(ProposeError::Fatal("result count mismatch".into())));
                    } else {
                        let _ = p.reply.send(Ok(mine));
                    }
                }
            }
            Outcome::Retry => {
                for (_, p) in proposals.into_iter().rev() {
                    self.pending.push_front(p);
                }
                self.retry_at = Some(Instant::now() + Duration::from_millis(20));
            }
            Outcome::Failed(e) => {
                for (_, p) in proposals {
                    let _ = p.reply.send(Err(e.clone()));
                }
            }
        }
    }
}
