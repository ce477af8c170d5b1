//! The public HTTP API (SPEC section 4), served by every node.
//!
//! Writes are validated here, turned into a [`Command`] and handed to the proposer
//! (which forwards to the leader when this node is not it); the handler answers
//! once the command is committed and applied. Reads are served from this node's
//! applied state and carry `applied_index`; a lookup that misses on a node that may
//! lag first catches up to the leader's read index, so an id returned by one node
//! is found on every other.
//!
//! One file per resource: [`sessions`], [`tasks`], [`miners`], [`steps`] (a miner's
//! acks, precommits and reveals in bulk), [`cluster`] (with
//! health, readiness and metrics), [`events`] (server-sent events and WebSocket), and
//! [`auth`], [`error`], [`wire`] (request bodies and encodings), [`replies`] (answers)
//! shared by them (answers are copied out of the state's lock, then encoded), and
//! [`waiters`] (bounds on event streams and long polls). [`openapi`]
//! gathers their descriptions into `GET /v1/openapi.json`. [`listing`] pages through
//! sessions and miners for operators; [`page`] serves the operator page.

mod auth;
mod cluster;
mod error;
mod events;
mod listing;
mod miners;
mod openapi;
mod page;
mod replies;
mod sessions;
mod steps;
mod tasks;
mod waiters;
mod wire;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::Router;
use serde::de::DeserializeOwned;

pub use error::ApiError;

use crate::machine::{Command, Response as MachineResponse, State};
use crate::node::Node;

/// Largest body of a miner call other than a reveal (ack, precommit, heartbeat, drain).
pub const MINER_BODY_LIMIT: usize = 64 << 10;

/// The API's routes over a node.
pub fn router(node: Arc<Node>) -> Router {
    let body_limit = node.config.max_body_bytes;
    // Event streams and long polls are bounded per node.
    let waiters = waiters::Waiters::new(node.config.max_event_streams, node.config.max_long_polls);
    let stream_bound = middleware::from_fn_with_state(waiters.clone(), waiters::bound_streams);
    let polls = middleware::from_fn_with_state(waiters, waiters::bound_long_polls);
    // User, router and operator calls: the API key when one is set.
    let keyed = Router::new()
        .route("/v1/sessions", post(sessions::create))
        .route("/v1/sessions/{id}", get(sessions::read))
        .route("/v1/sessions/{id}/close", post(sessions::close))
        .route("/v1/sessions/{id}/tasks", post(tasks::submit))
        .route("/v1/sessions/{id}/tasks:batch", post(tasks::submit_batch))
        .route("/v1/tasks/{id}", get(tasks::read).layer(polls.clone()))
        .route("/v1/tasks/{id}/cancel", post(tasks::cancel))
        .route("/v1/pool", get(miners::pool))
        .route("/v1/cluster", get(cluster::status))
        .route("/metrics", get(cluster::metrics))
        // Listings for operators (and the operator page).
        .route("/v1/sessions", get(listing::sessions))
        .route("/v1/pool/miners", get(listing::miners));
    // Without an API key there is nothing to check: no layer, no cost per request.
    let keyed = match node.config.api_key {
        Some(_) => keyed.layer(middleware::from_fn_with_state(
            node.clone(),
            auth::require_api_key,
        )),
        None => keyed,
    };
    // Event streams: the API key, also as `?key=` (browsers cannot set headers on
    // EventSource or WebSocket).
    let streams = Router::new().route(
        "/v1/sessions/{id}/events",
        get(events::stream).layer(stream_bound),
    );
    let streams = match node.config.api_key {
        Some(_) => streams.layer(middleware::from_fn_with_state(
            node.clone(),
            auth::require_api_key_or_query,
        )),
        None => streams,
    };
    // Operator writes: the admin key, and none without one (SPEC section 8).
    let admin = Router::new()
        .route("/v1/cluster/members", post(cluster::add_member))
        .route("/v1/cluster/members/{id}", delete(cluster::remove_member))
        .layer(middleware::from_fn_with_state(
            node.clone(),
            auth::require_admin_key,
        ));
    // Miner registration: the miner key or the API key, when either is set.
    let registration = Router::new().route("/v1/miners", post(miners::register));
    let registration = match (&node.config.miner_key, &node.config.api_key) {
        (None, None) => registration,
        _ => registration.layer(middleware::from_fn_with_state(
            node.clone(),
            auth::require_registration_key,
        )),
    };
    // Miner calls: the miner's own token, and small bodies; a reveal carries an output
    // (base64) of at most the payload limit.
    let small = DefaultBodyLimit::max(MINER_BODY_LIMIT);
    let reveal = DefaultBodyLimit::max(node.config.max_payload_bytes / 3 * 4 + MINER_BODY_LIMIT);
    let steps_limit = DefaultBodyLimit::max(node.config.max_steps_body_bytes);
    let miner = Router::new()
        .route(
            "/v1/miners/{id}",
            get(miners::read).delete(miners::deregister),
        )
        .route(
            "/v1/miners/{id}/heartbeat",
            post(miners::heartbeat).layer(small),
        )
        .route("/v1/miners/{id}/drain", post(miners::drain).layer(small))
        .route(
            "/v1/miners/{id}/assignments",
            get(miners::assignments).layer(polls),
        )
        .route("/v1/tasks/{id}/ack", post(tasks::ack).layer(small))
        .route(
            "/v1/tasks/{id}/precommit",
            post(tasks::precommit).layer(small),
        )
        .route("/v1/tasks/{id}/commit", post(tasks::commit).layer(reveal))
        // Many steps at once: their own bounds on the body and the count.
        .route(
            "/v1/miners/{id}/steps",
            post(steps::steps).layer(steps_limit),
        )
        // The token is checked before any body is read.
        .route_layer(middleware::from_fn_with_state(
            node.clone(),
            auth::require_miner_token,
        ));
    Router::new()
        .merge(keyed)
        .merge(streams)
        .merge(admin)
        .merge(registration)
        .merge(miner)
        .route("/health", get(cluster::health))
        .route("/ready", get(cluster::ready))
        // The operator page: static files, no data, so no key (it asks for one).
        .route("/", get(page::index))
        .route("/ui/app.js", get(page::script))
        .route("/ui/style.css", get(page::style))
        .route("/v1/openapi.json", get(openapi::document))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .layer(middleware::from_fn(error::json_errors))
        .layer(middleware::from_fn(record_metrics))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(node)
}

