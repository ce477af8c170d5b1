//! Sessions: create, read, close.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;

use super::error::ErrorBody;
use super::replies::{SessionClosed, SessionStateName, SessionView};
use super::wire::CreateSession;
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

/// Creates a session; every setting is optional.
#[utoipa::path(post, path = "/v1/sessions", tag = "sessions", operation_id = "create_session",
    request_body = CreateSession,
    responses(
        (status = 201, description = "Created, once committed and applied", body = SessionView,
            links(
                ("read" = (operation_id = "read_session", parameters(("id" = "$response.body#/id")))),
                ("submit" = (operation_id = "submit_task", parameters(("id" = "$response.body#/id")))),
                ("submit_batch" = (operation_id = "submit_batch", parameters(("id" = "$response.body#/id")))),
                ("close" = (operation_id = "close_session", parameters(("id" = "$response.body#/id"))))
            )),
        (status = 400, description = "A setting out of range (`invalid`)", body = ErrorBody),
        (status = 429, description = "The cluster's state is at `--max-state-bytes` (`state_full`); nothing written", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "Created, but this node could not catch up with the leader to read it back (`unavailable`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ),
    security(("api_key" = [])))]
pub async fn create(
    State(node): State<Arc<Node>>,
    JsonBody(body): JsonBody<CreateSession>,
) -> Result<impl IntoResponse, ApiError> {
    let spec = spec(&node, body);
    let Response::SessionCreated { session } = propose(&node, Command::CreateSession(spec)).await?
    else {
        return Err(ApiError::Internal("unexpected response".into()));
    };
    // Applied on the leader; this node, if it is a follower, may not have applied it
    // yet, and `lookup` catches up on a miss. Only a purge could make it miss again.
    let body = lookup(&node, |s| {
        s.session(session)
            .map(|s| SessionView::from_session(s, node.state.applied_index()))
    })
    .await?
    .ok_or_else(|| ApiError::NotFound(format!("session {session} is already gone")))?;
    Ok((StatusCode::CREATED, Json(body)))
}

/// A session, its settings and counters, from this node's applied state.
#[utoipa::path(get, path = "/v1/sessions/{id}", tag = "sessions", operation_id = "read_session",
    params(("id" = String, Path, description = "Session id (`s-…`)")),
    responses(
        (status = 200, description = "The session", body = SessionView),
        (status = 404, description = "No such session (`not_found`)", body = ErrorBody),
        (status = 503, description = "This node could not catch up with the leader to tell (`unavailable`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ),
    security(("api_key" = [])))]
pub async fn read(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_session(&id)?;
    let found = lookup(&node, |s| {
        s.session(id)
            .map(|s| SessionView::from_session(s, node.state.applied_index()))
    })
    .await?;
    found
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("unknown session {id}")))
}

/// Closes a session: its unfinished tasks are cancelled and its miners released.
#[utoipa::path(post, path = "/v1/sessions/{id}/close", tag = "sessions", operation_id = "close_session",
    params(("id" = String, Path, description = "Session id (`s-…`)")),
    responses(
        (status = 200, description = "Closed", body = SessionClosed),
        (status = 404, description = "No such session (`not_found`)", body = ErrorBody),
        (status = 409, description = "Already closed (`conflict`)", body = ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn close(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let session = parse_session(&id)?;
    match propose(&node, Command::CloseSession { session }).await? {
        Response::SessionClosed { session, cancelled } => Ok(Json(SessionClosed {
            id: session.to_string(),
            state: SessionStateName::Closed,
            cancelled,
        })),
        _ => Err(ApiError::Internal("unexpected response".into())),
    }
}
