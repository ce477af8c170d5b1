//! An HTTP client of the Session Queue API, used by the command-line tools, the
//! simulated miners and the load generator (and usable by any Rust program).
//!
//! It knows several nodes and fails over: a call that cannot connect, or is answered
//! 503 without having been applied, goes to the next node. Calls return the status
//! and JSON body; helpers wrap the common ones. [`Client::call_within`] bounds one
//! attempt in time, for callers that retry on their own schedule (the simulated
//! miners, with [`backoff::Backoff`]). It speaks https with a CA file
//! ([`Client::with_ca_file`]). [`Client::watch`] follows a session's event stream
//! across node failures; [`output`] is how the command-line client prints.

pub mod backoff;
mod drive;
mod driver;
pub mod miner;
pub mod output;
mod watch;

pub use watch::{SseParser, StreamEvent};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Why a call failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no node answered: {0}")]
    Unreachable(String),
    #[error("{status}: {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected response: {0}")]
    Unexpected(String),
}

impl ClientError {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Worth retrying later as it is: no node answered, or the cluster was busy or
    /// between leaders (429, 5xx). Any other answer will not change by itself.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable(_) => true,
            ClientError::Api { status, .. } => *status == 429 || *status >= 500,
            ClientError::Unexpected(_) => false,
        }
    }
}

/// A client of one cluster. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    nodes: Arc<Vec<String>>,
    api_key: Option<String>,
    current: Arc<AtomicUsize>,
}

/// Turns `127.0.0.1:7001` into `http://127.0.0.1:7001` (`https://` with `tls`),
/// and `http://h:7001/` or `https://h:7001/` into itself without the slash: a
/// scheme given wins.
fn base_url(node: &str, tls: bool) -> String {
    let node = node.trim().trim_end_matches('/');
    if node.starts_with("http://") || node.starts_with("https://") {
        node.to_string()
    } else if tls {
        format!("https://{node}")
    } else {
        format!("http://{node}")
    }
}

impl Client {
    /// A client of the given nodes (`host:port` or URLs) over plain HTTP.
    pub fn new(nodes: &[String], api_key: Option<String>) -> Self {
        Self::build(nodes, api_key, None)
    }

    /// A client of the given nodes that speaks https to a bare `host:port`
    /// (`https://` URLs too) when `ca_file` is given, trusting the certificates
    /// that CA signed (`--ca-file`, `SQ_CA_FILE`); without one, plain HTTP as
    /// [`Client::new`], and an `https://` node is refused (there is nothing to
    /// trust its certificate with). An `http://` URL always stays plain.
    pub fn with_ca_file(
        nodes: &[String],
        api_key: Option<String>,
        ca_file: Option<&std::path::Path>,
    ) -> anyhow::Result<Self> {
        match ca_file {
            Some(ca) => {
                let tls = crate::tls::https_client(ca, "--ca-file")?;
                Ok(Self::build(nodes, api_key, Some(tls)))
            }
            None => {
                if let Some(node) = nodes.iter().find(|n| n.trim().starts_with("https://")) {
                    anyhow::bail!(
                        "{node}: https needs --ca-file (SQ_CA_FILE), the CA that signed the nodes' certificates"
                    );
                }
                Ok(Self::new(nodes, api_key))
            }
        }
    }

    fn build(nodes: &[String], api_key: Option<String>, tls: Option<rustls::ClientConfig>) -> Self {
        let mut builder = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(1024)
            // Below the nodes' default idle timeout (60 s), so a pooled connection
            // is dropped here before the node closes it under a request.
            .pool_idle_timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(120));
        let https = tls.is_some();
        if let Some(tls) = tls {
            builder = builder.use_preconfigured_tls(tls);
        }
        let http = builder.build().expect("HTTP client");
        let nodes: Vec<String> = nodes.iter().map(|n| base_url(n, https)).collect();
        assert!(!nodes.is_empty(), "a client needs at least one node");
        Client {
            http,
            nodes: Arc::new(nodes),
            api_key,
            current: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The underlying HTTP client (its TLS settings included), for requests the
    /// helpers do not cover, such as an event stream.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The same cluster, but starting with node `i` (to spread load).
    pub fn pinned(&self, i: usize) -> Self {
        Client {
            current: Arc::new(AtomicUsize::new(i % self.nodes.len())),
            ..self.clone()
        }
    }

    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// One call, failing over to the next node when one cannot take it. `bearer`
    /// replaces the API key (miner calls).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        bearer: Option<&str>,
    ) -> Result<(StatusCode, Value), ClientError> {
        self.call_inner(method, path, body, bearer, None).await
    }

