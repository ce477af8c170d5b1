//! How a task moves after dispatch: its precommit phase, its timeouts, lost slots
//! going back to the queue, and its end.
//!
//! Deadlines, so that every task ends and no task pins a miner forever:
//! - an assigned slot has the session's `ack_timeout_ms` to be acked;
//! - while the task *waits* (its phase has neither opened nor closed: some slot is
//!   open or not yet acked), each acked or precommitted slot has the session's
//!   `precommit_timeout_ms`, from its ack or from when the task started waiting
//!   again, whichever is later. When it passes, the slot is released back to the
//!   queue: expired like any lost slot (one more attempt), but its miner, who did
//!   nothing wrong, is not counted as having let a slot expire;
//! - while the phase is open, the phase's own deadline governs every slot;
//! - after it closed, a late miner has the precommit timeout to precommit and each
//!   precommitted slot the commit timeout to reveal;
//! - a task waiting in the queue has its `queue_timeout_ms`, if any (see `dispatch`).
//!
//! Attempts count per task, not per slot: the first dispatch is attempt 1, and each
//! time lost slots go back to the queue (several lost at one instant by one cause,
//! e.g. a phase timeout, count once) is one more. A slot lost when the task has
//! already used `max_attempts` fails the task.

use std::collections::BTreeMap;

use super::ids::{MinerId, TaskId};
use super::limits;
use super::task::{SlotState, TaskEnd, TaskState};
use super::tick::Due;
use super::{Digest, EventKind, Key, State};

impl State {
    /// Opens the precommit phase once every slot is held and acked; the slots'
    /// waiting deadlines give way to the phase's.
    pub(super) fn maybe_open_phase(&mut self, id: TaskId) {
        let t = &self.tasks[&id];
        if !t.waiting()
            || t.open_slots > 0
            || t.assignments.iter().any(|a| a.state == SlotState::Assigned)
        {
            return;
        }
        let at = self
            .step
            .now
            .saturating_add(self.sessions[&t.session].spec.precommit_timeout_ms);
        let waits: Vec<(MinerId, Option<u64>)> = t
            .assignments
            .iter()
            .filter(|a| a.state.is_active())
            .map(|a| (a.miner, a.deadline))
            .collect();
        let t = self.task_mut(id);
        t.phase_deadline = Some(at);
        for a in t.assignments.iter_mut().filter(|a| a.state.is_active()) {
            a.deadline = None;
        }
        for (miner, old) in waits {
            self.set_due(old, None, Due::Slot(id, miner));
        }
        self.set_due(None, Some(at), Due::Phase(id));
        self.refresh_state(id);
        self.emit(id, None, EventKind::PhaseOpened);
    }

    /// Gives each acked or precommitted slot of a waiting task that has no deadline
    /// one: the precommit timeout from now.
    fn arm_waiting_slots(&mut self, id: TaskId) {
        let t = &self.tasks[&id];
        if t.state.is_terminal() || !t.waiting() {
            return;
        }
        let at = self
            .step
            .now
            .saturating_add(self.sessions[&t.session].spec.precommit_timeout_ms);
        let unarmed: Vec<usize> = (0..t.assignments.len())
            .filter(|&i| t.assignments[i].state.is_active() && t.assignments[i].deadline.is_none())
            .collect();
        if unarmed.is_empty() {
            return;
        }
        let t = self.task_mut(id);
        let mut miners = Vec::with_capacity(unarmed.len());
        for i in unarmed {
            t.assignments[i].deadline = Some(at);
            miners.push(t.assignments[i].miner);
        }
        for miner in miners {
            self.set_due(None, Some(at), Due::Slot(id, miner));
        }
    }

