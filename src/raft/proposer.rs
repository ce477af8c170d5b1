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
//! On the leader:
//! - each batch is stamped with cluster time ([`super::clock`]: the leader's
//!   monotonic clock, steered slowly toward the wall clock), and when the state's
//!   earliest deadline has passed by that time a [`Command::Tick`] is appended;
//! - a proposal whose every command the applied state already refuses
//!   ([`crate::machine::State::check`]) is answered at once and costs no log entry.
//!   This holds only while the applied state holds every acknowledged write: the
//!   leader has applied an entry of its own term (so everything committed before
//!   it), and heard from a quorum within `lease` (so no newer leader can have
//!   acknowledged anything). Otherwise everything is proposed, as on a follower,
//!   which forwards.
//!
//! Failures, per caller ([`super::proposal`]): each proposal keeps its own deadline.
//! A batch that certainly did not reach the log is sent again until the deadline;
//! one whose outcome nobody can tell is sent again only for writes safe to apply
//! twice ([`super::outcome`]), the others get [`ProposeError::Unknown`]. A forward
//! in flight is abandoned (as ambiguous) as soon as another leader is known, rather
//! than waiting on a dead or paused one.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::admission::{Admission, AdmissionLimits, ENTRY_FRAMING};
use super::clock::ClusterClock;
use super::network::{paths, PeerClient};
use super::outcome::{self, Outcome};
use super::proposal::{Answer, Proposal};
use super::types::{CommandResult, NodeAddr, NodeId, Raft};
use crate::machine::{Batch, Command, Limits, State};
use crate::store::AppliedState;

/// Why a write was not done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ProposeError {
    /// Never sent to Raft: nothing was written.
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
    /// The leader's peer listener refused the forwarded batch before processing it
    /// (with this HTTP status): nothing was written.
    #[error("the leader refused the forwarded write ({status}): {message}")]
    Refused { status: u16, message: String },
    /// Too many writes wait already ([`super::admission`]): nothing was written.
    #[error("{0}")]
    Overloaded(String),
    /// The write cannot fit in one Raft entry ([`super::admission`]): nothing was written.
    #[error("{0}")]
    TooLarge(String),
}

/// Tuning of the proposer.
#[derive(Clone, Copy, Debug)]
pub struct ProposerConfig {
    pub max_commands: usize,
    /// Largest Raft entry, bytes (`--max-batch-bytes`): the commands of one batch
    /// take at most this less [`ENTRY_FRAMING`].
    pub max_bytes: usize,
    /// Most proposals waiting at once (`--max-pending-proposals`).
    pub max_pending: usize,
    /// Most encoded bytes of proposals waiting at once (`--max-pending-bytes`).
    pub max_pending_bytes: usize,
    /// The cluster-wide bounds this node stamps into the batches it proposes as leader.
    pub limits: Limits,
    pub max_inflight: usize,
    pub tick: Duration,
    /// A leader that has not heard from a quorum for this long (the longest election
    /// timeout: by then the others may have elected someone else) proposes nothing new.
    pub quorum_lost_after: Duration,
    /// A leader that heard from a quorum within this long answers writes its applied
    /// state refuses without proposing them. It must stay below openraft's leader lease
    /// (the longest election timeout), during which the nodes that answered grant no
    /// vote to another candidate, by more than the age of the metrics it reads.
    pub lease: Duration,
}

/// The handle every writer uses. Cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Proposal>,
    stats: Arc<Stats>,
    admission: Arc<Admission>,
}

