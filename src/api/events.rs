//! Event streams: every transition of a session's tasks, as it is applied on the
//! node asked, as server-sent events or, on the same path with a WebSocket upgrade,
//! as WebSocket text messages. Both encode one feed, read from the node's
//! [`EventWindow`](crate::store::EventWindow).
//!
//! SSE: each event is `event: transition` with `id: <index>-<pos>` (the log index of
//! the entry that caused it and its position among that entry's events: the same on
//! every node) and a JSON `data` line (task, session, state, what happened, miner,
//! time, and the log index). WebSocket: each event is one text message
//! `{"id": "<index>-<pos>", "event": "transition", "data": {...the same object...}}`.
//!
//! Resume: `Last-Event-ID: <index>-<pos>` (SSE; what `EventSource` sends when it
//! reconnects) or `?after=<index>-<pos>` (SSE and WebSocket; the header wins) gets
//! every event after that id still in the node's window (`--event-window`), then the
//! live ones. Any node will do, ids being the same everywhere. When the window no
//! longer reaches back that far the stream starts with one `resync` event
//! (`{"index": N, "reason": "window"}`: the window holds the events of entries after
//! N) and goes on live: the client should re-read the tasks it cares about. A
//! malformed id is a 400. Without an id, the stream starts live.
//!
//! A client that reads too slowly to keep up (the window moved past it) gets one
//! `lagged` event with how many events it missed (`{"missed": n}`) and goes on with
//! the oldest still held; a client of a node that caught up by installing a
//! snapshot gets `resync` (`{"index": <snapshot index>, "reason": "snapshot"}`),
//! since the transitions the snapshot covers were never applied there one by one.
//! Either way it should re-read the tasks. `lagged` and `resync` carry no id (SSE: no
//! `id:` line; WebSocket: `"id": null`): keep the last id you had.
//!
//! Browsers cannot set headers on `EventSource` or WebSocket, so this route also
//! takes the API key as `?key=` (see [`super::auth::require_api_key_or_query`]).
//!
//! Every stream holds one of the node's `--max-event-streams` places for as long as
//! it is open: an SSE stream through its response body, a WebSocket in its socket's
//! task (its `101` answer ends at once), given back when the socket ends.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, Path, State};
use axum::http::{header, HeaderMap};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::error::ErrorBody;
use super::replies::SessionEvent;
use super::sessions::parse_session;
use super::waiters::{StreamPermit, WaiterPermit};
use super::{lookup, ApiError, QueryParams};
use crate::listener::ConnectionSlot;
use crate::machine::SessionId;
use crate::node::Node;
use crate::store::{EventId, Recorded, WindowRead, WindowStart};

/// How often an idle stream sends something (an SSE comment, a WebSocket ping), so
/// proxies and clients can tell a quiet stream from a dead one.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Largest message or frame a WebSocket client may send (it has nothing to send but
/// pings and a close; anything larger ends the socket).
const WS_CLIENT_MESSAGE_LIMIT: usize = 4096;

#[derive(Deserialize)]
pub struct EventsQuery {
    /// Resume after this event id (`Last-Event-ID` wins when both are given).
    after: Option<String>,
}

