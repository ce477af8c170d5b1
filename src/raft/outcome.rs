//! What came of a batch, and which writes may be sent again after an outcome nobody
//! can tell.
//!
//! A batch either committed (results), certainly did not reach the log anywhere
//! (send it again), may or may not have been applied (ambiguous), or failed for a
//! reason every caller gets. After an ambiguous outcome only writes that are safe to
//! apply twice ([`retry_safe`]) are sent again; the others are answered
//! [`ProposeError::Unknown`], since a retry could apply them twice.
//!
//! Where openraft 0.9.25 answers `ForwardToLeader` to `client_write`:
//! - `Engine::get_leader_handler_or_reject` (engine_impl.rs), when the core handles
//!   the request while this node is not a leader whose vote a quorum granted: the
//!   entry was never appended;
//! - `Command::DeleteConflictLog` (raft_core.rs), when this node, no longer leader,
//!   truncates entries a new leader does not have: the entry *was* appended here,
//!   and may have reached other nodes, so the new leader may still commit it.
//!
//! Both arrive as the same error, from the same responder, and the proposer only
//! proposes locally while its metrics say it leads, so the first can only happen in
//! the same race (leadership lost just before the request reached the core) in
//! which the second happens. The proposer cannot tell them apart, so every
//! `ForwardToLeader` from `client_write` counts as ambiguous. A forwarded call is
//! certainly not applied only when the request never reached the leader (connection
//! refused, refused before processing) or the leader says it never proposed it.

use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::ClientWriteResponse;

use super::network::PeerError;
use super::proposer::ProposeError;
use super::types::{CommandResult, NodeAddr, NodeId, TypeConfig};
use crate::machine::Command;

/// What came of a batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Committed and applied: one result per command, in order.
    Done(Vec<CommandResult>),
    /// Certainly not applied anywhere: send it again.
    NotSent,
    /// May or may not have been applied: only writes safe to apply twice go again.
    Ambiguous(String),
    /// Every caller gets this.
    Failed(ProposeError),
}

/// Whether applying `cmd` twice has the effect of applying it once, so that it may be
/// sent again after an ambiguous outcome: a submit whose every task carries an
/// idempotency key (the second finds the first's tasks), a heartbeat (the miner was
/// seen; seen twice is the same), a tick (fires what is due; nothing is due twice).
pub fn retry_safe(cmd: &Command) -> bool {
    match cmd {
        Command::SubmitTasks { tasks, .. } => tasks.iter().all(|t| t.idempotency_key.is_some()),
        Command::Heartbeat { .. } | Command::Tick => true,
        // Every other command changes the state each time it applies (a second session,
        // a second registration) or is refused the second time (ack, precommit, reveal,
        // cancel, close, drain, deregister): sending it again could be seen.
        _ => false,
    }
}

/// Whether every command of a proposal may be sent again after an ambiguous outcome.
pub fn all_retry_safe(commands: &[Command]) -> bool {
    commands.iter().all(retry_safe)
}

type WriteResult =
    Result<ClientWriteResponse<TypeConfig>, RaftError<NodeId, ClientWriteError<NodeId, NodeAddr>>>;

/// The outcome of `client_write` on this node.
pub fn of_local(result: WriteResult) -> Outcome {
    match result {
        Ok(resp) => Outcome::Done(resp.data.0),
        // Appended and then truncated, or refused before appending: see the module doc.
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
            Outcome::Ambiguous("this node lost the leadership with the write in flight".into())
        }
        // Not produced by client_write; kept apart from the ambiguous case all the same.
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
            Outcome::Failed(ProposeError::Fatal(format!("unexpected: {e}")))
        }
        // Raft stopped (a storage error) with the batch handed to it: it may have been
        // appended and replicated, so it may commit.
        Err(RaftError::Fatal(e)) => Outcome::Ambiguous(format!("raft stopped: {e}")),
    }
}

