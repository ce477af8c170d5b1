//! A lean HTTP/1.1 connection for the load generator's submitters: one keep-alive
//! connection per submitter, driven with hyper's connection API directly.
//!
//! Why not the [`crate::client::Client`] every other caller uses: reqwest parses the
//! URL, checks a connection out of its pool, arms a timer and builds a header map on
//! every request, which made the load generator the busiest process of a lifecycle
//! run (issue 16: "hyper and typed JSON"). A submitter sends one request at a time
//! to one node, so it needs none of that: the request line, host and key headers are
//! built once, the body is an already-encoded [`Bytes`] shared by every call, and the
//! answer is read into one buffer. No failover: a bench drives a healthy cluster and
//! counts what fails; a broken connection is opened again on the next call. Plain
//! http only; with a CA file the bench keeps the reqwest client (TLS).

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;

/// How long one call may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read (a submit's answer is a few hundred bytes).
const MAX_ANSWER: usize = 1 << 20;

/// A request body sent in one frame.
pub struct Once(Option<Bytes>);

impl Body for Once {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.as_ref().map_or(0, |b| b.len() as u64))
    }
}

/// One connection to one node's API.
pub struct Conn {
    /// `host:port` to connect to.
    addr: String,
    host: HeaderValue,
    auth: Option<HeaderValue>,
    sender: Option<SendRequest<Once>>,
}

impl Conn {
    /// A connection (opened on first use) to the node at `base` (`http://host:port`);
    /// `None` for an https node.
    pub fn new(base: &str, api_key: Option<&str>) -> anyhow::Result<Option<Conn>> {
        let Some(addr) = base.strip_prefix("http://") else {
            return Ok(None);
        };
        let auth = match api_key {
            Some(key) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {key}"))?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        Ok(Some(Conn {
            addr: addr.to_string(),
            host: HeaderValue::from_str(addr)?,
            auth,
            sender: None,
        }))
    }

    async fn connect(&mut self) -> Result<&mut SendRequest<Once>, String> {
        if self.sender.as_ref().is_some_and(|s| !s.is_closed()) {
            return Ok(self.sender.as_mut().expect("checked"));
        }
        self.sender = None;
        let stream = tokio::net::TcpStream::connect(&self.addr)
            .await
            .map_err(|e| format!("{}: {e}", self.addr))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("{}: {e}", self.addr))?;
        // The connection's own task; it ends when the sender is dropped.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(self.sender.insert(sender))
    }

    /// POSTs an encoded JSON body to `path` (its origin form, `/v1/...`); the
    /// answer's status and body.
    pub async fn post(&mut self, path: &Uri, body: Bytes) -> Result<(StatusCode, Bytes), String> {
        let call = async {
            let mut req = Request::new(Once(Some(body)));
            *req.method_mut() = Method::POST;
            *req.uri_mut() = path.clone();
            let headers = req.headers_mut();
            headers.insert(HOST, self.host.clone());
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            if let Some(auth) = &self.auth {
                headers.insert(AUTHORIZATION, auth.clone());
            }
            let sender = self.connect().await?;
            sender.ready().await.map_err(|e| e.to_string())?;
            let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let mut body = resp.into_body();
            let mut buf = BytesMut::new();
            while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                let frame = frame.map_err(|e| e.to_string())?;
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.len() > MAX_ANSWER {
                        return Err("answer too large".to_string());
                    }
                    buf.extend_from_slice(&data);
                }
            }
            Ok((status, buf.freeze()))
        };
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => {
                self.sender = None;
                Err(e)
            }
            Err(_) => {
                // The answer may still come on this connection: start a fresh one.
                self.sender = None;
                Err(format!("{}: no answer in {CALL_TIMEOUT:?}", self.addr))
            }
        }
    }
}