/// Counters of the proposer, for metrics.
#[derive(Default)]
pub struct Stats {
    pub batches: AtomicU64,
    pub commands: AtomicU64,
    pub forwarded_batches: AtomicU64,
    pub ticks: AtomicU64,
    /// Commands the leader answered with a refusal without proposing them.
    pub refused: AtomicU64,
    /// Batches whose outcome could not be told (sent again or answered `Unknown`).
    pub ambiguous: AtomicU64,
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
            clock: ClusterClock::default(),
            stats: stats.clone(),
        };
        tasks.spawn(worker.run());
        let admission = Admission::new(AdmissionLimits {
            max_pending: config.max_pending,
            max_pending_bytes: config.max_pending_bytes,
            max_entry_bytes: config.max_bytes,
        });
        Proposer {
            tx,
            stats,
            admission,
        }
    }

    /// Proposes commands and waits until they are committed and applied (or refused),
    /// at most `timeout`.
    pub async fn propose(&self, commands: Vec<Command>, timeout: Duration) -> Answer {
        self.submit(commands, timeout, false).await
    }

    /// A batch forwarded by another node: proposed only if this node leads.
    pub async fn propose_forwarded(&self, commands: Vec<Command>, timeout: Duration) -> Answer {
        self.submit(commands, timeout, true).await
    }

    async fn submit(&self, commands: Vec<Command>, timeout: Duration, forwarded: bool) -> Answer {
        let (mut proposal, waiter) = Proposal::new(commands, Instant::now() + timeout, forwarded);
        // Refused at the door, never queued: nothing was written.
        proposal.admitted = Some(self.admission.admit(proposal.bytes)?);
        self.tx
            .send(proposal)
            .await
            .map_err(|_| ProposeError::ShuttingDown)?;
        waiter.wait().await
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Proposals and their bytes waiting now (queued or in a batch on its way).
    pub fn pending(&self) -> (usize, usize) {
        self.admission.pending()
    }
}

/// Where a batch goes.
enum Route {
    /// This node leads `term`; `fresh`: its applied state holds every acknowledged write.
    Local {
        term: u64,
        fresh: bool,
    },
    Forward(NodeId, String),
    Nowhere,
}

/// How long a batch of nothing but a tick may wait for its commit.
const TICK_BATCH_TIMEOUT: Duration = Duration::from_secs(5);

struct Worker {
    id: NodeId,
    raft: Raft,
    state: Arc<AppliedState>,
    peers: PeerClient,
    config: ProposerConfig,
    rx: mpsc::Receiver<Proposal>,
    pending: VecDeque<Proposal>,
    inflight: JoinSet<(InFlight, Outcome)>,
    last_tick: Instant,
    retry_at: Option<Instant>,
    clock: ClusterClock,
    stats: Arc<Stats>,
}

impl Worker {
    async fn run(mut self) {
        // Woken by changes of the vote, role, leader or membership only: openraft
        // sends its full metrics (`Raft::metrics`) after every turn of its core
        // loop, several times per entry under load, and each would wake this task
        // for nothing. The leader's lease and freshness are read when dispatching.
        let mut metrics = self.raft.server_metrics();
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
                        Ok((sent, outcome)) => self.deliver(sent, outcome),
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
        self.rx.close();
        while let Ok(p) = self.rx.try_recv() {
            self.pending.push_back(p);
        }
        for p in self.pending.drain(..) {
            p.end("the node stopped", ProposeError::ShuttingDown);
        }
    }

