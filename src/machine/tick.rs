//! Timeouts: the deadline index and what a `Tick` fires.
//!
//! Every pending deadline of every entity is one entry of an ordered set keyed by
//! (time, what), kept exactly in step with the entities (each entity also stores its
//! own deadline, so the index is rebuilt from them on restore). A tick fires the due
//! entries in that order, so every replica fires the same timeouts in the same order.

use super::ids::{MinerId, SessionId, TaskId};
use super::{Response, State};

/// What a deadline is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Due {
    /// A slot's own step timed out (ack; or precommit/reveal after the phase closed).
    Slot(TaskId, MinerId),
    /// The precommit phase of a task timed out.
    Phase(TaskId),
    /// A miner's heartbeat is too old.
    Heartbeat(MinerId),
    /// A gone miner is forgotten.
    MinerPurge(MinerId),
    /// An idle session gives back its extra miners.
    Idle(SessionId),
    /// A finished task's retention passed.
    TaskPurge(TaskId),
    /// A closed session's retention passed.
    SessionPurge(SessionId),
}

impl State {
    /// Fires every deadline due at the step's time, in deadline order.
    pub(super) fn tick(&mut self) -> Response {
        let now = self.step.now;
        let mut fired = 0;
        while let Some(&(at, due)) = self.idx.deadlines.first() {
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
                Due::Heartbeat(miner) => self.miner_gone(miner, "missed its heartbeats"),
                Due::MinerPurge(miner) => self.purge_miner(miner),
                Due::Idle(session) => self.shrink_idle(session),
                Due::TaskPurge(task) => self.purge_task(task),
                Due::SessionPurge(session) => self.purge_session(session),
            }
        }
        Response::Ticked { fired }
    }
}
