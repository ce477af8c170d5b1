//! The client side of the peer channel: Raft RPCs, forwarded writes and read-index
//! requests to other nodes, over pooled keep-alive HTTP connections with bincode
//! bodies.
//!
//! The cluster secret never leaves the node: before its first request to an address
//! the client says hello and requires proof that the other end holds the secret
//! (see [`super::peer_auth`]); then every request carries a MAC, the sender's cluster
//! id, and the id of the node it is meant for, and every answer is checked against
//! its MAC. A made-up address gets a hello and nothing else. The receiver refuses a
//! request meant for another node (421), so a node restarted at a reused address is
//! never mistaken for its predecessor. With peer TLS
//! ([`PeerClient::with_tls`]) the requests go over mutual TLS. The server side is
//! [`crate::peer`].
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
//!
//! A request's entries are not encoded again for it: the log store keeps the bytes
//! it wrote each recent entry as ([`EncodedEntries`]), and the request is assembled
//! from those ([`codec::append_request`]), so a batch is encoded once on the leader
//! whatever the number of followers. An entry no longer cached is encoded here. The
//! request's body itself is assembled and hashed once for all followers
//! ([`super::peer_body`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
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

use hyper::header::{HeaderName, HeaderValue};

use super::identity::ClusterIdentity;
use super::peer_auth::{self, ClientSession, Handshake, Signed};
use super::peer_body::{Body, BodyKey, SharedBodies};
use super::peer_http::{Answer, Failure, PeerHttp};
use super::types::{LogId, NodeAddr, NodeId, TypeConfig, Vote};
use crate::codec;
use crate::store::EncodedEntries;

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
    pub const HELLO: &str = "/peer/hello";
    pub const STATUS: &str = "/peer/status";
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
    transport: Transport,
    secret: String,
    /// This node's identity; set by [`PeerClient::with_identity`].
    identity: Option<Arc<ClusterIdentity>>,
    /// Sessions proven by a hello, by target and address: one a target, at its
    /// latest address.
    sessions: Arc<Mutex<HashMap<(NodeId, String), Arc<ClientSession>>>>,
}

/// How the peer client reaches its peers.
#[derive(Clone)]
enum Transport {
    /// Plain http: keep-alive connections driven with hyper ([`PeerHttp`]).
    Plain(Arc<PeerHttp>),
    /// https with mutual TLS ([`PeerClient::with_tls`]), through reqwest.
    Tls(reqwest::Client),
}

/// The peer channel's https client with that TLS config (the node's certificate as
/// its client certificate, the peer CA as its roots).
fn tls_client(tls: rustls::ClientConfig) -> reqwest::Client {
    reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_millis(500))
        .use_preconfigured_tls(tls)
        .build()
        .expect("HTTP client")
}

impl PeerClient {
    pub fn new(secret: String) -> Self {
        PeerClient {
            transport: Transport::Plain(Arc::new(PeerHttp::default())),
            secret,
            identity: None,
            sessions: Default::default(),
        }
    }

    /// The same client speaking mutual TLS to its peers (`--peer-tls-cert`,
    /// `--peer-tls-key`, `--peer-ca`; see [`crate::tls::peer_client`]).
    pub fn with_tls(self, tls: rustls::ClientConfig) -> Self {
        PeerClient {
            transport: Transport::Tls(tls_client(tls)),
            ..self
        }
    }

