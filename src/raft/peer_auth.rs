//! Peer authentication without ever sending the cluster secret: a challenge-response
//! on first contact, then a MAC on every request and every answer.
//!
//! Why: the secret used to travel in a header, so adding a member at a made-up
//! address made the leader hand that address the secret (and every entry). Now:
//!
//! 1. **Hello.** Before its first request to an address, a node sends
//!    `POST /peer/hello` with a fresh random nonce, its id, the id it expects there
//!    and its cluster id. The answer must carry
//!    `proof = HMAC(secret, "hello" ‖ from ‖ to ‖ client nonce ‖ server nonce ‖ cluster)`.
//!    Only a holder of the secret can compute it, so a made-up address gets a nonce
//!    and nothing else: no secret, no entry, no vote, no forwarded write.
//! 2. **Session.** Both sides derive `key = HMAC(secret, "session" ‖ from ‖ to ‖
//!    nonces)`. The server nonce is itself a MAC of the client nonce under a random
//!    key of the server process, so the server keeps no state for a hello, only for a
//!    session that has sent a request that verified (bounded, oldest evicted).
//! 3. **Requests.** Every request carries the session, a sequence number and
//!    `HMAC(key, path ‖ seq ‖ cluster ‖ role ‖ budget ‖ sha256(body))`. The receiver
//!    refuses a bad MAC and a sequence number it has seen (replays) with 401, before
//!    processing anything, so the sender may start a new session and send again.
//!    No clock is involved: a node whose wall clock steps still authenticates.
//! 4. **Answers.** A 200 answer carries `HMAC(key, seq ‖ status ‖ sha256(body))`, so a
//!    forwarded write's result cannot be forged on the way back.
//!
//! The session binds both node ids, so a node restarted at a reused address under
//! another id fails the hello (421) instead of being mistaken for its predecessor.
//! With TLS between nodes this adds a MAC per request; without it, it is what keeps
//! the secret off the wire.

use std::collections::HashMap;
use std::sync::Mutex;

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::types::NodeId;

/// Header carrying the session (hex of the client and server nonces).
pub const SESSION_HEADER: &str = "x-sq-session";
/// Header carrying the sender's node id.
pub const FROM_HEADER: &str = "x-sq-from";
/// Header carrying the request's sequence number within its session.
pub const SEQ_HEADER: &str = "x-sq-seq";
/// Header carrying a request's or an answer's MAC (hex).
pub const MAC_HEADER: &str = "x-sq-mac";
/// Header carrying the sender's cluster id (empty when it has none yet).
pub const CLUSTER_HEADER: &str = "x-sq-cluster";
/// Header saying whether the leader counts the target as a `voter` or a `learner`.
pub const ROLE_HEADER: &str = "x-sq-role";

/// Sessions a node keeps on its server side (a cluster has a few peers, each with a
/// session or two; the oldest is dropped and its owner simply says hello again).
const MAX_SESSIONS: usize = 1024;
/// How far behind the highest sequence number seen a request may arrive (requests
/// of one session run concurrently over pooled connections).
const REPLAY_WINDOW: u64 = 4096;

/// HMAC-SHA256 (RFC 2104) over the concatenation of `parts`.
pub fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    for part in parts {
        inner.update(part);
    }
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Each field prefixed with its length, so no two field lists MAC alike.
fn fields(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 4).sum());
    for p in parts {
        out.extend_from_slice(&(p.len() as u32).to_be_bytes());
        out.extend_from_slice(p);
    }
    out
}

fn random16() -> [u8; 16] {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    b
}

/// The first message to an address.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hello {
    pub from: NodeId,
    pub to: NodeId,
    /// The sender's cluster id, if it has one.
    pub cluster: Option<String>,
    pub nonce: [u8; 16],
}

/// The answer to a [`Hello`]: proves the answering node holds the secret.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HelloReply {
    pub nonce: [u8; 16],
    /// The answering node's cluster id, if it has one.
    pub cluster: Option<String>,
    pub proof: [u8; 32],
}

