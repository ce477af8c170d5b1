//! The openraft type configuration of Session Queue.
//!
//! A log entry's application data is a [`Batch`] of commands (group commit: many
//! clients' commands share one entry and one fsync), and its response is one result
//! per command, in order. Nodes are numbered `u64`s with two addresses: the public
//! HTTP API and the peer channel that carries Raft traffic.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::machine::{Batch, Rejection, Response};

/// A node's id in the cluster.
pub type NodeId = u64;

/// Where a node listens.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    /// The public HTTP API, `host:port`.
    pub api: String,
    /// The peer channel (Raft RPCs, forwarded writes, read index), `host:port`.
    pub peer: String,
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "api={} peer={}", self.api, self.peer)
    }
}

/// The outcome of one command of a batch.
pub type CommandResult = Result<Response, Rejection>;

/// The outcome of one log entry: a result per command (empty for blank and membership
/// entries).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResult(pub Vec<CommandResult>);

openraft::declare_raft_types!(
    /// Session Queue's Raft types.
    pub TypeConfig:
        D = Batch,
        R = BatchResult,
        NodeId = NodeId,
        Node = NodeAddr,
        SnapshotData = tokio::fs::File,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeAddr>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeAddr>;
pub type Snapshot = openraft::storage::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, NodeAddr>;