    /// POSTs an encoded `req` to `path` on `target` and decodes the answer.
    ///
    /// Says hello first if no session with `target` at `addr` is proven; a request
    /// the peer refuses as unauthenticated (401: it restarted and forgot the session)
    /// was not processed, so it is sent once more in a new session.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: NodeId,
        addr: &str,
        path: &str,
        req: &Req,
        timeout: Duration,
        budget: Option<Duration>,
    ) -> Result<Resp, PeerError> {
        self.call_encoded(
            target,
            addr,
            path,
            codec::encode(req).into(),
            timeout,
            budget,
        )
        .await
    }

    /// [`PeerClient::call`] with a body already encoded (by [`codec::encode`]): the
    /// bytes are shared, never copied, and hashed once, however many times the
    /// request is sent.
    pub async fn call_encoded<Resp: DeserializeOwned>(
        &self,
        target: NodeId,
        addr: &str,
        path: &str,
        body: Body,
        timeout: Duration,
        budget: Option<Duration>,
    ) -> Result<Resp, PeerError> {
        let budget = budget.map(|b| b.as_millis().to_string());
        let mut retried = false;
        loop {
            let session = self.session(target, addr, timeout).await?;
            match self
                .send(
                    &session,
                    target,
                    addr,
                    path,
                    body.clone(),
                    timeout,
                    budget.as_deref(),
                )
                .await
            {
                Err(Sent::Unauthenticated(text)) => {
                    self.forget(target, addr);
                    if retried {
                        return Err(PeerError::Unreachable(
                            target,
                            format!("refused our session: {text}"),
                        ));
                    }
                    retried = true;
                }
                Err(Sent::Broken(e)) => {
                    // Perhaps the peer forgot the session and refused the request
                    // without reading it (a 401 lost when it closed the connection):
                    // the next call proves a new one. Not sent again here: the
                    // request may have been processed.
                    self.forget(target, addr);
                    return Err(e);
                }
                Err(Sent::Other(e)) => return Err(e),
                Ok(bytes) => {
                    return codec::decode(&bytes)
                        .map_err(|e| PeerError::Failed(target, format!("bad response: {e}")))
                }
            }
        }
    }
}

/// What became of a signed request.
enum Sent {
    /// 401: not processed; a new session may send it again.
    Unauthenticated(String),
    /// The connection broke before an answer (not a connect failure, not a
    /// timeout): it may have been processed; the session is in doubt.
    Broken(PeerError),
    Other(PeerError),
}

impl PeerClient {
    /// The client of a node with this identity (its id and cluster id go with every
    /// request).
    pub fn with_identity(mut self, identity: Arc<ClusterIdentity>) -> Self {
        self.identity = Some(identity);
        self
    }

    fn identity(&self) -> &ClusterIdentity {
        self.identity
            .as_deref()
            .expect("PeerClient::with_identity before the first call")
    }

    /// POSTs `body` to `path` on `addr`: through the lean transport on plain http,
    /// through reqwest with TLS.
    async fn exchange(
        &self,
        addr: &str,
        path: &str,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: bytes::Bytes,
        timeout: Duration,
    ) -> Result<Answer, Failure> {
        let http = match &self.transport {
            Transport::Plain(lean) => return lean.post(addr, path, headers, body, timeout).await,
            Transport::Tls(http) => http,
        };
        let mut builder = http
            .post(format!("https://{addr}{path}"))
            .timeout(timeout)
            .body(body);
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        let resp = builder.send().await.map_err(|e| {
            if e.is_connect() {
                Failure::Connect(e.to_string())
            } else if e.is_timeout() {
                Failure::Timeout(e.to_string())
            } else {
                Failure::Broken(e.to_string())
            }
        })?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .map_err(|e| Failure::Broken(e.to_string()))?;
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    fn forget(&self, target: NodeId, addr: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(target, addr.to_string()));
    }

