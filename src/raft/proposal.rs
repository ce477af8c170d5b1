//! One caller's write on its way through the proposer, and the caller's side of the
//! wait: each proposal keeps its own deadline and learns honestly what became of it.
//!
//! A proposal's [`Fate`] is shared by the caller and the proposer task. The proposer
//! marks it *sent* when it packs it into a batch, puts it back (maybe applied, or
//! certainly not) when a batch must be tried again, and never sends one whose caller
//! gave up. The caller waits until its own deadline, then gives up and answers from
//! the fate: never sent is [`ProposeError::NoLeader`] (nothing was written); sent, or
//! sent once with an unknown outcome, is [`ProposeError::Unknown`]. So a proposal
//! that waited long for a leader no longer spoils the batch it joins: the others in
//! that batch keep waiting for their result.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;

use super::admission::Admitted;
use super::proposer::ProposeError;
use super::types::CommandResult;
use crate::machine::Command;

/// What a caller is answered.
pub type Answer = Result<Vec<CommandResult>, ProposeError>;

/// Where a proposal stands, shared by its caller and the proposer task.
#[derive(Debug, Default)]
pub struct Fate(AtomicU8);

/// In a batch on its way (to Raft here, or to the leader).
const SENT: u8 = 1;
/// Sent at least once with an outcome nobody could tell: it may have been applied.
const MAYBE_APPLIED: u8 = 2;
/// The caller has its answer; the proposal must not be sent (again).
const GIVEN_UP: u8 = 4;

impl Fate {
    /// The proposer packs the proposal into a batch. False if its caller gave up: the
    /// proposal is then dropped unsent.
    pub fn take(&self) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |f| {
                (f & GIVEN_UP == 0).then_some(f | SENT)
            })
            .is_ok()
    }

    /// The batch must be tried again: back to waiting, remembering whether the last
    /// try may have been applied. False if the caller gave up meanwhile.
    pub fn back(&self, maybe_applied: bool) -> bool {
        let extra = if maybe_applied { MAYBE_APPLIED } else { 0 };
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |f| {
                (f & GIVEN_UP == 0).then_some((f & !SENT) | extra)
            })
            .is_ok()
    }

    /// Ends the proposal's life without a result: the answer its caller gets, or
    /// `None` if the caller already had one.
    pub fn give_up(&self, why: &str) -> Option<ProposeError> {
        let before = self.0.fetch_or(GIVEN_UP, Ordering::AcqRel);
        if before & GIVEN_UP != 0 {
            return None;
        }
        Some(if before & (SENT | MAYBE_APPLIED) != 0 {
            ProposeError::Unknown(why.into())
        } else {
            ProposeError::NoLeader
        })
    }

    /// Whether a try may have been applied (the proposal is sent, or was once with an
    /// unknown outcome).
    pub fn maybe_applied(&self) -> bool {
        self.0.load(Ordering::Acquire) & (SENT | MAYBE_APPLIED) != 0
    }

    pub fn given_up(&self) -> bool {
        self.0.load(Ordering::Acquire) & GIVEN_UP != 0
    }
}

/// A write waiting in the proposer.
pub struct Proposal {
    pub commands: Vec<Command>,
    /// The commands' encoded size, as they take it in a Raft entry.
    pub bytes: usize,
    pub deadline: Instant,
    /// Came from another node: only ever proposed locally, by the leader.
    pub forwarded: bool,
    pub fate: Arc<Fate>,
    pub reply: oneshot::Sender<Answer>,
    /// Its share of the proposer's bounds, given back when it is dropped.
    pub admitted: Option<Admitted>,
}

impl Proposal {
    /// A proposal and the caller's end of it.
    pub fn new(commands: Vec<Command>, deadline: Instant, forwarded: bool) -> (Self, Waiter) {
        let (reply, rx) = oneshot::channel();
        let fate = Arc::new(Fate::default());
        let bytes = encoded_bytes(&commands);
        let proposal = Proposal {
            commands,
            bytes,
            deadline,
            forwarded,
            fate: fate.clone(),
            reply,
            admitted: None,
        };
        (proposal, Waiter { rx, fate, deadline })
    }

    /// Answers the caller (ignored if it stopped waiting).
    pub fn answer(self, answer: Answer) {
        let _ = self.reply.send(answer);
    }

