//! Linearizable reads from any node (read index).
//!
//! openraft 0.9 only answers a read index on the leader (`get_read_log_id`: a
//! heartbeat round to a quorum proves it still leads, then the index to wait for).
//! A follower asks the leader for that index over the peer channel, then waits until
//! its own applied index reaches it and reads locally: what it then reads includes
//! every write acknowledged before the read began.
//!
//! A leader restored by a restart is a case openraft 0.9 gets wrong: a node that
//! led when it stopped starts up as leader of the same term at once, and its read
//! index is the larger of the first entry of its term and its committed index. The
//! committed index it restarts with may trail what was committed before the stop
//! (a power loss), so reads could miss acknowledged writes. [`RestoredLeadership`]
//! raises the index, for that term only, to the last entry its log held at start:
//! everything committed before the stop is in that log (it led), at or below that
//! entry.
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

/// The leadership a node may hold when it starts: its stored vote was for itself.
/// openraft then restores it as leader of that term without a new first entry.
#[derive(Clone, Copy, Debug, Default)]
pub struct RestoredLeadership {
    /// `Some((term, last log index at start))` when the stored vote was its own.
    restored: Option<(u64, u64)>,
}

impl RestoredLeadership {
    /// From the node's stored vote and last log index, read before Raft starts.
    pub fn at_start(id: NodeId, vote: Option<&super::types::Vote>, last_index: u64) -> Self {
        let restored = vote
            .filter(|v| v.leader_id().voted_for() == Some(id))
            .map(|v| (v.leader_id().get_term(), last_index));
        RestoredLeadership { restored }
    }

    /// The read index, raised to the start's last entry while the node still leads
    /// in the term it started in.
    fn floor(&self, term: u64, index: u64) -> u64 {
        match self.restored {
            Some((restored_term, last)) if restored_term == term => index.max(last),
            _ => index,
        }
    }
}

/// On the leader: the index a linearizable read must wait for.
pub async fn leader_read_index(
    raft: &Raft,
    restored: RestoredLeadership,
) -> Result<u64, ProposeError> {
    let term = raft.metrics().borrow().current_term;
    match raft.get_read_log_id().await {
        Ok((read, _applied)) => Ok(restored.floor(term, read.map_or(0, |l| l.index))),
        Err(_) => Err(ProposeError::NotLeader),
    }
}

/// How long one shared round may take before its readers try another.
const ROUND_TIMEOUT: Duration = Duration::from_secs(2);

/// The linearizable reads of one node, sharing read-index rounds.
pub struct Reads {
    id: NodeId,
    restored: RestoredLeadership,
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
    pub fn new(
        id: NodeId,
        restored: RestoredLeadership,
        raft: Raft,
        peers: PeerClient,
        state: Arc<AppliedState>,
    ) -> Arc<Self> {
        Arc::new(Reads {
            id,
            restored,
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
                tokio::time::timeout(ROUND_TIMEOUT, leader_read_index(&self.raft, self.restored))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::Vote;

    #[test]
    fn a_restored_leader_reads_from_its_last_entry_at_start_in_that_term_only() {
        let own = Vote::new_committed(3, 1);
        let restored = RestoredLeadership::at_start(1, Some(&own), 120);
        assert_eq!(restored.floor(3, 100), 120, "the term it was restored in");
        assert_eq!(restored.floor(3, 130), 130, "a later index stands");
        assert_eq!(
            restored.floor(4, 100),
            100,
            "a later term has its own first entry"
        );
        let other = Vote::new_committed(3, 2);
        let follower = RestoredLeadership::at_start(1, Some(&other), 120);
        assert_eq!(follower.floor(3, 100), 100);
        assert_eq!(RestoredLeadership::at_start(1, None, 120).floor(0, 5), 5);
    }
}
