//! Sessions: a user's stream of tasks and the miners reserved for it.
//!
//! A session holds its settings (redundancy k, quorum q, timeouts, attempts) and a
//! reservation of miners from the pool. [`State::rebalance`] sizes the reservation
//! from the session's demand: at least k, enough for the outstanding slots, at most
//! `max_nodes`; extra miners go back to the pool once the session has been idle for
//! `idle_release_ms`.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::error::{conflict, invalid, not_found};
use super::ids::{MinerId, SessionId, TaskId};
use super::limits;
use super::tick::Due;
use super::{Key, MinerState, Rejection, Response, SessionSpec, State, TaskState};

/// Open sessions take tasks; closed ones do not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionState {
    Open,
    Closed,
}

/// Tasks per state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateCounts {
    pub queued: u64,
    pub acked: u64,
    pub precommitted: u64,
    pub committed: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
}

impl StateCounts {
    pub(super) fn add(&mut self, state: TaskState, delta: i64) {
        let slot = match state {
            TaskState::Queued => &mut self.queued,
            TaskState::Acked => &mut self.acked,
            TaskState::Precommitted => &mut self.precommitted,
            TaskState::Committed => &mut self.committed,
            TaskState::Completed => &mut self.completed,
            TaskState::Failed => &mut self.failed,
            TaskState::Cancelled => &mut self.cancelled,
        };
        *slot = slot
            .checked_add_signed(delta)
            .expect("task count underflow");
    }

    /// Tasks not yet finished.
    pub fn live(&self) -> u64 {
        self.queued + self.acked + self.precommitted + self.committed
    }

    /// Tasks held, finished or not.
    pub fn total(&self) -> u64 {
        self.live() + self.completed + self.failed + self.cancelled
    }
}

/// A session. See the module documentation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: SessionId,
    pub spec: SessionSpec,
    pub state: SessionState,
    pub created_ms: u64,
    pub closed_ms: Option<u64>,
    /// The miners reserved for this session.
    pub reserved: BTreeSet<MinerId>,
    /// Tasks held per state.
    pub counts: StateCounts,
    /// Tasks ever submitted (idempotent repeats not counted).
    pub submitted_total: u64,
    /// Slots of queued tasks waiting for a miner.
    pub open_slots: u64,
    /// Slots held by miners and not yet finished.
    pub active_slots: u64,
    /// Extra miners the head of the queue needs beyond the reserved ones that never
    /// held it (a miner that did takes it only when the pool has none to give).
    pub shortfall: u32,
    /// Since when the session has had no outstanding slot.
    pub idle_since: Option<u64>,
    /// When its extra miners go back to the pool.
    pub idle_deadline: Option<u64>,
    /// When a closed session with no tasks left is forgotten.
    pub purge_at: Option<u64>,
}

impl Session {
    pub fn k(&self) -> u8 {
        self.spec.redundancy
    }
    pub fn q(&self) -> u8 {
        self.spec.quorum
    }

    /// Slots outstanding: waiting for a miner or held by one.
    pub fn demand(&self) -> u64 {
        self.open_slots + self.active_slots
    }
}

