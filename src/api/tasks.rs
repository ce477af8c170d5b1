//! Tasks: submit (one or a batch), read (local, linearizable, or long-polled until
//! done), cancel; and the miner's side of the lifecycle: ack, precommit, commit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::ErrorBody;
use super::replies::{BatchSubmitted, TaskSubmitted, TaskUpdated, TaskView};
use super::sessions::parse_session;
use super::wire::{parse_hash, unbase64, Commit, Empty, Precommit, SubmitBatch, SubmitTask};
use super::{auth, lookup, parse_duration, propose, ApiError, JsonBody, JsonBytes, QueryParams};
use crate::machine::{limits, Command, MinerAuth, NewTask, Response, TaskId};
use crate::node::Node;

pub(super) fn parse_task(id: &str) -> Result<TaskId, ApiError> {
    id.parse()
        .map_err(|_| ApiError::NotFound(format!("unknown task {id}")))
}

fn new_task(node: &Node, t: SubmitTask<'_>) -> Result<NewTask, ApiError> {
    // The base64 text is 4/3 of the bytes: refuse early, before decoding.
    if t.payload.len() / 4 * 3 > node.config.max_payload_bytes + 3 {
        return Err(ApiError::TooLarge(format!(
            "payload is over {} bytes",
            node.config.max_payload_bytes
        )));
    }
    let payload = unbase64("payload", &t.payload)?;
    if payload.len() > node.config.max_payload_bytes {
        return Err(ApiError::TooLarge(format!(
            "payload is over {} bytes",
            node.config.max_payload_bytes
        )));
    }
    if let Some(key) = &t.idempotency_key {
        if key.is_empty() || key.len() > limits::MAX_LABEL_BYTES {
            return Err(ApiError::bad(format!(
                "idempotency_key must be 1..={} bytes",
                limits::MAX_LABEL_BYTES
            )));
        }
    }
    Ok(NewTask {
        payload: payload.into(),
        priority: t.priority,
        idempotency_key: t.idempotency_key,
        queue_timeout_ms: t.queue_timeout_ms,
    })
}

async fn submit_tasks(
    node: &Node,
    id: &str,
    tasks: Vec<NewTask>,
) -> Result<Vec<(TaskId, bool)>, ApiError> {
    let session = parse_session(id)?;
    match propose(node, Command::SubmitTasks { session, tasks }).await? {
        Response::TasksSubmitted { tasks } => Ok(tasks),
        _ => Err(ApiError::Internal("unexpected response".into())),
    }
}

/// Submits one task.
#[utoipa::path(post, path = "/v1/sessions/{id}/tasks", tag = "tasks", operation_id = "submit_task",
    params(("id" = String, Path, description = "Session id (`s-…`)")),
    request_body = SubmitTask<'static>,
    responses(
        (status = 201, description = "Created, once committed and applied", body = TaskSubmitted,
            links(
                ("read" = (operation_id = "read_task", parameters(("id" = "$response.body#/task_id")))),
                ("cancel" = (operation_id = "cancel_task", parameters(("id" = "$response.body#/task_id"))))
            )),
        (status = 200, description = "The idempotency key matched an earlier task: its id, nothing created", body = TaskSubmitted),
        (status = 400, description = "Bad base64, or an idempotency key out of range (`invalid`)", body = ErrorBody),
        (status = 404, description = "No such session (`not_found`)", body = ErrorBody),
        (status = 409, description = "The session is closed (`conflict`), or the key was used with another task (`idempotency_conflict`)", body = ErrorBody),
        (status = 413, description = "The payload is over `--max-payload-bytes` (`too_large`)", body = ErrorBody),
        (status = 429, description = "The session's queue is full (`queue_full`), or the cluster's state is at `--max-state-bytes` (`state_full`); nothing written", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ),
    security(("api_key" = [])))]
pub async fn submit(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    body: JsonBytes,
) -> Result<impl IntoResponse, ApiError> {
    let task = new_task(&node, body.parse::<SubmitTask>()?)?;
    let submitted = submit_tasks(&node, &id, vec![task]).await?;
    let (task, created) = submitted[0];
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(TaskSubmitted {
            task_id: task.to_string(),
            created,
        }),
    ))
}

/// Submits many tasks at once, in one log entry; ids come back in order.
#[utoipa::path(post, path = "/v1/sessions/{id}/tasks:batch", tag = "tasks", operation_id = "submit_batch",
    params(("id" = String, Path, description = "Session id (`s-…`)")),
    request_body = SubmitBatch<'static>,
    responses(
        (status = 201, description = "Submitted, once committed and applied", body = BatchSubmitted),
        (status = 400, description = "An empty list, bad base64, or an idempotency key out of range (`invalid`)", body = ErrorBody),
        (status = 404, description = "No such session (`not_found`)", body = ErrorBody),
        (status = 409, description = "The session is closed (`conflict`), or a key was used with another task (`idempotency_conflict`)", body = ErrorBody),
        (status = 413, description = "More tasks than `--max-batch-tasks`, or a payload over `--max-payload-bytes` (`too_large`)", body = ErrorBody),
        (status = 429, description = "The session's queue is full (`queue_full`), or the cluster's state is at `--max-state-bytes` (`state_full`); nothing written", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ),
    security(("api_key" = [])))]