    /// The proven session with `target` at `addr`, saying hello if there is none.
    async fn session(
        &self,
        target: NodeId,
        addr: &str,
        timeout: Duration,
    ) -> Result<Arc<ClientSession>, PeerError> {
        let key = (target, addr.to_string());
        if let Some(s) = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(s.clone());
        }
        let (session, _) = self
            .hello(target, addr, timeout)
            .await
            .map_err(|e| match e {
                // Not proven: nothing was sent; openraft backs off as for an unreachable peer.
                PeerError::Refused(t, _, why) => PeerError::Unreachable(t, why),
                e => e,
            })?;
        let session = Arc::new(session);
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        // A node's session at an address it has left (its address changed in the
        // membership) is dropped: the map holds at most one session a peer.
        sessions.retain(|(t, a), _| *t != target || *a == key.1);
        sessions.insert(key, session.clone());
        Ok(session)
    }

    /// Says hello to `target` at `addr`: succeeds only if the answer proves the
    /// secret (and names no other cluster); gives the session and the peer's
    /// cluster id. Nothing but a nonce and ids is sent. Fails `Unreachable` when no
    /// answer came, `Refused` when the answer proved nothing or was a refusal.
    pub async fn hello(
        &self,
        target: NodeId,
        addr: &str,
        timeout: Duration,
    ) -> Result<(ClientSession, Option<String>), PeerError> {
        let identity = self.identity();
        let hs = Handshake::new(identity.me(), target, identity.id());
        let unproven = |why: String| {
            warn_unproven(target, addr, &why);
            PeerError::Refused(target, 401, why)
        };
        let answer = self
            .exchange(
                addr,
                paths::HELLO,
                vec![(target_header(), header_value(target.to_string()))],
                codec::encode(&hs.hello).into(),
                timeout.min(Duration::from_secs(2)),
            )
            .await
            .map_err(|e| PeerError::Unreachable(target, e.to_string()))?;
        let (status, bytes) = (answer.status, answer.body);
        if !status.is_success() {
            return Err(unproven(format!(
                "hello refused ({status}): {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        let reply: peer_auth::HelloReply = codec::decode(&bytes).map_err(|e| {
            unproven(format!(
                "no proof that it holds the cluster secret (an undecodable answer to hello: {e})"
            ))
        })?;
        hs.finish(self.secret.as_bytes(), &reply)
            .map_err(|e| unproven(e.to_string()))
    }

    /// Sends one signed request in `session`; the answer's bytes once its MAC checks.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        session: &ClientSession,
        target: NodeId,
        addr: &str,
        path: &str,
        body: Body,
        timeout: Duration,
        budget: Option<&str>,
    ) -> Result<bytes::Bytes, Sent> {
        let identity = self.identity();
        let cluster = identity.id().unwrap_or_default();
        let role = if path == paths::APPEND || path == paths::SNAPSHOT {
            identity.role_of(target)
        } else {
            ""
        };
        let (seq, mac) = session.sign(&Signed {
            path,
            cluster: &cluster,
            role,
            budget: budget.unwrap_or(""),
            body: body.bytes(),
            body_sha256: Some(body.sha256()),
        });
        let h = |name: &'static str, value: String| {
            (HeaderName::from_static(name), header_value(value))
        };
        let mut headers = vec![
            h(peer_auth::SESSION_HEADER, session.token.clone()),
            h(peer_auth::FROM_HEADER, identity.me().to_string()),
            h(peer_auth::SEQ_HEADER, seq.to_string()),
            h(peer_auth::MAC_HEADER, mac),
            h(peer_auth::CLUSTER_HEADER, cluster),
            h(peer_auth::ROLE_HEADER, role.to_string()),
            (target_header(), header_value(target.to_string())),
        ];
        if let Some(budget) = budget {
            headers.push(h(BUDGET_HEADER, budget.to_string()));
        }
        let answer = self
            .exchange(addr, path, headers, body.bytes().clone(), timeout)
            .await
            .map_err(|e| match e {
                Failure::Connect(e) => Sent::Other(PeerError::Unreachable(target, e)),
                Failure::Timeout(e) => Sent::Other(PeerError::Failed(target, e)),
                Failure::Broken(e) => Sent::Broken(PeerError::Failed(target, e)),
            })?;
        let status = answer.status;
        let answer_mac = answer
            .headers
            .get(peer_auth::MAC_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = answer.body;
        if status.as_u16() == 401 {
            return Err(Sent::Unauthenticated(
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
        }
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            // The peer's handlers answer every request they process with 200 and an
            // encoded result, so any other status was given before processing: the
            // wrong node or overload (another node, or later, may take it), or a
            // request this peer can never take (400, 403 another cluster, 409 a
            // node without data addressed as a voter, 413, ...).
            if matches!(status.as_u16(), 421 | 503) {
                return Err(Sent::Other(PeerError::Unreachable(
                    target,
                    format!("{status}: {text}"),
                )));
            }
            return Err(Sent::Other(PeerError::Refused(
                target,
                status.as_u16(),
                text.into_owned(),
            )));
        }
        if !session.verify_answer(seq, status.as_u16(), &bytes, answer_mac.as_deref()) {
            // Processed or not, the answer cannot be trusted.
            return Err(Sent::Other(PeerError::Failed(
                target,
                "the answer's MAC is wrong".into(),
            )));
        }
        Ok(bytes)
    }
}

fn target_header() -> HeaderName {
    HeaderName::from_static(TARGET_HEADER)
}

/// A header value from text the node made (ids, numbers, hex, tokens); one that is
/// not a valid header value (never expected) goes empty, and the peer refuses it.
fn header_value(text: String) -> HeaderValue {
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Logs that a peer did not prove the secret, at most every ten seconds (openraft
/// retries an unreachable peer several times a second).
fn warn_unproven(target: NodeId, addr: &str, why: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let now = START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs()
        + 10;
    let last = LAST.load(Ordering::Relaxed);
    if now >= last + 10
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(
            target,
            addr,
            reason = why,
            "peer not trusted: nothing but a hello was sent to it"
        );
    }
}

/// Makes a [`Connection`] per target for openraft.
#[derive(Clone)]
pub struct Network {
    client: PeerClient,
    replication_timeout: Duration,
    max_replication_bytes: usize,
    encoded: Option<EncodedEntries>,
    bodies: SharedBodies,
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
            encoded: None,
            bodies: SharedBodies::default(),
        }
    }

    /// Sends entries as the log store encoded them (see the module doc).
    pub fn with_encoded_entries(self, encoded: EncodedEntries) -> Self {
        Network {
            encoded: Some(encoded),
            ..self
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
            encoded: self.encoded.clone(),
            bodies: self.bodies.clone(),
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
    encoded: Option<EncodedEntries>,
    bodies: SharedBodies,
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
        // The entries as the log store wrote them, while all are cached.
        let mut encoded: Option<Vec<bytes::Bytes>> = self
            .encoded
            .as_ref()
            .and_then(|cache| rpc.entries.iter().map(|e| cache.get(&e.log_id)).collect());
        // Only the prefix that fits in the byte bound goes (see the module doc).
        let fit = match &encoded {
            Some(bytes) => {
                entries_that_fit(bytes.iter().map(|b| b.len()), self.max_replication_bytes)
            }
            None => entries_that_fit(
                rpc.entries.iter().map(codec::encoded_len),
                self.max_replication_bytes,
            ),
        };
        let cut = (fit < rpc.entries.len()).then(|| {
            metrics::counter!("sq_replication_requests_cut_total").increment(1);
            rpc.entries.truncate(fit);
            if let Some(bytes) = encoded.as_mut() {
                bytes.truncate(fit);
            }
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
                // The other followers' connections take the same body, hashed once.
                let body_key = BodyKey {
                    vote: key.vote,
                    prev: key.prev,
                    last: key.last,
                    entries: key.entries,
                    leader_commit: rpc.leader_commit,
                };
                let body = self.bodies.get_or_build(body_key, || match encoded {
                    Some(entries) => codec::append_request(
                        &rpc.vote,
                        &rpc.prev_log_id,
                        &entries,
                        &rpc.leader_commit,
                    ),
                    None => codec::encode_sized(&rpc),
                });
                drop(rpc);
                let task = tokio::spawn(async move {
                    client
                        .call_encoded(target, &addr, paths::APPEND, body, timeout, None)
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
        if matches!(response, AppendEntriesResponse::Success) {
            // It holds entries now: remembered, so a wiped copy of it cannot
            // bootstrap again (see `identity`).
            self.client.identity().saw_participant(self.target);
        }
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
        let response: VoteResponse<NodeId> = self.rpc(paths::VOTE, &rpc, &option).await?;
        if response.vote_granted {
            self.client.identity().saw_participant(self.target);
        }
        Ok(response)
    }

    fn backoff(&self) -> openraft::network::Backoff {
        // Retry an unreachable peer every 200 ms rather than openraft's 500 ms, so a
        // restarted node is caught up quickly.
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}

#[cfg(test)]
#[path = "network_tests.rs"]
mod tests;