    /// Ends the proposal unsent-now: the caller learns `NoLeader` or `Unknown` from
    /// its fate, or `otherwise` when the proposal was never sent and `otherwise` says
    /// more than "no leader" (not the leader, shutting down).
    pub fn end(self, why: &str, otherwise: ProposeError) {
        let maybe = self.fate.maybe_applied();
        if let Some(e) = self.fate.give_up(why) {
            let _ = self.reply.send(Err(if maybe { e } else { otherwise }));
        }
    }
}

/// The bytes `commands` take in a Raft entry's list of commands.
pub fn encoded_bytes(commands: &[Command]) -> usize {
    // Each value alone carries the version byte, which a list of them does not.
    commands
        .iter()
        .map(|c| crate::codec::encoded_len(c) - 1)
        .sum()
}

/// The caller's end of a proposal.
pub struct Waiter {
    rx: oneshot::Receiver<Answer>,
    fate: Arc<Fate>,
    deadline: Instant,
}

impl Waiter {
    /// Waits for the answer until the proposal's deadline, then gives up honestly.
    pub async fn wait(mut self) -> Answer {
        match tokio::time::timeout_at(self.deadline.into(), &mut self.rx).await {
            Ok(Ok(answer)) => answer,
            // The proposer dropped the proposal unanswered: it stopped.
            Ok(Err(_)) => Err(if self.fate.maybe_applied() {
                ProposeError::Unknown("the node stopped while the write was in flight".into())
            } else {
                ProposeError::ShuttingDown
            }),
            Err(_) => {
                let given_up = self
                    .fate
                    .give_up("timed out before the outcome of the write was known");
                // An answer that raced the deadline still counts.
                if let Ok(answer) = self.rx.try_recv() {
                    return answer;
                }
                // The proposer gave up on it first and its answer is on the way: the
                // fate tells the same.
                Err(given_up.unwrap_or_else(|| {
                    if self.fate.maybe_applied() {
                        ProposeError::Unknown(
                            "timed out before the outcome of the write was known".into(),
                        )
                    } else {
                        ProposeError::NoLeader
                    }
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_proposal_never_sent_is_no_leader() {
        let f = Fate::default();
        assert_eq!(f.give_up("late"), Some(ProposeError::NoLeader));
        assert_eq!(f.give_up("late"), None, "one answer only");
        assert!(!f.take(), "a given-up proposal is never sent");
    }

    #[test]
    fn a_proposal_sent_is_unknown_even_after_it_came_back() {
        let f = Fate::default();
        assert!(f.take());
        assert!(matches!(f.give_up("late"), Some(ProposeError::Unknown(_))));

        let f = Fate::default();
        assert!(f.take());
        assert!(f.back(true), "ambiguous: back to waiting, maybe applied");
        assert!(f.maybe_applied());
        assert!(matches!(f.give_up("late"), Some(ProposeError::Unknown(_))));

        let f = Fate::default();
        assert!(f.take());
        assert!(f.back(false), "certainly not applied");
        assert!(!f.maybe_applied());
        assert_eq!(f.give_up("late"), Some(ProposeError::NoLeader));
    }

    #[test]
    fn a_caller_that_gave_up_stops_its_proposal() {
        let f = Fate::default();
        assert!(f.take());
        assert!(f.give_up("late").is_some());
        assert!(!f.back(false), "not requeued");
        assert!(f.given_up());
    }

    #[tokio::test]
    async fn each_waiter_keeps_its_own_deadline() {
        let now = Instant::now();
        let (old, old_wait) = Proposal::new(vec![], now + Duration::from_millis(10), false);
        let (fresh, fresh_wait) = Proposal::new(vec![], now + Duration::from_secs(30), false);
        // Both packed into one batch, which takes longer than the old one may wait.
        assert!(old.fate.take() && fresh.fate.take());
        let old_answer = old_wait.wait().await;
        assert!(
            matches!(old_answer, Err(ProposeError::Unknown(_))),
            "{old_answer:?}"
        );
        // The fresh one still gets the batch's result.
        old.answer(Ok(vec![]));
        fresh.answer(Ok(vec![]));
        assert_eq!(fresh_wait.wait().await, Ok(vec![]));
    }

    #[tokio::test]
    async fn a_waiter_never_sent_gets_no_leader_at_its_deadline() {
        let (p, waiter) = Proposal::new(vec![], Instant::now() + Duration::from_millis(5), false);
        assert_eq!(waiter.wait().await, Err(ProposeError::NoLeader));
        assert!(!p.fate.take());
    }
}
