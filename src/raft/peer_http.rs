//! The peer channel's plain-HTTP transport: keep-alive HTTP/1.1 connections to each
//! peer address, driven with hyper's connection API directly.
//!
//! Why not reqwest, which the peer channel uses with TLS: at one client connection
//! every submit costs four peer requests (an AppendEntries with the entry and one
//! with the commit index, to each follower; docs/PERFORMANCE.md, sixth sitting), and
//! reqwest parses the URL, checks a connection out of its pool through a
//! connector, arms a timer and builds a header map on each. Here a request is a
//! method, a path and the headers the caller gives, on a connection taken from a
//! small per-address stack of idle ones.
//!
//! What a caller needs to tell apart is kept: a failure to connect (nothing was
//! sent), no answer within the timeout, and a connection that broke mid-request
//! (the request may have been processed). A connection whose request failed or
//! timed out is dropped, never reused.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

/// How long a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Idle connections kept per address.
const MAX_IDLE_PER_ADDR: usize = 64;
/// An idle connection older than this is closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// No connection could be opened: nothing was sent.
    #[error("{0}")]
    Connect(String),
    /// No answer within the timeout.
    #[error("{0}")]
    Timeout(String),
    /// The connection broke before a whole answer came.
    #[error("{0}")]
    Broken(String),
}

/// An answer: its status, headers and whole body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

struct Idle {
    sender: SendRequest<Full<Bytes>>,
    since: Instant,
}

/// Keep-alive connections to peers, by `host:port`.
#[derive(Default)]
pub struct PeerHttp {
    idle: Mutex<HashMap<String, Vec<Idle>>>,
}

impl PeerHttp {
    /// POSTs `body` to `path` on `addr` with `headers`, within `timeout` (the
    /// connection's opening included).
    pub async fn post(
        &self,
        addr: &str,
        path: &str,
        headers: impl IntoIterator<Item = (HeaderName, HeaderValue)>,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Answer, Failure> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = path
            .parse()
            .map_err(|e| Failure::Connect(format!("{path}: {e}")))?;
        let h = req.headers_mut();
        h.insert(
            HOST,
            HeaderValue::from_str(addr).map_err(|e| Failure::Connect(format!("{addr}: {e}")))?,
        );
        for (name, value) in headers {
            h.insert(name, value);
        }
        let call = async {
            let (sender, resp) = loop {
                // An idle connection first; a fresh one when none is left.
                let (mut sender, reused) = match self.checkout(addr) {
                    Some(sender) => (sender, true),
                    None => (connect(addr).await?, false),
                };
                if sender.ready().await.is_err() {
                    if reused {
                        continue; // closed while idle: nothing was sent on it
                    }
                    return Err(Failure::Connect(format!("{addr}: closed at once")));
                }
                match sender.try_send_request(req).await {
                    Ok(resp) => break (sender, resp),
                    Err(mut e) => match e.take_message() {
                        // Not sent (the connection was closing): another one takes it.
                        Some(back) if reused => req = back,
                        Some(_) => return Err(Failure::Connect(format!("{addr}: {}", e.error()))),
                        // Written, at least in part: the peer may have processed it.
                        None => return Err(Failure::Broken(format!("{addr}: {}", e.error()))),
                    },
                }
            };
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| Failure::Broken(format!("{addr}: {e}")))?
                .to_bytes();
            // A whole answer came: the connection can carry the next request.
            self.checkin(addr, sender);
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| Failure::Timeout(format!("{addr}: no answer in {timeout:?}")))?
    }

    fn checkout(&self, addr: &str) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let stack = idle.get_mut(addr)?;
        while let Some(Idle { sender, since }) = stack.pop() {
            if !sender.is_closed() && since.elapsed() < IDLE_TIMEOUT {
                return Some(sender);
            }
        }
        None
    }

    fn checkin(&self, addr: &str, sender: SendRequest<Full<Bytes>>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let stack = idle.entry(addr.to_string()).or_default();
        // Closed and stale ones go.
        stack.retain(|i| !i.sender.is_closed() && i.since.elapsed() < IDLE_TIMEOUT);
        if stack.len() < MAX_IDLE_PER_ADDR {
            stack.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }
}

async fn connect(addr: &str) -> Result<SendRequest<Full<Bytes>>, Failure> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| Failure::Connect(format!("{addr}: no connection in {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| Failure::Connect(format!("{addr}: {e}")))?;
    stream
        .set_nodelay(true)
        .map_err(|e| Failure::Connect(format!("{addr}: {e}")))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Failure::Connect(format!("{addr}: {e}")))?;
    // The connection's own task: it ends when the sender is dropped or the peer
    // closes the connection.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// The server side of one HTTP/1.1 request, for tests' fake peers: reads a request
/// from `stream` into `buf` and takes it out: its head (lower-cased) and its body
/// (by its content-length). `None` once the client closed the connection.
#[cfg(test)]
pub(crate) async fn read_request(
    stream: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
) -> Option<(String, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    while buf.len() < head_end + len {
        let n = stream.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[head_end..head_end + len].to_vec();
    buf.drain(..head_end + len);
    Some((head, body))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::io::AsyncWriteExt;

    use super::*;

    /// A server that answers each connection's first request with `ok` and then
    /// closes it, as a peer's idle timeout or restart would; counts connections.
    async fn closing_server() -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    if read_request(&mut stream, &mut Vec::new()).await.is_none() {
                        return;
                    }
                    // Keep-alive as far as the client knows; closed right after.
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                });
            }
        });
        (addr, connections)
    }

    /// POSTs a small body to `/x` on `addr`.
    async fn say_hi(http: &PeerHttp, addr: &str) -> Result<Answer, Failure> {
        let body = Bytes::from_static(b"hi");
        http.post(addr, "/x", [], body, Duration::from_secs(5))
            .await
    }

    #[tokio::test]
    async fn a_connection_the_peer_closed_while_idle_is_not_a_failure() {
        let (addr, connections) = closing_server().await;
        let http = PeerHttp::default();
        for call in 1..=3 {
            let answer = say_hi(&http, &addr)
                .await
                .unwrap_or_else(|e| panic!("call {call}: {e}"));
            assert_eq!(answer.status, StatusCode::OK);
            assert_eq!(&answer.body[..], b"ok");
            // The server closes the connection the answer came on.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            connections.load(Ordering::SeqCst),
            3,
            "one connection a call"
        );
    }

    #[tokio::test]
    async fn an_answered_connection_carries_the_next_request() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            for _ in 0..2 {
                read_request(&mut stream, &mut buf)
                    .await
                    .expect("the client closed the connection");
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .unwrap();
            }
        });
        let http = PeerHttp::default();
        for _ in 0..2 {
            let answer = say_hi(&http, &addr).await.unwrap();
            assert_eq!(&answer.body[..], b"ok");
        }
        // Both requests came on the one connection the server accepted.
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("two requests on one connection")
            .unwrap();
    }

    #[tokio::test]
    async fn a_closed_port_fails_to_connect_and_a_silent_peer_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed = listener.local_addr().unwrap().to_string();
        drop(listener);
        let http = PeerHttp::default();
        let r = http
            .post(&closed, "/x", [], Bytes::new(), Duration::from_secs(5))
            .await;
        assert!(matches!(r, Err(Failure::Connect(_))), "{r:?}");

        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap().to_string();
        let r = http
            .post(&addr, "/x", [], Bytes::new(), Duration::from_millis(200))
            .await;
        assert!(matches!(r, Err(Failure::Timeout(_))), "{r:?}");
        drop(silent);
    }
}
