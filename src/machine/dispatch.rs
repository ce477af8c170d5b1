//! Dispatch: each session's queue of tasks waiting for miners, and how queued tasks
//! are matched with the session's reserved miners that have room.
//!
//! A queued task takes all its open slots at once (all or nothing: a half-dispatched
//! task would hold miners while it waits, and two of them can deadlock a pool), from
//! distinct miners, least-loaded first, then fewest recent rejections, then id. Higher
//! priority first, first-in first-out within a priority, among the tasks that can be
//! served: a task that cannot be served now never holds back the ones behind it.
//!
//! Which miners may take a task's open slot: preferably one that never held the task;
//! when not enough of those have room, one whose earlier slots of it all merely
//! expired (so a pool of exactly k keeps working after one missed ack). Never one that
//! holds a slot of it now (a miner holds at most one active slot per task), nor one
//! that revealed for it (two reveals of one miner must not count twice toward the
//! quorum), nor one whose reveal for it was rejected: that miner was caught revealing
//! an output it had not committed to, on this very task; handing it the task again
//! would give it another try at the same game, and if it is the only free miner the
//! task rather waits (and ends by its attempts or its queue deadline) than trusts it.
//!
//! So that a long queue costs little per command, the queue has two kinds of lanes:
//! - *open* lanes, one per number of open slots n, for tasks no miner is excluded
//!   from: any n miners with room serve such a task, so if the head of lane n cannot
//!   be served, nothing in lane n can and the lane is not looked at further;
//! - one *partial* lane for the others (a slot is held, revealed or rejected): these
//!   are the only tasks that can be unservable one by one. They are few: each holds a
//!   miner's slot, or has waited through a reveal; the scan over them goes on while
//!   miners have room, and never revisits a task it found unservable in that call.
//!
//! Lane membership is derived from the task alone ([`Task::lane`]), so restore rebuilds
//! it, and [`State::sync_queue`] refiles a task after anything that changes its slots.
//! Entering the queue starts the task's queue deadline; leaving it stops it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound::{Excluded, Unbounded};

use super::ids::{MinerId, SessionId, TaskId};
use super::session::SessionState;
use super::task::{Assignment, SlotState, Task};
use super::tick::Due;
use super::{EventKind, State};

/// A task's place in its session's queue: priority (highest first), then id.
pub(super) type QueueKey = (Reverse<i32>, TaskId);

/// A miner with room, in choice order: load, recent rejections, id.
type Free = (usize, u64, MinerId);

/// Which lane of its session's queue a task waits in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Lane {
    /// No miner is excluded from it; it needs this many miners.
    Open(u8),
    /// Some miners may not take it.
    Partial,
}

/// One session's queue (see the module documentation).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Queue {
    open: BTreeMap<u8, BTreeSet<QueueKey>>,
    partial: BTreeSet<QueueKey>,
}

impl Queue {
    pub(super) fn insert(&mut self, lane: Lane, key: QueueKey) {
        match lane {
            Lane::Open(n) => {
                self.open.entry(n).or_default().insert(key);
            }
            Lane::Partial => {
                self.partial.insert(key);
            }
        }
    }

    fn remove(&mut self, lane: Lane, key: &QueueKey) {
        match lane {
            Lane::Open(n) => {
                if let Some(set) = self.open.get_mut(&n) {
                    set.remove(key);
                    if set.is_empty() {
                        self.open.remove(&n);
                    }
                }
            }
            Lane::Partial => {
                self.partial.remove(key);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.open.is_empty() && self.partial.is_empty()
    }

    /// The lane a task is filed under, if it is queued. A task's key never changes
    /// and there are at most eight lanes, so a lookup in each is cheaper in memory
    /// than a map of every queued task to its lane (about 30 bytes a task).
    pub(super) fn lane_of(&self, key: &QueueKey) -> Option<Lane> {
        if self.partial.contains(key) {
            return Some(Lane::Partial);
        }
        self.open
            .iter()
            .find(|(_, set)| set.contains(key))
            .map(|(n, _)| Lane::Open(*n))
    }

    /// The first task of the queue in priority order, servable or not.
    fn head(&self) -> Option<QueueKey> {
        self.open
            .values()
            .filter_map(|s| s.first())
            .chain(self.partial.first())
            .min()
            .copied()
    }

    /// The first task of the open lanes that `free` miners can serve.
    fn open_head(&self, free: usize) -> Option<QueueKey> {
        let most = free.min(u8::MAX as usize) as u8;
        self.open
            .range(..=most)
            .filter_map(|(_, s)| s.first())
            .min()
            .copied()
    }
}

/// May a miner take an open slot of a task?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Eligible {
    /// It never held the task.
    Fresh,
    /// Its earlier slots of the task all expired, and it holds none now.
    Again,
    No,
}

impl Task {
    /// The lane the task waits in, or `None` if it waits for no miner.
    pub(super) fn lane(&self) -> Option<Lane> {
        if self.state.is_terminal() || self.open_slots == 0 {
            None
        } else if self
            .assignments
            .iter()
            .all(|a| a.state == SlotState::Expired)
        {
            Some(Lane::Open(self.open_slots))
        } else {
            Some(Lane::Partial)
        }
    }