pub(super) fn validate_spec(spec: &SessionSpec) -> Result<(), Rejection> {
    if spec.redundancy == 0 || spec.redundancy > limits::MAX_REDUNDANCY {
        return Err(invalid(format!(
            "redundancy must be 1..={}",
            limits::MAX_REDUNDANCY
        )));
    }
    if spec.quorum == 0 || spec.quorum > spec.redundancy {
        return Err(invalid("quorum must be 1..=redundancy"));
    }
    if spec.max_nodes < spec.redundancy as u32 || spec.max_nodes > limits::MAX_NODES {
        return Err(invalid(format!(
            "max_nodes must be redundancy..={}",
            limits::MAX_NODES
        )));
    }
    for (name, value) in [
        ("ack_timeout_ms", spec.ack_timeout_ms),
        ("precommit_timeout_ms", spec.precommit_timeout_ms),
        ("commit_timeout_ms", spec.commit_timeout_ms),
        ("retention_ms", spec.retention_ms),
        ("idle_release_ms", spec.idle_release_ms),
    ] {
        if value == 0 || value > limits::MAX_DURATION_MS {
            return Err(invalid(format!(
                "{name} must be 1..={}",
                limits::MAX_DURATION_MS
            )));
        }
    }
    if spec.queue_timeout_ms > limits::MAX_DURATION_MS {
        return Err(invalid(format!(
            "queue_timeout_ms must be 0 (no limit)..={}",
            limits::MAX_DURATION_MS
        )));
    }
    // A key must outlive its task's retention, or a retry could create a second task
    // while the first is still readable.
    if spec.idempotency_window_ms < spec.retention_ms
        || spec.idempotency_window_ms > limits::MAX_DURATION_MS
    {
        return Err(invalid(format!(
            "idempotency_window_ms must be retention_ms ({})..={}",
            spec.retention_ms,
            limits::MAX_DURATION_MS
        )));
    }
    if spec.max_attempts == 0 || spec.max_attempts > limits::MAX_ATTEMPTS {
        return Err(invalid(format!(
            "max_attempts must be 1..={}",
            limits::MAX_ATTEMPTS
        )));
    }
    if spec.max_queued_tasks == 0 || spec.max_queued_tasks > limits::MAX_QUEUED_TASKS {
        return Err(invalid(format!(
            "max_queued_tasks must be 1..={}",
            limits::MAX_QUEUED_TASKS
        )));
    }
    if spec.owner.len() > limits::MAX_LABEL_BYTES {
        return Err(invalid("owner is too long"));
    }
    if let Some(tag) = &spec.tag {
        if tag.is_empty() || tag.len() > limits::MAX_LABEL_BYTES {
            return Err(invalid("tag must be 1..=256 bytes"));
        }
    }
    Ok(())
}

impl State {
    pub(super) fn create_session(&mut self, spec: &SessionSpec) -> Result<Response, Rejection> {
        validate_spec(spec)?;
        self.header.next_session += 1;
        let id = SessionId(self.header.next_session);
        self.mark(Key::Header);
        self.sessions.insert(
            id,
            Session {
                id,
                spec: spec.clone(),
                state: SessionState::Open,
                created_ms: self.step.now,
                closed_ms: None,
                reserved: BTreeSet::new(),
                counts: StateCounts::default(),
                submitted_total: 0,
                open_slots: 0,
                active_slots: 0,
                shortfall: 0,
                idle_since: Some(self.step.now),
                idle_deadline: None,
                purge_at: None,
            },
        );
        self.mark(Key::Session(id));
        self.step.touched.insert(id);
        Ok(Response::SessionCreated { session: id })
    }

    pub(super) fn validate_close(&self, id: SessionId) -> Result<(), Rejection> {
        let session = self
            .sessions
            .get(&id)
            .ok_or_else(|| not_found(format!("unknown session {id}")))?;
        if session.state == SessionState::Closed {
            return Err(conflict(format!("session {id} is already closed")));
        }
        Ok(())
    }

    pub(super) fn close_session(&mut self, id: SessionId) -> Result<Response, Rejection> {
        self.validate_close(id)?;
        // Only the session's own unfinished tasks, from their index, in id order.
        let live: Vec<TaskId> = self
            .idx
            .unfinished
            .get(&id)
            .map(|tasks| tasks.iter().copied().collect())
            .unwrap_or_default();
        let cancelled = live.len() as u64;
        for task in live {
            #[cfg(test)]
            {
                self.step.visited += 1;
            }
            self.finish(
                task,
                TaskState::Cancelled,
                None,
                Some("session closed".into()),
            );
        }
        let reserved: Vec<MinerId> = self.sessions[&id].reserved.iter().copied().collect();
        for miner in reserved {
            self.release(id, miner);
        }
        let now = self.step.now;
        let s = self.session_mut(id);
        s.state = SessionState::Closed;
        s.closed_ms = Some(now);
        let old_idle = s.idle_deadline.take();
        let purge_at = now.saturating_add(s.spec.retention_ms);
        s.purge_at = Some(purge_at);
        self.set_due(old_idle, None, Due::Idle(id));
        self.set_due(None, Some(purge_at), Due::SessionPurge(id));
        self.idx.needy.remove(&id);
        // A closed session takes no submits, so its keys can answer nothing.
        self.forget_session_keys(id);
        Ok(Response::SessionClosed {
            session: id,
            cancelled,
        })
    }

