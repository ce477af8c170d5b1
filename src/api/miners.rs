//! Miners: register, heartbeat, drain, leave, read; their assignments (long-polled);
//! and the node pool with its scaling signal.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::wire::{assignment_json, miner_json, Empty, RegisterMiner};
use super::{auth, propose, ApiError, JsonBody, QueryParams};
use crate::machine::{Command, MinerAuth, Response};
use crate::node::Node;

pub async fn register(
    State(node): State<Arc<Node>>,
    JsonBody(body): JsonBody<RegisterMiner>,
) -> Result<impl IntoResponse, ApiError> {
    let (token, token_hash) = auth::new_miner_token();
    let command = Command::RegisterMiner {
        name: body.name,
        capacity: body.capacity.unwrap_or(1),
        tags: body.tags,
        token_hash,
        heartbeat_timeout_ms: body
            .heartbeat_timeout_ms
            .unwrap_or(node.config.miner_heartbeat_timeout_ms),
    };
    match propose(&node, command).await? {
        Response::MinerRegistered { miner } => Ok((
            StatusCode::CREATED,
            Json(json!({"miner_id": miner.to_string(), "token": token})),
        )),
        _ => Err(ApiError::Internal("unexpected response".into())),
    }
}

async fn miner_update(
    node: &Node,
    command: Command,
    auth: MinerAuth,
) -> Result<Json<serde_json::Value>, ApiError> {
    propose(node, command).await?;
    let body = node.state.read(|s| {
        s.miner(auth.miner)
            .map(|m| miner_json(m, node.state.applied_index()))
    });
    Ok(Json(
        body.unwrap_or_else(|| json!({"id": auth.miner.to_string()})),
    ))
}

pub async fn heartbeat(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(_): JsonBody<Empty>,
) -> Result<impl IntoResponse, ApiError> {
    let auth = auth::miner_itself(&node, &headers, &id).await?;
    miner_update(&node, Command::Heartbeat { auth }, auth).await
}

pub async fn drain(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(_): JsonBody<Empty>,
) -> Result<impl IntoResponse, ApiError> {
    let auth = auth::miner_itself(&node, &headers, &id).await?;
    miner_update(&node, Command::DrainMiner { auth }, auth).await
}

pub async fn deregister(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let auth = auth::miner_itself(&node, &headers, &id).await?;
    miner_update(&node, Command::DeregisterMiner { auth }, auth).await
}

pub async fn read(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let auth = auth::miner_itself(&node, &headers, &id).await?;
    let body = node.state.read(|s| {
        s.miner(auth.miner)
            .map(|m| miner_json(m, node.state.applied_index()))
    });
    body.map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("unknown miner {id}")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignmentsQuery {
    wait_ms: Option<u64>,
    after: Option<u64>,
}

/// The miner's unfinished assignments. With `wait_ms`, waits (at most that long) until
/// there is one; with `after` too, until there is one and the applied index has moved
/// past `after` (the `applied_index` of the previous answer), so a miner waiting on
/// other miners does not spin.
pub async fn assignments(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    QueryParams(q): QueryParams<AssignmentsQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let auth = auth::miner_itself(&node, &headers, &id).await?;
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(0).min(node.config.max_wait_ms));
    let deadline = Instant::now() + wait;
    let mut applied = node.state.watch_applied();
    let stop = node.stop.wait();
    tokio::pin!(stop);
    loop {
        let (list, index) = node.state.read(|s| {
            let list: Vec<serde_json::Value> = s
                .assignments_of(auth.miner)
                .into_iter()
                .map(|(t, slot)| assignment_json(t, slot))
                .collect();
            (list, node.state.applied_index())
        });
        let moved = q.after.is_none_or(|after| index > after);
        if (!list.is_empty() && moved) || Instant::now() >= deadline {
            return Ok(Json(json!({"assignments": list, "applied_index": index})));
        }
        tokio::select! {
            changed = applied.changed() => if changed.is_err() { return Err(ApiError::Internal("node stopping".into())) },
            _ = tokio::time::sleep_until(deadline.into()) => {}
            _ = &mut stop => return Err(ApiError::Unavailable { code: "unavailable", message: "node stopping".into(), retry_after: 1 }),
        }
    }
}

/// The node pool and its scaling signal.
pub async fn pool(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let (pool, depth) = node.state.read(|s| (s.pool(), s.depth()));
    Json(json!({"pool": pool, "tasks": depth, "applied_index": node.state.applied_index()}))
}