fn proof(
    secret: &[u8],
    from: NodeId,
    to: NodeId,
    c: &[u8; 16],
    s: &[u8; 16],
    cluster: &str,
) -> [u8; 32] {
    let msg = fields(&[
        b"sq-hello-proof-v1",
        &from.to_be_bytes(),
        &to.to_be_bytes(),
        c,
        s,
        cluster.as_bytes(),
    ]);
    hmac(secret, &[&msg])
}

fn session_key(secret: &[u8], from: NodeId, to: NodeId, c: &[u8; 16], s: &[u8; 16]) -> [u8; 32] {
    let msg = fields(&[
        b"sq-session-v1",
        &from.to_be_bytes(),
        &to.to_be_bytes(),
        c,
        s,
    ]);
    hmac(secret, &[&msg])
}

/// What a request's MAC covers besides its session and sequence number.
pub struct Signed<'a> {
    pub path: &'a str,
    pub cluster: &'a str,
    pub role: &'a str,
    pub budget: &'a str,
    pub body: &'a [u8],
    /// `sha256(body)` when the sender already has it (the same body goes to every
    /// follower: see [`super::network`]'s shared replication bodies).
    pub body_sha256: Option<[u8; 32]>,
}

fn request_mac(key: &[u8; 32], seq: u64, r: &Signed<'_>) -> [u8; 32] {
    let body: [u8; 32] = r
        .body_sha256
        .unwrap_or_else(|| Sha256::digest(r.body).into());
    let msg = fields(&[
        b"sq-request-v1",
        r.path.as_bytes(),
        &seq.to_be_bytes(),
        r.cluster.as_bytes(),
        r.role.as_bytes(),
        r.budget.as_bytes(),
        &body,
    ]);
    hmac(key, &[&msg])
}

fn answer_mac(key: &[u8; 32], seq: u64, status: u16, body: &[u8]) -> [u8; 32] {
    let digest = Sha256::digest(body);
    let msg = fields(&[
        b"sq-answer-v1",
        &seq.to_be_bytes(),
        &status.to_be_bytes(),
        &digest,
    ]);
    hmac(key, &[&msg])
}

/// The sending side of one session with one peer.
pub struct ClientSession {
    /// The value of [`SESSION_HEADER`].
    pub token: String,
    key: [u8; 32],
    next_seq: std::sync::atomic::AtomicU64,
}

impl ClientSession {
    /// The next sequence number and the MAC of a request with it.
    pub fn sign(&self, r: &Signed<'_>) -> (u64, String) {
        let seq = self
            .next_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (seq, hex::encode(request_mac(&self.key, seq, r)))
    }

    /// Whether an answer's MAC is right.
    pub fn verify_answer(&self, seq: u64, status: u16, body: &[u8], mac: Option<&str>) -> bool {
        let Some(mac) = mac.and_then(|m| hex::decode(m).ok()) else {
            return false;
        };
        bool::from(
            answer_mac(&self.key, seq, status, body)
                .as_slice()
                .ct_eq(&mac),
        )
    }
}

/// Starts a hello: the message to send, and what checks its answer.
pub struct Handshake {
    pub hello: Hello,
}

/// Why a hello's answer was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("the peer did not prove that it holds the cluster secret")]
    NoProof,
    #[error("the peer belongs to another cluster ({theirs}, this node's is {ours})")]
    OtherCluster { ours: String, theirs: String },
}

impl Handshake {
    pub fn new(from: NodeId, to: NodeId, cluster: Option<String>) -> Self {
        Handshake {
            hello: Hello {
                from,
                to,
                cluster,
                nonce: random16(),
            },
        }
    }

    /// Checks the answer; gives the session and the peer's cluster id.
    pub fn finish(
        &self,
        secret: &[u8],
        reply: &HelloReply,
    ) -> Result<(ClientSession, Option<String>), HandshakeError> {
        let h = &self.hello;
        let cluster = reply.cluster.as_deref().unwrap_or("");
        let expected = proof(secret, h.from, h.to, &h.nonce, &reply.nonce, cluster);
        if !bool::from(expected.as_slice().ct_eq(reply.proof.as_slice())) {
            return Err(HandshakeError::NoProof);
        }
        if let (Some(ours), Some(theirs)) = (&h.cluster, &reply.cluster) {
            if ours != theirs {
                return Err(HandshakeError::OtherCluster {
                    ours: ours.clone(),
                    theirs: theirs.clone(),
                });
            }
        }
        let mut token = h.nonce.to_vec();
        token.extend_from_slice(&reply.nonce);
        Ok((
            ClientSession {
                token: hex::encode(token),
                key: session_key(secret, h.from, h.to, &h.nonce, &reply.nonce),
                next_seq: std::sync::atomic::AtomicU64::new(0),
            },
            reply.cluster.clone(),
        ))
    }
}

