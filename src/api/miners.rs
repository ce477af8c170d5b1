//! Miners: register, heartbeat, drain, leave, read; their assignments (long-polled);
//! and the node pool with its scaling signal.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::ErrorBody;
use super::replies::{AssignmentsPage, MinerAssignment, MinerRegistered, MinerView, PoolStatus};
use super::wire::{base64, Empty, RegisterMiner};
use super::{auth, lookup, propose, ApiError, JsonBody, QueryParams};
use crate::machine::{Command, MinerAuth, MinerState, Response, TaskId};
use crate::node::Node;

/// Registers a miner in the node pool; its token is returned once.
#[utoipa::path(post, path = "/v1/miners", tag = "miners", operation_id = "register_miner",
    request_body = RegisterMiner,
    responses(
        (status = 201, description = "Registered, once committed and applied", body = MinerRegistered,
            links(
                ("read" = (operation_id = "read_miner", parameters(("id" = "$response.body#/miner_id")))),
                ("heartbeat" = (operation_id = "heartbeat_miner", parameters(("id" = "$response.body#/miner_id")))),
                ("assignments" = (operation_id = "miner_assignments", parameters(("id" = "$response.body#/miner_id"))))
            )),
        (status = 400, description = "A name, capacity or tag out of range (`invalid`)", body = ErrorBody),
        (status = 401, description = "Missing or wrong miner key (or API key), when the node has one (`unauthorized`)", body = ErrorBody),
        (status = 429, description = "The pool holds 65,536 miners (gone ones until forgotten), the most it may (`state_full`); nothing written", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ),
    security(("miner_key" = []), ("api_key" = [])))]
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
            Json(MinerRegistered {
                miner_id: miner.to_string(),
                token,
            }),
        )),
        _ => Err(ApiError::Internal("unexpected response".into())),
    }
}

/// Proposes a change of the calling miner and answers with the miner as it is after it
/// (a follower that has not applied the change yet catches up first).
async fn miner_update(
    node: &Node,
    command: Command,
    auth: MinerAuth,
) -> Result<Json<MinerView>, ApiError> {
    propose(node, command).await?;
    let view = |s: &crate::machine::State| {
        s.miner(auth.miner)
            .map(|m| MinerView::from_miner(m, node.state.applied_index()))
    };
    lookup(node, view)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("miner {} is forgotten", auth.miner)))
}

/// Keeps the miner alive.
#[utoipa::path(post, path = "/v1/miners/{id}/heartbeat", tag = "miners", operation_id = "heartbeat_miner",
    params(("id" = String, Path, description = "Miner id (`m-…`)")),
    request_body(content = Empty, description = "Empty, `{}`, or no body"),
    responses(
        (status = 200, description = "The miner after the heartbeat", body = MinerView),
        (status = 403, description = "The token belongs to another miner (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such miner (`not_found`)", body = ErrorBody),
        (status = 409, description = "The miner is gone (missed heartbeats or left) (`conflict`)", body = ErrorBody),
    ),
    security(("miner_token" = [])))]
pub async fn heartbeat(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(_empty): JsonBody<Empty>,
) -> Result<impl IntoResponse, ApiError> {
    let auth = auth::miner_itself(&node, &headers, &id).await?;
    miner_update(&node, Command::Heartbeat { auth }, auth).await
}

/// The miner finishes its current work and takes no more; gone when done.
#[utoipa::path(post, path = "/v1/miners/{id}/drain", tag = "miners", operation_id = "drain_miner",
    params(("id" = String, Path, description = "Miner id (`m-…`)")),
    request_body(content = Empty, description = "Empty, `{}`, or no body"),
    responses(
        (status = 200, description = "The miner, draining", body = MinerView),
        (status = 403, description = "The token belongs to another miner (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such miner (`not_found`)", body = ErrorBody),
        (status = 409, description = "The miner is gone (`conflict`)", body = ErrorBody),
    ),
    security(("miner_token" = [])))]
pub async fn drain(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(_empty): JsonBody<Empty>,
) -> Result<impl IntoResponse, ApiError> {
    let auth = auth::miner_itself(&node, &headers, &id).await?;
    miner_update(&node, Command::DrainMiner { auth }, auth).await
}

/// The miner leaves the pool; its unfinished slots go back to the queue.
#[utoipa::path(delete, path = "/v1/miners/{id}", tag = "miners", operation_id = "deregister_miner",
    params(("id" = String, Path, description = "Miner id (`m-…`)")),
    responses(
        (status = 200, description = "The miner, gone", body = MinerView),
        (status = 403, description = "The token belongs to another miner (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such miner (`not_found`)", body = ErrorBody),
        (status = 409, description = "The miner is gone already (`conflict`)", body = ErrorBody),
    ),
    security(("miner_token" = [])))]
pub async fn deregister(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let auth = auth::miner_itself(&node, &headers, &id).await?;
    miner_update(&node, Command::DeregisterMiner { auth }, auth).await
}

