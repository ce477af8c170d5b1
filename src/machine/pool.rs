//! The node pool: miners (ephemeral nodes) that register, heartbeat, get reserved by
//! sessions and leave.
//!
//! A registered miner waits in the pool until a session reserves it. It serves only
//! that session until released (idle shrink, session closed, drained, gone). A miner
//! whose heartbeat is older than its timeout is gone: its reservation ends and its
//! unfinished slots go back to the queue. Gone miners are forgotten after an hour.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::error::invalid;
use super::ids::{MinerId, SessionId, TaskId};
use super::limits;
use super::tick::Due;
use super::{Digest, EventKind, Key, MinerAuth, Rejection, Response, State};

/// Where a miner stands in the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MinerState {
    /// Healthy and free to be reserved.
    Pooled,
    /// Serving one session.
    Reserved,
    /// Finishing its current work, taking no more; gone when done.
    Draining,
    /// Missed its heartbeats or left.
    Gone,
}

impl MinerState {
    pub fn as_str(self) -> &'static str {
        match self {
            MinerState::Pooled => "pooled",
            MinerState::Reserved => "reserved",
            MinerState::Draining => "draining",
            MinerState::Gone => "gone",
        }
    }
}

/// A miner of the pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Miner {
    pub id: MinerId,
    pub name: String,
    /// Tasks it works on at once.
    pub capacity: u32,
    pub tags: BTreeSet<String>,
    /// sha256 of its bearer token; the token itself never enters the log.
    pub token_hash: Digest,
    pub heartbeat_timeout_ms: u64,
    pub registered_ms: u64,
    pub last_heartbeat_ms: u64,
    pub state: MinerState,
    pub reserved_by: Option<SessionId>,
    /// Tasks on which it holds an unfinished slot.
    pub active: BTreeSet<TaskId>,
    /// Times of its latest rejected reveals (at most 32 kept).
    pub rejections: Vec<u64>,
    /// Slots it finished with a valid reveal.
    pub revealed: u64,
    /// Slots it lost to a timeout.
    pub expired: u64,
    pub gone_ms: Option<u64>,
}

impl Miner {
    /// Rejections within the last hour at `now`.
    pub fn recent_rejections(&self, now: u64) -> u64 {
        let since = now.saturating_sub(limits::REJECTION_WINDOW_MS);
        self.rejections.iter().filter(|&&at| at >= since).count() as u64
    }

    /// Whether it can take one more slot.
    pub fn has_room(&self) -> bool {
        self.state == MinerState::Reserved && (self.active.len() as u64) < self.capacity as u64
    }

    /// Its pending deadline: heartbeat expiry while alive, forgetting once gone.
    pub(super) fn deadline(&self) -> Option<u64> {
        match self.gone_ms {
            Some(gone) => Some(gone.saturating_add(limits::GONE_MINER_RETENTION_MS)),
            None => Some(
                self.last_heartbeat_ms
                    .saturating_add(self.heartbeat_timeout_ms),
            ),
        }
    }

    pub(super) fn due(&self) -> Due {
        match self.gone_ms {
            Some(_) => Due::MinerPurge(self.id),
            None => Due::Heartbeat(self.id),
        }
    }
}

fn validate_label(what: &str, value: &str) -> Result<(), Rejection> {
    if value.is_empty() || value.len() > limits::MAX_LABEL_BYTES {
        return Err(invalid(format!(
            "{what} must be 1..={} bytes",
            limits::MAX_LABEL_BYTES
        )));
    }
    Ok(())
}

impl State {
    pub(super) fn miner_mut(&mut self, id: MinerId) -> &mut Miner {
        self.dirty.insert(Key::Miner(id));
        self.miners.get_mut(&id).expect("miner exists")
    }

    pub(super) fn validate_register(
        &self,
        name: &str,
        capacity: u32,
        tags: &[String],
        token_hash: &Digest,
        heartbeat_timeout_ms: u64,
    ) -> Result<(), Rejection> {
        validate_label("name", name)?;
        if capacity == 0 || capacity > limits::MAX_CAPACITY {
            return Err(invalid(format!(
                "capacity must be 1..={}",
                limits::MAX_CAPACITY
            )));
        }
        if tags.len() > limits::MAX_TAGS {
            return Err(invalid(format!("at most {} tags", limits::MAX_TAGS)));
        }
        for tag in tags {
            validate_label("a tag", tag)?;
        }
        if heartbeat_timeout_ms == 0 || heartbeat_timeout_ms > limits::MAX_DURATION_MS {
            return Err(invalid("heartbeat_timeout_ms out of range"));
        }
        if self.idx.tokens.contains_key(token_hash) {
            return Err(super::error::conflict("this token is already in use"));
        }
        Ok(())
    }

