//! Miner steps in bulk: `POST /v1/miners/{id}/steps` takes a list of acks,
//! precommits and reveals of the calling miner and proposes them together.
//!
//! Why: a task at k = 1 costs four writes (submit, ack, precommit, reveal), and with
//! one HTTP call per step most of a node's CPU goes to the calls rather than the
//! commands. A miner holding many assignments steps them all at once here: one
//! call, one proposal, so its steps share one Raft entry (and one fsync per node)
//! with whatever else the proposer packs with them.
//!
//! Each step is exactly the command its single-step route (`/v1/tasks/{id}/ack`,
//! `/precommit`, `/commit`) would propose, and gets its own outcome: the status and
//! answer (or error body) that route would give. One step refused (another
//! miner's task, a second precommit, a reveal that does not match) does not fail
//! the others; steps apply in the order given, so `ack` then `precommit` of the
//! same task in one call works. What fails the whole call, with nothing written:
//! a token that is not the path's miner (403), a malformed body or step (400),
//! more than `--max-steps` steps or a body over `--max-steps-body-bytes` or over one
//! Raft entry (413), and the proposer's own refusals (429, 503). A call whose
//! outcome is unknown (503 `outcome_unknown`) may have applied any of its steps,
//! as for a single step.
//!
//! The request and answer types live here, beside their only handler.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ErrorBody, ErrorDetail};
use super::replies::TaskStateName;
use super::tasks::{parse_task, reveal, updated};
use super::wire::parse_hash;
use super::{auth, ApiError, JsonBody};
use crate::machine::{Command, MinerAuth};
use crate::node::Node;

/// What a step does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepOp {
    /// Ready to work on the assignment (as `POST /v1/tasks/{id}/ack`).
    Ack,
    /// Commits to `hash` (as `POST /v1/tasks/{id}/precommit`).
    Precommit,
    /// Reveals `output` and `nonce` (as `POST /v1/tasks/{id}/commit`).
    Commit,
}

impl StepOp {
    fn as_str(self) -> &'static str {
        match self {
            StepOp::Ack => "ack",
            StepOp::Precommit => "precommit",
            StepOp::Commit => "commit",
        }
    }
}

/// One step: `ack` carries nothing else, `precommit` a `hash`, `commit` an `output`
/// and a `nonce`; any other field is refused (400).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    #[schema(example = "t-1")]
    pub task_id: String,
    pub op: StepOp,
    /// `precommit` only: hex sha256 of the output bytes followed by the nonce bytes.
    #[schema(pattern = "^[0-9a-fA-F]{64}$")]
    pub hash: Option<String>,
    /// `commit` only: the output, standard base64.
    #[schema(content_encoding = "base64")]
    pub output: Option<String>,
    /// `commit` only: the nonce of the precommit, standard base64.
    #[schema(content_encoding = "base64")]
    pub nonce: Option<String>,
}

/// `POST /v1/miners/{id}/steps`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Steps {
    /// 1..=`--max-steps` steps, applied in this order.
    pub steps: Vec<Step>,
}

/// The outcome of one step: the status its single-step route would answer, with
/// that route's answer (`state`) or error body (`error`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StepOutcome {
    #[schema(example = "t-1")]
    pub task_id: String,
    pub op: StepOp,
    /// 200 when done; else the single-step route's error status (403, 404, 409, 422, …).
    #[schema(example = 200)]
    pub status: u16,
    /// The task's state after the step, when done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<TaskStateName>,
    /// Why the step was refused; a `reveal_mismatch` (422) is recorded nonetheless.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

/// The answer: one outcome per step, in the order of the request.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StepsDone {
    pub results: Vec<StepOutcome>,
}