    pub(super) fn session_mut(&mut self, id: SessionId) -> &mut super::Session {
        self.dirty.insert(Key::Session(id));
        self.sessions.get_mut(&id).expect("session exists")
    }

    /// How many miners the session wants now.
    pub(super) fn want(&self, s: &Session) -> u32 {
        if s.state == SessionState::Closed {
            return 0;
        }
        let k = s.k() as u32;
        let capacities: u64 = s
            .reserved
            .iter()
            .map(|m| self.miners[m].capacity as u64)
            .sum();
        let per_node = if s.reserved.is_empty() {
            1
        } else {
            (capacities / s.reserved.len() as u64).max(1)
        };
        let for_demand = s.demand().div_ceil(per_node).min(u32::MAX as u64) as u32;
        let with_shortfall = (s.reserved.len() as u32).saturating_add(s.shortfall);
        k.max(for_demand).max(with_shortfall).min(s.spec.max_nodes)
    }

    /// Grows the session's reservation toward what it wants, from the pool.
    pub(super) fn rebalance(&mut self, id: SessionId) {
        let Some(session) = self.sessions.get(&id) else {
            return;
        };
        if session.state == SessionState::Closed {
            return;
        }
        let want = self.want(session);
        let have = session.reserved.len() as u32;
        if have < want {
            let mut candidates: Vec<(u64, usize, MinerId)> = self
                .idx
                .pool
                .iter()
                .map(|m| &self.miners[m])
                .filter(|m| match &session.spec.tag {
                    Some(tag) => m.tags.contains(tag),
                    None => true,
                })
                .map(|m| (m.recent_rejections(self.step.now), m.active.len(), m.id))
                .collect();
            candidates.sort();
            for (_, _, miner) in candidates.into_iter().take((want - have) as usize) {
                self.reserve(id, miner);
            }
        }
        self.borrow_idle_miners(id);
        self.update_idle(id);
        self.update_needy(id);
    }

    /// A session still below k after taking what the pool had takes idle miners
    /// (holding no work) that other sessions hold beyond their own k, so one session's
    /// growth never starves another.
    fn borrow_idle_miners(&mut self, id: SessionId) {
        let s = &self.sessions[&id];
        let (k, tag) = (s.k() as usize, s.spec.tag.clone());
        let mut missing = k.saturating_sub(s.reserved.len());
        if missing == 0 {
            return;
        }
        let now = self.step.now;
        let donors: Vec<SessionId> = self
            .sessions
            .values()
            .filter(|d| d.id != id && d.reserved.len() > d.k() as usize)
            .map(|d| d.id)
            .collect();
        for donor in donors {
            let d = &self.sessions[&donor];
            let spare = d.reserved.len() - d.k() as usize;
            // The donor gives its most rejected, then newest, idle miners.
            let mut idle: Vec<(std::cmp::Reverse<u64>, std::cmp::Reverse<MinerId>)> = d
                .reserved
                .iter()
                .map(|m| &self.miners[m])
                .filter(|m| m.active.is_empty() && tag.as_ref().is_none_or(|t| m.tags.contains(t)))
                .map(|m| {
                    (
                        std::cmp::Reverse(m.recent_rejections(now)),
                        std::cmp::Reverse(m.id),
                    )
                })
                .collect();
            idle.sort();
            for (_, std::cmp::Reverse(miner)) in idle.into_iter().take(spare.min(missing)) {
                self.release(donor, miner);
                self.reserve(id, miner);
                missing -= 1;
            }
            if missing == 0 {
                return;
            }
        }
    }

