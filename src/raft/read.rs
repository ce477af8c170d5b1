//! Linearizable reads from any node (read index).
//!
//! openraft 0.9 only answers a read index on the leader (`get_read_log_id`: a
//! heartbeat round to a quorum proves it still leads, then the index to wait for).
//! A follower asks the leader for that index over the peer channel, then waits until
//! its own applied index reaches it and reads locally: what it then reads includes
//! every write acknowledged before the read began.
//!
//! Concurrent reads share rounds ([`Reads`]): a read joins the next round that
//! starts after it arrived (never one already under way, whose index may predate
//! a write acknowledged just before the read began), so a thousand readers cost
//! one heartbeat round (or one peer call) while another round is in flight, not a
//! thousand.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::network::{paths, PeerClient, PeerError};
use super::proposer::ProposeError;
use super::types::{NodeId, Raft};
use crate::store::AppliedState;

/// Why a linearizable read could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("no leader could confirm the read index in time")]
    NoLeader,
    #[error("this node did not catch up with the read index in time")]
    Lagging,
}

/// On the leader: the index a linearizable read must wait for.
pub async fn leader_read_index(raft: &Raft) -> Result<u64, ProposeError> {
    match raft.get_read_log_id().await {
        Ok((read, _applied)) => Ok(read.map_or(0, |l| l.index)),
        Err(_) => Err(ProposeError::NotLeader),
    }
}

/// Waits until this node has applied everything committed before the call, with a
/// read-index round of its own ([`Reads::linearize`] shares rounds between callers).
pub async fn linearize(
    id: NodeId,
    raft: &Raft,
    peers: &PeerClient,
    state: &Arc<AppliedState>,
    timeout: Duration,
) -> Result<u64, ReadError> {
    let deadline = Instant::now() + timeout;
    let index = loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ReadError::NoLeader);
        }
        let (leader, addr) = {
            let m = raft.metrics();
            let m = m.borrow();
            let addr = m
                .current_leader
                .and_then(|l| m.membership_config.membership().get_node(&l).cloned());
            (m.current_leader, addr)
        };
        let attempt = match (leader, addr) {
            (Some(l), _) if l == id => leader_read_index(raft).await.ok(),
            (Some(l), Some(node)) => {
                let r: Result<Result<u64, ProposeError>, PeerError> = peers
                    .call(l, &node.peer, paths::READ_INDEX, &(), remaining, None)
                    .await;
                r.ok().and_then(Result::ok)
            }
            _ => None,
        };
        match attempt {
            Some(index) => break index,
            None => tokio::time::sleep(Duration::from_millis(50).min(remaining)).await,
        }
    };
    let remaining = deadline.saturating_duration_since(Instant::now());
    if state.wait_applied(index, remaining).await {
        Ok(index)
    } else {
        Err(ReadError::Lagging)
    }
}

/// How long one shared round may take before its readers try another.
const ROUND_TIMEOUT: Duration = Duration::from_secs(2);

/// The linearizable reads of one node, sharing read-index rounds.
pub struct Reads {
    id: NodeId,
    raft: Raft,
    peers: PeerClient,
    state: Arc<AppliedState>,
    rounds: Mutex<Rounds>,
}

/// Readers waiting for the next round, and whether a round is running.
#[derive(Default)]
struct Rounds {
    running: bool,
    waiting: Vec<oneshot::Sender<Option<u64>>>,
}

impl Reads {
    pub fn new(id: NodeId, raft: Raft, peers: PeerClient, state: Arc<AppliedState>) -> Arc<Self> {
        Arc::new(Reads {
            id,
            raft,
            peers,
            state,
            rounds: Mutex::new(Rounds::default()),
        })
    }

    /// Waits until this node has applied everything committed before the call, at
    /// most `timeout`; the index it waited for.
    pub async fn linearize(self: &Arc<Self>, timeout: Duration) -> Result<u64, ReadError> {
        let deadline = Instant::now() + timeout;
        let index = loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(ReadError::NoLeader);
            }
            match tokio::time::timeout(remaining, self.next_round()).await {
                Ok(Some(index)) => break index,
                Ok(None) => tokio::time::sleep(Duration::from_millis(50).min(remaining)).await,
                Err(_) => return Err(ReadError::NoLeader),
            }
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        if self.state.wait_applied(index, remaining).await {
            Ok(index)
        } else {
            Err(ReadError::Lagging)
        }
    }

    /// Joins the next round (starting one if none runs); its read index, or `None`
    /// if it found no leader.
    async fn next_round(self: &Arc<Self>) -> Option<u64> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut rounds = self.rounds.lock().expect("read rounds");
            rounds.waiting.push(tx);
            !std::mem::replace(&mut rounds.running, true)
        };
        if start {
            tokio::spawn(self.clone().drive());
        }
        rx.await.ok().flatten()
    }

    /// Runs rounds while readers wait: each round serves those who arrived before it.
    async fn drive(self: Arc<Self>) {
        loop {
            let readers = {
                let mut rounds = self.rounds.lock().expect("read rounds");
                if rounds.waiting.is_empty() {
                    rounds.running = false;
                    return;
                }
                std::mem::take(&mut rounds.waiting)
            };
            metrics::counter!("sq_read_index_rounds_total").increment(1);
            metrics::histogram!("sq_read_index_round_readers").record(readers.len() as f64);
            let index = self.round().await;
            for reader in readers {
                let _ = reader.send(index);
            }
        }
    }

    /// One read-index round: on the leader a heartbeat round, elsewhere a call to it.
    async fn round(&self) -> Option<u64> {
        let (leader, addr) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let addr = m
                .current_leader
                .and_then(|l| m.membership_config.membership().get_node(&l).cloned());
            (m.current_leader, addr)
        };
        match (leader, addr) {
            (Some(l), _) if l == self.id => {
                tokio::time::timeout(ROUND_TIMEOUT, leader_read_index(&self.raft))
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
            (Some(l), Some(node)) => {
                let r: Result<Result<u64, ProposeError>, PeerError> = self
                    .peers
                    .call(l, &node.peer, paths::READ_INDEX, &(), ROUND_TIMEOUT, None)
                    .await;
                r.ok().and_then(Result::ok)
            }
            _ => None,
        }
    }
}