/// A session as its receiver tracks it.
struct ServerSession {
    key: [u8; 32],
    /// The highest sequence number seen, and which of the window below it were seen.
    max: Option<u64>,
    seen: Vec<bool>,
    /// Insertion order, to evict the oldest.
    born: u64,
}

impl ServerSession {
    /// Records `seq`; false if it was seen or is too old to tell.
    fn accept(&mut self, seq: u64) -> bool {
        let w = REPLAY_WINDOW as usize;
        match self.max {
            None => {
                self.max = Some(seq);
                self.seen[(seq % REPLAY_WINDOW) as usize] = true;
                true
            }
            Some(max) if seq > max => {
                // Slots between the old and new maximum are no longer seen.
                let gap = (seq - max).min(REPLAY_WINDOW);
                for k in 1..=gap {
                    self.seen[((max + k) % REPLAY_WINDOW) as usize] = false;
                }
                self.seen[(seq % REPLAY_WINDOW) as usize] = true;
                self.max = Some(seq);
                true
            }
            Some(max) if max - seq >= REPLAY_WINDOW => false,
            Some(_) => {
                let slot = &mut self.seen[(seq as usize) % w];
                if *slot {
                    false
                } else {
                    *slot = true;
                    true
                }
            }
        }
    }
}

/// Why a request was not authenticated.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("without the cluster secret: no or malformed session headers")]
    Missing,
    #[error("without the cluster secret: unknown session (say hello again)")]
    UnknownSession,
    #[error("without the cluster secret: the request's MAC is wrong")]
    BadMac,
    #[error("a replayed request (sequence number already seen)")]
    Replayed,
}

/// The receiving side: answers hellos, verifies requests, signs answers.
pub struct PeerAuth {
    me: NodeId,
    secret: Vec<u8>,
    /// Makes server nonces checkable without keeping state per hello.
    nonce_key: [u8; 32],
    sessions: Mutex<(u64, HashMap<[u8; 32], ServerSession>)>,
}

/// A session token this node proved in a hello, and who holds it: made only by
/// [`PeerAuth::check_session`].
#[derive(Clone, Copy, Debug)]
pub struct ProvenSession {
    token: [u8; 32],
    from: NodeId,
}

/// A request that verified: what signing its answer needs.
pub struct Verified {
    pub from: NodeId,
    pub seq: u64,
    key: [u8; 32],
}

impl Verified {
    /// The MAC of this request's answer (hex).
    pub fn sign_answer(&self, status: u16, body: &[u8]) -> String {
        hex::encode(answer_mac(&self.key, self.seq, status, body))
    }
}

impl PeerAuth {
    pub fn new(me: NodeId, secret: &str) -> Self {
        let mut nonce_key = [0u8; 32];
        rand::rng().fill_bytes(&mut nonce_key);
        PeerAuth {
            me,
            secret: secret.as_bytes().to_vec(),
            nonce_key,
            sessions: Mutex::new((0, HashMap::new())),
        }
    }

    fn server_nonce(&self, from: NodeId, c: &[u8; 16]) -> [u8; 16] {
        let mac = hmac(
            &self.nonce_key,
            &[
                b"sq-server-nonce-v1",
                &from.to_be_bytes(),
                &self.me.to_be_bytes(),
                c,
            ],
        );
        mac[..16].try_into().expect("16 bytes")
    }

    /// Answers a hello meant for this node (the caller checks `to` and the cluster).
    pub fn answer_hello(&self, hello: &Hello, cluster: Option<String>) -> HelloReply {
        let nonce = self.server_nonce(hello.from, &hello.nonce);
        let proof = proof(
            &self.secret,
            hello.from,
            self.me,
            &hello.nonce,
            &nonce,
            cluster.as_deref().unwrap_or(""),
        );
        HelloReply {
            nonce,
            cluster,
            proof,
        }
    }