/// The command of one step, checked as its single-step route checks it.
fn command(node: &Node, auth: MinerAuth, step: &Step, i: usize) -> Result<Command, ApiError> {
    let at = |e: ApiError| match e {
        ApiError::BadRequest(m) => ApiError::bad(format!("step {i}: {m}")),
        ApiError::TooLarge(m) => ApiError::TooLarge(format!("step {i}: {m}")),
        ApiError::NotFound(m) => ApiError::bad(format!("step {i}: {m} (not a task id)")),
        other => other,
    };
    let task = parse_task(&step.task_id).map_err(at)?;
    let extra = |what: &str| {
        ApiError::bad(format!(
            "step {i}: {what} is not a field of a {} step",
            step.op.as_str()
        ))
    };
    let missing = |what: &str| {
        ApiError::bad(format!(
            "step {i}: a {} step needs {what}",
            step.op.as_str()
        ))
    };
    match step.op {
        StepOp::Ack => {
            if step.hash.is_some() {
                return Err(extra("hash"));
            }
            if step.output.is_some() || step.nonce.is_some() {
                return Err(extra("output/nonce"));
            }
            Ok(Command::Ack { task, auth })
        }
        StepOp::Precommit => {
            if step.output.is_some() || step.nonce.is_some() {
                return Err(extra("output/nonce"));
            }
            let hash = step.hash.as_deref().ok_or_else(|| missing("hash"))?;
            let hash = parse_hash(hash).map_err(at)?;
            Ok(Command::Precommit { task, auth, hash })
        }
        StepOp::Commit => {
            if step.hash.is_some() {
                return Err(extra("hash"));
            }
            let (Some(output), Some(nonce)) = (&step.output, &step.nonce) else {
                return Err(missing("output and nonce"));
            };
            reveal(node, task, auth, output, nonce).map_err(at)
        }
    }
}

/// Acks, precommits and reveals of the calling miner, in one call and one entry.
///
/// Each step is the command its single-step route would propose, and gets that
/// route's outcome (`status` and `state`, or `error`); one step refused does not
/// fail the others. Steps apply in the order given.
#[utoipa::path(post, path = "/v1/miners/{id}/steps", tag = "miners", operation_id = "miner_steps",
    params(("id" = String, Path, description = "Miner id (`m-…`)")),
    request_body = Steps,
    responses(
        (status = 200, description = "Every step was applied or refused, each with its own outcome", body = StepsDone),
        (status = 400, description = "An empty list, a malformed step (bad task id, hash or base64, a field its op does not take, one it needs missing) (`invalid`); nothing written", body = ErrorBody),
        (status = 403, description = "The token belongs to another miner (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such miner (`not_found`)", body = ErrorBody),
        (status = 413, description = "More steps than `--max-steps`, a body over `--max-steps-body-bytes`, or an output over `--max-payload-bytes` (`too_large`); nothing written", body = ErrorBody),
    ),
    security(("miner_token" = [])))]
pub async fn steps(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Steps>,
) -> Result<Json<StepsDone>, ApiError> {
    let auth = auth::miner_itself(&node, &headers, &id).await?;
    if body.steps.is_empty() {
        return Err(ApiError::bad("steps is empty"));
    }
    if body.steps.len() > node.config.max_steps {
        return Err(ApiError::TooLarge(format!(
            "at most {} steps per call",
            node.config.max_steps
        )));
    }
    let commands = body
        .steps
        .iter()
        .enumerate()
        .map(|(i, step)| command(&node, auth, step, i))
        .collect::<Result<Vec<_>, _>>()?;
    let results = node
        .proposer
        .propose(commands, node.config.write_timeout())
        .await?;
    if results.len() != body.steps.len() {
        return Err(ApiError::Internal("result count mismatch".into()));
    }
    let results = body
        .steps
        .into_iter()
        .zip(results)
        .map(
            |(step, result)| match result.map_err(ApiError::from).and_then(updated) {
                Ok(done) => StepOutcome {
                    task_id: step.task_id,
                    op: step.op,
                    status: 200,
                    state: Some(done.state),
                    error: None,
                },
                Err(e) => StepOutcome {
                    task_id: step.task_id,
                    op: step.op,
                    status: e.status().as_u16(),
                    state: None,
                    error: Some(ErrorDetail {
                        code: e.code().to_string(),
                        message: e.to_string(),
                    }),
                },
            },
        )
        .collect();
    Ok(Json(StepsDone { results }))
}
