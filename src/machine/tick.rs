//! Timeouts: the deadline index and what a `Tick` fires.
//!
//! Every pending deadline of every entity is one entry of an ordered set keyed by
//! (time, what), kept exactly in step with the entities (each entity also stores its
//! own deadline, so the index is rebuilt from them on restore). A tick fires the due
//! entries in that order, so every replica fires the same timeouts in the same order.
//! One tick fires at most [`limits::MAX_FIRED_PER_TICK`] of them: when more are due
//! (a long pause, a burst of expiries), the rest stay first in the index and the
//! leader, which proposes a tick while [`State::next_deadline`] has passed, fires
//! them in the next entries.

use super::ids::{MinerId, SessionId, TaskId};
use super::{limits, Digest, Response, State};

/// What a deadline is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Due {
    /// A slot's own step timed out: ack; precommit or reveal after the phase closed;
    /// or, while its task waits for other slots to be filled, the wait itself.
    Slot(TaskId, MinerId),
    /// The precommit phase of a task timed out.
    Phase(TaskId),
    /// A task waited in the queue longer than its `queue_timeout_ms`.
    Queue(TaskId),
    /// A miner's heartbeat is too old.
    Heartbeat(MinerId),
    /// A gone miner is forgotten.
    MinerPurge(MinerId),
    /// An idle session gives back its extra miners.
    Idle(SessionId),
    /// A finished task's retention passed.
    TaskPurge(TaskId),
    /// An idempotency key's window passed (after `TaskPurge` at the same instant, so
    /// a key whose task goes at the same moment goes with it).
    KeyPurge(SessionId, Digest),
    /// A closed session's retention passed.
    SessionPurge(SessionId),
}

impl State {
    /// Fires the deadlines due at the step's time, in deadline order, at most
    /// [`limits::MAX_FIRED_PER_TICK`] of them.
    pub(super) fn tick(&mut self) -> Response {
        let now = self.step.now;
        let mut fired = 0;
        while fired < limits::MAX_FIRED_PER_TICK {
            let Some(&(at, due)) = self.idx.deadlines.first() else {
                break;
            };
            if at > now {
                break;
            }
            self.idx.deadlines.pop_first();
            fired += 1;
            match due {
                Due::Slot(task, miner) => {
                    if self.tasks.contains_key(&task) {
                        self.slot_timeout(task, miner);
                    }
                }
                Due::Phase(task) => {
                    if self.tasks.contains_key(&task) {
                        self.phase_timeout(task);
                    }
                }
                Due::Queue(task) => {
                    if self.tasks.contains_key(&task) {
                        self.queue_timeout(task);
                    }
                }
                Due::Heartbeat(miner) => self.miner_gone(miner, "missed its heartbeats"),
                Due::MinerPurge(miner) => self.purge_miner(miner),
                Due::Idle(session) => self.shrink_idle(session),
                Due::TaskPurge(task) => self.purge_task(task),
                Due::KeyPurge(session, hash) => self.expire_key(session, hash),
                Due::SessionPurge(session) => self.purge_session(session),
            }
        }
        Response::Ticked { fired }
    }
}
