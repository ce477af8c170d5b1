//! Remembered idempotency keys: which task a session's key created, for how long.
//!
//! A key is an entity of its own (not a field looked up through its task), because it
//! must outlive the task: a client that retries a submit after the task was finished
//! and purged must still get the first task's id back, not a second task. Each key is
//! remembered for its session's `idempotency_window_ms` from the submit (never less
//! than the retention, and never while its task still exists), then a tick forgets it.
//!
//! A key is stored by (session, sha256 of the key), so the record key is fixed-size
//! and `Copy`. With the key it remembers a fingerprint of what was submitted under it:
//! the payload's sha256, the task's priority and its queue timeout (as they were after
//! the session's defaults were applied). The same key with another fingerprint is not
//! a retry but a different task, and is refused ([`Rejection::IdempotencyConflict`])
//! rather than silently answered with the first task.

use serde::{Deserialize, Serialize};

use super::ids::{SessionId, TaskId};
use super::task::sha256;
use super::tick::Due;
use super::{Digest, Key, State};

/// One remembered idempotency key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RememberedKey {
    pub session: SessionId,
    /// sha256 of the key.
    pub key_hash: Digest,
    /// The task the key created.
    pub task: TaskId,
    /// sha256 of what was submitted under the key (see [`fingerprint`]).
    pub fingerprint: Digest,
    pub submitted_ms: u64,
    /// When a tick forgets the key (postponed while its task still exists).
    pub expires_ms: u64,
}

/// The sha256 of a key, as keys are stored.
pub(super) fn key_hash(key: &str) -> Digest {
    sha256(&[b"sq-idempotency-key\0", key.as_bytes()])
}

/// What identifies a submit under a key: its payload, priority and queue timeout (after
/// defaults), so a retry of the same request matches and anything else conflicts.
pub(super) fn fingerprint(payload: &[u8], priority: i32, queue_timeout_ms: u64) -> Digest {
    sha256(&[
        b"sq-idempotency-v1\0",
        &sha256(&[payload]),
        &priority.to_be_bytes(),
        &queue_timeout_ms.to_be_bytes(),
    ])
}

impl State {
    /// The key the session remembers under this hash, if any.
    pub(super) fn remembered(&self, session: SessionId, hash: &Digest) -> Option<&RememberedKey> {
        self.keys.get(&(session, *hash))
    }

    /// Remembers a key for the session's idempotency window from now.
    pub(super) fn remember_key(
        &mut self,
        session: SessionId,
        key_hash: Digest,
        task: TaskId,
        fingerprint: Digest,
    ) {
        let now = self.step.now;
        let window = self.sessions[&session].spec.idempotency_window_ms;
        let expires_ms = now.saturating_add(window);
        self.keys.insert(
            (session, key_hash),
            RememberedKey {
                session,
                key_hash,
                task,
                fingerprint,
                submitted_ms: now,
                expires_ms,
            },
        );
        self.set_due(None, Some(expires_ms), Due::KeyPurge(session, key_hash));
        self.mark(Key::Idempotency(session, key_hash));
    }

    /// A key's window passed: forget it, unless its task still exists (then the key
    /// lives as long as the task: until its purge, or another window if unfinished).
    pub(super) fn expire_key(&mut self, session: SessionId, hash: Digest) {
        let Some(k) = self.keys.get(&(session, hash)) else {
            return;
        };
        let now = self.step.now;
        if let Some(task) = self.tasks.get(&k.task) {
            let window = self.sessions[&session].spec.idempotency_window_ms;
            let later = task
                .purge_at()
                .unwrap_or_else(|| now.saturating_add(window))
                .max(now);
            let k = self.keys.get_mut(&(session, hash)).expect("key exists");
            let old = k.expires_ms;
            k.expires_ms = later;
            self.idx
                .deadlines
                .remove(&(old, Due::KeyPurge(session, hash)));
            self.idx
                .deadlines
                .insert((later, Due::KeyPurge(session, hash)));
            self.mark(Key::Idempotency(session, hash));
            return;
        }
        self.forget_key(session, hash);
    }

    fn forget_key(&mut self, session: SessionId, hash: Digest) {
        if let Some(k) = self.keys.remove(&(session, hash)) {
            self.idx
                .deadlines
                .remove(&(k.expires_ms, Due::KeyPurge(session, hash)));
            self.mark(Key::Idempotency(session, hash));
        }
    }

    /// Forgets every key of a session (closed: it takes no more submits).
    pub(super) fn forget_session_keys(&mut self, session: SessionId) {
        let hashes: Vec<Digest> = self
            .keys
            .range((session, [0u8; 32])..=(session, [0xff; 32]))
            .map(|((_, h), _)| *h)
            .collect();
        for hash in hashes {
            self.forget_key(session, hash);
        }
    }
}
