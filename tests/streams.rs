//! Event streams against real node processes: SSE ids, resuming with
//! `Last-Event-ID` or `?after=` on another node, `resync` past the window, the same
//! events over WebSocket, refused ids, the `?key=` of browsers, and the bound on
//! what a WebSocket client may send.

mod common;

use std::time::Duration;

use common::{session_spec, Options, TestCluster};
use futures_util::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use session_queue::client::{SseParser, StreamEvent};
use session_queue::store::EventId;
use tokio_tungstenite::tungstenite::Message;

/// How long any one expected event may take to arrive before the test fails.
const PATIENCE: Duration = Duration::from_secs(20);

/// An open SSE stream.
struct Sse {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    parser: SseParser,
    ready: std::collections::VecDeque<StreamEvent>,
}

/// Opens `GET /v1/sessions/{session}/events` on `url` with `Last-Event-ID` (when
/// given) and the query; panics unless it is answered 200.
async fn open_sse(url: &str, session: &str, last_id: Option<&str>, query: &str) -> Sse {
    let mut request =
        reqwest::Client::new().get(format!("{url}/v1/sessions/{session}/events{query}"));
    if let Some(id) = last_id {
        request = request.header("Last-Event-ID", id);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    Sse {
        body: Box::pin(response.bytes_stream()),
        parser: SseParser::default(),
        ready: Default::default(),
    }
}

impl Sse {
    async fn next(&mut self) -> StreamEvent {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return event;
            }
            let chunk = tokio::time::timeout(PATIENCE, self.body.next())
                .await
                .expect("an event in time")
                .expect("the stream goes on")
                .unwrap();
            self.ready.extend(self.parser.push(&chunk));
        }
    }

    async fn take(&mut self, n: usize) -> Vec<StreamEvent> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(self.next().await);
        }
        out
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open_ws(api: &str, session: &str, query: &str) -> Ws {
    let (ws, response) =
        tokio_tungstenite::connect_async(format!("ws://{api}/v1/sessions/{session}/events{query}"))
            .await
            .unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws
}

/// The next text message of a WebSocket, as a stream event.
async fn ws_next(ws: &mut Ws) -> StreamEvent {
    loop {
        let message = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("a message in time")
            .expect("the socket stays open")
            .unwrap();
        if let Message::Text(text) = message {
            let v: Value = serde_json::from_str(text.as_str()).unwrap();
            let mut keys: Vec<&String> = v.as_object().unwrap().keys().collect();
            keys.sort();
            assert_eq!(keys, ["data", "event", "id"], "{v}");
            return StreamEvent {
                id: v["id"].as_str().map(str::to_string),
                event: v["event"].as_str().unwrap().to_string(),
                data: v["data"].clone(),
            };
        }
    }
}

fn id(event: &StreamEvent) -> EventId {
    event
        .id
        .as_deref()
        .expect("a transition has an id")
        .parse()
        .unwrap()
}

fn task_of(event: &StreamEvent) -> &str {
    event.data["task_id"].as_str().unwrap()
}