    pub(super) fn register_miner(
        &mut self,
        name: &str,
        capacity: u32,
        tags: &[String],
        token_hash: Digest,
        heartbeat_timeout_ms: u64,
    ) -> Result<Response, Rejection> {
        self.validate_register(name, capacity, tags, &token_hash, heartbeat_timeout_ms)?;
        let now = self.step.now;
        self.header.next_miner += 1;
        self.mark(Key::Header);
        let id = MinerId(self.header.next_miner);
        let miner = Miner {
            id,
            name: name.to_owned(),
            capacity,
            tags: tags.iter().cloned().collect(),
            token_hash,
            heartbeat_timeout_ms,
            registered_ms: now,
            last_heartbeat_ms: now,
            state: MinerState::Pooled,
            reserved_by: None,
            active: BTreeSet::new(),
            rejections: Vec::new(),
            revealed: 0,
            expired: 0,
            gone_ms: None,
        };
        self.set_due(None, miner.deadline(), miner.due());
        self.miners.insert(id, miner);
        self.mark(Key::Miner(id));
        self.idx.pool.insert(id);
        self.idx.tokens.insert(token_hash, id);
        self.step.pool_grew = true;
        Ok(Response::MinerRegistered { miner: id })
    }

    /// Any authenticated write from a miner proves it alive.
    pub(super) fn touch_heartbeat(&mut self, id: MinerId) {
        let now = self.step.now;
        let m = &self.miners[&id];
        if m.gone_ms.is_some() || m.last_heartbeat_ms == now {
            return;
        }
        let (old, due) = (m.deadline(), m.due());
        let m = self.miner_mut(id);
        m.last_heartbeat_ms = now;
        let new = m.deadline();
        self.set_due(old, new, due);
    }

    pub(super) fn heartbeat(&mut self, auth: &MinerAuth) -> Result<Response, Rejection> {
        self.authenticate(auth)?;
        self.touch_heartbeat(auth.miner);
        Ok(Response::MinerUpdated { miner: auth.miner })
    }

    pub(super) fn drain_miner(&mut self, auth: &MinerAuth) -> Result<Response, Rejection> {
        let miner = self.authenticate(auth)?;
        let (state, reserved_by, idle) = (miner.state, miner.reserved_by, miner.active.is_empty());
        self.touch_heartbeat(auth.miner);
        if state == MinerState::Draining {
            return Ok(Response::MinerUpdated { miner: auth.miner });
        }
        if let Some(session) = reserved_by {
            self.release(session, auth.miner);
        }
        self.idx.pool.remove(&auth.miner);
        self.miner_mut(auth.miner).state = MinerState::Draining;
        if idle {
            self.miner_gone(auth.miner, "drained");
        }
        Ok(Response::MinerUpdated { miner: auth.miner })
    }

    pub(super) fn deregister_miner(&mut self, auth: &MinerAuth) -> Result<Response, Rejection> {
        self.authenticate(auth)?;
        self.miner_gone(auth.miner, "left");
        Ok(Response::MinerUpdated { miner: auth.miner })
    }

    /// The miner is gone: out of its reservation and the pool, its unfinished slots
    /// expired and re-queued.
    pub(super) fn miner_gone(&mut self, id: MinerId, why: &str) {
        let m = &self.miners[&id];
        let (old, due) = (m.deadline(), m.due());
        let reserved_by = m.reserved_by;
        let active: Vec<TaskId> = m.active.iter().copied().collect();
        if let Some(session) = reserved_by {
            self.release(session, id);
        }
        self.idx.pool.remove(&id);
        let now = self.step.now;
        let m = self.miner_mut(id);
        m.state = MinerState::Gone;
        m.gone_ms = Some(now);
        let (new, new_due) = (m.deadline(), m.due());
        self.set_due(old, None, due);
        self.set_due(None, new, new_due);
        for task in active {
            self.expire_slot(task, id, EventKind::Expired);
            self.reopen(task, 1, &format!("miner {id} {why}"));
            let session = self.tasks.get(&task).map(|t| t.session);
            if let Some(session) = session {
                self.step.touched.insert(session);
            }
        }
    }

    /// A draining miner whose last slot finished leaves.
    pub(super) fn maybe_finish_drain(&mut self, id: MinerId) {
        let m = &self.miners[&id];
        if m.state == MinerState::Draining && m.active.is_empty() {
            self.miner_gone(id, "drained");
        }
    }

    pub(super) fn purge_miner(&mut self, id: MinerId) {
        if let Some(m) = self.miners.remove(&id) {
            self.idx.tokens.remove(&m.token_hash);
        }
        self.mark(Key::Miner(id));
    }
}
