//! Linearizable reads from any node (read index).
//!
//! openraft 0.9 only answers a read index on the leader (`get_read_log_id`: a
//! heartbeat round to a quorum proves it still leads, then the index to wait for).
//! A follower asks the leader for that index over the peer channel, then waits until
//! its own applied index reaches it and reads locally: what it then reads includes
//! every write acknowledged before the read began.

use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// Waits until this node has applied everything committed before the call.
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
