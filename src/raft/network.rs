//! The client side of the peer channel: Raft RPCs, forwarded writes and read-index
//! requests to other nodes, over pooled keep-alive HTTP connections with bincode
//! bodies.
//!
//! Every request carries the cluster secret and the id of the node it is meant for;
//! the receiver refuses a wrong secret (401) and a request meant for another node
//! (421), so a node restarted at a reused address is never mistaken for its
//! predecessor. With peer TLS ([`PeerClient::with_tls`]) the requests go over
//! mutual TLS. The server side is [`crate::peer`].
//!
//! Replication gets a timeout of its own. openraft 0.9 bounds every AppendEntries
//! call with the heartbeat interval (`replication/mod.rs`: `C::timeout(heartbeat,
//! network.append_entries(..))`), so a short heartbeat, which fast failover needs,
//! would cut off a large append before the follower has stored it, and openraft
//! would send it again and again. So a request carrying entries runs in a task of
//! its own, bounded by `--replication-timeout-ms`; when openraft gives up on it
//! (after a heartbeat interval) it keeps running, and openraft's next try of the
//! same range waits for it instead of sending it again. A try of a longer range
//! from the same point is answered `PayloadTooLarge` with the running request's
//! length, which makes openraft retry at once with that range. Heartbeats (no
//! entries) keep openraft's short timeout.
//!
//! Replication is bounded in bytes too. openraft 0.9 bounds a request only by its
//! number of entries (`max_payload_entries`); an entry is at most `--max-batch-bytes`
//! (the proposer never packs more), but sixteen of them would still be 32 MiB. So a
//! request is cut here to the longest prefix of its entries that encodes to at most
//! `--max-replication-bytes` (always at least one entry), and a follower's success
//! on that prefix is reported as openraft's `PartialSuccess` up to its last entry:
//! openraft then sends the rest from there. A request thus fits in the replication
//! timeout whatever the entries' sizes, as long as the link moves
//! `--max-replication-bytes` within it.

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use tokio::task::JoinHandle;

use super::types::{LogId, NodeAddr, NodeId, TypeConfig, Vote};
use crate::codec;

/// Header carrying the cluster secret.
pub const SECRET_HEADER: &str = "x-sq-cluster-secret";
/// Header naming the node a request is meant for.
pub const TARGET_HEADER: &str = "x-sq-target-node";
/// Header carrying the time budget of a forwarded write, ms.
pub const BUDGET_HEADER: &str = "x-sq-budget-ms";

/// Paths of the peer channel.
pub mod paths {
    pub const APPEND: &str = "/raft/append";
    pub const VOTE: &str = "/raft/vote";
    pub const SNAPSHOT: &str = "/raft/snapshot";
    pub const PROPOSE: &str = "/peer/propose";
    pub const READ_INDEX: &str = "/peer/read-index";
}

/// Why a peer request failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The request never reached the peer (connect failed): safe to retry.
    #[error("peer {0} unreachable: {1}")]
    Unreachable(NodeId, String),
    /// It may or may not have been processed.
    #[error("peer {0}: {1}")]
    Failed(NodeId, String),
    /// The peer answered with this HTTP status before processing the request (an
    /// undecodable or too large body, an unknown path): nothing was done, and sending
    /// the same request again would be refused the same way.
    #[error("peer {0} refused the request ({1}): {2}")]
    Refused(NodeId, u16, String),
}

/// A pooled HTTP client for the peer channel, shared by every connection.
#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    secret: String,
    /// `http`, or `https` with mutual TLS ([`PeerClient::with_tls`]).
    scheme: &'static str,
}

/// The peer channel's HTTP client; with `tls`, it speaks https with that config
/// (the node's certificate as its client certificate, the peer CA as its roots).
fn peer_http(tls: Option<rustls::ClientConfig>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_millis(500));
    if let Some(tls) = tls {
        builder = builder.use_preconfigured_tls(tls);
    }
    builder.build().expect("HTTP client")
}

impl PeerClient {
    pub fn new(secret: String) -> Self {
        PeerClient {
            http: peer_http(None),
            secret,
            scheme: "http",
        }
    }

