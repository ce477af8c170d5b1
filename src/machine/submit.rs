//! Submitting tasks: one command for one task or a batch, all or nothing.
//!
//! [`State::validate_submit`] decides everything a submit can be refused for (unknown
//! or closed session, empty, over a limit, an idempotency key reused for another task,
//! the session's unfinished tasks past its `max_queued_tasks`, the cluster's state
//! past its `--max-state-bytes`)
//! and plans each task: new, or an earlier task its key names. [`State::submit`] then
//! only carries the plan out, so [`State::check`] and apply refuse exactly alike.

use super::error::{conflict, invalid, not_found};
use super::idempotency::{fingerprint, key_hash};
use super::ids::{SessionId, TaskId};
use super::session::SessionState;
use super::task::{Task, TaskState};
use super::{
    footprint, limits, Digest, EventKind, Key, Limits, NewTask, Rejection, Response, State,
};

/// What a submit does with one of its tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Planned {
    /// A new task, remembering its key (sha256 of the key, fingerprint) if it has one.
    New(Option<(Digest, Digest)>),
    /// Its key names a task the session already has (or had): answer that one.
    Existing(TaskId),
    /// Its key repeats the key of an earlier task of the same batch: answer that one.
    SameAs(usize),
}

impl State {
    /// Validates a submit and plans it; `Err` is the refusal apply would give.
    pub(super) fn validate_submit(
        &self,
        session: SessionId,
        tasks: &[NewTask],
        bounds: &Limits,
    ) -> Result<Vec<Planned>, Rejection> {
        let s = self
            .sessions
            .get(&session)
            .ok_or_else(|| not_found(format!("unknown session {session}")))?;
        if s.state == SessionState::Closed {
            return Err(conflict(format!("session {session} is closed")));
        }
        if tasks.is_empty() {
            return Err(invalid("no tasks to submit"));
        }
        if tasks.len() > limits::MAX_TASKS_PER_SUBMIT {
            return Err(Rejection::TooLarge(format!(
                "at most {} tasks per submit",
                limits::MAX_TASKS_PER_SUBMIT
            )));
        }
        for t in tasks {
            if t.payload.len() > limits::MAX_BLOB_BYTES {
                return Err(Rejection::TooLarge(format!(
                    "payload over {} bytes",
                    limits::MAX_BLOB_BYTES
                )));
            }
            if let Some(key) = &t.idempotency_key {
                if key.is_empty() || key.len() > limits::MAX_LABEL_BYTES {
                    return Err(invalid(format!(
                        "idempotency_key must be 1..={} bytes",
                        limits::MAX_LABEL_BYTES
                    )));
                }
            }
            if t.queue_timeout_ms.unwrap_or(0) > limits::MAX_DURATION_MS {
                return Err(invalid(format!(
                    "queue_timeout_ms must be 0..={}",
                    limits::MAX_DURATION_MS
                )));
            }
        }
        // Keys: a key the session remembers, or one an earlier task of this batch
        // carries, must come with the same task; otherwise the whole batch is refused.
        let mut in_batch: std::collections::BTreeMap<Digest, (usize, Digest)> =
            std::collections::BTreeMap::new();
        let mut plan = Vec::with_capacity(tasks.len());
        for (i, t) in tasks.iter().enumerate() {
            let Some(key) = &t.idempotency_key else {
                plan.push(Planned::New(None));
                continue;
            };
            let hash = key_hash(key);
            let (priority, queue_timeout) = self.effective(s, t);
            let print = fingerprint(&t.payload, priority, queue_timeout);
            let refuse = |task: String| {
                Rejection::IdempotencyConflict(format!(
                    "idempotency_key {key:?} was already used in session {session} for {task} with another payload, \
                     priority or queue_timeout_ms; use a new key for a new task"
                ))
            };
            if let Some(known) = self.remembered(session, &hash) {
                if known.fingerprint != print {
                    return Err(refuse(known.task.to_string()));
                }
                plan.push(Planned::Existing(known.task));
            } else if let Some(&(first, first_print)) = in_batch.get(&hash) {
                if first_print != print {
                    return Err(refuse(format!("task {first} of this batch")));
                }
                plan.push(Planned::SameAs(first));
            } else {
                in_batch.insert(hash, (i, print));
                plan.push(Planned::New(Some((hash, print))));
            }
        }
        // The queue bound counts what the submit would add: repeats of known keys add
        // nothing, so a retry of an accepted submit is never refused as full.
        let adding = plan.iter().filter(|p| matches!(p, Planned::New(_))).count() as u64;
        let live = s.counts.live();
        if adding > 0 && live.saturating_add(adding) > s.spec.max_queued_tasks {
            return Err(Rejection::QueueFull(format!(
                "session {session} holds {live} unfinished tasks; {adding} more would pass its \
                 max_queued_tasks of {}; retry once some have finished",
                s.spec.max_queued_tasks
            )));
        }
        // The cluster's memory bound counts what the new tasks would take.
        let adding_bytes: u64 = tasks
            .iter()
            .zip(&plan)
            .filter(|(_, p)| matches!(p, Planned::New(_)))
            .map(|(t, _)| footprint::new_task_bytes(t))
            .sum();
        let held = self.state_bytes();
        if adding_bytes > 0 && held.saturating_add(adding_bytes) > bounds.max_state_bytes {
            return Err(Rejection::StateFull(format!(
                "the cluster's state holds about {held} bytes; {adding} more tasks (about \
                 {adding_bytes} bytes) would pass its --max-state-bytes of {}; nothing was \
                 written: retry once finished tasks have been purged",
                bounds.max_state_bytes
            )));
        }
        Ok(plan)
    }

