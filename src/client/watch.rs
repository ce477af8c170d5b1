//! Following a session's event stream across node failures: the client reads the
//! server-sent events of `GET /v1/sessions/{id}/events`, remembers the id of the last
//! event, and when the stream breaks (the node died, stopped, went silent) reconnects
//! to the next node with `Last-Event-ID`, so it gets exactly the events it missed
//! (event ids are the same on every node), or a `resync` event when the node's window
//! no longer holds them.
//!
//! A stream that says nothing for [`SILENCE`] (nodes send a keep-alive every 15 s) is
//! taken as dead. Answers that will not change by retrying (400, 401, 403, 404) end
//! the watch with the error; anything else is retried, with backoff once every node
//! has failed in a row.

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};

use super::backoff::Backoff;
use super::{Client, ClientError};

/// How long a stream may say nothing before it is taken as dead.
pub const SILENCE: Duration = Duration::from_secs(45);

/// One event of a session's stream, as the node sent it.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamEvent {
    /// `<index>-<pos>` of a transition; none for `lagged` and `resync`.
    pub id: Option<String>,
    /// `transition`, `lagged` or `resync`.
    pub event: String,
    pub data: Value,
}

impl StreamEvent {
    /// The event as one JSON object, the shape of the WebSocket messages:
    /// `{"id", "event", "data"}`.
    pub fn to_json(&self) -> Value {
        json!({"id": self.id, "event": self.event, "data": self.data})
    }
}

/// Why one connection ended.
enum Broke {
    /// Retry elsewhere.
    Transient(String),
    /// Retrying will not help.
    Permanent(ClientError),
    /// The caller's handler failed.
    Handler(anyhow::Error),
}

impl Client {
    /// Follows `session`'s events, from `after` (an event id) or from now, calling
    /// `on_event` for each, until a permanent error or `on_event` fails; `notice`
    /// hears (one line each) about reconnects.
    pub async fn watch(
        &self,
        session: &str,
        mut after: Option<String>,
        mut on_event: impl FnMut(&StreamEvent) -> anyhow::Result<()>,
        mut notice: impl FnMut(&str),
    ) -> anyhow::Result<()> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .read_timeout(SILENCE)
            .build()?;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut failed_in_row = 0usize;
        loop {
            let i = self.current.load(Ordering::Relaxed) % self.nodes.len();
            let node = &self.nodes[i];
            let mut received = false;
            let broke = self
                .follow(
                    &http,
                    node,
                    session,
                    &mut after,
                    &mut |event: &StreamEvent| {
                        received = true;
                        on_event(event)
                    },
                )
                .await;
            match broke {
                Broke::Permanent(e) => return Err(e.into()),
                Broke::Handler(e) => return Err(e),
                Broke::Transient(why) => {
                    if received {
                        failed_in_row = 0;
                        backoff.reset();
                    }
                    failed_in_row += 1;
                    self.current.store(i + 1, Ordering::Relaxed);
                    let next = &self.nodes[(i + 1) % self.nodes.len()];
                    let from = after
                        .as_deref()
                        .map_or(String::new(), |id| format!(" after event {id}"));
                    notice(&format!("{node}: {why}; reconnecting to {next}{from}"));
                    if failed_in_row >= self.nodes.len() {
                        tokio::time::sleep(backoff.fail()).await;
                    }
                }
            }
        }
    }

    /// One connection to `node`, until it breaks.
    async fn follow(
        &self,
        http: &reqwest::Client,
        node: &str,
        session: &str,
        after: &mut Option<String>,
        on_event: &mut dyn FnMut(&StreamEvent) -> anyhow::Result<()>,
    ) -> Broke {
        let mut request = http
            .get(format!("{node}/v1/sessions/{session}/events"))
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        if let Some(id) = after.as_deref() {
            request = request.header("Last-Event-ID", id);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => return Broke::Transient(e.to_string()),
        };
        let status = response.status();
        if !status.is_success() {
            let value: Value = response.json().await.unwrap_or(Value::Null);
            let error = ClientError::Api {
                status: status.as_u16(),
                code: value["error"]["code"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                message: value["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            };
            return if error.is_transient() {
                Broke::Transient(error.to_string())
            } else {
                Broke::Permanent(error)
            };
        }
        let mut body = response.bytes_stream();
        let mut parser = SseParser::default();
        loop {
            let chunk = match body.next().await {
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => return Broke::Transient(format!("stream broke: {e}")),
                None => return Broke::Transient("stream ended".into()),
            };
            for event in parser.push(&chunk) {
                if let Some(id) = &event.id {
                    *after = Some(id.clone());
                }
                if let Err(e) = on_event(&event) {
                    return Broke::Handler(e);
                }
            }
        }
    }
}

/// Splits a server-sent event stream into events (the subset the nodes send:
/// `id:`, `event:`, `data:` lines, `:` comments, a blank line ending each event).
#[derive(Default)]
pub struct SseParser {
    buffer: Vec<u8>,
}

impl SseParser {
    /// Takes the next bytes; returns the events they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<StreamEvent> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = find_blank_line(&self.buffer) {
            let block: Vec<u8> = self.buffer.drain(..end.1).collect();
            let text = String::from_utf8_lossy(&block[..end.0]);
            if let Some(event) = parse_block(&text) {
                events.push(event);
            }
        }
        events
    }
}

/// Where the first blank line is: (end of the block, end of the separator).
fn find_blank_line(buffer: &[u8]) -> Option<(usize, usize)> {
    for i in 0..buffer.len() {
        if buffer[i..].starts_with(b"\n\n") {
            return Some((i, i + 2));
        }
        if buffer[i..].starts_with(b"\r\n\r\n") {
            return Some((i, i + 4));
        }
    }
    None
}

fn parse_block(text: &str) -> Option<StreamEvent> {
    let mut id = None;
    let mut event = None;
    let mut data: Vec<&str> = Vec::new();
    for line in text.lines() {
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => id = Some(value.to_string()),
            "event" => event = Some(value.to_string()),
            "data" => data.push(value),
            _ => {}
        }
    }
    if data.is_empty() {
        return None;
    }
    let data = data.join("\n");
    Some(StreamEvent {
        id,
        event: event.unwrap_or_else(|| "message".into()),
        data: serde_json::from_str(&data).unwrap_or(Value::String(data)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_parsed_across_chunks_and_keep_alives_are_skipped() {
        let mut p = SseParser::default();
        assert!(p
            .push(b": keep-alive\n\nevent: transition\nid: 12-")
            .is_empty());
        let got = p.push(
            b"0\ndata: {\"what\":\"submitted\"}\n\nevent: resync\r\ndata: {\"index\":5}\r\n\r\n",
        );
        assert_eq!(
            got,
            vec![
                StreamEvent {
                    id: Some("12-0".into()),
                    event: "transition".into(),
                    data: json!({"what": "submitted"}),
                },
                StreamEvent {
                    id: None,
                    event: "resync".into(),
                    data: json!({"index": 5}),
                },
            ]
        );
        assert_eq!(
            got[0].to_json(),
            json!({"id": "12-0", "event": "transition", "data": {"what": "submitted"}})
        );
    }
}
