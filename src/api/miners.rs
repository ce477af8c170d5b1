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

use super::copies::AssignmentRead;
use super::wire::{assignment_json, miner_json, Empty, RegisterMiner};
use super::{auth, propose, ApiError, JsonBody, QueryParams};
use crate::machine::{Command, MinerAuth, MinerState, Response, TaskId};
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
    // Copied under the lock, encoded after it.
    let copy = node
        .state
        .read(|s| s.miner(auth.miner).cloned().map(|m| (m, node.state.applied_index())));
    Ok(Json(copy.map_or_else(
        || json!({"id": auth.miner.to_string()}),
        |(m, index)| miner_json(&m, index),
    )))
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
    let copy = node
        .state
        .read(|s| s.miner(auth.miner).cloned().map(|m| (m, node.state.applied_index())));
    copy.map(|(m, index)| Json(miner_json(&m, index)))
        .ok_or_else(|| ApiError::NotFound(format!("unknown miner {id}")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignmentsQuery {
    wait_ms: Option<u64>,
    after: Option<u64>,
    /// Most entries in the answer (default [`DEFAULT_PAGE`], at most [`MAX_PAGE`]).
    limit: Option<usize>,
    /// Start after this task id: the `next_after_task` of the previous page.
    after_task: Option<String>,
}

/// Entries of an assignments answer unless the miner asks for another `limit`.
pub const DEFAULT_PAGE: usize = 100;
/// The largest `limit`: the largest miner capacity, so a miner asking for its
/// capacity always gets its whole list in one answer.
pub const MAX_PAGE: usize = crate::machine::limits::MAX_CAPACITY as usize;

/// The miner's unfinished assignments, and the `applied_index` at which they were read.
///
/// Paged, oldest task first: at most `limit` entries (default 100, at most 4096, the
/// largest capacity; 400 above); `next_after_task` names the last entry when more
/// follow (pass it as `after_task` for the next page), else it is null. The long poll
/// below looks at the whole list, whatever page is asked for.
///
/// With `wait_ms`, a long poll: without `after`, it waits (at most that long) until
/// the miner has an assignment; with `after` (the `applied_index` of the previous
/// answer), until the miner's list may have changed since then: a transition of a
/// task it holds or held a slot of, or the miner declared gone. Other entries (other
/// miners' work, heartbeats, refused writes, other sessions) do not wake it, so a
/// miner waiting on others neither spins nor misses its turn. A gone miner is
/// answered 409 at once.
pub async fn assignments(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    QueryParams(q): QueryParams<AssignmentsQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let auth = auth::miner_itself(&node, &headers, &id).await?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad(format!("limit must be 1..={MAX_PAGE}")));
    }
    let after_task = match q.after_task.as_deref() {
        Some(t) => Some(
            t.parse::<TaskId>()
                .map_err(|_| ApiError::bad(format!("after_task {t:?} is not a task id")))?,
        ),
        None => None,
    };
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(0).min(node.config.max_wait_ms));
    let deadline = Instant::now() + wait;
    // Subscribed before the first look, so no change between look and wait is missed.
    let mut changes = node.state.watch_miner(auth.miner);
    let stop = node.stop.wait();
    tokio::pin!(stop);
    loop {
        let (gone, busy) = node.state.read(|s| match s.miner(auth.miner) {
            Some(m) => (m.state == MinerState::Gone, !m.active.is_empty()),
            None => (true, false),
        });
        if gone {
            return Err(ApiError::Conflict(format!(
                "miner {} is gone (missed heartbeats or left); register again",
                auth.miner
            )));
        }
        let ready = match q.after {
            Some(after) => node.state.miner_changed_at(auth.miner) > after,
            None => busy,
        };
        if ready || Instant::now() >= deadline {
            // Copies under the lock (payloads included); base64 and JSON after it.
            let (copies, more, index) = node.state.read(|s| {
                let (page, more) = s.assignments_page(auth.miner, after_task, limit);
                let copies: Vec<_> = page
                    .into_iter()
                    .map(|(t, slot)| {
                        // The miner's latest slot of the task (a task may come back
                        // to a miner that held it): its state, and when it was given,
                        // which tells a new slot from an old one.
                        let latest = t.assignments.iter().rev().find(|a| a.miner == auth.miner);
                        (
                            AssignmentRead::of(t),
                            latest.map_or(slot, |a| a.state),
                            latest.map(|a| a.assigned_ms),
                        )
                    })
                    .collect();
                (copies, more, node.state.applied_index())
            });
            let list: Vec<serde_json::Value> = copies
                .iter()
                .map(|(t, slot, assigned_ms)| {
                    let mut v = assignment_json(t, *slot);
                    v["assigned_ms"] = json!(assigned_ms);
                    v
                })
                .collect();
            let next = if more {
                list.last().map(|v| v["task_id"].clone())
            } else {
                None
            };
            return Ok(Json(
                json!({"assignments": list, "next_after_task": next, "applied_index": index}),
            ));
        }
        tokio::select! {
            changed = changes.changed() => {
                // Closed: the miner was forgotten, and the next look answers so.
                if changed.is_err() && node.state.read(|s| s.miner(auth.miner).is_some()) {
                    changes = node.state.watch_miner(auth.miner);
                }
            }
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
