//! The API's error type and its JSON form: `{"error": {"code", "message"}}` with the
//! status the SPEC assigns to each kind of failure. [`CODES`] lists every code; the
//! OpenAPI document's error schema is built from it.

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::machine::Rejection;
use crate::raft::proposer::ProposeError;
use crate::raft::read::ReadError;

/// Seconds a client is told to wait before retrying a submit refused as `queue_full`
/// or `state_full`.
const QUEUE_FULL_RETRY_AFTER_S: u64 = 1;
/// Seconds a client is told to wait before retrying a write refused as `overloaded`.
const OVERLOADED_RETRY_AFTER_S: u64 = 1;

/// Every `code` an error body may carry, one line each (keep in step with
/// [`ApiError::code`]; a unit test checks it).
pub const CODES: &[&str] = &[
    "invalid",
    "unauthorized",
    "forbidden",
    "not_found",
    "conflict",
    "idempotency_conflict",
    "too_large",
    "request_timeout",
    "reveal_mismatch",
    "queue_full",
    "state_full",
    "overloaded",
    "unavailable",
    "outcome_unknown",
    "too_many_waiters",
    "method_not_allowed",
    "internal",
];

/// The JSON body of every error.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong: a stable code and a message for people.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    #[schema(schema_with = code_schema)]
    pub code: String,
    pub message: String,
}

/// The schema of `code`: a string, one of [`CODES`].
fn code_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(CODES.iter().copied()))
        .description(Some("A stable, machine-readable error code."))
        .build()
}

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
    /// The request's body did not arrive within `--body-read-timeout-ms` (408
    /// `request_timeout`); nothing written.
    #[error("{0}")]
    RequestTimeout(String),
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
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
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
            ApiError::RequestTimeout(_) => "request_timeout",
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
        let body = Json(ErrorBody {
            error: ErrorDetail {
                code: self.code().to_string(),
                message: self.to_string(),
            },
        });
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

/// Gives every error answer the JSON form, also those axum makes itself before a
/// handler runs (a path segment that is not UTF-8 once decoded: 400 in plain text; a
/// method the route does not take: 405 with an empty body and `Allow`). Status and
/// headers stay; answers that are JSON already pass untouched.
///
/// A request whose body failed to arrive within `--body-read-timeout-ms` (see
/// [`crate::listener::BodyDeadline`]) is answered 408 `request_timeout`, whatever its
/// handler made of the failed read: it acted on no body, so nothing was written.
pub async fn json_errors(request: Request, next: Next) -> Response {
    let deadline = request
        .extensions()
        .get::<crate::listener::BodyDeadline>()
        .cloned();
    let response = next.run(request).await;
    let status = response.status();
    if let Some(deadline) = deadline.filter(|d| d.expired()) {
        if status.is_client_error() || status.is_server_error() {
            metrics::counter!("sq_body_read_timeouts_total").increment(1);
            return ApiError::RequestTimeout(deadline.error().to_string()).into_response();
        }
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let message = match text.trim() {
        "" => status.canonical_reason().unwrap_or("error").to_lowercase(),
        text => text.to_string(),
    };
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        s if s.is_server_error() => "internal",
        _ => "invalid",
    };
    let json = Json(ErrorBody {
        error: ErrorDetail {
            code: code.to_string(),
            message,
        },
    })
    .into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, json.into_body())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_listed() {
        let errors = [
            ApiError::bad(""),
            ApiError::Unauthorized(String::new()),
            ApiError::Forbidden(String::new()),
            ApiError::NotFound(String::new()),
            ApiError::Conflict(String::new()),
            ApiError::IdempotencyConflict(String::new()),
            ApiError::TooLarge(String::new()),
            ApiError::RequestTimeout(String::new()),
            ApiError::RevealMismatch(String::new()),
            ApiError::QueueFull(String::new()),
            ApiError::StateFull(String::new()),
            ApiError::Overloaded(String::new()),
            ApiError::from(ProposeError::NoLeader),
            ApiError::from(ProposeError::Unknown(String::new())),
            super::super::waiters::Waiters::new(0, 0)
                .poll_permit()
                .err()
                .expect("no place for a long poll"),
            ApiError::Internal(String::new()),
        ];
        for e in errors {
            assert!(CODES.contains(&e.code()), "{} is not in CODES", e.code());
        }
    }
}