    /// Closes the precommit phase: reveals are taken from now on, each precommitted
    /// slot has `commit_timeout` to reveal, and acked slots that did not precommit
    /// are dropped.
    pub(super) fn close_phase(&mut self, id: TaskId) {
        let now = self.step.now;
        let t = &self.tasks[&id];
        let commit_timeout = self.sessions[&t.session].spec.commit_timeout_ms;
        let laggards: Vec<usize> = (0..t.assignments.len())
            .filter(|&i| t.assignments[i].state == SlotState::Acked)
            .collect();
        for i in laggards {
            let miner = self.tasks[&id].assignments[i].miner;
            self.end_slot(id, i, SlotState::Expired);
            self.emit(id, Some(miner), EventKind::Expired);
        }
        let old_phase = self.tasks[&id].phase_deadline;
        let deadline = now.saturating_add(commit_timeout);
        let t = self.task_mut(id);
        t.phase_closed = true;
        t.phase_deadline = None;
        let mut dues = Vec::new();
        for a in t
            .assignments
            .iter_mut()
            .filter(|a| a.state == SlotState::Precommitted)
        {
            dues.push((a.miner, a.deadline));
            a.deadline = Some(deadline);
        }
        self.set_due(old_phase, None, Due::Phase(id));
        for (miner, old) in dues {
            self.set_due(old, Some(deadline), Due::Slot(id, miner));
        }
        self.refresh_state(id);
        self.emit(id, None, EventKind::PhaseClosed);
    }

    /// The precommit phase timed out: close it if q precommitted, otherwise drop the
    /// slots that did not and send them back to the queue.
    pub(super) fn phase_timeout(&mut self, id: TaskId) {
        let t = &self.tasks[&id];
        let q = self.sessions[&t.session].q() as usize;
        let precommitted = t
            .assignments
            .iter()
            .filter(|a| a.state == SlotState::Precommitted)
            .count();
        if precommitted >= q {
            self.close_phase(id);
            self.evaluate(id);
            return;
        }
        let laggards: Vec<usize> = (0..t.assignments.len())
            .filter(|&i| t.assignments[i].state == SlotState::Acked)
            .collect();
        let n = laggards.len() as u8;
        for i in laggards {
            let miner = self.tasks[&id].assignments[i].miner;
            self.end_slot(id, i, SlotState::Expired);
            self.emit(id, Some(miner), EventKind::Expired);
        }
        self.task_mut(id).phase_deadline = None;
        let k = self.sessions[&self.tasks[&id].session].k();
        self.reopen(
            id,
            n,
            &format!("precommit timeout: {precommitted} of {k} miners precommitted, {q} needed"),
        );
        self.refresh_state(id);
    }

    /// A slot's own deadline passed: its ack, late precommit or reveal is overdue, or
    /// it waited too long for the task's other slots.
    pub(super) fn slot_timeout(&mut self, id: TaskId, miner: MinerId) {
        let t = &self.tasks[&id];
        let Some(i) = t.slot(miner) else {
            return;
        };
        let state = t.assignments[i].state;
        if !state.is_active() || t.state.is_terminal() {
            return;
        }
        let waited = t.waiting() && state != SlotState::Assigned;
        let timeout = self.sessions[&t.session].spec.precommit_timeout_ms;
        self.task_mut(id).assignments[i].deadline = None;
        if waited {
            // Not the miner's fault: no expiry counted against it.
            self.end_slot(id, i, SlotState::Expired);
            self.emit(id, Some(miner), EventKind::Expired);
            self.reopen(
                id,
                1,
                &format!(
                    "miner {miner} was released after waiting {timeout} ms for the task's other slots"
                ),
            );
            return;
        }
        let what = match state {
            SlotState::Assigned => "ack",
            SlotState::Acked => "precommit",
            _ => "reveal",
        };
        self.expire_slot(id, miner, EventKind::Expired);
        self.reopen(id, 1, &format!("{what} timeout of miner {miner}"));
        self.evaluate(id);
    }

    /// The task waited in the queue past its deadline: it fails as expired.
    pub(super) fn queue_timeout(&mut self, id: TaskId) {
        let t = &self.tasks[&id];
        if t.state.is_terminal() || t.open_slots == 0 {
            return;
        }
        let k = self.sessions[&t.session].k();
        let failure = format!(
            "expired: waited {} ms in the queue (queue_timeout_ms) with {} of {k} slots unassigned; not enough \
             free miners could take it",
            t.queue_timeout_ms, t.open_slots
        );
        self.task_mut(id).queue_deadline = None;
        self.finish(id, TaskState::Failed, None, Some(failure));
    }