    pub(super) fn queue_key(&self) -> QueueKey {
        (Reverse(self.priority), self.id)
    }

    /// Whether `miner` may take an open slot. A miner's slots of a task are all
    /// expired but possibly the last one (an active, revealed or rejected slot ends
    /// its eligibility, so it is never followed by another), so the last one decides.
    fn eligible(&self, miner: MinerId) -> Eligible {
        match self.assignments.iter().rev().find(|a| a.miner == miner) {
            None => Eligible::Fresh,
            Some(a) if a.state == SlotState::Expired => Eligible::Again,
            Some(_) => Eligible::No,
        }
    }

    /// The miners to fill all open slots with, from `free` in choice order: those that
    /// never held the task first, then those that may hold it again; `None` if there
    /// are not enough.
    fn choose(&self, free: &BTreeSet<Free>) -> Option<Vec<Free>> {
        let need = self.open_slots as usize;
        let mut fresh = Vec::with_capacity(need);
        let mut again = Vec::new();
        for c in free {
            match self.eligible(c.2) {
                Eligible::Fresh => {
                    fresh.push(*c);
                    if fresh.len() == need {
                        return Some(fresh);
                    }
                }
                Eligible::Again if again.len() < need => again.push(*c),
                _ => {}
            }
        }
        if fresh.len() + again.len() < need {
            return None;
        }
        let missing = need - fresh.len();
        fresh.extend(again.into_iter().take(missing));
        Some(fresh)
    }

    /// How many of `miners` never held it.
    fn never_held_among<'a>(&self, miners: impl Iterator<Item = &'a MinerId>) -> usize {
        miners
            .filter(|m| self.eligible(**m) == Eligible::Fresh)
            .count()
    }
}

impl State {
    /// Files the task in its session's queue as its slots now say (or takes it out),
    /// and starts or stops its queue deadline accordingly.
    pub(super) fn sync_queue(&mut self, id: TaskId) {
        let t = &self.tasks[&id];
        let (sid, key, lane) = (t.session, t.queue_key(), t.lane());
        let old = self.idx.queues.get(&sid).and_then(|q| q.lane_of(&key));
        if old == lane {
            return;
        }
        if let Some(old) = old {
            if let Some(q) = self.idx.queues.get_mut(&sid) {
                q.remove(old, &key);
                if q.is_empty() {
                    self.idx.queues.remove(&sid);
                }
            }
        }
        if let Some(new) = lane {
            self.idx.queues.entry(sid).or_default().insert(new, key);
        }
        if old.is_some() != lane.is_some() {
            let t = &self.tasks[&id];
            let deadline = match lane {
                Some(_) if t.queue_timeout_ms > 0 => {
                    Some(self.step.now.saturating_add(t.queue_timeout_ms))
                }
                _ => None,
            };
            let before = t.queue_deadline;
            if before != deadline {
                self.task_mut(id).queue_deadline = deadline;
                self.set_due(before, deadline, Due::Queue(id));
            }
        }
    }