/// The calling miner, from this node's applied state.
#[utoipa::path(get, path = "/v1/miners/{id}", tag = "miners", operation_id = "read_miner",
    params(("id" = String, Path, description = "Miner id (`m-…`)")),
    responses(
        (status = 200, description = "The miner", body = MinerView),
        (status = 403, description = "The token belongs to another miner (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such miner (`not_found`)", body = ErrorBody),
    ),
    security(("miner_token" = [])))]
pub async fn read(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let auth = auth::miner_itself(&node, &headers, &id).await?;
    let body = node.state.read(|s| {
        s.miner(auth.miner)
            .map(|m| MinerView::from_miner(m, node.state.applied_index()))
    });
    body.map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("unknown miner {id}")))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AssignmentsQuery {
    /// Long-poll at most this long (capped by the node).
    wait_ms: Option<u64>,
    /// The `applied_index` of the previous answer: wait until the list may have changed.
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
#[utoipa::path(get, path = "/v1/miners/{id}/assignments", tag = "miners", operation_id = "miner_assignments",
    params(("id" = String, Path, description = "Miner id (`m-…`)"), AssignmentsQuery),
    responses(
        (status = 200, description = "One page of the miner's unfinished assignments", body = AssignmentsPage),
        (status = 400, description = "A bad query parameter: `limit` out of 1..=4096, `after_task` not a task id, an unknown parameter (`invalid`)", body = ErrorBody),
        (status = 403, description = "The token belongs to another miner (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such miner (`not_found`)", body = ErrorBody),
        (status = 409, description = "The miner is gone: register again (`conflict`)", body = ErrorBody),
        (status = 503, description = "The node is stopping (`unavailable`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ),
    security(("miner_token" = [])))]
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
    let gone = || {
        ApiError::Conflict(format!(
            "miner {} is gone (missed heartbeats or left); register again",
            auth.miner
        ))
    };
    let mut changes = node.state.watch_miner(auth.miner).ok_or_else(gone)?;
    let stop = node.stop.wait();
    tokio::pin!(stop);
    loop {
        let (is_gone, busy) = node.state.read(|s| match s.miner(auth.miner) {
            Some(m) => (m.state == MinerState::Gone, !m.active.is_empty()),
            None => (true, false),
        });
        if is_gone {
            return Err(gone());
        }
        let ready = match q.after {
            Some(after) => node.state.miner_changed_at(auth.miner) > after,
            None => busy,
        };
        if ready || Instant::now() >= deadline {
            let (mut list, payloads, more, index) = node.state.read(|s| {
                let (page, more) = s.assignments_page(auth.miner, after_task, limit);
                let mut payloads = Vec::with_capacity(page.len());
                let list: Vec<MinerAssignment> = page
                    .into_iter()
                    .map(|(t, slot)| {
                        payloads.push((t.id, s.payload_at(t.id)));
                        // The miner's latest slot of the task (a task may come back
                        // to a miner that held it): its state, and when it was given,
                        // which tells a new slot from an old one.
                        let latest = t.assignments.iter().rev().find(|a| a.miner == auth.miner);
                        MinerAssignment::from_task(
                            t,
                            latest.map_or(slot, |a| a.state),
                            latest.map(|a| a.assigned_ms),
                        )
                    })
                    .collect();
                (list, payloads, more, node.state.applied_index())
            });
            // Outside the lock: the payloads written to the store are read there. One
            // deleted meanwhile (its task finished) is shown as dropped: null.
            let payloads = node.state.payloads(payloads).map_err(ApiError::Internal)?;
            for (entry, payload) in list.iter_mut().zip(payloads) {
                entry.payload = payload.as_deref().map(base64);
            }
            let next = if more {
                list.last().map(|a| a.task_id.clone())
            } else {
                None
            };
            return Ok(Json(AssignmentsPage {
                assignments: list,
                next_after_task: next,
                applied_index: index,
            }));
        }
        tokio::select! {
            changed = changes.changed() => {
                // Closed: the miner was forgotten, and watching again answers so.
                if changed.is_err() {
                    changes = node.state.watch_miner(auth.miner).ok_or_else(gone)?;
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {}
            _ = &mut stop => return Err(ApiError::Unavailable { code: "unavailable", message: "node stopping".into(), retry_after: 1 }),
        }
    }
}

/// The node pool and its scaling signal.
#[utoipa::path(get, path = "/v1/pool", tag = "miners", operation_id = "pool",
    responses(
        (status = 200, description = "The pool, its scaling signal and queue depth", body = PoolStatus),
    ),
    security(("api_key" = [])))]
pub async fn pool(State(node): State<Arc<Node>>) -> Json<PoolStatus> {
    let (pool, depth) = node.state.read(|s| (s.pool(), s.depth()));
    Json(PoolStatus {
        pool: pool.into(),
        tasks: depth.into(),
        applied_index: node.state.applied_index(),
    })
}
