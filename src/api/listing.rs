//! Listings for operators: `GET /v1/sessions` (sessions with their tasks per state)
//! and `GET /v1/pool/miners` (the miners of the node pool), newest first.
//!
//! Read from this node's applied state, like every read, and paged so that an answer
//! (and the read lock behind it) stays small however many sessions or miners the
//! state holds: at most `limit` entries (default [`DEFAULT_LIMIT`], at most
//! [`MAX_LIMIT`]), older than `before` when given; `next_before` names the last entry
//! when older ones follow (pass it as `before` for the next page), else it is null.
//! The operator page (`GET /`) is their first user.

use std::str::FromStr;
use std::sync::Arc;

use axum::extract::State;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::ErrorBody;
use super::replies::{MinerView, MinersPage, SessionView, SessionsPage};
use super::{ApiError, QueryParams};
use crate::machine::{MinerId, SessionId};
use crate::node::Node;

/// Entries of a listing unless the caller asks for another `limit`.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest `limit`.
pub const MAX_LIMIT: usize = 1000;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Most entries in the answer, 1..=1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// Only entries older than this id: the `next_before` of the previous page.
    before: Option<String>,
}

impl PageQuery {
    /// The page's limit and cursor, or 400.
    fn parse<Id: FromStr>(&self, kind: &str) -> Result<(usize, Option<Id>), ApiError> {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(ApiError::bad(format!("limit must be 1..={MAX_LIMIT}")));
        }
        let before = match self.before.as_deref() {
            Some(text) => Some(
                text.parse::<Id>()
                    .map_err(|_| ApiError::bad(format!("before {text:?} is not a {kind} id")))?,
            ),
            None => None,
        };
        Ok((limit, before))
    }
}

/// `GET /v1/sessions`: sessions newest first, each as `GET /v1/sessions/{id}` shows
/// it (settings, state, reserved miners and `counts` of its tasks per state).
#[utoipa::path(get, path = "/v1/sessions", tag = "sessions", operation_id = "list_sessions",
    params(PageQuery),
    responses(
        (status = 200, description = "One page of sessions, newest first, from this node's applied state", body = SessionsPage),
        (status = 400, description = "A bad query parameter: `limit` out of 1..=1000, `before` not a session id, an unknown parameter", body = ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn sessions(
    State(node): State<Arc<Node>>,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let (limit, before) = q.parse::<SessionId>("session")?;
    let (list, more, index) = node.state.read(|s| {
        let index = node.state.applied_index();
        let (sessions, more) = s.sessions_page(before, limit);
        // Copied under the lock; the JSON is built after it.
        let list: Vec<SessionView> = sessions
            .into_iter()
            .map(|s| SessionView::from_session(s, index))
            .collect();
        (list, more, index)
    });
    let next_before = more.then(|| list.last().map(|v| v.id.clone())).flatten();
    Ok(Json(SessionsPage {
        sessions: list,
        next_before,
        applied_index: index,
    }))
}

/// `GET /v1/pool/miners`: miners newest first (gone ones until they are purged), with
/// their state, the session reserving them and their work in flight; never a token.
#[utoipa::path(get, path = "/v1/pool/miners", tag = "miners", operation_id = "list_miners",
    params(PageQuery),
    responses(
        (status = 200, description = "One page of miners, newest first, from this node's applied state", body = MinersPage),
        (status = 400, description = "A bad query parameter: `limit` out of 1..=1000, `before` not a miner id, an unknown parameter", body = ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn miners(
    State(node): State<Arc<Node>>,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let (limit, before) = q.parse::<MinerId>("miner")?;
    let (list, more, index) = node.state.read(|s| {
        let index = node.state.applied_index();
        let (miners, more) = s.miners_page(before, limit);
        let list: Vec<MinerView> = miners
            .into_iter()
            .map(|m| MinerView::from_miner(m, index))
            .collect();
        (list, more, index)
    });
    let next_before = more.then(|| list.last().map(|v| v.id.clone())).flatten();
    Ok(Json(MinersPage {
        miners: list,
        next_before,
        applied_index: index,
    }))
}
