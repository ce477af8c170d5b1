//! Who may call what: the API key for user, router and operator calls (when the node
//! has one), and a miner's own bearer token for miner calls.
//!
//! A miner token is random, returned once at registration; only its sha256 enters
//! the log. The token alone identifies its miner.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::RngCore;
use subtle::ConstantTimeEq;

use super::{lookup, ApiError};
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

/// Refuses the call (401) unless it carries the node's API key, when it has one.
pub async fn require_api_key(
    State(node): State<Arc<Node>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(key) = &node.config.api_key {
        let given = bearer(request.headers()).unwrap_or_default();
        if !bool::from(given.as_bytes().ct_eq(key.as_bytes())) {
            return ApiError::Unauthorized(
                "missing or wrong API key (Authorization: Bearer <key>)".into(),
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// A fresh miner token and its hash.
pub fn new_miner_token() -> (String, Digest) {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let token = format!("sqm_{}", hex::encode(secret));
    let hash = sha256(&[token.as_bytes()]);
    (token, hash)
}

/// The calling miner, from its bearer token (401 if absent or unknown).
pub async fn miner(node: &Node, headers: &HeaderMap) -> Result<MinerAuth, ApiError> {
    let token = bearer(headers).ok_or_else(|| {
        ApiError::Unauthorized("missing miner token (Authorization: Bearer)".into())
    })?;
    let token_hash = sha256(&[token.as_bytes()]);
    let miner = lookup(node, |s| s.miner_by_token(&token_hash))
        .await?
        .ok_or_else(|| ApiError::Unauthorized("unknown miner token".into()))?;
    Ok(MinerAuth { miner, token_hash })
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
