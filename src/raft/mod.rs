//! The Raft layer: openraft's types and configuration, the peer network client,
//! group commit (the proposer, with its admission bounds, its cluster clock, its
//! proposals and the classification of their outcomes), linearizable reads, and
//! cluster membership.

pub mod admission;
pub mod bootstrap;
pub mod clock;
pub mod identity;
pub mod network;
pub mod outcome;
pub mod peer_auth;
pub mod peer_body;
pub mod peer_http;
pub mod proposal;
pub mod proposer;
pub mod read;
pub mod types;

use std::collections::{BTreeMap, BTreeSet};

use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::ChangeMembers;

use types::{NodeAddr, NodeId, Raft};

/// Initialises a brand-new cluster with `members` if this node's storage is pristine.
/// Several nodes may do this with the same members: openraft makes it safe. When to
/// call it is [`bootstrap::start`]'s business.
pub async fn bootstrap_raft(
    raft: &Raft,
    members: BTreeMap<NodeId, NodeAddr>,
) -> anyhow::Result<bool> {
    match raft.initialize(members).await {
        Ok(()) => Ok(true),
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Why a membership change failed.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("not the leader")]
    NotLeader(Option<NodeId>),
    #[error("{0}")]
    Refused(String),
}

fn map_write_error(e: RaftError<NodeId, ClientWriteError<NodeId, NodeAddr>>) -> MembershipError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            MembershipError::NotLeader(f.leader_id)
        }
        other => MembershipError::Refused(other.to_string()),
    }
}

/// Adds a node online: first as a learner (waiting until it has caught up), then as a
/// voter. Must run on the leader.
pub async fn add_member(raft: &Raft, id: NodeId, addr: NodeAddr) -> Result<(), MembershipError> {
    raft.add_learner(id, addr, true)
        .await
        .map_err(map_write_error)?;
    raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
        .await
        .map_err(map_write_error)?;
    Ok(())
}

/// Removes a voter (or learner) online. Must run on the leader.
pub async fn remove_member(raft: &Raft, id: NodeId) -> Result<(), MembershipError> {
    let (voters, learners) = {
        let m = raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        (
            membership.voter_ids().collect::<BTreeSet<_>>(),
            membership.learner_ids().collect::<BTreeSet<_>>(),
        )
    };
    let change = if voters.contains(&id) {
        if voters.len() == 1 {
            return Err(MembershipError::Refused(
                "cannot remove the last voter".into(),
            ));
        }
        ChangeMembers::RemoveVoters(BTreeSet::from([id]))
    } else if learners.contains(&id) {
        ChangeMembers::RemoveNodes(BTreeSet::from([id]))
    } else {
        return Err(MembershipError::Refused(format!(
            "node {id} is not a member"
        )));
    };
    // retain = false: a removed voter does not stay on as a learner.
    raft.change_membership(change, false)
        .await
        .map_err(map_write_error)?;
    Ok(())
}
