//! The peer channel's server: node-to-node HTTP on its own listener, so the public API
//! can be exposed without exposing Raft.
//!
//! Endpoints (bincode bodies, see [`crate::codec`]): Raft's append, vote and snapshot
//! RPCs, forwarded writes (`propose`) and the leader's read index. A request must
//! carry the cluster secret (compared in constant time; 401 otherwise) and name this
//! node as its target (421 otherwise). The client side is [`crate::raft::network`].

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;
use subtle::ConstantTimeEq;

use crate::codec;
use crate::machine::Command;
use crate::raft::network::{paths, BUDGET_HEADER, SECRET_HEADER, TARGET_HEADER};
use crate::raft::proposer::Proposer;
use crate::raft::read::leader_read_index;
use crate::raft::types::{NodeId, Raft, TypeConfig};

/// Largest peer request: one replication request of up to 16 full batches, or a
/// snapshot chunk.
const MAX_PEER_BODY: usize = 512 << 20;

/// What the peer handlers need.
pub struct PeerContext {
    pub id: NodeId,
    pub raft: Raft,
    pub proposer: Proposer,
    pub secret: String,
    pub write_timeout: Duration,
}

/// The peer channel's routes.
pub fn router(ctx: Arc<PeerContext>) -> Router {
    Router::new()
        .route(paths::APPEND, post(append))
        .route(paths::VOTE, post(vote))
        .route(paths::SNAPSHOT, post(snapshot))
        .route(paths::PROPOSE, post(propose))
        .route(paths::READ_INDEX, post(read_index))
        .layer(middleware::from_fn_with_state(ctx.clone(), authenticate))
        .layer(DefaultBodyLimit::max(MAX_PEER_BODY))
        .with_state(ctx)
}

async fn authenticate(
    State(ctx): State<Arc<PeerContext>>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let secret = headers
        .get(SECRET_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if !bool::from(secret.ct_eq(ctx.secret.as_bytes())) {
        tracing::warn!(path = %request.uri().path(), "peer request without the cluster secret refused");
        return (StatusCode::UNAUTHORIZED, "missing or wrong cluster secret").into_response();
    }
    let target = headers
        .get(TARGET_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<NodeId>().ok());
    if target != Some(ctx.id) {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            format!("this is node {}, not {target:?}", ctx.id),
        )
            .into_response();
    }
    next.run(request).await
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    codec::decode(body)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("undecodable body: {e}")).into_response())
}

fn encoded<T: Serialize>(value: &T) -> Response {
    codec::encode(value).into_response()
}

async fn append(State(ctx): State<Arc<PeerContext>>, body: Bytes) -> Response {
    let req: AppendEntriesRequest<TypeConfig> = match decode(&body) {
        Ok(r) => r,
        Err(e) => return e,
    };
    encoded(&ctx.raft.append_entries(req).await)
}

async fn vote(State(ctx): State<Arc<PeerContext>>, body: Bytes) -> Response {
    let req: VoteRequest<NodeId> = match decode(&body) {
        Ok(r) => r,
        Err(e) => return e,
    };
    encoded(&ctx.raft.vote(req).await)
}

async fn snapshot(State(ctx): State<Arc<PeerContext>>, body: Bytes) -> Response {
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
    encoded(&leader_read_index(&ctx.raft).await)
}
