//! Bootstrapping a brand-new cluster, an explicit act (`--initial-cluster-state new`),
//! and what a node with an empty data directory does otherwise.
//!
//! - `new`, storage pristine: the node first asks every other initial member for
//!   its status (waiting until each has answered: a brand-new cluster forms once
//!   all its initial members have started). If any remembers this node voting or
//!   storing entries, the node's data was lost: it does not bootstrap, it stays
//!   without a cluster id (it cannot vote) and logs how to replace it. Otherwise it
//!   stores the cluster id ([`super::identity::derive_cluster_id`]) and initialises Raft with the
//!   initial members (openraft makes it safe for several nodes to do so).
//! - `existing`, storage pristine: nothing; the node waits to be added as a learner
//!   through membership and adopts the cluster id then.
//! - Storage not pristine: Raft resumes from it. A data directory from before
//!   cluster ids whose node is an initial member gets the derived id.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::identity::{ClusterIdentity, PeerStatus};
use super::network::{paths, PeerClient};
use super::types::{NodeAddr, NodeId, Raft};

/// How a node with an empty data directory starts (`--initial-cluster-state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ClusterState {
    /// Create the cluster of `--initial-cluster` (the first start of a new cluster).
    New,
    /// Join an existing cluster only when added through membership, as a learner.
    Existing,
}

/// What [`start`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Started {
    /// Initialised a new cluster.
    Bootstrapped,
    /// Resumed from its storage (or the cluster was already initialised).
    Resumed,
    /// Waits, without a cluster id, to be added as a learner.
    Blank,
    /// Its peers remember it: its data was lost; it does not bootstrap again.
    Refused,
}

/// Everything [`start`] needs.
pub struct Bootstrap {
    pub raft: Raft,
    pub identity: Arc<ClusterIdentity>,
    pub peers: PeerClient,
    pub state: ClusterState,
    pub members: BTreeMap<NodeId, NodeAddr>,
    pub cluster_id: String,
    /// Whether the node's storage held no vote and no log when it opened.
    pub pristine: bool,
}

/// Runs the start-up rules of the module doc.
pub async fn start(b: Bootstrap) -> anyhow::Result<Started> {
    let me = b.identity.me();
    let listed = b.members.contains_key(&me);
    if !b.pristine {
        if listed && b.identity.id().is_none() {
            // Data from before cluster ids: it was made by this bootstrap.
            b.identity
                .adopt(&b.cluster_id)
                .map_err(anyhow::Error::msg)?;
        }
        return Ok(Started::Resumed);
    }
    if b.state == ClusterState::Existing || !listed {
        if listed {
            tracing::warn!(
                "empty data directory and --initial-cluster-state existing: this node does not \
                 bootstrap and does not vote; it waits to be added as a new member (to create a \
                 brand-new cluster, start every initial member with --initial-cluster-state new)"
            );
        } else {
            tracing::info!("empty data directory: waiting to be added as a member");
        }
        return Ok(Started::Blank);
    }
    if let Some(held) = b.identity.id() {
        if held != b.cluster_id {
            anyhow::bail!(
                "this data directory belongs to cluster {held}, but --initial-cluster (with the \
                 cluster name and token) makes cluster {}",
                b.cluster_id
            );
        }
    }
    if let Some(who) = remembered_by(&b, me).await {
        tracing::error!(
            "node {who} remembers this node (id {me}) voting or storing entries, but its data \
             directory is empty: its data was lost. It does not bootstrap again and does not \
             vote. Replace it: remove member {me}, start a node with a new id and an empty data \
             directory (--initial-cluster-state existing), and add that one (docs/DEPLOY.md)"
        );
        return Ok(Started::Refused);
    }
    b.identity
        .adopt(&b.cluster_id)
        .map_err(anyhow::Error::msg)?;
    if super::bootstrap_raft(&b.raft, b.members.clone()).await? {
        tracing::info!(cluster = %b.cluster_id, "initialised a new cluster");
        Ok(Started::Bootstrapped)
    } else {
        Ok(Started::Resumed)
    }
}

/// Asks every other initial member until each has answered; the first that
/// remembers `me`, if any.
async fn remembered_by(b: &Bootstrap, me: NodeId) -> Option<NodeId> {
    let mut waiting: BTreeMap<NodeId, NodeAddr> = b
        .members
        .iter()
        .filter(|(id, _)| **id != me)
        .map(|(id, a)| (*id, a.clone()))
        .collect();
    let mut said = Instant::now();
    while !waiting.is_empty() {
        for (id, addr) in waiting.clone() {
            let answer: Result<PeerStatus, _> = b
                .peers
                .call(
                    id,
                    &addr.peer,
                    paths::STATUS,
                    &(),
                    Duration::from_secs(2),
                    None,
                )
                .await;
            if let Ok(status) = answer {
                if status.remembers_you {
                    return Some(id);
                }
                waiting.remove(&id);
            }
        }
        if waiting.is_empty() {
            break;
        }
        if said.elapsed() > Duration::from_secs(10) {
            said = Instant::now();
            tracing::info!(
                waiting_for = ?waiting.keys().collect::<Vec<_>>(),
                "bootstrapping a new cluster: waiting for every initial member to answer"
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    None
}