    /// Drops the proposals whose callers gave up and answers those whose deadline
    /// passed while they waited (for a leader, or to be sent again).
    fn expire(&mut self) {
        let now = Instant::now();
        // The common case, nothing expired, costs a scan and no moves.
        if !self
            .pending
            .iter()
            .any(|p| p.deadline <= now || p.fate.given_up())
        {
            return;
        }
        let mut kept = VecDeque::with_capacity(self.pending.len());
        for p in self.pending.drain(..) {
            if p.fate.given_up() {
                continue;
            }
            if p.deadline <= now {
                p.end(
                    "timed out before the outcome of the write was known",
                    ProposeError::NoLeader,
                );
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
                let since_quorum = m.millis_since_quorum_ack;
                if since_quorum
                    .is_some_and(|ms| ms > self.config.quorum_lost_after.as_millis() as u64)
                {
                    return Route::Nowhere;
                }
                let own_term_applied = m
                    .last_applied
                    .is_some_and(|l| l.leader_id.get_term() == m.current_term);
                let heard =
                    since_quorum.is_some_and(|ms| ms <= self.config.lease.as_millis() as u64);
                Route::Local {
                    term: m.current_term,
                    fresh: own_term_applied && heard,
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

    fn tick_due(&self, term: u64) -> bool {
        if self.last_tick.elapsed() < self.config.tick {
            return false;
        }
        let (now_ms, next) = self.state.read(|s| (s.now_ms(), s.next_deadline()));
        next.is_some_and(|at| at <= self.clock.peek(term, now_ms))
    }

    fn dispatch(&mut self) {
        while self.inflight.len() < self.config.max_inflight {
            let route = self.route();
            if !matches!(route, Route::Local { .. }) {
                // Forwarded batches run only on the leader.
                let (forwarded, rest): (VecDeque<_>, VecDeque<_>) =
                    self.pending.drain(..).partition(|p| p.forwarded);
                self.pending = rest;
                for p in forwarded {
                    p.end("this node lost the leadership", ProposeError::NotLeader);
                }
            }
            let (term, fresh) = match route {
                Route::Nowhere => {
                    // Wait for a leader: metrics changes wake us; retry a little later anyway.
                    if !self.pending.is_empty() {
                        self.retry_at = Some(Instant::now() + Duration::from_millis(50));
                    }
                    return;
                }
                Route::Local { term, fresh } => (Some(term), fresh),
                Route::Forward(..) => (None, false),
            };
            let tick = term.is_some_and(|t| self.tick_due(t));
            let taken = self.pack(fresh);
            if taken.is_empty() && !tick {
                return;
            }
            match (route, term) {
                (Route::Local { .. }, Some(term)) => self.propose_here(term, taken, tick),
                (Route::Forward(leader, addr), _) => self.forward(leader, addr, taken),
                _ => unreachable!("routes without a destination returned above"),
            }
        }
    }

    /// Takes the next batch's proposals off the queue. With `check`, a proposal whose
    /// every command the applied state refuses is answered here and not taken.
    fn pack(&mut self, check: bool) -> Vec<Proposal> {
        let (config, pending) = (&self.config, &mut self.pending);
        let (taken, refused) = if check && !pending.is_empty() {
            self.state.read(|s| take_batch(pending, config, Some(s)))
        } else {
            take_batch(pending, config, None)
        };
        if !refused.is_empty() {
            let n: usize = refused.iter().map(|(p, _)| p.commands.len()).sum();
            self.stats.refused.fetch_add(n as u64, Relaxed);
            for (p, rejections) in refused {
                p.answer(Ok(rejections));
            }
        }
        taken
    }

    /// Proposes a batch through this node's Raft, stamped with cluster time.
    fn propose_here(&mut self, term: u64, mut taken: Vec<Proposal>, tick: bool) {
        let count: usize = taken.iter().map(|p| p.commands.len()).sum();
        // Moved, not copied: the batch shares them with the proposals, which get
        // copies back only if it must be sent again.
        let mut commands: Vec<Command> = Vec::with_capacity(count + 1);
        let mut lens = Vec::with_capacity(taken.len());
        for p in taken.iter_mut() {
            lens.push(p.commands.len());
            commands.append(&mut p.commands);
        }
        if tick {
            commands.push(Command::Tick);
            self.last_tick = Instant::now();
            self.stats.ticks.fetch_add(1, Relaxed);
        }
        self.count_batch(count, false);
        let commands: Arc<[Command]> = commands.into();
        let state_ms = self.state.read(|s| s.now_ms());
        let batch = Batch {
            now_ms: self.clock.stamp(term, state_ms),
            commands: commands.clone(),
            limits: self.config.limits,
        };
        // Awaited as long as any of its callers still waits.
        let until = taken
            .iter()
            .map(|p| p.deadline)
            .max()
            .unwrap_or_else(|| Instant::now() + TICK_BATCH_TIMEOUT);
        let raft = self.raft.clone();
        let sent = InFlight {
            proposals: taken,
            moved: Some((commands, lens)),
        };
        self.inflight.spawn(async move {
            let outcome =
                match tokio::time::timeout_at(until.into(), raft.client_write(batch)).await {
                    Ok(result) => outcome::of_local(result),
                    Err(_) => Outcome::Ambiguous("timed out waiting for commit".into()),
                };
            (sent, outcome)
        });
    }

    /// Sends a batch to the leader's peer channel; abandons it if another leader
    /// becomes known meanwhile.
    fn forward(&mut self, leader: NodeId, addr: String, taken: Vec<Proposal>) {
        let count: usize = taken.iter().map(|p| p.commands.len()).sum();
        // Encoded from the proposals as one list, without gathering copies first.
        let body = crate::codec::encode(&Concat(&taken)).into();
        self.count_batch(count, true);
        let until = taken
            .iter()
            .map(|p| p.deadline)
            .max()
            .expect("a forwarded batch has proposals");
        let budget = until.saturating_duration_since(Instant::now());
        let peers = self.peers.clone();
        let metrics = self.raft.server_metrics();
        self.inflight.spawn(async move {
            let call = peers.call_encoded(
                leader,
                &addr,
                paths::PROPOSE,
                body,
                budget + Duration::from_millis(200),
                Some(budget),
            );
            let outcome = tokio::select! {
                result = call => outcome::of_forward(result),
                _ = another_leader(metrics, leader) => Outcome::Ambiguous(
                    "the leader changed while the write was forwarded to it".into(),
                ),
            };
            let sent = InFlight {
                proposals: taken,
                moved: None,
            };
            (sent, outcome)
        });
    }

    fn count_batch(&self, commands: usize, forwarded: bool) {
        self.stats.batches.fetch_add(1, Relaxed);
        self.stats.commands.fetch_add(commands as u64, Relaxed);
        if forwarded {
            self.stats.forwarded_batches.fetch_add(1, Relaxed);
        }
        metrics::histogram!("sq_proposer_batch_commands").record(commands as f64);
    }

    /// Hands each proposal its share of the results, or queues them to be sent again.
    fn deliver(&mut self, sent: InFlight, outcome: Outcome) {
        match outcome {
            Outcome::Done(results) => {
                let lens = sent.lens();
                let mut results = results.into_iter();
                for (p, len) in sent.proposals.into_iter().zip(lens) {
                    let mine: Vec<CommandResult> = results.by_ref().take(len).collect();
                    if mine.len() != len {
                        p.answer(Err(ProposeError::Fatal("result count mismatch".into())));
                    } else {
                        p.answer(Ok(mine));
                    }
                }
            }
            Outcome::NotSent => self.requeue(sent.put_back(), false),
            Outcome::Ambiguous(why) => {
                self.stats.ambiguous.fetch_add(1, Relaxed);
                tracing::info!(reason = %why, "a batch's outcome is unknown");
                let (again, unknown): (Vec<_>, Vec<_>) = sent
                    .put_back()
                    .into_iter()
                    .partition(|p| outcome::all_retry_safe(&p.commands));
                for p in unknown {
                    p.answer(Err(ProposeError::Unknown(why.clone())));
                }
                self.requeue(again, true);
            }
            Outcome::Failed(e) => {
                for p in sent.proposals {
                    p.answer(Err(e.clone()));
                }
            }
        }
    }

    /// Puts proposals back at the head of the queue, in order, to be sent again.
    fn requeue(&mut self, proposals: Vec<Proposal>, maybe_applied: bool) {
        for p in proposals.into_iter().rev() {
            if p.fate.back(maybe_applied) {
                self.pending.push_front(p);
            }
        }
        self.retry_at = Some(Instant::now() + Duration::from_millis(20));
    }
}

/// The proposals of a batch on its way.
struct InFlight {
    proposals: Vec<Proposal>,
    /// Proposed here: the proposals' commands were moved into the batch's shared
    /// list (each proposal's share, in order, then maybe a tick); forwarded: `None`,
    /// the proposals still hold them.
    moved: Option<(Arc<[Command]>, Vec<usize>)>,
}

impl InFlight {
    /// How many commands each proposal sent.
    fn lens(&self) -> Vec<usize> {
        match &self.moved {
            Some((_, lens)) => lens.clone(),
            None => self.proposals.iter().map(|p| p.commands.len()).collect(),
        }
    }

    /// The proposals with their commands again (copied back from the batch), to be
    /// sent again or judged for it.
    fn put_back(self) -> Vec<Proposal> {
        let mut proposals = self.proposals;
        if let Some((commands, lens)) = self.moved {
            let mut at = 0;
            for (p, len) in proposals.iter_mut().zip(lens) {
                p.commands = commands[at..at + len].to_vec();
                at += len;
            }
        }
        proposals
    }
}

/// The commands of several proposals, encoded as one list (a forwarded batch).
struct Concat<'a>(&'a [Proposal]);

impl Serialize for Concat<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let count = self.0.iter().map(|p| p.commands.len()).sum();
        let mut seq = s.serialize_seq(Some(count))?;
        for command in self.0.iter().flat_map(|p| p.commands.iter()) {
            seq.serialize_element(command)?;
        }
        seq.end()
    }
}

/// Takes proposals off the head of `pending` up to the batch bounds, skipping those
/// whose callers gave up. With a `state`, proposals it refuses entirely are set
/// apart with their rejections instead.
#[allow(clippy::type_complexity)]
fn take_batch(
    pending: &mut VecDeque<Proposal>,
    config: &ProposerConfig,
    state: Option<&State>,
) -> (Vec<Proposal>, Vec<(Proposal, Vec<CommandResult>)>) {
    let mut taken: Vec<Proposal> = Vec::new();
    let mut refused = Vec::new();
    let (mut count, mut bytes) = (0usize, 0usize);
    // Admission refuses any proposal larger than this, so a batch never is either.
    let max_bytes = config.max_bytes.saturating_sub(ENTRY_FRAMING);
    while let Some(p) = pending.front() {
        if p.fate.given_up() {
            pending.pop_front();
            continue;
        }
        if let Some(rejections) = state.and_then(|s| all_refused(s, &p.commands, &config.limits)) {
            let p = pending.pop_front().expect("front exists");
            refused.push((p, rejections));
            continue;
        }
        let fits = count + p.commands.len() <= config.max_commands && bytes + p.bytes <= max_bytes;
        if !taken.is_empty() && !fits {
            break;
        }
        let p = pending.pop_front().expect("front exists");
        if !p.fate.take() {
            continue;
        }
        count += p.commands.len();
        bytes += p.bytes;
        taken.push(p);
    }
    (taken, refused)
}

/// The rejections of `commands` if the state refuses every one of them under the
/// bounds the next batch will carry, or they would grow it past a bound checked only
/// before proposing (`State::bound_growth`). Checked one after the other on the
/// same state: a refused command changes nothing, so each later one would meet
/// exactly this state.
fn all_refused(state: &State, commands: &[Command], limits: &Limits) -> Option<Vec<CommandResult>> {
    if commands.is_empty() {
        return None;
    }
    commands
        .iter()
        .map(|c| match c {
            Command::Tick => None,
            c => state
                .check_within(c, limits)
                .and_then(|()| state.bound_growth(c, limits))
                .err()
                .map(Err),
        })
        .collect()
}

/// Resolves once a leader other than `from` is known; never if Raft stops.
async fn another_leader(
    mut metrics: watch::Receiver<openraft::metrics::RaftServerMetrics<NodeId, NodeAddr>>,
    from: NodeId,
) {
    let moved = metrics
        .wait_for(|m| m.current_leader.is_some_and(|l| l != from))
        .await
        .is_ok();
    if !moved {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
#[path = "proposer_tests.rs"]
mod tests;