    pub(super) fn update_needy(&mut self, id: SessionId) {
        let session = &self.sessions[&id];
        if session.state == SessionState::Open
            && (session.reserved.len() as u32) < self.want(session)
        {
            self.idx.needy.insert(id);
        } else {
            self.idx.needy.remove(&id);
        }
    }

    /// Keeps the idle clock: a session without outstanding slots that holds more than
    /// k miners gets a deadline to give the extra ones back.
    fn update_idle(&mut self, id: SessionId) {
        let now = self.step.now;
        let s = &self.sessions[&id];
        let idle = s.demand() == 0;
        let idle_since = if idle {
            Some(s.idle_since.unwrap_or(now))
        } else {
            None
        };
        let deadline = match idle_since {
            Some(since) if s.reserved.len() > s.k() as usize => {
                Some(since.saturating_add(s.spec.idle_release_ms))
            }
            _ => None,
        };
        if idle_since != s.idle_since || deadline != s.idle_deadline {
            let old = s.idle_deadline;
            let s = self.session_mut(id);
            s.idle_since = idle_since;
            s.idle_deadline = deadline;
            self.set_due(old, deadline, Due::Idle(id));
        }
    }

    /// The idle deadline passed: give back every reserved miner beyond k that holds
    /// no work, the most rejected (then highest id) first.
    pub(super) fn shrink_idle(&mut self, id: SessionId) {
        let now = self.step.now;
        let s = &self.sessions[&id];
        let k = s.k() as usize;
        let mut idle: Vec<(std::cmp::Reverse<u64>, std::cmp::Reverse<MinerId>)> = s
            .reserved
            .iter()
            .map(|m| &self.miners[m])
            .filter(|m| m.active.is_empty())
            .map(|m| {
                (
                    std::cmp::Reverse(m.recent_rejections(now)),
                    std::cmp::Reverse(m.id),
                )
            })
            .collect();
        idle.sort();
        let excess = s.reserved.len().saturating_sub(k);
        let old = s.idle_deadline;
        for (_, std::cmp::Reverse(miner)) in idle.into_iter().take(excess) {
            self.release(id, miner);
        }
        let s = self.session_mut(id);
        s.idle_deadline = None;
        s.shortfall = 0;
        self.set_due(old, None, Due::Idle(id));
        self.step.touched.insert(id);
    }

    /// Forgets a closed session once its retention has passed and no task is left.
    pub(super) fn purge_session(&mut self, id: SessionId) {
        let s = &self.sessions[&id];
        if s.counts.total() == 0 {
            self.sessions.remove(&id);
            self.idx.queues.remove(&id);
            self.idx.needy.remove(&id);
            debug_assert!(!self.idx.unfinished.contains_key(&id));
            self.forget_session_keys(id);
            self.mark(Key::Session(id));
        } else {
            let later = self.step.now.saturating_add(s.spec.retention_ms);
            let old = s.purge_at;
            self.session_mut(id).purge_at = Some(later);
            self.set_due(old, Some(later), Due::SessionPurge(id));
        }
    }

    /// Moves a pooled miner into the session's reservation.
    pub(super) fn reserve(&mut self, session: SessionId, miner: MinerId) {
        self.idx.pool.remove(&miner);
        let m = self.miner_mut(miner);
        debug_assert_eq!(m.state, MinerState::Pooled);
        m.state = MinerState::Reserved;
        m.reserved_by = Some(session);
        self.session_mut(session).reserved.insert(miner);
        self.step.touched.insert(session);
    }

    /// Takes a miner out of the session's reservation; back to the pool if healthy.
    pub(super) fn release(&mut self, session: SessionId, miner: MinerId) {
        self.session_mut(session).reserved.remove(&miner);
        let m = self.miner_mut(miner);
        m.reserved_by = None;
        if m.state == MinerState::Reserved {
            m.state = MinerState::Pooled;
            self.idx.pool.insert(miner);
            self.step.pool_grew = true;
        }
        self.step.touched.insert(session);
    }
}
