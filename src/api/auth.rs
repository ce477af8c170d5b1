//! Who may call what (SPEC section 8, "Roles"):
//!
//! - the API key (`--api-key`), when the node has one, for user and router calls and
//!   operator reads (`GET /v1/cluster`, `/metrics`); the event stream route also
//!   takes it as `?key=` (browsers cannot set headers there);
//! - the admin key (`--admin-key`) for operator writes (membership changes); without
//!   one, they are refused over HTTP (403), and no other key grants them;
//! - the miner key (`--miner-key`), when set, for miner registration, which then also
//!   accepts the API key;
//! - a miner's own bearer token for miner calls.
//!
//! Keys are compared in constant time and never logged.
//!
//! A miner token is random, returned once at registration; only its sha256 enters
//! the log. The token alone identifies its miner.
//!
//! Miner routes check the token before their body is read ([`require_miner_token`]),
//! from this node's applied state only: a token it does not know never starts a
//! read-index round on the leader (a random token would otherwise make the leader
//! work). A miner registered through another node may not be applied here yet, so
//! a well-formed unknown token waits, at most [`UNKNOWN_TOKEN_WAIT`], for this
//! node's own apply to move on before the 401; a malformed one is refused at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::RngCore;
use subtle::ConstantTimeEq;

use super::ApiError;
use crate::machine::{sha256, Digest, MinerAuth, MinerId};
use crate::node::Node;

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Whether `given` is `key`, in constant time.
fn matches(given: &str, key: Option<&str>) -> bool {
    key.is_some_and(|key| bool::from(given.as_bytes().ct_eq(key.as_bytes())))
}

/// Refuses an operator write unless it carries the admin key: 403 when the node has
/// no admin key (with how to set one) or when the caller holds only the API or miner
/// key; 401 when the call carries no key or an unknown one.
pub async fn require_admin_key(
    State(node): State<Arc<Node>>,
    request: Request,
    next: Next,
) -> Response {
    let config = &node.config;
    let Some(admin) = config.admin_key.as_deref() else {
        return ApiError::Forbidden(
            "operator writes (membership changes) are disabled: this node has no admin key; \
             start every node with --admin-key (or SQ_ADMIN_KEY) and call with \
             Authorization: Bearer <admin key>"
                .into(),
        )
        .into_response();
    };
    let given = bearer(request.headers()).unwrap_or_default();
    if matches(given, Some(admin)) {
        return next.run(request).await;
    }
    if matches(given, config.api_key.as_deref()) || matches(given, config.miner_key.as_deref()) {
        return ApiError::Forbidden(
            "this key does not grant operator writes: use the admin key (--admin-key)".into(),
        )
        .into_response();
    }
    ApiError::Unauthorized("missing or wrong admin key (Authorization: Bearer <admin key>)".into())
        .into_response()
}

/// Miner registration: with a miner key set, the call must carry it or the API key
/// (401 otherwise); without one, the API key when the node has one.
pub async fn require_registration_key(
    State(node): State<Arc<Node>>,
    request: Request,
    next: Next,
) -> Response {
    let config = &node.config;
    if config.miner_key.is_some() {
        let given = bearer(request.headers()).unwrap_or_default();
        if matches(given, config.miner_key.as_deref()) || matches(given, config.api_key.as_deref())
        {
            return next.run(request).await;
        }
        return ApiError::Unauthorized(
            "missing or wrong miner key (Authorization: Bearer <miner key>)".into(),
        )
        .into_response();
    }
    require_api_key(State(node), request, next).await
}