pub async fn submit_batch(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    body: JsonBytes,
) -> Result<impl IntoResponse, ApiError> {
    let body = body.parse::<SubmitBatch>()?;
    if body.tasks.is_empty() {
        return Err(ApiError::bad("tasks is empty"));
    }
    if body.tasks.len() > node.config.max_batch_tasks {
        return Err(ApiError::TooLarge(format!(
            "at most {} tasks per batch",
            node.config.max_batch_tasks
        )));
    }
    let tasks = body
        .tasks
        .into_iter()
        .map(|t| new_task(&node, t))
        .collect::<Result<Vec<_>, _>>()?;
    let submitted = submit_tasks(&node, &id, tasks).await?;
    let created = submitted.iter().filter(|(_, c)| *c).count() as u64;
    Ok((
        StatusCode::CREATED,
        Json(BatchSubmitted {
            task_ids: submitted.iter().map(|(t, _)| t.to_string()).collect(),
            created,
        }),
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReadQuery {
    /// `local` (default): this node's applied state; `linearizable`: a read-index read.
    #[param(pattern = "^(local|linearizable)$")]
    consistency: Option<String>,
    /// `completed` (or `done`): long-poll until the task is finished.
    #[param(pattern = "^(completed|done)$")]
    wait: Option<String>,
    /// Longest wait, e.g. `30s`, `500ms`, `2m` or milliseconds (default 30s, capped by the node).
    #[param(pattern = "^[0-9]{1,12}(ms|s|m)?$")]
    timeout: Option<String>,
}

/// A task: state, assignments, result; optionally linearizable or long-polled.
#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "tasks", operation_id = "read_task",
    params(("id" = String, Path, description = "Task id (`t-…`)"), ReadQuery),
    responses(
        (status = 200, description = "The task (when long-polling, finished or at the timeout)", body = TaskView),
        (status = 400, description = "A bad query parameter (`invalid`)", body = ErrorBody),
        (status = 404, description = "No such task (or it was purged) (`not_found`)", body = ErrorBody),
        (status = 503, description = "No read index from a leader in time, for a linearizable read or a lookup that missed (`unavailable`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ),
    security(("api_key" = [])))]
pub async fn read(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<ReadQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let task = parse_task(&id)?;
    match q.consistency.as_deref() {
        None | Some("local") => {}
        Some("linearizable") => {
            node.reads.linearize(node.config.write_timeout()).await?;
        }
        Some(other) => {
            return Err(ApiError::bad(format!(
                "consistency must be local or linearizable, not {other}"
            )))
        }
    }
    let wait = match q.wait.as_deref() {
        None => false,
        Some("completed") | Some("done") => true,
        Some(other) => {
            return Err(ApiError::bad(format!(
                "wait must be completed, not {other}"
            )))
        }
    };
    let timeout = match &q.timeout {
        Some(t) => parse_duration(t)?,
        None => Duration::from_secs(30),
    }
    .min(Duration::from_millis(node.config.max_wait_ms));

    let view = |s: &crate::machine::State| {
        s.task(task).map(|t| {
            (
                t.state.is_terminal(),
                TaskView::from_task(t, node.state.applied_index()),
            )
        })
    };
    let (mut done, mut body) = lookup(&node, &view)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("unknown task {task}")))?;
    if wait && !done {
        let deadline = Instant::now() + timeout;
        let mut applied = node.state.watch_applied();
        let stop = node.stop.wait();
        tokio::pin!(stop);
        while !done {
            tokio::select! {
                changed = applied.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep_until(deadline.into()) => break,
                _ = &mut stop => break,
            }
            match node.state.read(&view) {
                Some((d, b)) => (done, body) = (d, b),
                None => return Err(ApiError::NotFound(format!("task {task} was purged"))),
            }
        }
    }
    Ok(Json(body))
}

/// Cancels a task that is not finished.
#[utoipa::path(post, path = "/v1/tasks/{id}/cancel", tag = "tasks", operation_id = "cancel_task",
    params(("id" = String, Path, description = "Task id (`t-…`)")),
    responses(
        (status = 200, description = "Cancelled", body = TaskUpdated),
        (status = 404, description = "No such task (`not_found`)", body = ErrorBody),
        (status = 409, description = "The task is already finished (`conflict`)", body = ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn cancel(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let task = parse_task(&id)?;
    task_update(&node, Command::CancelTask { task }).await
}

async fn task_update(node: &Node, command: Command) -> Result<Json<TaskUpdated>, ApiError> {
    updated(propose(node, command).await?).map(Json)
}

/// The answer of a task's transition, as a miner step or a cancel is told it: a
/// reveal that does not match its precommit is recorded, yet answered 422.
pub(super) fn updated(response: Response) -> Result<TaskUpdated, ApiError> {
    match response {
        Response::TaskUpdated { task, state } => Ok(TaskUpdated {
            task_id: task.to_string(),
            state: state.into(),
        }),
        Response::RevealRejected { task, state } => Err(ApiError::RevealMismatch(format!(
            "the revealed output and nonce do not hash to the precommitted hash; the assignment of {task} is rejected \
             (task is {})",
            state.as_str()
        ))),
        _ => Err(ApiError::Internal("unexpected response".into())),
    }
}

/// The reveal command of a miner, its output and nonce decoded and bounded.
pub(super) fn reveal(
    node: &Node,
    task: TaskId,
    auth: MinerAuth,
    output: &str,
    nonce: &str,
) -> Result<Command, ApiError> {
    let output = unbase64("output", output)?;
    if output.len() > node.config.max_payload_bytes {
        return Err(ApiError::TooLarge(format!(
            "output is over {} bytes",
            node.config.max_payload_bytes
        )));
    }
    let nonce = unbase64("nonce", nonce)?;
    if nonce.len() > limits::MAX_LABEL_BYTES {
        return Err(ApiError::TooLarge(format!(
            "nonce is over {} bytes",
            limits::MAX_LABEL_BYTES
        )));
    }
    Ok(Command::Reveal {
        task,
        auth,
        output,
        nonce,
    })
}

/// The miner is ready to work on its assignment.
#[utoipa::path(post, path = "/v1/tasks/{id}/ack", tag = "miners", operation_id = "ack_task",
    params(("id" = String, Path, description = "Task id (`t-…`)")),
    request_body(content = Empty, description = "Empty, `{}`, or no body"),
    responses(
        (status = 200, description = "Acked", body = TaskUpdated),
        (status = 403, description = "Not this miner's assignment (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such task (`not_found`)", body = ErrorBody),
        (status = 409, description = "Not a legal transition now (e.g. acked already, task finished) (`conflict`)", body = ErrorBody),
    ),
    security(("miner_token" = [])))]
pub async fn ack(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(_empty): JsonBody<Empty>,
) -> Result<impl IntoResponse, ApiError> {
    let auth = auth::miner(&node, &headers).await?;
    let task = parse_task(&id)?;
    task_update(&node, Command::Ack { task, auth }).await
}

/// The miner commits to `sha256(output ‖ nonce)` before any output is revealed.
#[utoipa::path(post, path = "/v1/tasks/{id}/precommit", tag = "miners", operation_id = "precommit_task",
    params(("id" = String, Path, description = "Task id (`t-…`)")),
    request_body = Precommit,
    responses(
        (status = 200, description = "Precommitted", body = TaskUpdated),
        (status = 400, description = "A malformed hash (`invalid`)", body = ErrorBody),
        (status = 403, description = "Not this miner's assignment (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such task (`not_found`)", body = ErrorBody),
        (status = 409, description = "Not a legal transition now (e.g. before ack, a second precommit) (`conflict`)", body = ErrorBody),
    ),
    security(("miner_token" = [])))]