    /// Ends a miner's active slot as expired (its miner gone or its time up), counted
    /// against the miner.
    pub(super) fn expire_slot(&mut self, id: TaskId, miner: MinerId, kind: EventKind) {
        let Some(i) = self.tasks[&id].slot(miner) else {
            return;
        };
        if !self.tasks[&id].assignments[i].state.is_active() || self.tasks[&id].state.is_terminal()
        {
            return;
        }
        self.end_slot(id, i, SlotState::Expired);
        self.miner_mut(miner).expired += 1;
        self.emit(id, Some(miner), kind);
    }

    /// Moves an active slot to a final state and frees its miner.
    pub(super) fn end_slot(&mut self, id: TaskId, i: usize, state: SlotState) {
        let t = self.task_mut(id);
        let sid = t.session;
        let a = &mut t.assignments[i];
        debug_assert!(a.state.is_active());
        a.state = state;
        let (miner, old) = (a.miner, a.deadline.take());
        self.set_due(old, None, Due::Slot(id, miner));
        self.miner_mut(miner).active.remove(&id);
        self.session_mut(sid).active_slots -= 1;
        self.step.touched.insert(sid);
        self.sync_queue(id);
        self.maybe_finish_drain(miner);
    }

    /// Sends `n` lost slots back to the queue, one more attempt; fails the task when
    /// its attempts are used up.
    pub(super) fn reopen(&mut self, id: TaskId, n: u8, reason: &str) {
        let t = &self.tasks[&id];
        if t.state.is_terminal() || n == 0 {
            return;
        }
        let max = self.sessions[&t.session].spec.max_attempts;
        if t.attempts >= max {
            let failure = format!("gave up after {} attempts; last: {reason}", t.attempts);
            self.finish(id, TaskState::Failed, None, Some(failure));
            return;
        }
        let sid = t.session;
        let t = self.task_mut(id);
        t.attempts += 1;
        t.open_slots += n;
        // A slot lost while the precommit phase is open: the phase waits again until
        // the replacement has acked, and the slots still held wait with deadlines.
        let reset_phase = if t.phase_closed {
            None
        } else {
            t.phase_deadline.take()
        };
        self.set_due(reset_phase, None, Due::Phase(id));
        self.sync_queue(id);
        self.arm_waiting_slots(id);
        self.session_mut(sid).open_slots += n as u64;
        self.step.touched.insert(sid);
        self.refresh_state(id);
        self.emit(id, None, EventKind::Requeued);
    }

    /// After a reveal or a lost slot in the reveal phase: complete on q agreeing
    /// reveals, fail when no q can agree any more.
    pub(super) fn evaluate(&mut self, id: TaskId) {
        let t = &self.tasks[&id];
        if t.state.is_terminal() || !t.phase_closed {
            return;
        }
        let q = self.sessions[&t.session].q() as usize;
        let mut groups: BTreeMap<Digest, (usize, usize)> = BTreeMap::new();
        for (i, a) in t.assignments.iter().enumerate() {
            if let (SlotState::Committed, Some(h)) = (a.state, a.output_hash) {
                groups.entry(h).or_insert((0, i)).0 += 1;
            }
        }
        if let Some((_, first)) = groups.values().find(|(count, _)| *count >= q) {
            let result = t.assignments[*first].output.clone();
            self.finish(id, TaskState::Completed, result, None);
            return;
        }
        let best = groups.values().map(|(c, _)| *c).max().unwrap_or(0);
        let pending = t.active_slots() + t.open_slots as usize;
        if best + pending < q {
            let failure = format!(
                "no quorum: {} valid reveals in {} disagreeing outputs, {} pending, {q} must agree",
                groups.values().map(|(c, _)| c).sum::<usize>(),
                groups.len(),
                pending
            );
            self.finish(id, TaskState::Failed, None, Some(failure));
        }
    }

