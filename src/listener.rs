//! A listener: accepts connections under a cap, closes the ones that sit idle or
//! never finish their headers, optionally speaks TLS, and serves an axum router on
//! each connection (HTTP/1.1 with upgrades, or HTTP/2).
//!
//! `axum::serve` accepts without limit and keeps an idle connection forever, so a
//! client holding a thousand sockets shut a node out of new clients (and left
//! RocksDB without file descriptors). Here:
//! - at most [`ListenerLimits::max_connections`] are open at once; past that a new
//!   connection is closed at once (it is never left queued behind the flood), and
//!   the ones already open are still served;
//! - a connection with no request in flight for `idle_timeout` is closed (a request
//!   in flight includes a response body still streaming: SSE, long polls), also one
//!   that sent part of a request's headers and stopped (dropped if a graceful close
//!   has not ended it a second later);
//! - a request whose headers do not arrive within `header_read_timeout` closes its
//!   connection, and so does a TLS handshake that takes longer;
//! - a request whose body does not arrive whole within `body_read_timeout` of its
//!   headers fails to read it ([`BodyReadTimeout`]): a client trickling a body a byte
//!   at a time cannot hold a request (and its connection) for ever. The request
//!   carries a [`BodyDeadline`] in its extensions, so the handler's layer can tell
//!   this failure from others (the API answers 408, and nothing is written: a
//!   handler acts only on a whole body);
//! - a failed `accept` (no file descriptors left) backs off instead of ending the
//!   server;
//! - a connection upgraded to a WebSocket keeps its place under the cap until the
//!   socket closes: hyper hands the upgraded socket to a task of its own and ends the
//!   connection, so each request carries the connection's [`ConnectionSlot`] and the
//!   WebSocket's task holds a clone of it.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::shutdown::Shutdown;

/// What one listener allows.
#[derive(Clone, Debug)]
pub struct ListenerLimits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Longest a request's headers (or a TLS handshake) may take to arrive.
    pub header_read_timeout: Duration,
    /// A connection with nothing in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Longest a request's body may take to arrive, counted from its headers.
    pub body_read_timeout: Duration,
}

/// Serves `app` on `listener` until `stop` is triggered, then lets open
/// connections finish their requests (the caller bounds how long it waits).
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    app: Router,
    limits: ListenerLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: Shutdown,
) -> anyhow::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut connections = JoinSet::new();
    let stopped = stop.wait();
    tokio::pin!(stopped);
    let mut last_accept_warning: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = &mut stopped => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let (stream, _peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE/ENFILE and friends: keep the listener, retry shortly.
                if last_accept_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(listener = name, error = %e, "accept failed; retrying");
                    last_accept_warning = Some(Instant::now());
                }
                metrics::counter!("sq_accept_errors_total", "listener" => name).increment(1);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Over the cap: close now rather than queue it behind the connections
            // holding the slots.
            metrics::counter!("sq_connections_refused_total", "listener" => name).increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let limits = limits.clone();
        let tls = tls.clone();
        let stop = stop.clone();
        let slot = ConnectionSlot::new(name, permit);
        connections.spawn(async move {
            match tls {
                None => serve_connection(name, stream, app, &limits, slot, stop).await,
                Some(acceptor) => {
                    match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(stream)) => {
                            serve_connection(name, stream, app, &limits, slot, stop).await
                        }
                        Ok(Err(e)) => {
                            metrics::counter!("sq_tls_handshake_failures_total", "listener" => name)
                                .increment(1);
                            tracing::debug!(listener = name, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            metrics::counter!("sq_tls_handshake_failures_total", "listener" => name)
                                .increment(1);
                        }
                    }
                }
            }
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// A connection's place under the listener's cap, given back when the last clone
/// is dropped: by the connection's task, or later by the task of a WebSocket the
/// connection was upgraded to. Every request carries one in its extensions.
#[derive(Clone)]
pub struct ConnectionSlot {
    _inner: Arc<SlotInner>,
}

struct SlotInner {
    _permit: OwnedSemaphorePermit,
    open: metrics::Gauge,
}

impl ConnectionSlot {
    fn new(name: &'static str, permit: OwnedSemaphorePermit) -> Self {
        let open = metrics::gauge!("sq_connections_open", "listener" => name);
        open.increment(1.0);
        ConnectionSlot {
            _inner: Arc::new(SlotInner {
                _permit: permit,
                open,
            }),
        }
    }
}

impl Drop for SlotInner {
    fn drop(&mut self) {
        self.open.decrement(1.0);
    }
}

/// Serves one connection until the client closes it, it sits idle past the
/// timeout, or the node stops.
async fn serve_connection<I>(
    name: &'static str,
    io: I,
    app: Router,
    limits: &ListenerLimits,
    slot: ConnectionSlot,
    stop: Shutdown,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let tracked = activity.clone();
    let body_read_timeout = limits.body_read_timeout;
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let app = app.clone();
        let guard = tracked.enter();
        let deadline = BodyDeadline::new(body_read_timeout);
        let mut request = request.map(|body| {
            if http_body::Body::is_end_stream(&body) {
                Body::new(body)
            } else {
                Body::new(DeadlineBody {
                    body,
                    deadline: deadline.clone(),
                    sleep: None,
                })
            }
        });
        request.extensions_mut().insert(deadline);
        request.extensions_mut().insert(slot.clone());
        async move {
            let response = app
                .oneshot(request)
                .await
                .unwrap_or_else(|never: Infallible| match never {});
            Ok::<_, Infallible>(response.map(|body| guard_body(body, guard)))
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    // Streams per HTTP/2 connection: hyper's default of 200 would multiply the
    // connection cap (`--max-connections`) by 200 in requests held at once.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(None)
        .max_concurrent_streams(H2_MAX_STREAMS);
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let stopped = stop.wait();
    tokio::pin!(stopped);
    let mut closing = false;
    // When an idle connection is dropped outright if the graceful close has not
    // ended it: hyper finishes a graceful shutdown only at a request boundary, so a
    // connection stuck in the middle of a request's headers would otherwise stay.
    let mut drop_at: Option<tokio::time::Instant> = None;
    loop {
        let idle_check = tokio::time::sleep(activity.idle_deadline(limits.idle_timeout));
        let forced = async {
            match drop_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(listener = name, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = &mut stopped, if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = idle_check, if !closing => {
                if activity.idle_for() >= limits.idle_timeout {
                    metrics::counter!("sq_connections_idle_closed_total", "listener" => name)
                        .increment(1);
                    closing = true;
                    drop_at = Some(tokio::time::Instant::now() + IDLE_CLOSE_GRACE);
                    connection.as_mut().graceful_shutdown();
                }
            }
            _ = forced => {
                // Still nothing in flight: nothing is lost by dropping it.
                if activity.idle_for() > Duration::ZERO {
                    return;
                }
                drop_at = Some(tokio::time::Instant::now() + IDLE_CLOSE_GRACE);
            }
        }
    }
}

/// Most requests one HTTP/2 connection may have open at once.
const H2_MAX_STREAMS: u32 = 64;

/// How long an idle connection may take to close gracefully before it is dropped.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Requests in flight on one connection, and when the last one ended.
struct Activity {
    started: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds since `started` when a request last began or ended.
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.last_ms.store(self.now_ms(), Ordering::Release);
        InFlight(self.clone())
    }

    /// How long nothing has been in flight (zero while something is).
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.last_ms.load(Ordering::Acquire)),
        )
    }

    /// When to look again: the moment the connection would have been idle for
    /// `timeout` if nothing happens meanwhile.
    fn idle_deadline(&self, timeout: Duration) -> Duration {
        timeout
            .saturating_sub(self.idle_for())
            .max(Duration::from_millis(10))
    }
}

