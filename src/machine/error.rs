//! Why the state machine refused a command.
//!
//! A rejected command changes nothing. Each variant maps to one HTTP status in the
//! API layer, so the kind of refusal is decided here, once, where the rules live.

use serde::{Deserialize, Serialize};

/// A refused command, with a message meant for the caller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    /// The command is malformed or out of range (HTTP 400).
    #[error("{0}")]
    Invalid(String),
    /// An id names nothing (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// The miner's token does not match (HTTP 401).
    #[error("{0}")]
    Unauthorized(String),
    /// The caller may not act on this (HTTP 403).
    #[error("{0}")]
    Forbidden(String),
    /// The transition is not legal in the current state (HTTP 409).
    #[error("{0}")]
    Conflict(String),
    /// Over a size limit (HTTP 413).
    #[error("{0}")]
    TooLarge(String),
    /// An idempotency key the session remembers was sent again with another task
    /// (payload, priority or queue timeout) (HTTP 409).
    #[error("{0}")]
    IdempotencyConflict(String),
    /// The session already holds `max_queued_tasks` unfinished tasks (HTTP 429
    /// `queue_full`); retry once some have finished.
    #[error("{0}")]
    QueueFull(String),
    /// The state's approximate size is at the cluster's `--max-state-bytes` (HTTP 429
    /// `state_full`); retry once finished tasks are purged.
    #[error("{0}")]
    StateFull(String),
}

impl Rejection {
    /// The stable machine-readable code of the error object.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::Invalid(_) => "invalid",
            Rejection::NotFound(_) => "not_found",
            Rejection::Unauthorized(_) => "unauthorized",
            Rejection::Forbidden(_) => "forbidden",
            Rejection::Conflict(_) => "conflict",
            Rejection::TooLarge(_) => "too_large",
            Rejection::IdempotencyConflict(_) => "idempotency_conflict",
            Rejection::QueueFull(_) => "queue_full",
            Rejection::StateFull(_) => "state_full",
        }
    }
}

pub(crate) fn invalid(msg: impl Into<String>) -> Rejection {
    Rejection::Invalid(msg.into())
}
pub(crate) fn conflict(msg: impl Into<String>) -> Rejection {
    Rejection::Conflict(msg.into())
}
pub(crate) fn not_found(msg: impl Into<String>) -> Rejection {
    Rejection::NotFound(msg.into())
}