    /// Moves a task to a final state, freeing its miners and its queue place.
    pub(super) fn finish(
        &mut self,
        id: TaskId,
        state: TaskState,
        result: Option<Vec<u8>>,
        failure: Option<String>,
    ) {
        let now = self.step.now;
        let t = &self.tasks[&id];
        let sid = t.session;
        let spec = &self.sessions[&sid].spec;
        let (retention, keep_payload) = (spec.retention_ms, spec.keep_finished_payloads);
        let (open, phase) = (t.open_slots, t.phase_deadline);
        let held: Vec<(MinerId, Option<u64>)> = t
            .assignments
            .iter()
            .filter(|a| a.state.is_active())
            .map(|a| (a.miner, a.deadline))
            .collect();
        for (miner, deadline) in &held {
            self.set_due(*deadline, None, Due::Slot(id, *miner));
            self.miner_mut(*miner).active.remove(&id);
        }
        self.set_due(phase, None, Due::Phase(id));
        let purge_at = now.saturating_add(retention);
        self.set_due(None, Some(purge_at), Due::TaskPurge(id));
        if let Some(live) = self.idx.unfinished.get_mut(&sid) {
            live.remove(&id);
            if live.is_empty() {
                self.idx.unfinished.remove(&sid);
            }
        }
        let t = self.task_mut(id);
        t.open_slots = 0;
        t.phase_deadline = None;
        for a in t.assignments.iter_mut() {
            a.deadline = None;
            a.output = None;
        }
        let dropped = !keep_payload && t.payload_len.take().is_some();
        if dropped {
            self.payloads.remove(id);
            self.mark(Key::Payload(id));
        }
        let t = self.task_mut(id);
        t.end = Some(Box::new(TaskEnd {
            result: result.map(Vec::into_boxed_slice),
            failure: failure.map(String::into_boxed_str),
            finished_ms: now,
            purge_at,
        }));
        // A finished task changes no more until it is purged: hold no spare room.
        t.assignments.shrink_to_fit();
        self.transition(id, state);
        self.sync_queue(id);
        let s = self.session_mut(sid);
        s.open_slots -= open as u64;
        s.active_slots -= held.len() as u64;
        self.step.touched.insert(sid);
        if state == TaskState::Completed {
            let second = now / 1000;
            let oldest = now.saturating_sub(limits::THROUGHPUT_WINDOW_MS) / 1000;
            let c = &mut self.header.completions;
            *c.entry(second).or_insert(0) += 1;
            while c.first_key_value().is_some_and(|(s, _)| *s < oldest) {
                c.pop_first();
            }
            self.mark(Key::Header);
        }
        let kind = match state {
            TaskState::Completed => EventKind::Completed,
            TaskState::Failed => EventKind::Failed,
            _ => EventKind::Cancelled,
        };
        self.emit(id, None, kind);
        for (miner, _) in held {
            self.maybe_finish_drain(miner);
        }
    }

    /// Re-derives a live task's state from its slots and phase.
    pub(super) fn refresh_state(&mut self, id: TaskId) {
        let t = &self.tasks[&id];
        if !t.state.is_terminal() {
            let derived = t.derived_state();
            self.transition(id, derived);
        }
    }

    /// Records a change of a task's state in its history and the counters.
    fn transition(&mut self, id: TaskId, state: TaskState) {
        let now = self.step.now;
        let t = &self.tasks[&id];
        let old = t.state;
        if old == state {
            return;
        }
        let sid = t.session;
        let t = self.task_mut(id);
        t.state = state;
        t.record_state(state, now);
        self.idx.depth.add(old, -1);
        self.idx.depth.add(state, 1);
        let s = self.session_mut(sid);
        s.counts.add(old, -1);
        s.counts.add(state, 1);
    }

    /// Forgets a finished task whose retention has passed. Its idempotency key, if
    /// any, lives on for its own window.
    pub(super) fn purge_task(&mut self, id: TaskId) {
        if !self.tasks.contains_key(&id) {
            return;
        }
        self.touch_task(id, false);
        let Some(t) = self.tasks.remove(&id) else {
            return;
        };
        if t.payload_len.is_some() {
            // A payload kept after the task finished goes with it.
            self.payloads.remove(id);
            self.mark(Key::Payload(id));
        }
        self.idx.depth.add(t.state, -1);
        if self.sessions.contains_key(&t.session) {
            self.session_mut(t.session).counts.add(t.state, -1);
        }
    }
}
