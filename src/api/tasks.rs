//! Tasks: submit (one or a batch), read (local, linearizable, or long-polled until
//! done), cancel; and the miner's side of the lifecycle: ack, precommit, commit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::copies::TaskRead;
use super::sessions::parse_session;
use super::wire::{
    parse_hash, task_json, unbase64, Commit, Empty, Precommit, SubmitBatch, SubmitTask,
};
use super::{auth, lookup, parse_duration, propose, ApiError, JsonBody, QueryParams};
use crate::machine::{limits, Command, NewTask, Response, TaskId};
use crate::node::Node;

fn parse_task(id: &str) -> Result<TaskId, ApiError> {
    id.parse()
        .map_err(|_| ApiError::NotFound(format!("unknown task {id}")))
}

fn new_task(node: &Node, t: SubmitTask) -> Result<NewTask, ApiError> {
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
        payload,
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

pub async fn submit(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<SubmitTask>,
) -> Result<impl IntoResponse, ApiError> {
    let task = new_task(&node, body)?;
    let submitted = submit_tasks(&node, &id, vec![task]).await?;
    let (task, created) = submitted[0];
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({"task_id": task.to_string(), "created": created})),
    ))
}

pub async fn submit_batch(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<SubmitBatch>,
) -> Result<impl IntoResponse, ApiError> {
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
    let created = submitted.iter().filter(|(_, c)| *c).count();
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "task_ids": submitted.iter().map(|(t, _)| t.to_string()).collect::<Vec<_>>(),
            "created": created,
        })),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    consistency: Option<String>,
    wait: Option<String>,
    timeout: Option<String>,
}

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

    // A copy under the lock; the JSON is built after it is released.
    let view = |s: &crate::machine::State| {
        s.task(task).map(|t| {
            (
                t.state.is_terminal(),
                (TaskRead::of(t), node.state.applied_index()),
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
    Ok(Json(task_json(&body.0, body.1)))
}

pub async fn cancel(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let task = parse_task(&id)?;
    task_update(&node, Command::CancelTask { task }).await
}

async fn task_update(node: &Node, command: Command) -> Result<Json<serde_json::Value>, ApiError> {
    match propose(node, command).await? {
        Response::TaskUpdated { task, state } => Ok(Json(json!({"task_id": task.to_string(), "state": state.as_str()}))),
        Response::RevealRejected { task, state } => Err(ApiError::RevealMismatch(format!(
            "the revealed output and nonce do not hash to the precommitted hash; the assignment of {task} is rejected \
             (task is {})",
            state.as_str()
        ))),
        _ => Err(ApiError::Internal("unexpected response".into())),
    }
}

pub async fn ack(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(_): JsonBody<Empty>,
) -> Result<impl IntoResponse, ApiError> {
    let auth = auth::miner(&node, &headers).await?;
    let task = parse_task(&id)?;
    task_update(&node, Command::Ack { task, auth }).await
}

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

pub async fn commit(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Commit>,
) -> Result<impl IntoResponse, ApiError> {
    let auth = auth::miner(&node, &headers).await?;
    let task = parse_task(&id)?;
    let output = unbase64("output", &body.output)?;
    if output.len() > node.config.max_payload_bytes {
        return Err(ApiError::TooLarge(format!(
            "output is over {} bytes",
            node.config.max_payload_bytes
        )));
    }
    let nonce = unbase64("nonce", &body.nonce)?;
    if nonce.len() > limits::MAX_LABEL_BYTES {
        return Err(ApiError::TooLarge(format!(
            "nonce is over {} bytes",
            limits::MAX_LABEL_BYTES
        )));
    }
    task_update(
        &node,
        Command::Reveal {
            task,
            auth,
            output,
            nonce,
        },
    )
    .await
}