    /// The same client speaking mutual TLS to its peers (`--peer-tls-cert`,
    /// `--peer-tls-key`, `--peer-ca`; see [`crate::tls::peer_client`]).
    pub fn with_tls(self, tls: rustls::ClientConfig) -> Self {
        PeerClient {
            http: peer_http(Some(tls)),
            scheme: "https",
            ..self
        }
    }

    /// POSTs an encoded `req` to `path` on `target` and decodes the answer.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: NodeId,
        addr: &str,
        path: &str,
        req: &Req,
        timeout: Duration,
        budget: Option<Duration>,
    ) -> Result<Resp, PeerError> {
        let mut builder = self
            .http
            .post(format!("{}://{addr}{path}", self.scheme))
            .header(SECRET_HEADER, &self.secret)
            .header(TARGET_HEADER, target.to_string())
            .timeout(timeout)
            .body(codec::encode(req));
        if let Some(budget) = budget {
            builder = builder.header(BUDGET_HEADER, budget.as_millis().to_string());
        }
        let resp = builder.send().await.map_err(|e| {
            if e.is_connect() {
                PeerError::Unreachable(target, e.to_string())
            } else {
                PeerError::Failed(target, e.to_string())
            }
        })?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| PeerError::Failed(target, e.to_string()))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            // The peer's handlers answer every request they process with 200 and an
            // encoded result, so any other status was given before processing: the
            // wrong node, a bad secret or overload (another node, or later, may take
            // it), or a request this peer can never take (400, 413, ...).
            if matches!(status.as_u16(), 401 | 421 | 503) {
                return Err(PeerError::Unreachable(target, format!("{status}: {text}")));
            }
            return Err(PeerError::Refused(
                target,
                status.as_u16(),
                text.into_owned(),
            ));
        }
        codec::decode(&body).map_err(|e| PeerError::Failed(target, format!("bad response: {e}")))
    }
}

/// Makes a [`Connection`] per target for openraft.
#[derive(Clone)]
pub struct Network {
    client: PeerClient,
    replication_timeout: Duration,
    max_replication_bytes: usize,
}

impl Network {
    /// `replication_timeout` bounds a replication request that carries entries, and
    /// `max_replication_bytes` the encoded size of those entries.
    pub fn new(
        client: PeerClient,
        replication_timeout: Duration,
        max_replication_bytes: usize,
    ) -> Self {
        Network {
            client,
            replication_timeout,
            max_replication_bytes,
        }
    }
}

/// How many of the leading entries (of these encoded sizes) one request carries:
/// as many as fit in `max_bytes`, and at least one.
pub fn entries_that_fit(sizes: impl IntoIterator<Item = usize>, max_bytes: usize) -> usize {
    let mut total = 0usize;
    let mut n = 0usize;
    for size in sizes {
        total = total.saturating_add(size);
        if n > 0 && total > max_bytes {
            break;
        }
        n += 1;
    }
    n
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> Self::Network {
        Connection {
            client: self.client.clone(),
            target,
            addr: node.peer.clone(),
            replication_timeout: self.replication_timeout,
            max_replication_bytes: self.max_replication_bytes,
            append: None,
        }
    }
}

type AppendResult = Result<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>, PeerError>;

/// What identifies a replication request: the same key means the same request.
#[derive(Clone, Debug, PartialEq, Eq)]
struct AppendKey {
    vote: Vote,
    prev: Option<LogId>,
    last: Option<LogId>,
    entries: usize,
}

impl AppendKey {
    fn of(rpc: &AppendEntriesRequest<TypeConfig>) -> Self {
        AppendKey {
            vote: rpc.vote,
            prev: rpc.prev_log_id,
            last: rpc.entries.last().map(|e| e.log_id),
            entries: rpc.entries.len(),
        }
    }
}

/// A replication request with entries, running in a task of its own.
struct RunningAppend {
    key: AppendKey,
    task: JoinHandle<AppendResult>,
}

/// openraft's view of one peer (one per replication stream and per vote round).
pub struct Connection {
    client: PeerClient,
    target: NodeId,
    addr: String,
    replication_timeout: Duration,
    max_replication_bytes: usize,
    append: Option<RunningAppend>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(running) = &self.append {
            running.task.abort();
        }
    }
}