/// One request in flight; ends when its response body is done (or dropped).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.last_ms.store(self.0.now_ms(), Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// When a request's body must have arrived; in the request's extensions. Tells
/// whether reading the body failed for being too slow.
#[derive(Clone, Debug)]
pub struct BodyDeadline(Arc<DeadlineState>);

#[derive(Debug)]
struct DeadlineState {
    at: tokio::time::Instant,
    timeout: Duration,
    expired: std::sync::atomic::AtomicBool,
}

impl BodyDeadline {
    fn new(timeout: Duration) -> Self {
        BodyDeadline(Arc::new(DeadlineState {
            at: tokio::time::Instant::now() + timeout,
            timeout,
            expired: Default::default(),
        }))
    }

    /// Whether reading the body failed with [`BodyReadTimeout`].
    pub fn expired(&self) -> bool {
        self.0.expired.load(Ordering::Acquire)
    }

    /// The error of a body that did not arrive in time.
    pub fn error(&self) -> BodyReadTimeout {
        BodyReadTimeout(self.0.timeout)
    }
}

/// A request body that did not arrive whole within the body-read timeout.
#[derive(Debug, thiserror::Error)]
#[error(
    "the request body did not arrive within {} ms (--body-read-timeout-ms)",
    .0.as_millis()
)]
pub struct BodyReadTimeout(Duration);

/// A request body that fails with [`BodyReadTimeout`] once its deadline passes
/// before it ends.
struct DeadlineBody {
    body: Incoming,
    deadline: BodyDeadline,
    /// Made on the first wait, so a body that is already there costs no timer.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for DeadlineBody {
    type Data = bytes::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let at = self.deadline.0.at;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.deadline.0.expired.store(true, Ordering::Release);
                Poll::Ready(Some(Err(self.deadline.error().into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// `body`, holding `guard` until the body ends or is dropped: a request counts as
/// in flight (here), or holds its waiter permit (`api::waiters`), for as long as its
/// response streams.
pub fn guard_body<G: Send + Unpin + 'static>(body: Body, guard: G) -> Body {
    Body::new(GuardedBody {
        body,
        _guard: guard,
    })
}

/// A response body that holds a guard until it ends.
struct GuardedBody<G> {
    body: Body,
    _guard: G,
}

impl<G: Unpin> http_body::Body for GuardedBody<G> {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_idle_only_with_nothing_in_flight() {
        let activity = Arc::new(Activity::new());
        let guard = activity.enter();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(activity.idle_for(), Duration::ZERO);
        drop(guard);
        std::thread::sleep(Duration::from_millis(20));
        assert!(activity.idle_for() >= Duration::from_millis(15));
        assert!(activity.idle_deadline(Duration::from_millis(30)) <= Duration::from_millis(15));
    }
}
