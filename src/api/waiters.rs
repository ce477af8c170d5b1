//! Bounds on the requests that wait on a node: event streams (SSE) and long polls.
//!
//! Each one holds a connection, a task and a subscription for as long as it waits,
//! so without a bound a crowd of routers or miners could hold a node's memory and
//! tasks however few writes they make. Each kind has its own count
//! (`--max-event-streams`, `--max-long-polls`); past it a new one is answered at
//! once with 503 `too_many_waiters` and `Retry-After` (another node, or a moment
//! later, may take it), and the ones already waiting are untouched.
//!
//! The count is a layer on the routes ([`bound_streams`], [`bound_long_polls`]),
//! so the handlers do not change: a permit is taken before the handler runs and
//! travels with the response body, given back when the body ends (the stream closes,
//! the client goes away, or the long poll answers). A request that does not wait (a
//! task read without `wait`, an assignment list without `wait_ms`) takes no permit.
//! A protocol upgraded off the response (a WebSocket) ends its response at once (the
//! `101 Switching Protocols` has no body), so the stream layer also hands its permit
//! to the handler ([`StreamPermit`] in the request's extensions): a handler that
//! upgrades takes it into the socket's task, which gives it back when the socket
//! ends; otherwise the response body holds it as above.

use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ApiError;

/// How long a client refused for too many waiters is told to wait, seconds.
const RETRY_AFTER_S: u64 = 1;

/// The permits of one node.
pub struct Waiters {
    streams: Arc<Semaphore>,
    polls: Arc<Semaphore>,
    max_streams: usize,
    max_polls: usize,
}

/// One waiting request's place, given back on drop.
pub struct WaiterPermit(#[allow(dead_code)] OwnedSemaphorePermit);

impl Waiters {
    pub fn new(max_streams: usize, max_polls: usize) -> Arc<Self> {
        Arc::new(Waiters {
            streams: Arc::new(Semaphore::new(max_streams)),
            polls: Arc::new(Semaphore::new(max_polls)),
            max_streams,
            max_polls,
        })
    }

    /// A place for an event stream, or the 503 that says there is none.
    pub fn stream_permit(&self) -> Result<WaiterPermit, ApiError> {
        take(
            &self.streams,
            "event streams",
            self.max_streams,
            "--max-event-streams",
        )
    }

    /// A place for a long poll, or the 503 that says there is none.
    pub fn poll_permit(&self) -> Result<WaiterPermit, ApiError> {
        take(
            &self.polls,
            "long polls",
            self.max_polls,
            "--max-long-polls",
        )
    }

    /// Event streams and long polls held now.
    #[cfg(test)]
    pub fn held(&self) -> (usize, usize) {
        (
            self.max_streams - self.streams.available_permits(),
            self.max_polls - self.polls.available_permits(),
        )
    }
}

fn take(
    slots: &Arc<Semaphore>,
    what: &'static str,
    max: usize,
    flag: &str,
) -> Result<WaiterPermit, ApiError> {
    slots
        .clone()
        .try_acquire_owned()
        .map(WaiterPermit)
        .map_err(|_| {
            metrics::counter!("sq_waiters_refused_total", "kind" => what).increment(1);
            ApiError::Unavailable {
                code: "too_many_waiters",
                message: format!(
                    "this node already holds {max} {what} ({flag}); retry later or ask \
                     another node"
                ),
                retry_after: RETRY_AFTER_S,
            }
        })
}

/// The stream permit of one request, in its extensions: a handler that upgrades the
/// connection (a WebSocket) takes it for the socket's whole life; one it leaves is
/// held by the response body.
#[derive(Clone)]
pub struct StreamPermit(Arc<Mutex<Option<WaiterPermit>>>);

impl StreamPermit {
    fn new(permit: WaiterPermit) -> Self {
        StreamPermit(Arc::new(Mutex::new(Some(permit))))
    }

    /// The permit, once: `None` if it was taken already.
    pub fn take(&self) -> Option<WaiterPermit> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Layer of the event-stream route: every request takes a stream permit, held by
/// the response body or, for a WebSocket, by the socket's task.
pub async fn bound_streams(
    State(waiters): State<Arc<Waiters>>,
    mut request: Request,
    next: Next,
) -> Response {
    match waiters.stream_permit() {
        Ok(permit) => {
            let slot = StreamPermit::new(permit);
            request.extensions_mut().insert(slot.clone());
            let response = next.run(request).await;
            match slot.take() {
                Some(permit) => hold(response, permit),
                // Taken by an upgraded connection.
                None => response,
            }
        }
        Err(e) => e.into_response(),
    }
}

/// Layer of the long-pollable routes: a request that asks to wait takes a poll
/// permit.
pub async fn bound_long_polls(
    State(waiters): State<Arc<Waiters>>,
    request: Request,
    next: Next,
) -> Response {
    if !asks_to_wait(request.uri().query()) {
        return next.run(request).await;
    }
    match waiters.poll_permit() {
        Ok(permit) => hold(next.run(request).await, permit),
        Err(e) => e.into_response(),
    }
}

/// Whether a query asks to wait: a `wait` parameter (task reads), or a `wait_ms`
/// that is not zero (assignment lists).
pub fn asks_to_wait(query: Option<&str>) -> bool {
    let Some(query) = query else { return false };
    let Ok(pairs) = serde_urlencoded::from_str::<Vec<(String, String)>>(query) else {
        // Malformed: the handler answers 400 without waiting.
        return false;
    };
    pairs.iter().any(|(k, v)| match k.as_str() {
        "wait" => true,
        "wait_ms" => v.trim() != "0",
        _ => false,
    })
}

/// The response, its body holding `permit` until it ends.
fn hold(response: Response, permit: WaiterPermit) -> Response {
    response.map(|body| crate::listener::guard_body(body, permit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_requests_that_ask_to_wait_count() {
        assert!(asks_to_wait(Some("wait=completed&timeout=10s")));
        assert!(asks_to_wait(Some("wait_ms=5000&after=3")));
        assert!(!asks_to_wait(Some("wait_ms=0")));
        assert!(!asks_to_wait(Some("consistency=linearizable")));
        assert!(!asks_to_wait(None));
    }

    #[test]
    fn past_the_bound_a_waiter_is_refused_until_one_leaves() {
        let w = Waiters::new(1, 2);
        let s = w.stream_permit().unwrap();
        let refused = w.stream_permit().err().expect("refused");
        assert_eq!(
            refused.status(),
            axum::http::StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(refused.code(), "too_many_waiters");
        assert!(refused.to_string().contains("--max-event-streams"));
        let _p1 = w.poll_permit().unwrap();
        let _p2 = w.poll_permit().unwrap();
        assert!(w.poll_permit().is_err());
        assert_eq!(w.held(), (1, 2));
        drop(s);
        assert!(w.stream_permit().is_ok());
    }

    #[test]
    fn a_stream_permit_is_taken_once_and_given_back_when_dropped() {
        let w = Waiters::new(1, 1);
        let slot = StreamPermit::new(w.stream_permit().unwrap());
        let permit = slot.clone().take().expect("the permit");
        assert!(slot.take().is_none(), "taken once");
        assert!(w.stream_permit().is_err(), "still held by its taker");
        drop(permit);
        assert!(w.stream_permit().is_ok());
    }
}
