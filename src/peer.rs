//! The peer channel's server: node-to-node HTTP on its own listener, so the public API
//! can be exposed without exposing Raft.
//!
//! Endpoints (bincode bodies, see [`crate::codec`]): Raft's append, vote and snapshot
//! RPCs, forwarded writes (`propose`), the leader's read index, a node's status for
//! a bootstrapping peer, and `hello`, the only one open to anyone: it proves this
//! node holds the cluster secret without revealing it ([`crate::raft::peer_auth`]).
//! Every other request must carry a valid session MAC (401 otherwise, before
//! anything is processed), name this node as its target (421 otherwise) and this
//! node's cluster id (403 otherwise); every 200 answer is signed.
//!
//! A node without a cluster id (an empty data directory) never votes, and takes
//! entries only from a leader that counts it as a learner, adopting that leader's
//! cluster id: it joins as a new member, never as the voter it may have been
//! ([`crate::raft::identity`]). The client side is [`crate::raft::network`].

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Extension, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use openraft::raft::{InstallSnapshotRequest, VoteRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec;
use crate::machine::Command;
use crate::raft::identity::{role, ClusterIdentity, PeerStatus};
use crate::raft::network::{paths, BUDGET_HEADER, TARGET_HEADER};
use crate::raft::peer_auth::{self, Hello, PeerAuth, Signed};
use crate::raft::proposer::Proposer;
use crate::raft::read::leader_read_index;
use crate::raft::types::{NodeId, Raft, TypeConfig};
use crate::store::EncodedEntries;

/// Largest peer request: one replication request of up to 16 full batches, or a
/// snapshot chunk.
const MAX_PEER_BODY: usize = 512 << 20;

/// Largest hello body (the only request read from a sender not yet proven).
const HELLO_BODY_LIMIT: usize = 4096;

/// What the peer handlers need.
pub struct PeerContext {
    pub id: NodeId,
    pub raft: Raft,
    pub proposer: Proposer,
    pub auth: PeerAuth,
    /// The log store's cache, offered the bytes replicated entries arrive in.
    pub encoded: EncodedEntries,
    pub identity: Arc<ClusterIdentity>,
    pub write_timeout: Duration,
    /// Read index floor of a leadership restored at start (see `raft::read`).
    pub restored: crate::raft::read::RestoredLeadership,
    /// When a refusal to act as a wiped voter was last logged (at most every 10 s).
    pub refused_logged: std::sync::Mutex<Option<std::time::Instant>>,
}

/// The authenticated sender of a request.
#[derive(Clone, Copy, Debug)]
struct Sender(NodeId);

/// The peer channel's routes.
pub fn router(ctx: Arc<PeerContext>) -> Router {
    Router::new()
        .route(paths::APPEND, post(append))
        .route(paths::VOTE, post(vote))
        .route(paths::SNAPSHOT, post(snapshot))
        .route(paths::PROPOSE, post(propose))
        .route(paths::READ_INDEX, post(read_index))
        .route(paths::STATUS, post(status))
        .layer(middleware::from_fn_with_state(ctx.clone(), authenticate))
        // Open to anyone: it reveals no secret and changes nothing. Its body is a
        // few dozen bytes, so it is read (and decoded) within a small bound.
        .route(paths::HELLO, post(hello))
        .layer(DefaultBodyLimit::max(MAX_PEER_BODY))
        .with_state(ctx)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Checks a request's target, MAC, sequence number and cluster id before any
/// handler sees it, then signs the handler's answer.
async fn authenticate(
    State(ctx): State<Arc<PeerContext>>,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let target = header(&parts.headers, TARGET_HEADER).and_then(|v| v.parse::<NodeId>().ok());
    if let Some(target) = target.filter(|t| *t != ctx.id) {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            format!("this is node {}, not {target}", ctx.id),
        )
            .into_response();
    }
    // Only a sender with a proven session gets its body read (up to MAX_PEER_BODY).
    let proven = match ctx.auth.check_session(
        header(&parts.headers, peer_auth::SESSION_HEADER),
        header(&parts.headers, peer_auth::FROM_HEADER),
    ) {
        Ok(proven) => proven,
        Err(refusal) => return refused(&path, refusal),
    };
    let body = match read_body(&parts.extensions, body, MAX_PEER_BODY).await {
        Ok(b) => b,
        Err(refused) => return refused,
    };
    let h = &parts.headers;
    let cluster = header(h, peer_auth::CLUSTER_HEADER).unwrap_or("");
    let signed = Signed {
        path: &path,
        cluster,
        role: header(h, peer_auth::ROLE_HEADER).unwrap_or(""),
        budget: header(h, BUDGET_HEADER).unwrap_or(""),
        body: &body,
        body_sha256: None,
    };
    let verified = match ctx.auth.verify(
        proven,
        header(h, peer_auth::SEQ_HEADER),
        header(h, peer_auth::MAC_HEADER),
        &signed,
    ) {
        Ok(v) => v,
        Err(refusal) => return refused(&path, refusal),
    };
    // A node of another cluster is refused; a node without an id yet may only ask
    // for the status (it is bootstrapping).
    if let Some(ours) = ctx.identity.id() {
        if cluster != ours && !(cluster.is_empty() && path == paths::STATUS) {
            tracing::warn!(
                from = verified.from,
                theirs = cluster,
                ours = %ours,
                "peer request from another cluster refused"
            );
            return (
                StatusCode::FORBIDDEN,
                format!(
                    "node {} belongs to another cluster ({ours}, not {cluster:?})",
                    ctx.id
                ),
            )
                .into_response();
        }
    }
    parts.extensions.insert(Sender(verified.from));
    let response = next.run(Request::from_parts(parts, Body::from(body))).await;
    let (mut parts, body) = response.into_parts();
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    if parts.status == StatusCode::OK {
        let mac = verified.sign_answer(200, &body);
        if let Ok(v) = HeaderValue::from_str(&mac) {
            parts.headers.insert(peer_auth::MAC_HEADER, v);
        }
    }
    Response::from_parts(parts, Body::from(body))
}

/// Reads a request's body of at most `limit` bytes; one announced larger is
/// refused before any of it is read.
async fn read_body(
    extensions: &axum::http::Extensions,
    body: Body,
    limit: usize,
) -> Result<Bytes, Response> {
    use axum::body::HttpBody;
    if body.size_hint().lower() > limit as u64 {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a body of at most {limit} bytes is read here"),
        )
            .into_response());
    }
    let deadline = extensions.get::<crate::listener::BodyDeadline>().cloned();
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        match deadline.filter(|d| d.expired()) {
            // Too slow (--body-read-timeout-ms), not too large.
            Some(d) => (StatusCode::REQUEST_TIMEOUT, d.error().to_string()).into_response(),
            None => (StatusCode::PAYLOAD_TOO_LARGE, e.to_string()).into_response(),
        }
    })
}

