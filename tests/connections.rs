//! Connection floods against real node processes started under `ulimit -n 1024`:
//! thousands of idle and half-sent connections held open against one node's API.
//! The node clips its connection caps to its descriptor limit (and says so), no node
//! goes down, writes through the other nodes go on, and the flooded node serves new
//! clients again once its idle and header timeouts have closed the flood's
//! connections, while the flood is still held. And a client that sends its headers
//! and then trickles the body is answered 408 once the body-read timeout passes,
//! with nothing written. WebSockets count toward the connection cap until they
//! close, and an HTTP/2 connection may hold at most 64 requests at once.

mod common;

use std::time::{Duration, Instant};

use common::{cannot_run, session_spec, Options, TestCluster};
use reqwest::StatusCode;
use serde_json::json;
use session_queue::client::b64;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connections the flood holds open: several times the flooded node's descriptors.
const FLOOD: usize = 3000;
const IDLE_TIMEOUT_MS: u64 = 2000;
const HEADER_TIMEOUT_MS: u64 = 2000;

/// Raises this process's soft descriptor limit to at least `need`; false if the hard
/// limit does not allow it.
fn raise_own_limit(need: u64) -> bool {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || (lim.rlim_max as u64) < need {
            return false;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0
    }
}

/// A client that opens a new connection for every request, as a new client would.
fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

async fn submit(http: &reqwest::Client, base: &str, session: &str, what: &str) -> StatusCode {
    match http
        .post(format!("{base}/v1/sessions/{session}/tasks"))
        .json(&json!({"payload": b64(what.as_bytes())}))
        .send()
        .await
    {
        Ok(r) => r.status(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_and_half_sent_connections_under_ulimit_1024_is_survived() {
    if !raise_own_limit(FLOOD as u64 + 512) {
        cannot_run(
            "connections",
            "this process cannot open enough descriptors for the flood (raise the hard `ulimit -n`)",
        );
        return;
    }
    let mut cluster = TestCluster::start_with(Options {
        nofile: Some(1024),
        flags: vec![
            format!("--idle-timeout-ms={IDLE_TIMEOUT_MS}"),
            format!("--header-read-timeout-ms={HEADER_TIMEOUT_MS}"),
        ],
        ..Options::default()
    })
    .await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    // Flood the leader: every write, wherever sent, must still reach it (the peer
    // channel has a listener and a cap of its own).
    let flooded = leader;
    let others: Vec<usize> = (0..3).filter(|&i| i != flooded).collect();
    let log = std::fs::read_to_string(&cluster.nodes[flooded].log).unwrap();
    assert!(
        log.contains("connection caps clipped"),
        "under ulimit -n 1024 the node clips its caps and says so:\n{log}"
    );

    let session = cluster
        .client_of(others[0])
        .create_session(&session_spec(1, 1))
        .await
        .unwrap();
    let http = fresh_client();

    // The flood: half the connections send nothing, half stop in the middle of a
    // request's headers. All are held until the end of the test.
    let addr = cluster.api(flooded);
    let mut held = Vec::with_capacity(FLOOD);
    for i in 0..FLOOD {
        let connect = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(&addr));
        if let Ok(Ok(mut stream)) = connect.await {
            if i % 2 == 1 {
                let _ = stream
                    .write_all(b"GET /v1/cluster HTTP/1.1\r\nHost: flood\r\nX-Slow: ")
                    .await;
            }
            held.push(stream);
        }
    }
    assert!(
        held.len() > 1024,
        "the flood holds more connections than the node has descriptors ({} held)",
        held.len()
    );

    // Writes through the other nodes go on during the flood.
    for (n, &i) in others.iter().enumerate() {
        for k in 0..5 {
            let status = submit(&http, &cluster.url(i), &session, &format!("during-{n}-{k}")).await;
            assert_eq!(
                status,
                StatusCode::CREATED,
                "a write through node {i} during the flood"
            );
        }
    }

    // The flooded node serves a new client again once its timeouts closed the
    // flood's connections, the flood still held.
    let deadline =
        Instant::now() + Duration::from_millis(3 * (IDLE_TIMEOUT_MS + HEADER_TIMEOUT_MS) + 20_000);
    let base = cluster.url(flooded);
    let mut turned_away = 0;
    loop {
        let health = http.get(format!("{base}/health")).send().await;
        if health.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        turned_away += 1;
        assert!(
            Instant::now() < deadline,
            "the flooded node never served a new client again; logs:\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "flood of {} connections held; new clients turned away {turned_away} times before one was served",
        held.len()
    );
    assert_eq!(
        submit(&http, &base, &session, "after").await,
        StatusCode::CREATED,
        "a write through the flooded node once it serves again"
    );

    // No node went down, the cap was met and the flood was closed by the timeouts.
    for i in 0..3 {
        assert!(
            cluster.exited(i).is_none(),
            "node {} exited; logs:\n{}",
            i + 1,
            cluster.logs()
        );
    }
    assert!(
        cluster
            .metric(flooded, "sq_connections_refused_total")
            .await
            > 0.0,
        "the flood went past the connection cap"
    );
    assert!(
        cluster
            .metric(flooded, "sq_connections_idle_closed_total")
            .await
            > 0.0,
        "the flood's connections were closed as idle"
    );
    let s = cluster
        .client_of(others[1])
        .ok(
            reqwest::Method::GET,
            &format!("/v1/sessions/{session}"),
            None,
            None,
        )
        .await
        .unwrap();
    assert!(s["submitted_total"].as_u64().unwrap() >= 11, "{s}");
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_trickled_past_the_body_read_timeout_is_408_and_writes_nothing() {
    const BODY_TIMEOUT_MS: u64 = 1500;
    let cluster = TestCluster::start_with(Options {
        nodes: 1,
        flags: vec![format!("--body-read-timeout-ms={BODY_TIMEOUT_MS}")],
        ..Options::default()
    })
    .await;
    let c = cluster.client_of(0);
    let session = c.create_session(&session_spec(1, 1)).await.unwrap();

    // Headers at once, then the body a byte every 300 ms: it would take a minute.
    let start = "{\"payload\": \"";
    let body_len = 200;
    let stream = TcpStream::connect(cluster.api(0)).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST /v1/sessions/{session}/tasks HTTP/1.1\r\nHost: {}\r\n\
         Content-Type: application/json\r\nContent-Length: {body_len}\r\n\r\n{start}",
        cluster.api(0)
    );
    writer.write_all(head.as_bytes()).await.unwrap();
    let sent = Instant::now();
    let trickle = tokio::spawn(async move {
        for _ in start.len()..body_len {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if writer.write_all(b"A").await.is_err() {
                return;
            }
        }
    });
    // The answer comes once the timeout passes, long before the body would end.
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
            let text = String::from_utf8_lossy(&answer);
            if let Some((_, body)) = text.split_once("\r\n\r\n") {
                if body.trim_end().ends_with('}') {
                    break;
                }
            }
        }
    })
    .await;
    let waited = sent.elapsed();
    trickle.abort();
    assert!(
        read.is_ok(),
        "no answer within 15 s to a body trickled a byte every 300 ms"
    );
    let text = String::from_utf8_lossy(&answer).into_owned();
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    let (_, body) = text.split_once("\r\n\r\n").expect("headers and a body");
    let v: serde_json::Value = serde_json::from_str(body.trim()).expect(body);
    assert_eq!(v["error"]["code"], "request_timeout", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--body-read-timeout-ms"),
        "{v}"
    );
    assert!(
        waited >= Duration::from_millis(BODY_TIMEOUT_MS - 100),
        "answered after {waited:?}, before the timeout"
    );

    // Nothing was written, and the node still serves.
    assert_eq!(submitted(&c, &session).await, 0);
    c.submit(&session, b"whole", None).await.unwrap();
    assert_eq!(submitted(&c, &session).await, 1);
}