    /// Dispatches the session's queued tasks to its reserved miners with room, in
    /// queue order among those that can be served, until no miner has room or no
    /// queued task can be served. See the module documentation.
    pub(super) fn schedule(&mut self, sid: SessionId) {
        let Some(s) = self.sessions.get(&sid) else {
            return;
        };
        if s.state == SessionState::Closed {
            return;
        }
        // Before giving a slot to a miner that held the task, let the reservation grow
        // toward one that never did: when the head's shortfall changes, settle
        // rebalances the session and schedules it again.
        if self.update_shortfall(sid) {
            return;
        }
        let s = &self.sessions[&sid];
        let now = self.step.now;
        let mut free: BTreeSet<Free> = s
            .reserved
            .iter()
            .map(|m| &self.miners[m])
            .filter(|m| m.has_room())
            .map(|m| (m.active.len(), m.recent_rejections(now), m.id))
            .collect();
        // Partial tasks up to this one were found unservable in this call; the free
        // miners only shrink while it runs, so they stay unservable.
        let mut partial_after: Option<QueueKey> = None;
        while !free.is_empty() {
            let Some(q) = self.idx.queues.get(&sid) else {
                break;
            };
            let mut examined = 0;
            let open = q.open_head(free.len()).map(|key| {
                examined += 1;
                (key, self.tasks[&key.1].choose(&free))
            });
            let mut partial = None;
            let range = match partial_after {
                Some(after) => q.partial.range((Excluded(after), Unbounded)),
                None => q.partial.range(..),
            };
            for key in range {
                // Partial tasks behind a servable open head cannot go first.
                if open.as_ref().is_some_and(|(o, _)| o < key) {
                    break;
                }
                examined += 1;
                match self.tasks[&key.1].choose(&free) {
                    Some(chosen) => {
                        partial = Some((*key, Some(chosen)));
                        break;
                    }
                    None => partial_after = Some(*key),
                }
            }
            #[cfg(test)]
            {
                self.step.examined += examined;
            }
            #[cfg(not(test))]
            let _ = examined;
            let Some((key, Some(chosen))) = partial.or(open) else {
                break;
            };
            let miners: Vec<MinerId> = chosen.iter().map(|c| c.2).collect();
            self.assign(key.1, &miners);
            for (load, rejections, m) in chosen {
                free.remove(&(load, rejections, m));
                if self.miners[&m].has_room() {
                    free.insert((load + 1, rejections, m));
                }
            }
        }
        self.update_shortfall(sid);
    }

    /// Sets the session's shortfall: how many more miners the head of its queue needs
    /// beyond the reserved ones that never held it (so a miner that did is used only
    /// when the pool has none to give). True if it changed; the session is then
    /// rebalanced and scheduled again.
    fn update_shortfall(&mut self, sid: SessionId) -> bool {
        let s = &self.sessions[&sid];
        let shortfall = match self.idx.queues.get(&sid).and_then(|q| q.head()) {
            Some((_, head)) => {
                let t = &self.tasks[&head];
                (t.open_slots as usize).saturating_sub(t.never_held_among(s.reserved.iter())) as u32
            }
            None => 0,
        };
        if shortfall == s.shortfall {
            return false;
        }
        self.session_mut(sid).shortfall = shortfall;
        self.step.touched.insert(sid);
        true
    }

    /// Gives all open slots of a queued task to the given miners.
    fn assign(&mut self, id: TaskId, miners: &[MinerId]) {
        let now = self.step.now;
        let t = &self.tasks[&id];
        let sid = t.session;
        let ack_timeout = self.sessions[&sid].spec.ack_timeout_ms;
        let n = miners.len() as u8;
        for &m in miners {
            self.miner_mut(m).active.insert(id);
        }
        let deadline = now.saturating_add(ack_timeout);
        let t = self.task_mut(id);
        // Exactly the slots it takes: a growing Vec would round up to four.
        t.assignments.reserve_exact(miners.len());
        for &m in miners {
            t.assignments.push(Assignment {
                miner: m,
                state: SlotState::Assigned,
                assigned_ms: now,
                deadline: Some(deadline),
                precommit: None,
                output_hash: None,
                output: None,
            });
        }
        t.open_slots -= n;
        if t.attempts == 0 {
            t.attempts = 1;
        }
        for &m in miners {
            self.set_due(None, Some(deadline), Due::Slot(id, m));
        }
        self.sync_queue(id);
        let s = self.session_mut(sid);
        s.open_slots -= n as u64;
        s.active_slots += n as u64;
        for &m in miners {
            self.emit(id, Some(m), EventKind::Assigned);
        }
    }
}
