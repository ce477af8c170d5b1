//! Unit tests of the peer channel's client: sessions against a fake peer that
//! proves the secret, and how replication requests are cut.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::AsyncWriteExt;

use super::*;
use crate::raft::peer_auth::{Hello, PeerAuth};
use crate::raft::peer_http::read_request;

const SECRET: &str = "the-secret-0123456789";

/// A peer (node 2) on a fresh loopback port that proves the secret to every hello
/// and closes the connection of every other request unanswered (as one that
/// refused it unread may). Gives its address and the count of hellos it answered.
async fn fake_peer() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let hellos = Arc::new(AtomicUsize::new(0));
    let counted = hellos.clone();
    tokio::spawn(async move {
        let auth = PeerAuth::new(2, SECRET);
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let Some((head, body)) = read_request(&mut stream, &mut Vec::new()).await else {
                continue;
            };
            if !head.starts_with("post /peer/hello ") {
                continue; // dropped: the connection closes unanswered
            }
            let hello: Hello = codec::decode(&body).unwrap();
            counted.fetch_add(1, Ordering::SeqCst);
            let reply = codec::encode(&auth.answer_hello(&hello, None));
            let mut answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                reply.len()
            )
            .into_bytes();
            answer.extend_from_slice(&reply);
            stream.write_all(&answer).await.unwrap();
        }
    });
    (addr, hellos)
}

/// Node 1's peer client, with an identity in `dir`.
fn client(dir: &tempfile::TempDir) -> PeerClient {
    let identity = Arc::new(ClusterIdentity::open(1, dir.path().to_path_buf()).unwrap());
    PeerClient::new(SECRET.into()).with_identity(identity)
}

#[tokio::test]
async fn a_connection_broken_mid_request_drops_the_session_so_the_next_call_says_hello() {
    let (addr, hellos) = fake_peer().await;
    let dir = tempfile::tempdir().unwrap();
    let client = client(&dir);
    for call in 1..=2 {
        let r: Result<u64, PeerError> = client
            .call(2, &addr, paths::STATUS, &0u64, Duration::from_secs(5), None)
            .await;
        assert!(matches!(r, Err(PeerError::Failed(..))), "{r:?}");
        assert_eq!(
            hellos.load(Ordering::SeqCst),
            call,
            "call {call} proves a session first"
        );
    }
}

#[tokio::test]
async fn a_peer_that_moved_keeps_one_session_at_its_new_address() {
    let (old, _) = fake_peer().await;
    let (new, _) = fake_peer().await;
    let dir = tempfile::tempdir().unwrap();
    let client = client(&dir);
    let sessions = || {
        let map = client.sessions.lock().unwrap();
        let mut keys: Vec<(NodeId, String)> = map.keys().cloned().collect();
        keys.sort();
        keys
    };
    client
        .session(2, &old, Duration::from_secs(5))
        .await
        .expect("a session at the old address");
    assert_eq!(sessions(), vec![(2, old.clone())]);
    // Node 2's address changes (a membership change): its session there replaces
    // the old one, so moves and re-adds do not pile sessions up.
    client
        .session(2, &new, Duration::from_secs(5))
        .await
        .expect("a session at the new address");
    assert_eq!(sessions(), vec![(2, new)]);
}

#[test]
fn a_request_carries_the_entries_that_fit_and_always_one() {
    assert_eq!(entries_that_fit([10, 10, 10], 25), 2);
    assert_eq!(entries_that_fit([10, 10, 10], 30), 3);
    assert_eq!(entries_that_fit([10, 10, 10], 1000), 3);
    assert_eq!(
        entries_that_fit([50, 10], 25),
        1,
        "one entry goes even alone over"
    );
    assert_eq!(entries_that_fit([], 25), 0);
}
