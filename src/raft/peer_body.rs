//! The body of a peer request, and the replication body every follower shares.
//!
//! Why: every request on the peer channel carries a MAC over `sha256(body)` (see
//! [`super::peer_auth`]). The leader sends the same AppendEntries request (the same
//! entries from the same point, the same commit index) to each follower as soon as
//! its own append is synced, and used to assemble the body and hash it once per
//! follower: under batch submits of 1,000 tasks that was about a tenth of the
//! leader's CPU (the copy and the hash of a body of several hundred KiB, twice).
//! Now the body is assembled once ([`SharedBodies`] keeps the last one, by what
//! makes it: the request's vote, range and commit index) and its digest is computed
//! once, by whichever send needs it first ([`Body::sha256`]), then reused by the
//! other follower's send and by any retry in a new session.

use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::types::{LogId, Vote};

/// A request body and its sha256, computed at most once however often it is sent.
#[derive(Clone, Debug)]
pub struct Body {
    bytes: Bytes,
    sha256: Arc<OnceLock<[u8; 32]>>,
}

impl Body {
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// `sha256(bytes)`, computed on the first call.
    pub fn sha256(&self) -> [u8; 32] {
        *self
            .sha256
            .get_or_init(|| Sha256::digest(&self.bytes).into())
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Self {
        Body {
            bytes,
            sha256: Arc::default(),
        }
    }
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Self {
        Bytes::from(bytes).into()
    }
}

/// Everything an AppendEntries body is made of: the same key, the same bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BodyKey {
    pub vote: Vote,
    pub prev: Option<LogId>,
    pub last: Option<LogId>,
    pub entries: usize,
    pub leader_commit: Option<LogId>,
}

/// The last replication body built, shared by the connections to every follower.
/// Holds one body at a time (at most `--max-replication-bytes` of entries).
#[derive(Clone, Default)]
pub struct SharedBodies(Arc<Mutex<Option<(BodyKey, Body)>>>);

impl SharedBodies {
    /// The body for `key`: the one built last if it has that key, else `build()`'s,
    /// which is kept for the next follower.
    pub fn get_or_build(&self, key: BodyKey, build: impl FnOnce() -> Vec<u8>) -> Body {
        if let Some((k, body)) = &*self.0.lock().expect("bodies lock") {
            if *k == key {
                metrics::counter!("sq_replication_bodies_shared_total").increment(1);
                return body.clone();
            }
        }
        // Built outside the lock: the other follower's connection may build another.
        let body = Body::from(build());
        *self.0.lock().expect("bodies lock") = Some((key, body.clone()));
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(commit: u64) -> BodyKey {
        BodyKey {
            vote: Vote::new_committed(1, 1),
            prev: None,
            last: Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), 5)),
            entries: 5,
            leader_commit: Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), commit)),
        }
    }

    #[test]
    fn a_body_is_built_once_per_key_and_hashed_once() {
        let bodies = SharedBodies::default();
        let mut built = 0;
        let a = bodies.get_or_build(key(3), || {
            built += 1;
            b"entries".to_vec()
        });
        let b = bodies.get_or_build(key(3), || {
            built += 1;
            b"other".to_vec()
        });
        assert_eq!(built, 1);
        assert_eq!(a.bytes(), b.bytes());
        assert_eq!(a.sha256(), <[u8; 32]>::from(Sha256::digest(b"entries")));
        // The digest computed through one clone is the other's too.
        assert!(b.sha256.get().is_some());
        // Another commit index is another body.
        let c = bodies.get_or_build(key(4), || b"newer".to_vec());
        assert_eq!(&c.bytes()[..], b"newer");
        assert_eq!(c.sha256(), <[u8; 32]>::from(Sha256::digest(b"newer")));
    }
}
