//! Sessions: create, read, close.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;

use super::wire::{session_json, CreateSession};
use super::{lookup, propose, ApiError, JsonBody};
use crate::machine::{Command, Response, SessionId, SessionSpec};
use crate::node::Node;

/// Defaults of a new session (SPEC section 2): k = 1, q = majority of k; no queue
/// deadline; idempotency keys remembered as long as finished tasks are kept.
fn spec(node: &Node, body: CreateSession) -> SessionSpec {
    let redundancy = body.redundancy.unwrap_or(1);
    let retention_ms = body.retention_ms.unwrap_or(node.config.retention_ms);
    SessionSpec {
        owner: body.owner.unwrap_or_default(),
        redundancy,
        quorum: body.quorum.unwrap_or(redundancy / 2 + 1),
        priority: body.priority.unwrap_or(0),
        tag: body.tag,
        max_nodes: body.max_nodes.unwrap_or_else(|| (redundancy as u32).max(8)),
        ack_timeout_ms: body.ack_timeout_ms.unwrap_or(10_000),
        precommit_timeout_ms: body.precommit_timeout_ms.unwrap_or(30_000),
        commit_timeout_ms: body.commit_timeout_ms.unwrap_or(30_000),
        max_attempts: body.max_attempts.unwrap_or(3),
        retention_ms,
        idle_release_ms: body.idle_release_ms.unwrap_or(30_000),
        queue_timeout_ms: body.queue_timeout_ms.unwrap_or(0),
        idempotency_window_ms: body.idempotency_window_ms.unwrap_or(retention_ms),
        max_queued_tasks: body
            .max_queued_tasks
            .unwrap_or(node.config.max_queued_tasks),
        keep_finished_payloads: body
            .keep_finished_payloads
            .unwrap_or(node.config.keep_finished_payloads),
    }
}

pub(crate) fn parse_session(id: &str) -> Result<SessionId, ApiError> {
    id.parse()
        .map_err(|_| ApiError::NotFound(format!("unknown session {id}")))
}

pub async fn create(
    State(node): State<Arc<Node>>,
    JsonBody(body): JsonBody<CreateSession>,
) -> Result<impl IntoResponse, ApiError> {
    let spec = spec(&node, body);
    let Response::SessionCreated { session } = propose(&node, Command::CreateSession(spec)).await?
    else {
        return Err(ApiError::Internal("unexpected response".into()));
    };
    // Copied under the lock, encoded after it.
    let body = node
        .state
        .read(|s| {
            s.session(session)
                .cloned()
                .map(|s| (s, node.state.applied_index()))
        })
        .map_or_else(
            || serde_json::json!({"id": session.to_string()}),
            |(s, index)| session_json(&s, index),
        );
    Ok((StatusCode::CREATED, Json(body)))
}

pub async fn read(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_session(&id)?;
    let found = lookup(&node, |s| {
        s.session(id)
            .cloned()
            .map(|s| (s, node.state.applied_index()))
    })
    .await?;
    found
        .map(|(s, index)| Json(session_json(&s, index)))
        .ok_or_else(|| ApiError::NotFound(format!("unknown session {id}")))
}

pub async fn close(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let session = parse_session(&id)?;
    match propose(&node, Command::CloseSession { session }).await? {
        Response::SessionClosed { session, cancelled } => Ok(Json(
            serde_json::json!({"id": session.to_string(), "state": "closed", "cancelled": cancelled}),
        )),
        _ => Err(ApiError::Internal("unexpected response".into())),
    }
}