fn rpc_error<E: std::error::Error>(
    e: PeerError,
) -> RPCError<NodeId, NodeAddr, RaftError<NodeId, E>> {
    match e {
        PeerError::Unreachable(_, msg) => {
            RPCError::Unreachable(Unreachable::new(&std::io::Error::other(msg)))
        }
        PeerError::Failed(_, msg) => {
            RPCError::Network(NetworkError::new(&std::io::Error::other(msg)))
        }
        e @ PeerError::Refused(..) => {
            RPCError::Network(NetworkError::new(&std::io::Error::other(e.to_string())))
        }
    }
}

impl Connection {
    async fn rpc<Req, Resp, E>(
        &self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, NodeAddr, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        // openraft bounds the call with its own timeout; ours is a backstop.
        let timeout = option.hard_ttl() + Duration::from_millis(50);
        let result: Result<Resp, RaftError<NodeId, E>> = self
            .client
            .call(self.target, &self.addr, path, req, timeout, None)
            .await
            .map_err(rpc_error)?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    /// A replication request with entries: joins the running one if it is the same,
    /// else starts it in a task bounded by the replication timeout (see the module doc).
    async fn append_with_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId>>> {
        // Only the prefix that fits in the byte bound goes (see the module doc).
        let fit = entries_that_fit(
            rpc.entries.iter().map(codec::encoded_len),
            self.max_replication_bytes,
        );
        let cut = (fit < rpc.entries.len()).then(|| {
            metrics::counter!("sq_replication_requests_cut_total").increment(1);
            rpc.entries.truncate(fit);
            rpc.entries.last().map(|e| e.log_id)
        });
        let key = AppendKey::of(&rpc);
        match &self.append {
            Some(running) if running.key == key => {}
            Some(running)
                if running.key.vote == key.vote
                    && running.key.prev == key.prev
                    && running.key.entries < key.entries
                    && !running.task.is_finished() =>
            {
                // The same start with more entries: have openraft send the running
                // request's range again, which joins it.
                return Err(RPCError::PayloadTooLarge(
                    PayloadTooLarge::new_entries_hint(running.key.entries as u64),
                ));
            }
            _ => {
                if let Some(stale) = self.append.take() {
                    stale.task.abort();
                }
                let (client, target, addr) = (self.client.clone(), self.target, self.addr.clone());
                let timeout = self.replication_timeout;
                let task = tokio::spawn(async move {
                    client
                        .call(target, &addr, paths::APPEND, &rpc, timeout, None)
                        .await
                });
                self.append = Some(RunningAppend { key, task });
            }
        }
        let running = self.append.as_mut().expect("set above");
        // If openraft's timeout drops this future here, the task runs on.
        let joined = (&mut running.task).await;
        self.append = None;
        let result = joined.map_err(|e| {
            RPCError::Network(NetworkError::new(&std::io::Error::other(e.to_string())))
        })?;
        let response = result
            .map_err(rpc_error)?
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))?;
        Ok(match (response, cut) {
            // The follower holds the prefix sent: openraft sends the rest from there.
            (AppendEntriesResponse::Success, Some(last)) => {
                AppendEntriesResponse::PartialSuccess(last)
            }
            (response, _) => response,
        })
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId>>> {
        if rpc.entries.is_empty() {
            // A heartbeat: openraft's short timeout is the point.
            self.rpc(paths::APPEND, &rpc, &option).await
        } else {
            self.append_with_entries(rpc).await
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NodeAddr, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.rpc(paths::SNAPSHOT, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId>>> {
        self.rpc(paths::VOTE, &rpc, &option).await
    }

    fn backoff(&self) -> openraft::network::Backoff {
        // Retry an unreachable peer every 200 ms rather than openraft's 500 ms, so a
        // restarted node is caught up quickly.
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_carries_the_entries_that_fit_and_always_one() {
        assert_eq!(entries_that_fit([10, 10, 10], 25), 2);
        assert_eq!(entries_that_fit([10, 10, 10], 30), 3);
        assert_eq!(entries_that_fit([10, 10, 10], 1000), 3);
        assert_eq!(entries_that_fit([50, 10], 25), 1, "one entry goes even alone over");
        assert_eq!(entries_that_fit([], 25), 0);
    }
}
