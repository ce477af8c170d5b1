//! Read-only views of the state for the API: lookups, a miner's work, the pool and its
//! scaling signal, queue depth.

use serde::Serialize;

use super::ids::{MinerId, SessionId, TaskId};
use super::session::SessionState;
use super::{limits, Miner, MinerState, Session, SlotState, State, StateCounts, Task};

/// Tasks per state across all sessions.
pub type QueueDepth = StateCounts;

/// The node pool and how many more (or fewer) miners it needs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PoolView {
    pub pooled: u64,
    pub reserved: u64,
    pub draining: u64,
    pub gone: u64,
    /// Slots of queued tasks waiting for a miner, all sessions.
    pub open_slots: u64,
    /// Free capacity of the miners reserved by sessions.
    pub free_capacity: u64,
    /// Tasks completed over the last minute.
    pub completed_last_minute: u64,
    /// Miners the open sessions want beyond what they hold.
    pub wanted: u64,
    /// The scaling signal: positive, this many more miners would be put to work;
    /// negative, this many pooled miners have nothing to do.
    pub delta: i64,
}

impl State {
    pub fn task(&self, id: TaskId) -> Option<&Task> {
        self.tasks.get(&id).map(|t| &**t)
    }

    pub fn session(&self, id: SessionId) -> Option<&Session> {
        self.sessions.get(&id)
    }

    pub fn miner(&self, id: MinerId) -> Option<&Miner> {
        self.miners.get(&id)
    }

    /// The miner whose token hashes to `token_hash`.
    pub fn miner_by_token(&self, token_hash: &super::Digest) -> Option<MinerId> {
        self.idx.tokens.get(token_hash).copied()
    }

    /// The miner's unfinished slots, oldest task first.
    pub fn assignments_of(&self, id: MinerId) -> Vec<(&Task, SlotState)> {
        self.assignments_page(id, None, usize::MAX).0
    }

    /// One page of the miner's unfinished slots, oldest task first: at most `limit`,
    /// of tasks after `after`, and whether more follow the page.
    pub fn assignments_page(
        &self,
        id: MinerId,
        after: Option<TaskId>,
        limit: usize,
    ) -> (Vec<(&Task, SlotState)>, bool) {
        use std::ops::Bound::{Excluded, Unbounded};
        let Some(m) = self.miners.get(&id) else {
            return (Vec::new(), false);
        };
        let from = after.map_or(Unbounded, Excluded);
        let mut page: Vec<(&Task, SlotState)> = m
            .active
            .range((from, Unbounded))
            .filter_map(|t| self.tasks.get(t).map(|t| &**t))
            .filter_map(|t| t.slot(id).map(|i| (t, t.assignments[i].state)))
            .take(limit.saturating_add(1))
            .collect();
        let more = page.len() > limit;
        page.truncate(limit);
        (page, more)
    }

    /// Tasks per state, all sessions.
    pub fn depth(&self) -> QueueDepth {
        self.idx.depth
    }

    /// Number of sessions, miners and tasks held.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (self.sessions.len(), self.miners.len(), self.tasks.len())
    }

    /// The pool and its scaling signal.
    ///
    /// The signal weighs queue depth against capacity and recent throughput: the
    /// sessions' unmet wants (sized from their outstanding slots and the capacity of
    /// the miners they hold) count in full while queued slots would not drain within
    /// ten seconds at the last minute's completion rate; otherwise the idle pooled
    /// miners are reported as surplus.
    pub fn pool(&self) -> PoolView {
        let mut v = PoolView::default();
        for m in self.miners.values() {
            match m.state {
                MinerState::Pooled => v.pooled += 1,
                MinerState::Reserved => {
                    v.reserved += 1;
                    v.free_capacity += (m.capacity as u64).saturating_sub(m.active.len() as u64);
                }
                MinerState::Draining => v.draining += 1,
                MinerState::Gone => v.gone += 1,
            }
        }
        let since = self
            .header
            .now_ms
            .saturating_sub(limits::THROUGHPUT_WINDOW_MS)
            / 1000;
        v.completed_last_minute = self.header.completions.range(since..).map(|(_, c)| c).sum();
        for s in self
            .sessions
            .values()
            .filter(|s| s.state == SessionState::Open)
        {
            v.open_slots += s.open_slots;
            v.wanted += (self.want(s) as u64).saturating_sub(s.reserved.len() as u64);
        }
        // Free capacity elsewhere does not help a session (reserved miners serve one
        // session), so only the recent completion rate can argue against more miners.
        let drains_soon = v.open_slots == 0 || v.open_slots * 6 <= v.completed_last_minute;
        let more = if drains_soon { 0 } else { v.wanted };
        v.delta = if more > 0 {
            more as i64
        } else {
            -(v.pooled as i64)
        };
        v
    }
}

/// Newest-first pages of sessions and miners, for listings such as the operator page:
/// bounded by `limit`, so a large state is never walked whole under the read lock.
impl State {
    /// At most `limit` sessions, newest first, older than `before` when given, and
    /// whether older ones follow the page.
    pub fn sessions_page(&self, before: Option<SessionId>, limit: usize) -> (Vec<&Session>, bool) {
        newest_first(&self.sessions, before, limit)
    }

    /// At most `limit` miners (gone ones included, until purged), newest first, older
    /// than `before` when given, and whether older ones follow the page.
    pub fn miners_page(&self, before: Option<MinerId>, limit: usize) -> (Vec<&Miner>, bool) {
        newest_first(&self.miners, before, limit)
    }
}

fn newest_first<K: Ord + Copy, V>(
    map: &std::collections::BTreeMap<K, V>,
    before: Option<K>,
    limit: usize,
) -> (Vec<&V>, bool) {
    let mut page: Vec<&V> = match before {
        Some(b) => map
            .range(..b)
            .rev()
            .map(|(_, v)| v)
            .take(limit.saturating_add(1))
            .collect(),
        None => map.values().rev().take(limit.saturating_add(1)).collect(),
    };
    let more = page.len() > limit;
    page.truncate(limit);
    (page, more)
}