/// Server-sent events of every transition of the session's tasks, as applied here;
/// or, with a WebSocket upgrade, the same events as WebSocket messages.
#[utoipa::path(get, path = "/v1/sessions/{id}/events", tag = "sessions", operation_id = "session_events",
    description = "Every transition of the session's tasks, as this node applies it: an endless \
        `text/event-stream`, or, on this same path with a WebSocket upgrade (`GET` over HTTP/1.1 with \
        `Connection: Upgrade`, `Upgrade: websocket`, `Sec-WebSocket-Version: 13` and a \
        `Sec-WebSocket-Key`), a WebSocket (101) that carries the same events.\n\n\
        **Event ids.** Each `transition` carries an id `<index>-<pos>`: the log index of the entry \
        that caused it and its position among that entry's events, the same on every node (SSE: the \
        `id:` line; WebSocket: the `id` field). `lagged` and `resync` carry none: keep the last id.\n\n\
        **Resume.** `Last-Event-ID: <index>-<pos>` (SSE; what `EventSource` sends when it reconnects) \
        or `?after=<index>-<pos>` (SSE and WebSocket; the header wins) gets every event after that id \
        still in this node's event window (`--event-window`), then the live ones; any node will do. \
        When the window no longer reaches back that far the stream starts with one `resync` event \
        (`{\"index\": N, \"reason\": \"window\"}`) and goes on live: re-read the tasks. Without an \
        id the stream starts live.\n\n\
        **Events.** `transition` (`TransitionEvent`); `lagged` (`LaggedEvent`, `{\"missed\": n}`) when \
        the client read too slowly and the window moved past it; `resync` (`ResyncEvent`) as above, or \
        with `reason` `snapshot` after this node caught up by installing a snapshot. SSE sends a \
        comment every 15 s when idle.\n\n\
        **WebSocket messages.** Server to client: one text message per event, \
        `{\"id\": \"<index>-<pos>\" or null, \"event\": \"transition\" | \"lagged\" | \"resync\", \"data\": {...}}` \
        (`SessionEventMessage`, `data` as in SSE), a ping every 15 s when idle, and a close frame \
        (1001) when the node stops. Client to server: nothing is expected; messages are read (pings \
        answered, a close honoured) and otherwise ignored.\n\n\
        Browsers cannot set headers on `EventSource` or a WebSocket: this route also takes the API \
        key as `?key=`. Each open stream counts against the node's `--max-event-streams`.",
    params(
        ("id" = String, Path, description = "Session id (`s-…`)"),
        ("after" = Option<String>, Query, pattern = "^[0-9]+-[0-9]+$",
            description = "Resume after this event id (`<index>-<pos>`); `Last-Event-ID` wins when both are given"),
        ("key" = Option<String>, Query,
            description = "The API key, for clients that cannot send `Authorization` (browsers' `EventSource` and WebSocket); \
                the header wins when both are given"),
        ("Last-Event-ID" = Option<String>, Header, pattern = "^[0-9]+-[0-9]+$",
            description = "Resume after this event id (`<index>-<pos>`): what `EventSource` sends when it reconnects"),
    ),
    responses(
        (status = 101, description = "Switching Protocols: the WebSocket upgrade was accepted. Each event is then one \
            text message `SessionEventMessage`; a ping every 15 s when idle; a close frame (1001) when the node stops. \
            Messages from the client are ignored."),
        (status = 200, description = "An endless `text/event-stream`. Each event has an `event:` line (`transition`, \
            `lagged`, `resync`), an `id:` line on transitions (`<index>-<pos>`, to resume with `Last-Event-ID`), \
            and a JSON `data:` line (`StreamEvent`); comments keep it alive.",
            body = SessionEvent, content_type = "text/event-stream"),
        (status = 400, description = "A malformed `Last-Event-ID` or `after`, a bad query, or a malformed WebSocket \
            upgrade (it needs GET, HTTP/1.1, `Connection: Upgrade`, `Sec-WebSocket-Version: 13` and a `Sec-WebSocket-Key`)",
            body = ErrorBody),
        (status = 401, description = "Missing or wrong API key, as `Authorization: Bearer` or `?key=`, when the node has one (`unauthorized`)", body = ErrorBody),
        (status = 404, description = "No such session (`not_found`)", body = ErrorBody),
        (status = 503, description = "This node could not catch up with the leader to tell whether the session exists (`unavailable`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ),
    security(("api_key" = [])))]