pub async fn precommit(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Precommit>,
) -> Result<impl IntoResponse, ApiError> {
    let auth = auth::miner(&node, &headers).await?;
    let task = parse_task(&id)?;
    let hash = parse_hash(&body.hash)?;
    task_update(&node, Command::Precommit { task, auth, hash }).await
}

/// The miner reveals its output and nonce, checked against its precommit.
#[utoipa::path(post, path = "/v1/tasks/{id}/commit", tag = "miners", operation_id = "commit_task",
    params(("id" = String, Path, description = "Task id (`t-…`)")),
    request_body = Commit,
    responses(
        (status = 200, description = "Revealed and matching its precommit", body = TaskUpdated),
        (status = 400, description = "Bad base64 (`invalid`)", body = ErrorBody),
        (status = 403, description = "Not this miner's assignment (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such task (`not_found`)", body = ErrorBody),
        (status = 409, description = "Not a legal transition now (e.g. before the precommit phase closed) (`conflict`)", body = ErrorBody),
        (status = 413, description = "The output is over `--max-payload-bytes`, or the nonce over its limit (`too_large`)", body = ErrorBody),
        (status = 422, description = "Does not hash to the precommit (`reveal_mismatch`): recorded, the assignment is rejected", body = ErrorBody),
    ),
    security(("miner_token" = [])))]
pub async fn commit(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Commit>,
) -> Result<impl IntoResponse, ApiError> {
    let auth = auth::miner(&node, &headers).await?;
    let task = parse_task(&id)?;
    let command = reveal(&node, task, auth, &body.output, &body.nonce)?;
    task_update(&node, command).await
}