    /// [`Client::call`] with each attempt bounded by `timeout`; an attempt that times
    /// out moves this client to the next node and fails the call as unreachable (the
    /// caller retries when it sees fit: the request may or may not have been applied).
    pub async fn call_within(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        bearer: Option<&str>,
        timeout: Duration,
    ) -> Result<(StatusCode, Value), ClientError> {
        self.call_inner(method, path, body, bearer, Some(timeout))
            .await
    }

    async fn call_inner(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        bearer: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<(StatusCode, Value), ClientError> {
        let body = body.map(encode).transpose()?;
        let (status, bytes) = self.send(method, path, body, bearer, timeout).await?;
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, value))
    }

    /// One call with a body already encoded as JSON, failing over as [`Client::call`]
    /// does; the answer's status and raw body. The body is shared, not copied, by the
    /// attempts (and by the calls of a load generator that sends the same one).
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        bearer: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let attempts = self.nodes.len() * 3;
        let mut last = String::new();
        for attempt in 0..attempts {
            let i = self.current.load(Ordering::Relaxed) % self.nodes.len();
            let url = format!("{}{}", self.nodes[i], path);
            let mut req = self.http.request(method.clone(), &url);
            if let Some(token) = bearer.or(self.api_key.as_deref()) {
                req = req.bearer_auth(token);
            }
            if let Some(body) = &body {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone());
            }
            if let Some(timeout) = timeout {
                req = req.timeout(timeout);
            }
            let resp = match req.send().await {
                Err(e) if e.is_connect() => {
                    last = format!("{url}: {e}");
                    self.current.store(i + 1, Ordering::Relaxed);
                    continue;
                }
                Err(e) if e.is_timeout() => {
                    self.current.store(i + 1, Ordering::Relaxed);
                    return Err(ClientError::Unreachable(format!("{url}: {e}")));
                }
                Err(e) => return Err(ClientError::Unreachable(format!("{url}: {e}"))),
                Ok(resp) => resp,
            };
            let status = resp.status();
            let bytes = match resp.bytes().await {
                Ok(b) => b,
                Err(e) if e.is_timeout() => {
                    self.current.store(i + 1, Ordering::Relaxed);
                    return Err(ClientError::Unreachable(format!("{url}: {e}")));
                }
                Err(_) => Bytes::new(),
            };
            // 503 "unavailable" means nothing was applied: another node may do.
            if status == StatusCode::SERVICE_UNAVAILABLE {
                let error = error_of(&bytes);
                if error.code == "unavailable" {
                    last = format!("{url}: {:?}", error.message);
                    self.current.store(i + 1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100 * (attempt as u64 + 1).min(10)))
                        .await;
                    continue;
                }
            }
            return Ok((status, bytes));
        }
        Err(ClientError::Unreachable(last))
    }

    /// A call that must succeed, with a typed body and a typed answer (no
    /// `serde_json::Value` in between); an error status becomes [`ClientError::Api`].
    /// `timeout` bounds each attempt as in [`Client::call_within`].
    pub async fn ok_typed<B: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        bearer: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<R, ClientError> {
        let body = body.map(encode).transpose()?;
        self.ok_encoded(method, path, body, bearer, timeout).await
    }

    /// [`Client::ok_typed`] with the body already encoded as JSON (see [`encode`]),
    /// for a caller that sends the same body many times.
    pub async fn ok_encoded<R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        bearer: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<R, ClientError> {
        let (status, bytes) = self.send(method, path, body, bearer, timeout).await?;
        if !status.is_success() {
            let error = error_of(&bytes);
            return Err(ClientError::Api {
                status: status.as_u16(),
                code: error.code,
                message: error.message,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            ClientError::Unexpected(format!(
                "{path}: {e}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ))
        })
    }

    /// A call that must succeed; an error status becomes [`ClientError::Api`].
    pub async fn ok(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        bearer: Option<&str>,
    ) -> Result<Value, ClientError> {
        let (status, value) = self.call(method, path, body, bearer).await?;
        success(status, value)
    }

    /// [`Client::ok`] with each attempt bounded by `timeout` (see [`Client::call_within`]).
    pub async fn ok_within(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        bearer: Option<&str>,
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        let (status, value) = self
            .call_within(method, path, body, bearer, timeout)
            .await?;
        success(status, value)
    }

    pub async fn create_session(&self, spec: &Value) -> Result<String, ClientError> {
        let v = self
            .ok(Method::POST, "/v1/sessions", Some(spec), None)
            .await?;
        string(&v, "id")
    }

    /// Submits one task; returns its id.
    pub async fn submit(
        &self,
        session: &str,
        payload: &[u8],
        key: Option<&str>,
    ) -> Result<String, ClientError> {
        let mut body = json!({"payload": B64.encode(payload)});
        if let Some(key) = key {
            body["idempotency_key"] = json!(key);
        }
        let v = self
            .ok(
                Method::POST,
                &format!("/v1/sessions/{session}/tasks"),
                Some(&body),
                None,
            )
            .await?;
        string(&v, "task_id")
    }

    pub async fn task(&self, task: &str, query: &str) -> Result<Value, ClientError> {
        self.ok(Method::GET, &format!("/v1/tasks/{task}{query}"), None, None)
            .await
    }

    /// Registers a miner; returns its id and token.
    pub async fn register_miner(
        &self,
        name: &str,
        capacity: u32,
        tags: &[String],
    ) -> Result<(String, String), ClientError> {
        let body = json!({"name": name, "capacity": capacity, "tags": tags});
        let v = self
            .ok(Method::POST, "/v1/miners", Some(&body), None)
            .await?;
        Ok((string(&v, "miner_id")?, string(&v, "token")?))
    }
}

/// The body of a successful answer; an error status becomes [`ClientError::Api`].
fn success(status: StatusCode, value: Value) -> Result<Value, ClientError> {
    if status.is_success() {
        Ok(value)
    } else {
        Err(ClientError::Api {
            status: status.as_u16(),
            code: value["error"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            message: value["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        })
    }
}

/// A body encoded as JSON once, to send as often as needed.
pub fn encode<B: Serialize + ?Sized>(body: &B) -> Result<Bytes, ClientError> {
    serde_json::to_vec(body)
        .map(Bytes::from)
        .map_err(|e| ClientError::Unexpected(format!("encoding a request: {e}")))
}

/// The `error` of an error answer, as far as it can be read.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ErrorDetail {
    code: String,
    message: String,
}

fn error_of(body: &[u8]) -> ErrorDetail {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: ErrorDetail,
    }
    serde_json::from_slice::<ErrorBody>(body)
        .map(|b| b.error)
        .unwrap_or_default()
}

/// A string field of a JSON object.
pub fn string(v: &Value, field: &str) -> Result<String, ClientError> {
    v[field]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| ClientError::Unexpected(format!("no {field} in {v}")))
}

/// Standard base64 of bytes, as the API wants them.
pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// Bytes from standard base64.
pub fn unb64(text: &str) -> Option<Vec<u8>> {
    B64.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_address_takes_the_scheme_of_the_client_and_a_given_one_stays() {
        assert_eq!(base_url("127.0.0.1:7001", false), "http://127.0.0.1:7001");
        assert_eq!(base_url("127.0.0.1:7001", true), "https://127.0.0.1:7001");
        assert_eq!(base_url(" http://h:1/ ", true), "http://h:1");
        assert_eq!(base_url("https://h:1/", false), "https://h:1");
        let err = Client::with_ca_file(&["https://h:1".into()], None, None)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("--ca-file"), "{err}");
        let missing = std::path::Path::new("/nonexistent/ca.pem");
        assert!(Client::with_ca_file(&["h:1".into()], None, Some(missing)).is_err());
    }
}