/// Refuses the call (401) unless it carries the node's API key, when it has one.
pub async fn require_api_key(
    State(node): State<Arc<Node>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(key) = &node.config.api_key {
        let given = bearer(request.headers()).unwrap_or_default();
        if !matches(given, Some(key)) {
            return ApiError::Unauthorized(
                "missing or wrong API key (Authorization: Bearer <key>)".into(),
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// [`require_api_key`] for the event stream route, which also takes the key as a
/// `?key=` query parameter: browsers cannot set headers on `EventSource` or a
/// WebSocket. Only this route does (a key in a URL may end up in a proxy's or a
/// browser's history); the node never logs it.
pub async fn require_api_key_or_query(
    State(node): State<Arc<Node>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(key) = &node.config.api_key {
        let given = bearer(request.headers())
            .map(str::to_string)
            .or_else(|| query_key(request.uri().query().unwrap_or_default()))
            .unwrap_or_default();
        if !matches(&given, Some(key)) {
            return ApiError::Unauthorized(
                "missing or wrong API key (Authorization: Bearer <key>, or ?key=<key> on this route)"
                    .into(),
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// The `key` parameter of a query string, percent-decoded.
fn query_key(query: &str) -> Option<String> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .ok()?
        .into_iter()
        .find_map(|(name, value)| (name == "key").then_some(value))
}

/// A fresh miner token and its hash.
pub fn new_miner_token() -> (String, Digest) {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let token = format!("sqm_{}", hex::encode(secret));
    let hash = sha256(&[token.as_bytes()]);
    (token, hash)
}

/// How long a well-formed miner token this node does not know waits for the node's
/// applied state to move on (a registration through another node, not yet applied
/// here; a follower applies a committed entry within a heartbeat or two) before 401.
pub const UNKNOWN_TOKEN_WAIT: Duration = Duration::from_millis(500);

/// Whether `token` has the shape [`new_miner_token`] gives: `sqm_` and 64 hex digits.
fn well_formed(token: &str) -> bool {
    token
        .strip_prefix("sqm_")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The calling miner, from its bearer token (401 if absent or unknown), from this
/// node's applied state: no read-index round (see the module documentation).
pub async fn miner(node: &Node, headers: &HeaderMap) -> Result<MinerAuth, ApiError> {
    let token = bearer(headers).ok_or_else(|| {
        ApiError::Unauthorized("missing miner token (Authorization: Bearer)".into())
    })?;
    let unknown = || ApiError::Unauthorized("unknown miner token".into());
    if !well_formed(token) {
        return Err(unknown());
    }
    let token_hash = sha256(&[token.as_bytes()]);
    let find = |s: &crate::machine::State| s.miner_by_token(&token_hash);
    let mut applied = node.state.watch_applied();
    let deadline = Instant::now() + UNKNOWN_TOKEN_WAIT;
    loop {
        if let Some(miner) = node.state.read(find) {
            return Ok(MinerAuth { miner, token_hash });
        }
        match tokio::time::timeout_at(deadline.into(), applied.changed()).await {
            Ok(Ok(())) => continue,
            _ => return Err(unknown()),
        }
    }
}

/// Refuses a miner call (401) whose token this node does not know, before its body
/// is read.
pub async fn require_miner_token(
    State(node): State<Arc<Node>>,
    request: Request,
    next: Next,
) -> Response {
    if let Err(e) = miner(&node, request.headers()).await {
        return e.into_response();
    }
    next.run(request).await
}

/// The calling miner, who must be the one named in the path (403 otherwise).
pub async fn miner_itself(
    node: &Node,
    headers: &HeaderMap,
    path_id: &str,
) -> Result<MinerAuth, ApiError> {
    let auth = miner(node, headers).await?;
    let named: MinerId = path_id
        .parse()
        .map_err(|_| ApiError::NotFound(format!("unknown miner {path_id}")))?;
    if named != auth.miner {
        return Err(ApiError::Forbidden(format!(
            "this token belongs to {}, not {named}",
            auth.miner
        )));
    }
    Ok(auth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_key_is_found_and_percent_decoded() {
        assert_eq!(query_key("after=1-0&key=a%2Bb%20c"), Some("a+b c".into()));
        assert_eq!(query_key("after=1-0"), None);
        assert_eq!(query_key(""), None);
    }
}
