//! Server-sent events: every transition of a session's tasks, as it is applied on the
//! node asked.
//!
//! Each event is `event: transition` with a JSON `data` line (task, session, state,
//! what happened, miner, time, and the log index of the entry). A client that reads
//! too slowly to keep up gets one `event: lagged` with how many events it missed and
//! should re-read the tasks it cares about. So does a client of a node that catches
//! up by installing a snapshot: it gets one `event: resync` with the snapshot's log
//! index, since the transitions the snapshot covers were never applied there one by
//! one.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use futures_util::stream;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::error::ErrorBody;
use super::replies::SessionEvent;
use super::sessions::parse_session;
use super::{lookup, ApiError};
use crate::node::Node;
use crate::store::Published;

/// Server-sent events of every transition of the session's tasks, as applied here.
#[utoipa::path(get, path = "/v1/sessions/{id}/events", tag = "sessions", operation_id = "session_events",
    params(("id" = String, Path, description = "Session id (`s-…`)")),
    responses(
        (status = 200, description = "An endless `text/event-stream`; each event's `data` is JSON: \
            `event: transition` (`TransitionEvent`), `event: lagged` (`LaggedEvent`) when the client fell \
            behind, `event: resync` (`ResyncEvent`) after this node installed a snapshot; comments keep it alive.",
            body = SessionEvent, content_type = "text/event-stream"),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such session", body = ErrorBody),
        (status = 503, description = "This node could not catch up with the leader to tell", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ),
    security(("api_key" = [])))]
pub async fn stream(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let session = parse_session(&id)?;
    // Subscribe before checking the session exists, so nothing in between is missed.
    let rx = node.state.subscribe_events();
    lookup(&node, |s| s.session(session).map(|_| ()))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("unknown session {id}")))?;
    let stop = node.stop.clone();
    let events = stream::unfold((rx, stop), move |(mut rx, stop)| async move {
        loop {
            if stop.is_triggered() {
                return None;
            }
            let received = tokio::select! {
                r = rx.recv() => r,
                _ = stop.wait() => return None,
            };
            match received {
                Ok(published) => match &*published {
                    Published::Transition { index, event: ev } if ev.session == session => {
                        let data = json!({
                            "task_id": ev.task.to_string(),
                            "session_id": ev.session.to_string(),
                            "state": ev.state.as_str(),
                            "what": ev.what.as_str(),
                            "miner_id": ev.miner.map(|m| m.to_string()),
                            "at_ms": ev.at_ms,
                            "index": index,
                        });
                        let event = Event::default().event("transition").data(data.to_string());
                        return Some((Ok::<Event, Infallible>(event), (rx, stop)));
                    }
                    Published::Transition { .. } => continue,
                    Published::SnapshotInstalled { index } => {
                        let event = Event::default()
                            .event("resync")
                            .data(json!({"index": index}).to_string());
                        return Some((Ok(event), (rx, stop)));
                    }
                },
                Err(RecvError::Lagged(n)) => {
                    let event = Event::default()
                        .event("lagged")
                        .data(json!({"missed": n}).to_string());
                    return Some((Ok(event), (rx, stop)));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
