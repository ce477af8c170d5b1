//! Cluster identity: which cluster this node belongs to, what role the leader gives
//! each peer, and which peers this node has seen take part.
//!
//! - **The cluster id** is made at bootstrap: every node of `--initial-cluster` with
//!   `--initial-cluster-state new` derives the same id from the cluster name, the
//!   `--initial-cluster-token` and the member list ([`derive_cluster_id`]), and
//!   stores it in its data directory before initialising Raft. A node added later
//!   adopts the id of the leader that replicates to it as a learner. The id travels
//!   with every peer call (hello and every request); a node of another cluster is
//!   refused.
//! - **A node without an id** (an empty data directory) never votes, and refuses
//!   entries from a leader that counts it as a voter: it may only join as a new
//!   learner, through membership. This is what keeps a node whose data was wiped
//!   from voting as the member it used to be (with no memory of its log or of its
//!   earlier vote, it could help elect a leader that lacks acknowledged writes).
//! - **Participants** are the peers this node has seen grant a vote or store
//!   entries: it remembers them durably, so that a node restarted with an empty
//!   directory and `--initial-cluster-state new` (the command line that created the
//!   cluster, e.g. a container whose volume was lost) learns from its old peers
//!   that it took part before, and does not bootstrap again.
//!
//! Files live in the data directory ([`crate::store::cluster_file`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Mutex, RwLock};

use sha2::{Digest, Sha256};

use super::types::{NodeAddr, NodeId, Raft};
use crate::store::cluster_file;

/// This node's cluster identity, shared by the peer client and the peer server.
pub struct ClusterIdentity {
    me: NodeId,
    dir: PathBuf,
    id: RwLock<Option<String>>,
    /// The voters and learners of this node's current membership view.
    roles: RwLock<(BTreeSet<NodeId>, BTreeSet<NodeId>)>,
    participants: Mutex<BTreeSet<NodeId>>,
}

/// What a bootstrapping node learns from a peer (`POST /peer/status`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PeerStatus {
    /// The peer's cluster id, if it has one.
    pub cluster: Option<String>,
    /// Whether the peer has seen the asking node vote or store entries.
    pub remembers_you: bool,
}

/// The role the leader gives a target, as the [`ROLE_HEADER`] says it.
///
/// [`ROLE_HEADER`]: super::peer_auth::ROLE_HEADER
pub mod role {
    pub const VOTER: &str = "voter";
    pub const LEARNER: &str = "learner";
}

