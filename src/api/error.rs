//! The API's error type and its JSON form: `{"error": {"code", "message"}}` with the
//! status the SPEC assigns to each kind of failure.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::machine::Rejection;
use crate::raft::proposer::ProposeError;
use crate::raft::read::ReadError;

/// Seconds a client is told to wait before retrying a submit refused as `queue_full`
/// or `state_full`.
const QUEUE_FULL_RETRY_AFTER_S: u64 = 1;
/// Seconds a client is told to wait before retrying a write refused as `overloaded`.
const OVERLOADED_RETRY_AFTER_S: u64 = 1;

/// A failed API call.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// An idempotency key reused with another task (409 `idempotency_conflict`).
    #[error("{0}")]
    IdempotencyConflict(String),
    #[error("{0}")]
    TooLarge(String),
    /// A reveal that does not hash to its precommit (recorded; the assignment is rejected).
    #[error("{0}")]
    RevealMismatch(String),
    /// The session's queue is full (429 `queue_full`, `Retry-After`); nothing written.
    #[error("{0}")]
    QueueFull(String),
    /// The cluster's state is at `--max-state-bytes` (429 `state_full`, `Retry-After`);
    /// nothing written.
    #[error("{0}")]
    StateFull(String),
    /// Too many writes wait on this node (429 `overloaded`, `Retry-After`); nothing
    /// written.
    #[error("{0}")]
    Overloaded(String),
    /// No leader in time, or the outcome is unknown; retry after the given seconds.
    #[error("{message}")]
    Unavailable {
        code: &'static str,
        message: String,
        retry_after: u64,
    },
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn bad(msg: impl Into<String>) -> Self {
        ApiError::BadRequest(msg.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) | ApiError::IdempotencyConflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RevealMismatch(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::QueueFull(_) | ApiError::StateFull(_) | ApiError::Overloaded(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "invalid",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::IdempotencyConflict(_) => "idempotency_conflict",
            ApiError::TooLarge(_) => "too_large",
            ApiError::RevealMismatch(_) => "reveal_mismatch",
            ApiError::QueueFull(_) => "queue_full",
            ApiError::StateFull(_) => "state_full",
            ApiError::Overloaded(_) => "overloaded",
            ApiError::Unavailable { code, .. } => code,
            ApiError::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = Json(json!({"error": {"code": self.code(), "message": self.to_string()}}));
        let mut response = (status, body).into_response();
        let retry_after = match &self {
            ApiError::Unavailable { retry_after, .. } => Some(*retry_after),
            ApiError::QueueFull(_) | ApiError::StateFull(_) => Some(QUEUE_FULL_RETRY_AFTER_S),
            ApiError::Overloaded(_) => Some(OVERLOADED_RETRY_AFTER_S),
            _ => None,
        };
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        match r {
            Rejection::Invalid(m) => ApiError::BadRequest(m),
            Rejection::NotFound(m) => ApiError::NotFound(m),
            Rejection::Unauthorized(m) => ApiError::Unauthorized(m),
            Rejection::Forbidden(m) => ApiError::Forbidden(m),
            Rejection::Conflict(m) => ApiError::Conflict(m),
            Rejection::TooLarge(m) => ApiError::TooLarge(m),
            Rejection::IdempotencyConflict(m) => ApiError::IdempotencyConflict(m),
            Rejection::QueueFull(m) => ApiError::QueueFull(m),
            Rejection::StateFull(m) => ApiError::StateFull(m),
        }
    }
}

impl From<ProposeError> for ApiError {
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::NoLeader | ProposeError::NotLeader | ProposeError::ShuttingDown => {
                ApiError::Unavailable {
                    code: "unavailable",
                    message: e.to_string(),
                    retry_after: 1,
                }
            }
            ProposeError::Unknown(_) => ApiError::Unavailable {
                code: "outcome_unknown",
                message: e.to_string(),
                retry_after: 1,
            },
            ProposeError::Fatal(m) => ApiError::Internal(m),
            ProposeError::Overloaded(m) => ApiError::Overloaded(m),
            ProposeError::TooLarge(m) => ApiError::TooLarge(m),
            // Refused by the leader's peer listener before processing: nothing written.
            ProposeError::Refused { status: 413, .. } => ApiError::TooLarge(e.to_string()),
            ProposeError::Refused { .. } => ApiError::Unavailable {
                code: "unavailable",
                message: e.to_string(),
                retry_after: 1,
            },
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> Self {
        ApiError::Unavailable {
            code: "unavailable",
            message: e.to_string(),
            retry_after: 1,
        }
    }
}