/// The answer to a request whose session, MAC or sequence number failed.
fn refused(path: &str, refusal: peer_auth::Refusal) -> Response {
    if refusal == peer_auth::Refusal::UnknownSession {
        // Usually a peer whose session predates this process: it says hello again.
        tracing::info!(path = %path, "peer request {refusal}; refused");
    } else {
        tracing::warn!(path = %path, "peer request {refusal}; refused");
    }
    (StatusCode::UNAUTHORIZED, refusal.to_string()).into_response()
}

/// Answers a hello meant for this node with proof that it holds the secret.
async fn hello(State(ctx): State<Arc<PeerContext>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = match read_body(&parts.extensions, body, HELLO_BODY_LIMIT).await {
        Ok(b) => b,
        Err(refused) => return refused,
    };
    let hello: Hello = match codec::decode_small(&body) {
        Ok(h) => h,
        Err(e) => return undecodable(e),
    };
    let ours = ctx.identity.id();
    if let (Some(ours), Some(theirs)) = (&ours, &hello.cluster) {
        if ours != theirs {
            tracing::warn!(
                from = hello.from,
                theirs = %theirs,
                ours = %ours,
                "hello from a node of another cluster refused"
            );
            return (
                StatusCode::FORBIDDEN,
                format!("this node belongs to another cluster ({ours}, not {theirs})"),
            )
                .into_response();
        }
    }
    if hello.to != ctx.id {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            format!("this is node {}, not {}", ctx.id, hello.to),
        )
            .into_response();
    }
    encoded(&ctx.auth.answer_hello(&hello, ours))
}

/// What a bootstrapping node asks: this node's cluster id, and whether the asker
/// took part before (then it must not bootstrap again).
async fn status(
    State(ctx): State<Arc<PeerContext>>,
    Extension(Sender(from)): Extension<Sender>,
) -> Response {
    encoded(&PeerStatus {
        cluster: ctx.identity.id(),
        remembers_you: ctx.identity.remembers(from),
    })
}