/// The cluster id a bootstrap with these settings makes: the same on every node of
/// `--initial-cluster`, different for another name, token or member list.
pub fn derive_cluster_id(name: &str, token: &str, members: &BTreeMap<NodeId, NodeAddr>) -> String {
    let mut h = Sha256::new();
    h.update(b"sq-cluster-id-v1\0");
    for part in [name, token] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    for (id, addr) in members {
        h.update(format!("{id}={}/{};", addr.api, addr.peer).as_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

impl ClusterIdentity {
    /// Loads the identity stored in `dir` (the node's data directory).
    pub fn open(me: NodeId, dir: PathBuf) -> std::io::Result<Self> {
        let id = cluster_file::load_cluster_id(&dir)?;
        let participants = cluster_file::load_participants(&dir)?;
        Ok(ClusterIdentity {
            me,
            dir,
            id: RwLock::new(id),
            roles: RwLock::new(Default::default()),
            participants: Mutex::new(participants),
        })
    }

    pub fn me(&self) -> NodeId {
        self.me
    }

    /// The cluster id, once this node has one.
    pub fn id(&self) -> Option<String> {
        self.id.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Makes `id` this node's cluster id, durably, before anything relies on it.
    /// Refuses another id than the one already held.
    pub fn adopt(&self, id: &str) -> Result<(), String> {
        let mut held = self.id.write().unwrap_or_else(|e| e.into_inner());
        match held.as_deref() {
            Some(current) if current == id => Ok(()),
            Some(current) => Err(format!("this node belongs to cluster {current}, not {id}")),
            None => {
                if !self.dir.as_os_str().is_empty() {
                    cluster_file::save_cluster_id(&self.dir, id)
                        .map_err(|e| format!("storing the cluster id: {e}"))?;
                }
                *held = Some(id.to_string());
                Ok(())
            }
        }
    }

    /// What the current membership makes `target`: `voter`, `learner` or nothing.
    pub fn role_of(&self, target: NodeId) -> &'static str {
        let roles = self.roles.read().unwrap_or_else(|e| e.into_inner());
        if roles.0.contains(&target) {
            role::VOTER
        } else if roles.1.contains(&target) {
            role::LEARNER
        } else {
            ""
        }
    }

    fn set_roles(&self, voters: BTreeSet<NodeId>, learners: BTreeSet<NodeId>) {
        let mut roles = self.roles.write().unwrap_or_else(|e| e.into_inner());
        if roles.0 != voters || roles.1 != learners {
            *roles = (voters, learners);
        }
    }

    /// Records that `peer` granted a vote or stored entries (durably, the first time).
    pub fn saw_participant(&self, peer: NodeId) {
        let mut set = self.participants.lock().unwrap_or_else(|e| e.into_inner());
        if set.contains(&peer) {
            return;
        }
        set.insert(peer);
        if self.dir.as_os_str().is_empty() {
            return;
        }
        // Once per peer in the life of the data directory: a small synced write.
        if let Err(e) = cluster_file::save_participants(&self.dir, &set) {
            tracing::warn!(peer, error = %e, "could not record a participant");
            set.remove(&peer);
        }
    }

    /// Whether `peer` was seen to grant a vote or store entries.
    pub fn remembers(&self, peer: NodeId) -> bool {
        self.participants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&peer)
    }
}

/// Keeps the identity's view of voters and learners current, until Raft stops.
pub async fn follow_membership(identity: std::sync::Arc<ClusterIdentity>, raft: Raft) {
    let mut metrics = raft.metrics();
    loop {
        {
            let m = metrics.borrow_and_update();
            let membership = m.membership_config.membership();
            identity.set_roles(
                membership.voter_ids().collect(),
                membership.learner_ids().collect(),
            );
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(spec: &[(u64, &str)]) -> BTreeMap<NodeId, NodeAddr> {
        spec.iter()
            .map(|(id, host)| {
                (
                    *id,
                    NodeAddr {
                        api: format!("{host}:7001"),
                        peer: format!("{host}:8001"),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn the_cluster_id_is_shared_by_a_bootstrap_and_differs_for_another() {
        let m = members(&[(1, "a"), (2, "b"), (3, "c")]);
        let id = derive_cluster_id("sq", "t", &m);
        assert_eq!(id, derive_cluster_id("sq", "t", &m.clone()));
        assert_eq!(id.len(), 32);
        assert_ne!(id, derive_cluster_id("sq", "t2", &m));
        assert_ne!(id, derive_cluster_id("sq2", "t", &m));
        assert_ne!(
            id,
            derive_cluster_id("sq", "t", &members(&[(1, "a"), (2, "b")]))
        );
        // No ambiguity between name and token.
        assert_ne!(
            derive_cluster_id("ab", "c", &m),
            derive_cluster_id("a", "bc", &m)
        );
    }

    #[test]
    fn an_identity_adopts_once_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let identity = ClusterIdentity::open(2, dir.path().to_path_buf()).unwrap();
        assert_eq!(identity.id(), None);
        identity.adopt("c1").unwrap();
        identity.adopt("c1").unwrap();
        assert!(identity.adopt("c2").is_err());
        identity.saw_participant(3);
        let again = ClusterIdentity::open(2, dir.path().to_path_buf()).unwrap();
        assert_eq!(again.id().as_deref(), Some("c1"));
        assert!(again.remembers(3));
        assert!(!again.remembers(1));
    }
}