/// The outcome of a batch forwarded to the leader's peer channel.
pub fn of_forward(result: Result<Result<Vec<CommandResult>, ProposeError>, PeerError>) -> Outcome {
    match result {
        Ok(Ok(results)) => Outcome::Done(results),
        // The leader's proposer never sent it: it was not the leader, had no leader in
        // the time given, or was stopping.
        Ok(Err(ProposeError::NotLeader | ProposeError::NoLeader | ProposeError::ShuttingDown)) => {
            Outcome::NotSent
        }
        Ok(Err(ProposeError::Unknown(why))) => Outcome::Ambiguous(why),
        Ok(Err(e @ (ProposeError::Fatal(_) | ProposeError::Refused { .. }))) => Outcome::Failed(e),
        // Refused at the leader's door: nothing was written, and sending it again at
        // once would meet the same bound.
        Ok(Err(e @ (ProposeError::Overloaded(_) | ProposeError::TooLarge(_)))) => {
            Outcome::Failed(e)
        }
        // Never reached the leader's handlers (connection refused, refused unread).
        Err(PeerError::Unreachable(..)) => Outcome::NotSent,
        // Timed out, reset, or garbled: the leader may have proposed it.
        Err(e @ PeerError::Failed(..)) => Outcome::Ambiguous(e.to_string()),
        // Answered before processing, and would be again: nothing was written.
        Err(PeerError::Refused(_, status, message)) => {
            Outcome::Failed(ProposeError::Refused { status, message })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{MinerAuth, MinerId, NewTask, SessionId, TaskId};
    use openraft::error::{Fatal, ForwardToLeader};

    fn task(key: Option<&str>) -> NewTask {
        NewTask {
            payload: bytes::Bytes::from_static(b"p"),
            priority: None,
            idempotency_key: key.map(str::to_string),
            queue_timeout_ms: None,
        }
    }

    fn auth() -> MinerAuth {
        MinerAuth {
            miner: MinerId(1),
            token_hash: [0; 32],
        }
    }

    #[test]
    fn only_writes_that_apply_once_however_often_sent_are_retry_safe() {
        let session = SessionId(1);
        let keyed = Command::SubmitTasks {
            session,
            tasks: vec![task(Some("a")), task(Some("b"))],
        };
        let half_keyed = Command::SubmitTasks {
            session,
            tasks: vec![task(Some("a")), task(None)],
        };
        assert!(retry_safe(&keyed));
        assert!(!retry_safe(&half_keyed));
        assert!(retry_safe(&Command::Heartbeat { auth: auth() }));
        assert!(retry_safe(&Command::Tick));
        for cmd in [
            Command::Ack {
                task: TaskId(1),
                auth: auth(),
            },
            Command::Precommit {
                task: TaskId(1),
                auth: auth(),
                hash: [1; 32],
            },
            Command::CancelTask { task: TaskId(1) },
            Command::CloseSession { session },
            Command::DrainMiner { auth: auth() },
        ] {
            assert!(!retry_safe(&cmd), "{cmd:?}");
        }
        assert!(all_retry_safe(&[keyed.clone(), Command::Tick]));
        assert!(!all_retry_safe(&[keyed, half_keyed]));
    }

    #[test]
    fn forward_to_leader_from_client_write_is_ambiguous() {
        let e = RaftError::APIError(ClientWriteError::ForwardToLeader(ForwardToLeader {
            leader_id: Some(2),
            leader_node: None,
        }));
        assert!(matches!(of_local(Err(e)), Outcome::Ambiguous(_)));
        let e = RaftError::APIError(ClientWriteError::ForwardToLeader(ForwardToLeader {
            leader_id: None,
            leader_node: None,
        }));
        assert!(matches!(of_local(Err(e)), Outcome::Ambiguous(_)));
        assert!(matches!(
            of_local(Err(RaftError::Fatal(Fatal::Stopped))),
            Outcome::Ambiguous(_)
        ));
    }

    #[test]
    fn a_forward_is_certainly_unsent_only_if_it_never_reached_the_leader() {
        assert_eq!(of_forward(Ok(Ok(vec![]))), Outcome::Done(vec![]));
        for e in [
            ProposeError::NotLeader,
            ProposeError::NoLeader,
            ProposeError::ShuttingDown,
        ] {
            assert_eq!(of_forward(Ok(Err(e))), Outcome::NotSent);
        }
        assert_eq!(
            of_forward(Err(PeerError::Unreachable(2, "connection refused".into()))),
            Outcome::NotSent
        );
        assert!(matches!(
            of_forward(Err(PeerError::Failed(2, "timed out".into()))),
            Outcome::Ambiguous(_)
        ));
        // A 413 or 400 of the leader's peer listener: refused, certainly not applied.
        assert_eq!(
            of_forward(Err(PeerError::Refused(
                2,
                413,
                "length limit exceeded".into()
            ))),
            Outcome::Failed(ProposeError::Refused {
                status: 413,
                message: "length limit exceeded".into()
            })
        );
        assert_eq!(
            of_forward(Ok(Err(ProposeError::Unknown("x".into())))),
            Outcome::Ambiguous("x".into())
        );
        assert!(matches!(
            of_forward(Ok(Err(ProposeError::Fatal("x".into())))),
            Outcome::Failed(_)
        ));
    }
}