/// For a node without a cluster id: adopts the leader's if the leader counts this
/// node as a learner; refuses (409) if it counts it as a voter.
fn admit_replication(ctx: &PeerContext, headers: &HeaderMap, from: NodeId) -> Result<(), Response> {
    if ctx.identity.id().is_some() {
        return Ok(());
    }
    let cluster = header(headers, peer_auth::CLUSTER_HEADER).unwrap_or("");
    let role = header(headers, peer_auth::ROLE_HEADER).unwrap_or("");
    if role == role::LEARNER && !cluster.is_empty() {
        return match ctx.identity.adopt(cluster) {
            Ok(()) => {
                tracing::info!(leader = from, cluster, "joined the cluster as a learner");
                Ok(())
            }
            Err(e) => Err((StatusCode::INTERNAL_SERVER_ERROR, e).into_response()),
        };
    }
    let message = format!(
        "node {id} has an empty data directory (no cluster id), but leader {from} counts it as a \
         {role}: it will not act as the member it may have been (its log and votes are lost). \
         Replace it: remove member {id}, start a node with a new id and an empty data directory \
         (--initial-cluster-state existing), and add that one (docs/DEPLOY.md)",
        id = ctx.id,
        role = if role.is_empty() { "member" } else { role },
    );
    if role == role::VOTER {
        let mut logged = ctx.refused_logged.lock().unwrap_or_else(|e| e.into_inner());
        if logged.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
            *logged = Some(std::time::Instant::now());
            tracing::error!("{message}");
        }
    } else {
        // Not (yet) in the leader's membership view: a learner being added is
        // replicated to as its membership entry is appended.
        tracing::debug!("{message}");
    }
    Err((StatusCode::CONFLICT, message).into_response())
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    codec::decode(body).map_err(undecodable)
}

fn undecodable(e: codec::CodecError) -> Response {
    (StatusCode::BAD_REQUEST, format!("undecodable body: {e}")).into_response()
}

fn encoded<T: Serialize>(value: &T) -> Response {
    codec::encode(value).into_response()
}

async fn append(
    State(ctx): State<Arc<PeerContext>>,
    Extension(Sender(from)): Extension<Sender>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refused) = admit_replication(&ctx, &headers, from) {
        return refused;
    }
    let (req, own) = match codec::decode_append_request(&body) {
        Ok(r) => r,
        Err(e) => return undecodable(e),
    };
    // The log stores the entries as they arrived, rather than encoding them again.
    let ids = req.entries.iter().map(|e| e.log_id);
    let _offered = ctx.encoded.offer(ids.zip(own.into_iter().map(Bytes::from)));
    encoded(&ctx.raft.append_entries(req).await)
}

async fn vote(State(ctx): State<Arc<PeerContext>>, body: Bytes) -> Response {
    if ctx.identity.id().is_none() {
        return (
            StatusCode::CONFLICT,
            format!(
                "node {} has an empty data directory (no cluster id): it does not vote",
                ctx.id
            ),
        )
            .into_response();
    }
    let req: VoteRequest<NodeId> = match decode(&body) {
        Ok(r) => r,
        Err(e) => return e,
    };
    encoded(&ctx.raft.vote(req).await)
}

async fn snapshot(
    State(ctx): State<Arc<PeerContext>>,
    Extension(Sender(from)): Extension<Sender>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refused) = admit_replication(&ctx, &headers, from) {
        return refused;
    }
    let req: InstallSnapshotRequest<TypeConfig> = match decode(&body) {
        Ok(r) => r,
        Err(e) => return e,
    };
    encoded(&ctx.raft.install_snapshot(req).await)
}

async fn propose(State(ctx): State<Arc<PeerContext>>, headers: HeaderMap, body: Bytes) -> Response {
    let commands: Vec<Command> = match decode(&body) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let budget = headers
        .get(BUDGET_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis)
        .unwrap_or(ctx.write_timeout)
        .min(ctx.write_timeout);
    encoded(&ctx.proposer.propose_forwarded(commands, budget).await)
}

async fn read_index(State(ctx): State<Arc<PeerContext>>, body: Bytes) -> Response {
    if let Err(e) = decode::<()>(&body) {
        return e;
    }
    encoded(&leader_read_index(&ctx.raft, ctx.restored).await)
}
