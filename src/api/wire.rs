//! The JSON bodies of the API and their encodings: ids as strings, bytes as standard
//! base64, times in milliseconds. Request bodies refuse unknown fields, so a typo is
//! a 400 rather than a silently ignored setting.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::ApiError;
use crate::machine::{Miner, Session, SessionState, SlotState, Task};

/// Decodes a base64 field.
pub fn unbase64(field: &str, text: &str) -> Result<Vec<u8>, ApiError> {
    B64.decode(text.as_bytes())
        .map_err(|e| ApiError::bad(format!("{field} is not valid base64: {e}")))
}

pub fn base64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// `POST /v1/sessions`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    pub owner: Option<String>,
    pub redundancy: Option<u8>,
    pub quorum: Option<u8>,
    pub priority: Option<i32>,
    pub tag: Option<String>,
    pub max_nodes: Option<u32>,
    pub ack_timeout_ms: Option<u64>,
    pub precommit_timeout_ms: Option<u64>,
    pub commit_timeout_ms: Option<u64>,
    pub max_attempts: Option<u32>,
    pub retention_ms: Option<u64>,
    pub idle_release_ms: Option<u64>,
    /// 0 or absent: tasks may wait in the queue without limit.
    pub queue_timeout_ms: Option<u64>,
    /// Absent: the session's retention.
    pub idempotency_window_ms: Option<u64>,
    /// Most unfinished tasks the session may hold (absent: `--max-queued-tasks`).
    pub max_queued_tasks: Option<u64>,
    /// Keep payloads of finished tasks until retention (absent: `--keep-finished-payloads`).
    pub keep_finished_payloads: Option<bool>,
}

/// One task of a submit.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitTask {
    pub payload: String,
    pub priority: Option<i32>,
    pub idempotency_key: Option<String>,
    /// Overrides the session's `queue_timeout_ms` (0: no limit).
    pub queue_timeout_ms: Option<u64>,
}

/// `POST /v1/sessions/{id}/tasks:batch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitBatch {
    pub tasks: Vec<SubmitTask>,
}

/// `POST /v1/miners`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterMiner {
    pub name: String,
    pub capacity: Option<u32>,
    #[serde(default)]
    pub tags: Vec<String>,
    pub heartbeat_timeout_ms: Option<u64>,
}

/// An empty body (`{}`), for ack and friends.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// `POST /v1/tasks/{id}/precommit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Precommit {
    pub hash: String,
}

/// `POST /v1/tasks/{id}/commit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Commit {
    pub output: String,
    pub nonce: String,
}

/// `POST /v1/cluster/members`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    pub id: u64,
    pub api: String,
    pub peer: String,
}

/// A hex sha256.
pub fn parse_hash(text: &str) -> Result<[u8; 32], ApiError> {
    let bytes =
        hex::decode(text).map_err(|_| ApiError::bad("hash must be 64 hex digits (sha256)"))?;
    bytes
        .try_into()
        .map_err(|_| ApiError::bad("hash must be 64 hex digits (sha256)"))
}

pub fn session_json(s: &Session, applied_index: u64) -> Value {
    json!({
        "id": s.id.to_string(),
        "owner": s.spec.owner,
        "redundancy": s.spec.redundancy,
        "quorum": s.spec.quorum,
        "priority": s.spec.priority,
        "tag": s.spec.tag,
        "max_nodes": s.spec.max_nodes,
        "ack_timeout_ms": s.spec.ack_timeout_ms,
        "precommit_timeout_ms": s.spec.precommit_timeout_ms,
        "commit_timeout_ms": s.spec.commit_timeout_ms,
        "max_attempts": s.spec.max_attempts,
        "retention_ms": s.spec.retention_ms,
        "idle_release_ms": s.spec.idle_release_ms,
        "queue_timeout_ms": s.spec.queue_timeout_ms,
        "idempotency_window_ms": s.spec.idempotency_window_ms,
        "max_queued_tasks": s.spec.max_queued_tasks,
        "keep_finished_payloads": s.spec.keep_finished_payloads,
        "state": match s.state { SessionState::Open => "open", SessionState::Closed => "closed" },
        "created_ms": s.created_ms,
        "closed_ms": s.closed_ms,
        "reserved_nodes": s.reserved.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
        "counts": s.counts,
        "submitted_total": s.submitted_total,
        "open_slots": s.open_slots,
        "active_slots": s.active_slots,
        "applied_index": applied_index,
    })
}

pub fn task_json(t: &Task, applied_index: u64) -> Value {
    json!({
        "id": t.id.to_string(),
        "session_id": t.session.to_string(),
        "state": t.state.as_str(),
        "priority": t.priority,
        "attempts": t.attempts,
        "idempotency_key": t.idempotency_key,
        "queue_timeout_ms": t.queue_timeout_ms,
        "queue_deadline_ms": t.queue_deadline,
        "assignments": t.assignments.iter().map(|a| json!({
            "miner_id": a.miner.to_string(),
            "state": a.state.as_str(),
            "assigned_ms": a.assigned_ms,
        })).collect::<Vec<_>>(),
        "result": t.result().map(base64),
        "failure": t.failure(),
        "created_ms": t.created_ms,
        "finished_ms": t.finished_ms(),
        "history": t.history.iter().map(|(s, at)| json!({"state": s.as_str(), "at_ms": at})).collect::<Vec<_>>(),
        "applied_index": applied_index,
    })
}

pub fn miner_json(m: &Miner, applied_index: u64) -> Value {
    json!({
        "id": m.id.to_string(),
        "name": m.name,
        "capacity": m.capacity,
        "tags": m.tags,
        "state": m.state.as_str(),
        "session_id": m.reserved_by.map(|s| s.to_string()),
        "in_flight": m.active.len(),
        "last_heartbeat_ms": m.last_heartbeat_ms,
        "heartbeat_timeout_ms": m.heartbeat_timeout_ms,
        "revealed": m.revealed,
        "expired": m.expired,
        "rejections": m.rejections.len(),
        "applied_index": applied_index,
    })
}

pub fn assignment_json(t: &Task, slot: SlotState) -> Value {
    json!({
        "task_id": t.id.to_string(),
        "session_id": t.session.to_string(),
        "payload": t.payload.as_deref().map(base64),
        "state": slot.as_str(),
        "task_state": t.state.as_str(),
    })
}
