//! The JSON bodies of the API and their encodings: ids as strings, bytes as standard
//! base64, times in milliseconds. Request bodies refuse unknown fields, so a typo is
//! a 400 rather than a silently ignored setting.

use std::borrow::Cow;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ApiError;

/// Decodes a base64 field.
pub fn unbase64(field: &str, text: &str) -> Result<Vec<u8>, ApiError> {
    B64.decode(text.as_bytes())
        .map_err(|e| ApiError::bad(format!("{field} is not valid base64: {e}")))
}

pub fn base64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// `POST /v1/sessions`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    pub owner: Option<String>,
    /// k: miners per task, 1..=7 (default 1).
    pub redundancy: Option<u8>,
    /// q: matching reveals that complete a task, 1..=k (default a majority of k).
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

/// One task of a submit. The payload's text is borrowed from the request body when
/// it holds no JSON escape (the usual case): a batch of a thousand tasks is then
/// parsed without a copy of each payload's text, which is decoded once, straight
/// into the command's bytes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitTask<'a> {
    /// The task's input, standard base64.
    #[schema(
        value_type = String,
        content_encoding = "base64",
        pattern = "^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
    )]
    #[serde(borrow)]
    pub payload: Cow<'a, str>,
    pub priority: Option<i32>,
    pub idempotency_key: Option<String>,
    /// Overrides the session's `queue_timeout_ms` (0: no limit).
    pub queue_timeout_ms: Option<u64>,
}

/// `POST /v1/sessions/{id}/tasks:batch`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitBatch<'a> {
    #[serde(borrow)]
    pub tasks: Vec<SubmitTask<'a>>,
}

/// `POST /v1/miners`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterMiner {
    /// A display name, 1..=256 bytes.
    pub name: String,
    /// Tasks it works on at once, 1..=4096 (default 1).
    #[schema(minimum = 1, maximum = 4096)]
    pub capacity: Option<u32>,
    #[serde(default)]
    pub tags: Vec<String>,
    pub heartbeat_timeout_ms: Option<u64>,
}

/// An empty body (`{}`), for ack and friends.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// `POST /v1/tasks/{id}/precommit`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Precommit {
    /// Hex sha256 of the output bytes followed by the nonce bytes.
    #[schema(
        example = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        pattern = "^[0-9a-fA-F]{64}$"
    )]
    pub hash: String,
}

/// `POST /v1/tasks/{id}/commit`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Commit {
    /// The output, standard base64.
    #[schema(
        content_encoding = "base64",
        pattern = "^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
    )]
    pub output: String,
    /// The nonce of the precommit, standard base64.
    #[schema(
        content_encoding = "base64",
        pattern = "^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
    )]
    pub nonce: String,
}

/// `POST /v1/cluster/members`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    /// The new node's id (positive).
    pub id: u64,
    /// Its API address, `host:port`.
    pub api: String,
    /// Its peer address, `host:port`.
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