/// Counts requests by route and status and times them.
async fn record_metrics(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| intern(p.as_str()));
    let method = method_label(request.method());
    let start = Instant::now();
    let response = next.run(request).await;
    let status = intern(response.status().as_str());
    metrics::counter!("sq_http_requests_total", "route" => route, "method" => method, "status" => status).increment(1);
    metrics::histogram!("sq_http_request_seconds", "route" => route, "method" => method)
        .record(start.elapsed().as_secs_f64());
    response
}

/// The method's label: one of the methods the API serves or `other`. A client may
/// send any token as a method; each distinct one would otherwise become a label
/// value (and a series in `/metrics`) held for the life of the process.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// A `'static` copy of a label value, made once per distinct value. Routes (the
/// route table's patterns) and statuses are few, so this bounds itself, and labels
/// then cost no allocation per request.
fn intern(value: &str) -> &'static str {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static SEEN: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut seen = SEEN
        .get_or_init(Default::default)
        .lock()
        .expect("interner lock");
    if let Some(found) = seen.get(value) {
        return found;
    }
    let leaked: &'static str = Box::leak(value.to_owned().into_boxed_str());
    seen.insert(leaked);
    leaked
}

/// A JSON body whose failures are API errors: 413 over the body limit, 400 when it
/// is not the expected JSON. An empty body reads as `{}`.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let body = JsonBytes::from_request(req, state).await?;
        body.parse().map(JsonBody)
    }
}

/// A JSON body not parsed yet, for bodies whose values borrow from it
/// ([`JsonBytes::parse`]); the same failures as [`JsonBody`].
pub struct JsonBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for JsonBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(req, state)
            .await
            .map(JsonBytes)
            .map_err(|e| {
                if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::TooLarge("request body is over the limit".into())
                } else {
                    ApiError::bad(e.body_text())
                }
            })
    }
}

impl JsonBytes {
    /// Parses the body; strings of `T` may borrow from it.
    pub fn parse<'a, T: serde::Deserialize<'a>>(&'a self) -> Result<T, ApiError> {
        let bytes: &[u8] = if self.0.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &self.0
        };
        serde_json::from_slice(bytes)
            .map_err(|e| ApiError::bad(format!("malformed JSON body: {e}")))
    }
}

/// Query parameters whose failures are 400 API errors.
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        serde_urlencoded::from_str(query)
            .map(QueryParams)
            .map_err(|e| ApiError::bad(format!("bad query: {e}")))
    }
}

/// Proposes one command and waits for its outcome.
pub(crate) async fn propose(node: &Node, command: Command) -> Result<MachineResponse, ApiError> {
    let mut results = node
        .proposer
        .propose(vec![command], node.config.write_timeout())
        .await?;
    match results.pop() {
        Some(result) => Ok(result?),
        None => Err(ApiError::Internal("no result for the command".into())),
    }
}

/// Looks something up in the applied state; on a miss, catches up with the leader's
/// read index (this node may lag) and looks again. `Ok(None)`: it does not exist;
/// an error (503): this node could not catch up, so it cannot tell.
pub(crate) async fn lookup<T>(
    node: &Node,
    find: impl Fn(&State) -> Option<T>,
) -> Result<Option<T>, ApiError> {
    if let Some(found) = node.state.read(&find) {
        return Ok(Some(found));
    }
    node.reads.linearize(Duration::from_secs(2)).await?;
    Ok(node.state.read(&find))
}

/// Parses a duration such as `30s`, `500ms`, `2m` or a bare number of milliseconds.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, ApiError> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "ms"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| ApiError::bad(format!("bad duration {text:?}")))?;
    let ms = match unit {
        "ms" => n,
        "s" => n.saturating_mul(1000),
        "m" => n.saturating_mul(60_000),
        _ => {
            return Err(ApiError::bad(format!(
                "bad duration {text:?}: use ms, s or m"
            )))
        }
    };
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("40").unwrap(), Duration::from_millis(40));
        for bad in ["", "s", "3h", "-1s", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