    /// Whether the session and sender headers name a session this node proved in
    /// a hello. Costs one HMAC and needs no body, so the peer channel checks it
    /// before reading one, then hands it to [`PeerAuth::verify`] with the rest.
    pub fn check_session(
        &self,
        session: Option<&str>,
        from: Option<&str>,
    ) -> Result<ProvenSession, Refusal> {
        let (Some(session), Some(from)) = (session, from) else {
            return Err(Refusal::Missing);
        };
        let token: [u8; 32] = hex::decode(session)
            .ok()
            .and_then(|t| t.try_into().ok())
            .ok_or(Refusal::Missing)?;
        let from: NodeId = from.parse().map_err(|_| Refusal::Missing)?;
        let c: [u8; 16] = token[..16].try_into().expect("16 bytes");
        let s: [u8; 16] = token[16..].try_into().expect("16 bytes");
        if !bool::from(self.server_nonce(from, &c).as_slice().ct_eq(s.as_slice())) {
            return Err(Refusal::UnknownSession);
        }
        Ok(ProvenSession { token, from })
    }

    /// Verifies a request of a proven session: its MAC and that it is no replay.
    pub fn verify(
        &self,
        session: ProvenSession,
        seq: Option<&str>,
        mac: Option<&str>,
        signed: &Signed<'_>,
    ) -> Result<Verified, Refusal> {
        let (Some(seq), Some(mac)) = (seq, mac) else {
            return Err(Refusal::Missing);
        };
        let ProvenSession { token, from } = session;
        let seq: u64 = seq.parse().map_err(|_| Refusal::Missing)?;
        let mac = hex::decode(mac).map_err(|_| Refusal::Missing)?;
        let c: [u8; 16] = token[..16].try_into().expect("16 bytes");
        let s: [u8; 16] = token[16..].try_into().expect("16 bytes");
        let key = session_key(&self.secret, from, self.me, &c, &s);
        if !bool::from(request_mac(&key, seq, signed).as_slice().ct_eq(&mac)) {
            return Err(Refusal::BadMac);
        }
        let mut guard = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let (born, sessions) = &mut *guard;
        if !sessions.contains_key(&token) {
            if sessions.len() >= MAX_SESSIONS {
                if let Some(oldest) = sessions.iter().min_by_key(|(_, s)| s.born).map(|(t, _)| *t) {
                    sessions.remove(&oldest);
                }
            }
            *born += 1;
            sessions.insert(
                token,
                ServerSession {
                    key,
                    max: None,
                    seen: vec![false; REPLAY_WINDOW as usize],
                    born: *born,
                },
            );
        }
        let entry = sessions.get_mut(&token).expect("inserted above");
        if !entry.accept(seq) {
            return Err(Refusal::Replayed);
        }
        Ok(Verified {
            from,
            seq,
            key: entry.key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2.
        let mac = hmac(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block.
        let key = [0xaau8; 131];
        let mac = hmac(
            &key,
            &[b"Test Using Larger Than Block-Size Key - Hash Key First"],
        );
        assert_eq!(
            hex::encode(mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    fn signed(body: &[u8]) -> Signed<'_> {
        Signed {
            path: "/raft/append",
            cluster: "c1",
            role: "voter",
            budget: "",
            body,
            body_sha256: None,
        }
    }

    #[test]
    fn a_session_authenticates_both_ways_and_refuses_replays_and_forgeries() {
        let server = PeerAuth::new(2, "the-secret-0123456789");
        let hs = Handshake::new(1, 2, Some("c1".into()));
        let reply = server.answer_hello(&hs.hello, Some("c1".into()));
        let (session, cluster) = hs.finish(b"the-secret-0123456789", &reply).unwrap();
        assert_eq!(cluster.as_deref(), Some("c1"));
        let verify = |server: &PeerAuth, from: &str, seq: u64, mac: &str, body: &[u8]| {
            let proven = server.check_session(Some(session.token.as_str()), Some(from))?;
            server.verify(
                proven,
                Some(seq.to_string().as_str()),
                Some(mac),
                &signed(body),
            )
        };

        let (seq, mac) = session.sign(&signed(b"entries"));
        let v = verify(&server, "1", seq, &mac, b"entries").unwrap();
        assert_eq!(v.from, 1);
        let answer = v.sign_answer(200, b"ok");
        assert!(session.verify_answer(seq, 200, b"ok", Some(&answer)));
        assert!(!session.verify_answer(seq, 200, b"forged", Some(&answer)));
        assert!(!session.verify_answer(seq, 200, b"ok", None));

        // The same request again is a replay.
        let again = verify(&server, "1", seq, &mac, b"entries");
        assert_eq!(again.err(), Some(Refusal::Replayed));
        // Another body under the same MAC is refused.
        let (seq, mac) = session.sign(&signed(b"entries"));
        let forged = verify(&server, "1", seq, &mac, b"other");
        assert_eq!(forged.err(), Some(Refusal::BadMac));
        // A sender that passes the body's digest signs what hashing it would.
        let digest: [u8; 32] = Sha256::digest(b"entries").into();
        let (seq, mac) = session.sign(&Signed {
            body_sha256: Some(digest),
            ..signed(b"entries")
        });
        assert!(verify(&server, "1", seq, &mac, b"entries").is_ok());
        // Out of order within the window is fine.
        let (s1, m1) = session.sign(&signed(b"a"));
        let (s2, m2) = session.sign(&signed(b"b"));
        assert!(verify(&server, "1", s2, &m2, b"b").is_ok());
        assert!(verify(&server, "1", s1, &m1, b"a").is_ok());
        // Claiming to be another node breaks the session.
        let (s3, m3) = session.sign(&signed(b"c"));
        let other = verify(&server, "3", s3, &m3, b"c");
        assert_eq!(other.err(), Some(Refusal::UnknownSession));
        // A restarted server (another nonce key) does not know the session.
        let restarted = PeerAuth::new(2, "the-secret-0123456789");
        let stale = verify(&restarted, "1", s3, &m3, b"c");
        assert_eq!(stale.err(), Some(Refusal::UnknownSession));
        // No headers at all.
        let none = server.check_session(None, None);
        assert_eq!(none.err(), Some(Refusal::Missing));
        let proven = server
            .check_session(Some(session.token.as_str()), Some("1"))
            .unwrap();
        let unsigned = server.verify(proven, None, None, &signed(b"c"));
        assert_eq!(unsigned.err(), Some(Refusal::Missing));
    }

    #[test]
    fn an_answer_without_the_secret_or_from_another_cluster_is_refused() {
        let hs = Handshake::new(1, 4, Some("c1".into()));
        let impostor = PeerAuth::new(4, "a-guessed-secret-000000");
        let reply = impostor.answer_hello(&hs.hello, None);
        assert!(matches!(
            hs.finish(b"the-secret-0123456789", &reply),
            Err(HandshakeError::NoProof)
        ));
        let other = PeerAuth::new(4, "the-secret-0123456789");
        let reply = other.answer_hello(&hs.hello, Some("c2".into()));
        assert!(matches!(
            hs.finish(b"the-secret-0123456789", &reply),
            Err(HandshakeError::OtherCluster { .. })
        ));
        // A blank node (no cluster id yet) proves the secret and is accepted.
        let blank = other.answer_hello(&hs.hello, None);
        assert!(hs.finish(b"the-secret-0123456789", &blank).is_ok());
    }

    #[test]
    fn the_replay_window_slides() {
        let mut s = ServerSession {
            key: [0; 32],
            max: None,
            seen: vec![false; REPLAY_WINDOW as usize],
            born: 0,
        };
        assert!(s.accept(5));
        assert!(!s.accept(5));
        assert!(s.accept(3));
        assert!(s.accept(5 + REPLAY_WINDOW));
        assert!(!s.accept(5), "too old to tell");
        assert!(s.accept(4 + REPLAY_WINDOW), "inside the window, not seen");
        assert!(!s.accept(4 + REPLAY_WINDOW));
        assert!(!s.accept(5 + REPLAY_WINDOW));
    }
}