pub async fn stream(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    QueryParams(query): QueryParams<EventsQuery>,
    headers: HeaderMap,
    permit: Option<Extension<StreamPermit>>,
    connection: Option<Extension<ConnectionSlot>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let session = parse_session(&id)?;
    let after = resume_id(&headers, query.after.as_deref())?;
    if upgrade.is_err() && asks_for_websocket(&headers) {
        return Err(ApiError::bad(
            "malformed WebSocket upgrade (needs GET, HTTP/1.1, Connection: upgrade, \
             Sec-WebSocket-Version: 13 and a Sec-WebSocket-Key)",
        ));
    }
    // Where to start, before checking the session exists: a stream opened right after
    // the session was created misses none of its first events.
    let feed = Feed::new(node.clone(), session, after);
    lookup(&node, |s| s.session(session).map(|_| ()))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("unknown session {id}")))?;
    Ok(match upgrade {
        Ok(ws) => {
            // The socket's task holds the stream's place, and the connection's place
            // under `--max-connections`, until the socket ends (also if the upgrade
            // never completes: the closure is dropped).
            let permit = permit.and_then(|Extension(slot)| slot.take());
            let connection = connection.map(|Extension(c)| c);
            // A client has nothing to send but pings and a close: a few KiB is
            // plenty (tungstenite would buffer up to 64 MiB a message).
            ws.max_message_size(WS_CLIENT_MESSAGE_LIMIT)
                .max_frame_size(WS_CLIENT_MESSAGE_LIMIT)
                .on_upgrade(move |socket| async move {
                    websocket(socket, feed, permit).await;
                    drop(connection);
                })
        }
        Err(_) => {
            let events = stream::unfold(feed, |mut feed| async move {
                let item = feed.next().await?;
                Some((Ok::<_, Infallible>(item.sse()), feed))
            });
            Sse::new(events)
                .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
                .into_response()
        }
    })
}

/// The id to resume after: `Last-Event-ID`, else `?after=`, else none.
fn resume_id(headers: &HeaderMap, after: Option<&str>) -> Result<Option<EventId>, ApiError> {
    let header = match headers.get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| ApiError::bad("Last-Event-ID is not text"))?,
        ),
        None => None,
    };
    match header.or(after) {
        None => Ok(None),
        Some(text) => text
            .parse::<EventId>()
            .map(Some)
            .map_err(|e| ApiError::bad(format!("Last-Event-ID / after: {e}"))),
    }
}

/// Whether the request means to open a WebSocket (`Upgrade: websocket`).
fn asks_for_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// One thing a stream says.
#[derive(Debug)]
enum Item {
    Transition(Recorded),
    Lagged { missed: u64 },
    Resync { index: u64, reason: &'static str },
}

impl Item {
    fn name(&self) -> &'static str {
        match self {
            Item::Transition(_) => "transition",
            Item::Lagged { .. } => "lagged",
            Item::Resync { .. } => "resync",
        }
    }

    fn id(&self) -> Option<String> {
        match self {
            Item::Transition(r) => Some(r.id.to_string()),
            _ => None,
        }
    }

    fn data(&self) -> Value {
        match self {
            Item::Transition(Recorded { id, event: ev }) => json!({
                "task_id": ev.task.to_string(),
                "session_id": ev.session.to_string(),
                "state": ev.state.as_str(),
                "what": ev.what.as_str(),
                "miner_id": ev.miner.map(|m| m.to_string()),
                "at_ms": ev.at_ms,
                "index": id.index,
            }),
            Item::Lagged { missed } => json!({"missed": missed}),
            Item::Resync { index, reason } => json!({"index": index, "reason": reason}),
        }
    }

    /// The server-sent event.
    fn sse(&self) -> SseEvent {
        let event = SseEvent::default()
            .event(self.name())
            .data(self.data().to_string());
        match self.id() {
            Some(id) => event.id(id),
            None => event,
        }
    }

    /// The WebSocket message's text.
    fn ws(&self) -> String {
        json!({"id": self.id(), "event": self.name(), "data": self.data()}).to_string()
    }
}