/// Submits `n` tasks one request at a time; their ids.
async fn submit(cluster: &TestCluster, node: usize, session: &str, n: usize) -> Vec<String> {
    let c = cluster.client_of(node);
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            c.submit(session, format!("task {i}").as_bytes(), None)
                .await
                .unwrap(),
        );
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_increase_and_a_resume_on_another_node_gets_exactly_the_missed_events() {
    let cluster = TestCluster::start(3).await;
    let c = cluster.client_of(0);
    let session = c.create_session(&session_spec(1, 1)).await.unwrap();
    let mut live = open_sse(&cluster.url(0), &session, None, "").await;
    let first = submit(&cluster, 0, &session, 3).await;
    let seen = live.take(3).await;
    drop(live);
    for (event, task) in seen.iter().zip(&first) {
        assert_eq!(event.event, "transition");
        assert_eq!(task_of(event), task);
        assert_eq!(event.data["what"], "submitted");
        assert_eq!(event.data["index"], id(event).index, "{event:?}");
    }
    assert!(
        id(&seen[0]) < id(&seen[1]) && id(&seen[1]) < id(&seen[2]),
        "{seen:?}"
    );

    // While nobody listens, three more, through another node.
    let missed = submit(&cluster, 2, &session, 3).await;

    // Node 2 resumes after the last event seen on node 1: exactly the three missed.
    let last = seen[2].id.clone().unwrap();
    let mut resumed = open_sse(&cluster.url(1), &session, Some(&last), "").await;
    let got = resumed.take(3).await;
    let tasks: Vec<&str> = got.iter().map(task_of).collect();
    assert_eq!(tasks, missed.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(id(&got[0]) > id(&seen[2]));
    assert!(id(&got[0]) < id(&got[1]) && id(&got[1]) < id(&got[2]));
    // And it goes on live.
    let later = submit(&cluster, 0, &session, 1).await;
    let next = resumed.next().await;
    assert_eq!(task_of(&next), later[0]);
    assert!(id(&next) > id(&got[2]));

    // Node 3, from the first event on (`?after=`): the same events with the same ids.
    let from_first = format!("?after={}", seen[0].id.as_deref().unwrap());
    let mut third = open_sse(&cluster.url(2), &session, None, &from_first).await;
    let replay = third.take(6).await;
    let mut expected: Vec<StreamEvent> = seen[1..].to_vec();
    expected.extend(got);
    expected.push(next);
    assert_eq!(replay, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_older_than_the_window_gets_resync_then_the_live_events() {
    let cluster = TestCluster::start_with(Options {
        nodes: 1,
        flags: vec!["--event-window=16".into()],
        ..Options::default()
    })
    .await;
    let c = cluster.client();
    let session = c.create_session(&session_spec(1, 1)).await.unwrap();
    // Nine events, read live: the window of 16 holds them all meanwhile.
    let mut live = open_sse(&cluster.url(0), &session, None, "").await;
    submit(&cluster, 0, &session, 1).await;
    let old = live.next().await;
    submit(&cluster, 0, &session, 8).await;
    let recent = live.take(8).await;
    drop(live);
    // Twelve more, one entry each: 21 events, so the oldest entries (the first one's
    // and those of recent[0..4]) leave the window.
    let more = submit(&cluster, 0, &session, 12).await;

    let mut stream = open_sse(&cluster.url(0), &session, old.id.as_deref(), "").await;
    let resync = stream.next().await;
    assert_eq!(resync.event, "resync", "{resync:?}");
    assert_eq!(resync.id, None);
    assert_eq!(resync.data["reason"], "window");
    let floor = resync.data["index"].as_u64().unwrap();
    assert!(floor >= id(&recent[3]).index, "{resync:?} {recent:?}");
    assert!(floor < id(&recent[4]).index, "{resync:?} {recent:?}");
    // Then live: the next transition, not the old ones.
    let new = submit(&cluster, 0, &session, 1).await;
    let next = stream.next().await;
    assert_eq!(next.event, "transition");
    assert_eq!(task_of(&next), new[0]);

    // An id the window still holds: no resync, exactly what followed it.
    let mut resumed = open_sse(&cluster.url(0), &session, recent[5].id.as_deref(), "").await;
    let got = resumed.take(15).await;
    assert_eq!(got[..2], recent[6..]);
    let tasks: Vec<&str> = got[2..14].iter().map(task_of).collect();
    assert_eq!(tasks, more.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(got[14], next);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_sends_the_same_events_as_sse_and_resumes_with_after() {
    let cluster = TestCluster::start(3).await;
    let c = cluster.client_of(0);
    let session = c.create_session(&session_spec(1, 1)).await.unwrap();
    let mut sse = open_sse(&cluster.url(0), &session, None, "").await;
    let mut ws = open_ws(&cluster.api(1), &session, "").await;
    let tasks = submit(&cluster, 2, &session, 2).await;
    c.ok(
        Method::POST,
        &format!("/v1/tasks/{}/cancel", tasks[0]),
        None,
        None,
    )
    .await
    .unwrap();
    let from_sse = sse.take(3).await;
    let mut from_ws = Vec::new();
    for _ in 0..3 {
        from_ws.push(ws_next(&mut ws).await);
    }
    assert_eq!(from_ws, from_sse);
    assert_eq!(from_ws[2].data["what"], "cancelled");
    assert_eq!(from_ws[2].data["state"], "cancelled");
    // The node reads what the client sends: a ping is answered.
    ws.send(Message::Ping(b"hi".to_vec().into())).await.unwrap();
    loop {
        let message = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("a pong in time")
            .expect("the socket stays open")
            .unwrap();
        if let Message::Pong(payload) = message {
            assert_eq!(&payload[..], b"hi");
            break;
        }
    }
    ws.close(None).await.unwrap();

    // `?after=` on a WebSocket of another node: what followed that id.
    let after = format!("?after={}", from_sse[0].id.as_deref().unwrap());
    let mut resumed = open_ws(&cluster.api(2), &session, &after).await;
    assert_eq!(ws_next(&mut resumed).await, from_sse[1]);
    assert_eq!(ws_next(&mut resumed).await, from_sse[2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ids_are_refused_with_400_and_the_key_may_come_as_a_query_parameter() {
    let cluster = TestCluster::start_with(Options {
        nodes: 1,
        api_key: Some("stream-key-1".into()),
        ..Options::default()
    })
    .await;
    let c = cluster.client();
    let session = c.create_session(&session_spec(1, 1)).await.unwrap();
    let url = format!("{}/v1/sessions/{session}/events", cluster.url(0));
    let http = reqwest::Client::new();
    let expect = |status: StatusCode, code: &'static str| {
        move |(s, v): (StatusCode, Value)| {
            assert_eq!(s, status, "{v}");
            assert_eq!(v["error"]["code"], code, "{v}");
        }
    };
    let call = |request: reqwest::RequestBuilder| async move {
        let response = request.send().await.unwrap();
        let status = response.status();
        (
            status,
            response.json::<Value>().await.unwrap_or(Value::Null),
        )
    };

    for bad in ["garbage", "12", "12-", "-1", "1-2-3", "x-1"] {
        expect(StatusCode::BAD_REQUEST, "invalid")(
            call(
                http.get(&url)
                    .bearer_auth("stream-key-1")
                    .header("Last-Event-ID", bad),
            )
            .await,
        );
        expect(StatusCode::BAD_REQUEST, "invalid")(
            call(
                http.get(format!("{url}?after={bad}"))
                    .bearer_auth("stream-key-1"),
            )
            .await,
        );
    }
    // A WebSocket handshake with a bad id is refused before the upgrade.
    let ws = format!(
        "ws://{}/v1/sessions/{session}/events?key=stream-key-1&after=nope",
        cluster.api(0)
    );
    match tokio_tungstenite::connect_async(ws).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::BAD_REQUEST)
        }
        Ok(_) => panic!("expected a 400, the upgrade succeeded"),
        Err(e) => panic!("expected a 400, got {e}"),
    }

    // The key: none, wrong, as a header, as `?key=` (this route only).
    expect(StatusCode::UNAUTHORIZED, "unauthorized")(call(http.get(&url)).await);
    expect(StatusCode::UNAUTHORIZED, "unauthorized")(
        call(http.get(format!("{url}?key=wrong"))).await,
    );
    let by_query = http
        .get(format!("{url}?key=stream-key-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(by_query.status(), StatusCode::OK);
    let session_url = format!("{}/v1/sessions/{session}?key=stream-key-1", cluster.url(0));
    expect(StatusCode::UNAUTHORIZED, "unauthorized")(call(http.get(session_url)).await);
    let mut ws = open_ws(&cluster.api(0), &session, "?key=stream-key-1").await;
    let task = c.submit(&session, b"x", None).await.unwrap();
    assert_eq!(task_of(&ws_next(&mut ws).await), task);
    // Nothing was changed by the refused calls: the one task is the only one.
    let v = c
        .ok(Method::GET, &format!("/v1/sessions/{session}"), None, None)
        .await
        .unwrap();
    assert_eq!(v["counts"]["queued"], json!(1), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_message_over_4_kib_ends_the_socket() {
    let cluster = TestCluster::start(1).await;
    let c = cluster.client_of(0);
    let session = c.create_session(&session_spec(1, 1)).await.unwrap();
    // Small messages from the client are read and ignored: the socket stays.
    let mut ws = open_ws(&cluster.api(0), &session, "").await;
    ws.send(Message::text("x".repeat(1000))).await.unwrap();
    submit(&cluster, 0, &session, 1).await;
    assert_eq!(ws_next(&mut ws).await.event, "transition");
    // One over the bound is not buffered: the node ends the socket.
    let _ = ws.send(Message::text("x".repeat(64 << 10))).await;
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the socket stayed open");
}