/// The session's `submitted_total` on the client's node.
async fn submitted(c: &session_queue::client::Client, session: &str) -> u64 {
    c.ok(
        reqwest::Method::GET,
        &format!("/v1/sessions/{session}"),
        None,
        None,
    )
    .await
    .unwrap()["submitted_total"]
        .as_u64()
        .unwrap()
}

/// A connection upgraded to a WebSocket keeps its place under `--max-connections`
/// until the socket closes (hyper hands the socket off and ends the connection, so
/// without this a client could hold any number of sockets past the cap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_count_toward_the_connection_cap_until_they_close() {
    const CAP: usize = 8;
    let cluster = TestCluster::start_with(Options {
        flags: vec![format!("--max-connections={CAP}")],
        ..Options::default()
    })
    .await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let other = (leader + 1) % 3;
    let session = cluster
        .client_of(leader)
        .create_session(&session_spec(1, 1))
        .await
        .unwrap();
    // Open sockets on a node the harness barely talks to until one is refused.
    let url = format!("ws://{}/v1/sessions/{session}/events", cluster.api(other));
    let mut sockets = Vec::new();
    let mut refused = false;
    for _ in 0..4 * CAP {
        let open = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await;
        match open {
            Ok(Ok((socket, _))) => sockets.push(socket),
            _ => {
                refused = true;
                break;
            }
        }
    }
    assert!(
        refused && sockets.len() <= CAP,
        "WebSockets past the cap of {CAP} are refused ({} opened, refused: {refused})",
        sockets.len()
    );
    assert!(!sockets.is_empty(), "WebSockets under the cap open");
    // While they are held, a new client is refused too.
    let http = fresh_client();
    let health = format!("{}/health", cluster.url(other));
    assert!(
        http.get(&health).send().await.is_err(),
        "a new connection past the cap, with the WebSockets held, is closed"
    );
    // Once they close, new clients get in again.
    drop(sockets);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(r) = http.get(&health).send().await {
            assert_eq!(r.status(), StatusCode::OK);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the node serves new clients once the WebSockets have closed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_may_hold_64_requests_at_once() {
    let cluster = TestCluster::start(1).await;
    let tcp = TcpStream::connect(cluster.api(0)).await.unwrap();
    let (client, mut connection) = h2::client::handshake(tcp).await.unwrap();
    let mut client = client.ready().await.unwrap();
    let request = http::Request::get(format!("http://{}/health", cluster.api(0)))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = tokio::select! {
        r = response => r.unwrap(),
        r = &mut connection => panic!("connection ended first: {r:?}"),
    };
    assert_eq!(response.status(), 200);
    // The node's SETTINGS: streams per connection bounded, so `--max-connections`
    // bounds the requests held at once.
    assert_eq!(connection.max_concurrent_send_streams(), 64);
}