/// One subscriber's cursor into the node's event window.
struct Feed {
    node: Arc<Node>,
    session: SessionId,
    /// Skip events up to this id (a client resuming on a node behind the one it
    /// came from).
    after: Option<EventId>,
    cursor: u64,
    pending: VecDeque<Item>,
    wake: watch::Receiver<u64>,
}

impl Feed {
    fn new(node: Arc<Node>, session: SessionId, after: Option<EventId>) -> Self {
        let window = node.state.event_window();
        // Watch first, then place the cursor: whatever is recorded in between wakes us.
        let wake = window.watch();
        let mut pending = VecDeque::new();
        let (cursor, after) = match window.start(after) {
            WindowStart::At(seq) => (seq, after),
            WindowStart::Resync { floor, next } => {
                pending.push_back(Item::Resync {
                    index: floor,
                    reason: "window",
                });
                (next, None)
            }
        };
        Feed {
            node,
            session,
            after,
            cursor,
            pending,
            wake,
        }
    }

    /// The next item, waiting for one; `None` once the node stops. Cancel-safe: the
    /// only waits are for a wake-up, and what was read is kept in `pending`.
    async fn next(&mut self) -> Option<Item> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            if self.node.stop.is_triggered() {
                return None;
            }
            match self
                .node
                .state
                .event_window()
                .read(self.cursor, self.session)
            {
                WindowRead::Events { events, next } => {
                    self.cursor = next;
                    for recorded in events {
                        if self.after.is_some_and(|after| recorded.id <= after) {
                            continue;
                        }
                        self.after = None;
                        self.pending.push_back(Item::Transition(recorded));
                    }
                }
                WindowRead::Lagged { missed, next } => {
                    self.cursor = next;
                    self.pending.push_back(Item::Lagged { missed });
                }
                WindowRead::Resync { index, next } => {
                    self.cursor = next;
                    self.after = None;
                    self.pending.push_back(Item::Resync {
                        index,
                        reason: "snapshot",
                    });
                }
            }
            if !self.pending.is_empty() {
                continue;
            }
            let cursor = self.cursor;
            let stop = self.node.stop.wait();
            tokio::select! {
                woke = self.wake.wait_for(|&next| next > cursor) => {
                    if woke.is_err() {
                        return None;
                    }
                }
                _ = stop => return None,
            }
        }
    }
}

/// Sends the feed over a WebSocket until either side closes it or the node stops.
/// Messages from the client are read (so pings are answered and a close is seen)
/// and otherwise ignored. `_permit`, the stream's place, is given back on return.
async fn websocket(mut socket: WebSocket, mut feed: Feed, _permit: Option<WaiterPermit>) {
    let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
    keep_alive.tick().await;
    loop {
        tokio::select! {
            item = feed.next() => {
                let Some(item) = item else {
                    let _ = socket
                        .send(Message::Close(Some(CloseFrame {
                            code: 1001,
                            reason: "node stopping".into(),
                        })))
                        .await;
                    return;
                };
                if socket.send(Message::text(item.ws())).await.is_err() {
                    return;
                }
            }
            incoming = socket.recv() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            },
            _ = keep_alive.tick() => {
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_resume_id_comes_from_the_header_first_and_bad_ones_are_refused() {
        let mut headers = HeaderMap::new();
        assert_eq!(resume_id(&headers, None).unwrap(), None);
        assert_eq!(
            resume_id(&headers, Some("7-2")).unwrap(),
            Some(EventId { index: 7, pos: 2 })
        );
        headers.insert("last-event-id", HeaderValue::from_static("9-0"));
        assert_eq!(
            resume_id(&headers, Some("7-2")).unwrap(),
            Some(EventId { index: 9, pos: 0 })
        );
        headers.insert("last-event-id", HeaderValue::from_static("nine"));
        assert!(matches!(
            resume_id(&headers, None),
            Err(ApiError::BadRequest(_))
        ));
        assert!(resume_id(&HeaderMap::new(), Some("7")).is_err());
    }
}