    /// A task's priority and queue timeout once the session's defaults are applied.
    fn effective(&self, s: &super::Session, t: &NewTask) -> (i32, u64) {
        (
            t.priority.unwrap_or(s.spec.priority),
            t.queue_timeout_ms.unwrap_or(s.spec.queue_timeout_ms),
        )
    }

    pub(super) fn submit(
        &mut self,
        session: SessionId,
        tasks: &[NewTask],
    ) -> Result<Response, Rejection> {
        let bounds = self.limits;
        let plan = self.validate_submit(session, tasks, &bounds)?;
        let s = &self.sessions[&session];
        let k = s.k();
        let effective: Vec<(i32, u64)> = tasks.iter().map(|t| self.effective(s, t)).collect();
        let now = self.step.now;
        let mut out: Vec<(TaskId, bool)> = Vec::with_capacity(tasks.len());
        let mut created = 0u64;
        for ((new, planned), (priority, queue_timeout_ms)) in tasks.iter().zip(plan).zip(effective)
        {
            let remember = match planned {
                Planned::Existing(id) => {
                    out.push((id, false));
                    continue;
                }
                Planned::SameAs(first) => {
                    out.push((out[first].0, false));
                    continue;
                }
                Planned::New(remember) => remember,
            };
            self.header.next_task += 1;
            let id = TaskId(self.header.next_task);
            let task = Task {
                id,
                session,
                payload_len: Some(new.payload.len() as u32),
                priority,
                idempotency_key: new.idempotency_key.as_deref().map(Into::into),
                state: TaskState::Queued,
                // Allocated when it is dispatched: a queued task holds no slot.
                assignments: Vec::new(),
                open_slots: k,
                attempts: 0,
                phase_deadline: None,
                phase_closed: false,
                queue_timeout_ms,
                queue_deadline: None,
                history: Box::new([(TaskState::Queued, now)]),
                end: None,
                created_ms: now,
            };
            if let Some((hash, print)) = remember {
                self.remember_key(session, hash, id, print);
            }
            self.idx.depth.add(TaskState::Queued, 1);
            self.tasks.insert(id, Box::new(task));
            self.touch_task(id, true);
            self.payloads.insert(id, new.payload.clone());
            self.mark(Key::Payload(id));
            self.idx.unfinished.entry(session).or_default().insert(id);
            self.sync_queue(id);
            self.emit(id, None, EventKind::Submitted);
            out.push((id, true));
            created += 1;
        }
        self.mark(Key::Header);
        let s = self.session_mut(session);
        s.counts.queued += created;
        s.submitted_total += created;
        s.open_slots += created * k as u64;
        self.step.touched.insert(session);
        Ok(Response::TasksSubmitted { tasks: out })
    }
}
