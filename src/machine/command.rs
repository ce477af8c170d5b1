//! The commands of the state machine and what applying one returns.
//!
//! A command is what a client asked for, already validated for shape by the HTTP
//! layer and carrying everything the machine needs to decide (a miner's token hash,
//! defaults filled in), so that applying it depends on nothing but the state and the
//! leader's timestamp. Commands travel in the Raft log inside a [`Batch`].

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::ids::{MinerId, SessionId, TaskId};
use super::task::TaskState;

/// A sha256 digest.
pub type Digest = [u8; 32];

/// One Raft entry's worth of commands, stamped with the leader's clock when proposed.
///
/// The commands are shared, not owned: openraft hands out a copy of an entry for
/// each follower it replicates to and once more to apply it, and each copy of a
/// batch of a thousand submits would otherwise copy a thousand payloads. Encoded
/// exactly as a `Vec<Command>` would be.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// Milliseconds since the Unix epoch on the leader that proposed this batch. The
    /// machine never reads a clock of its own; time only moves forward.
    pub now_ms: u64,
    #[serde(with = "shared_commands")]
    pub commands: Arc<[Command]>,
    /// The cluster-wide bounds the leader that proposed it enforces, carried in the
    /// log so every replica applies the same ones whatever its own flags say.
    pub limits: Limits,
}

/// Serde for [`Batch::commands`]: a sequence, as a `Vec<Command>`.
mod shared_commands {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Command;

    pub fn serialize<S: Serializer>(commands: &Arc<[Command]>, s: S) -> Result<S::Ok, S::Error> {
        commands[..].serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<[Command]>, D::Error> {
        Vec::<Command>::deserialize(d).map(Arc::from)
    }
}

/// Cluster-wide bounds of the state, stamped into every batch by the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// New tasks are refused (`state_full`) once the state's approximate size
    /// ([`super::State::state_bytes`]) would pass this; new sessions too, before
    /// they are proposed ([`super::State::bound_growth`]).
    pub max_state_bytes: u64,
}

impl Default for Limits {
    /// No bound.
    fn default() -> Self {
        Limits {
            max_state_bytes: u64::MAX,
        }
    }
}

/// The settings of a new session. Every field is already defaulted by the caller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSpec {
    pub owner: String,
    /// k: miners per task.
    pub redundancy: u8,
    /// q: matching reveals needed to complete a task.
    pub quorum: u8,
    /// Default priority of this session's tasks.
    pub priority: i32,
    /// Only miners that list this tag are reserved for the session.
    pub tag: Option<String>,
    /// At most this many miners are reserved at once.
    pub max_nodes: u32,
    pub ack_timeout_ms: u64,
    pub precommit_timeout_ms: u64,
    pub commit_timeout_ms: u64,
    /// Attempts of a task: 1 at its first dispatch, one more each time lost slots go
    /// back to the queue; a slot lost once a task has used them all fails it.
    pub max_attempts: u32,
    /// How long finished tasks are kept before a tick purges them.
    pub retention_ms: u64,
    /// How long the session must be idle before extra reserved miners go back to the pool.
    pub idle_release_ms: u64,
    /// How long a task may wait in the queue (never dispatched, or requeued) before it
    /// fails as expired; 0 for no limit. A task may override it.
    pub queue_timeout_ms: u64,
    /// How long an idempotency key is remembered after its task was submitted, even
    /// once the task is purged; at least `retention_ms`.
    pub idempotency_window_ms: u64,
    /// Most unfinished tasks (queued or in progress) the session may hold; a submit
    /// that would go past it is refused as `queue_full`, so a session's backlog, and
    /// the payloads it keeps in every replica's memory, stays bounded.
    pub max_queued_tasks: u64,
    /// Whether a finished task keeps its payload until it is purged; by default it is
    /// dropped when the task finishes.
    pub keep_finished_payloads: bool,
}

/// One task of a submit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTask {
    /// Shared, not copied, by the state's unwritten payloads when applied (see
    /// `payloads`); encoded as bytes, exactly as a `serde_bytes` vector was.
    pub payload: bytes::Bytes,
    /// Defaults to the session's priority.
    pub priority: Option<i32>,
    pub idempotency_key: Option<String>,
    /// Overrides the session's `queue_timeout_ms` for this task (0: no limit).
    pub queue_timeout_ms: Option<u64>,
}

/// Proof that a call comes from a miner: the miner's id and the sha256 of the token it
/// presented. The machine compares it with the hash stored at registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MinerAuth {
    pub miner: MinerId,
    pub token_hash: Digest,
}

/// Everything that can change the state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    CreateSession(SessionSpec),
    /// Stop accepting tasks, cancel the unfinished ones and release the reserved miners.
    CloseSession {
        session: SessionId,
    },
    /// Submit one or more tasks, all or nothing.
    SubmitTasks {
        session: SessionId,
        tasks: Vec<NewTask>,
    },
    CancelTask {
        task: TaskId,
    },
    RegisterMiner {
        name: String,
        capacity: u32,
        tags: Vec<String>,
        token_hash: Digest,
        heartbeat_timeout_ms: u64,
    },
    Heartbeat {
        auth: MinerAuth,
    },
    /// The miner takes no new work and leaves once its current work is done.
    DrainMiner {
        auth: MinerAuth,
    },
    /// The miner leaves now; its unfinished slots go to other miners.
    DeregisterMiner {
        auth: MinerAuth,
    },
    Ack {
        task: TaskId,
        auth: MinerAuth,
    },
    Precommit {
        task: TaskId,
        auth: MinerAuth,
        hash: Digest,
    },
    Reveal {
        task: TaskId,
        auth: MinerAuth,
        #[serde(with = "serde_bytes")]
        output: Vec<u8>,
        #[serde(with = "serde_bytes")]
        nonce: Vec<u8>,
    },
    /// Fire every timeout due at the batch's time. Proposed by the leader.
    Tick,
}

impl Command {
    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Command::CreateSession(_) => "create_session",
            Command::CloseSession { .. } => "close_session",
            Command::SubmitTasks { .. } => "submit_tasks",
            Command::CancelTask { .. } => "cancel_task",
            Command::RegisterMiner { .. } => "register_miner",
            Command::Heartbeat { .. } => "heartbeat",
            Command::DrainMiner { .. } => "drain_miner",
            Command::DeregisterMiner { .. } => "deregister_miner",
            Command::Ack { .. } => "ack",
            Command::Precommit { .. } => "precommit",
            Command::Reveal { .. } => "reveal",
            Command::Tick => "tick",
        }
    }

    /// Approximate encoded size, for bounding batches by bytes.
    pub fn approx_size(&self) -> usize {
        match self {
            Command::SubmitTasks { tasks, .. } => {
                32 + tasks
                    .iter()
                    .map(|t| {
                        16 + t.payload.len() + t.idempotency_key.as_ref().map_or(0, |k| k.len())
                    })
                    .sum::<usize>()
            }
            Command::Reveal { output, nonce, .. } => 96 + output.len() + nonce.len(),
            Command::CreateSession(s) => 96 + s.owner.len() + s.tag.as_ref().map_or(0, |t| t.len()),
            Command::RegisterMiner { name, tags, .. } => {
                64 + name.len() + tags.iter().map(|t| t.len() + 8).sum::<usize>()
            }
            _ => 64,
        }
    }
}

/// What a successful command returns to its caller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    SessionCreated {
        session: SessionId,
    },
    SessionClosed {
        session: SessionId,
        cancelled: u64,
    },
    /// One entry per submitted task, in order; `created` is false when an idempotency
    /// key matched an earlier task.
    TasksSubmitted {
        tasks: Vec<(TaskId, bool)>,
    },
    TaskUpdated {
        task: TaskId,
        state: TaskState,
    },
    MinerRegistered {
        miner: MinerId,
    },
    MinerUpdated {
        miner: MinerId,
    },
    /// The reveal did not hash to the miner's precommit. The state changed (the
    /// assignment is rejected, the miner penalised) and the caller is told 422.
    RevealRejected {
        task: TaskId,
        state: TaskState,
    },
    Ticked {
        fired: u64,
    },
}

/// What happened to a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Submitted,
    Assigned,
    Acked,
    PhaseOpened,
    Precommitted,
    PhaseClosed,
    Revealed,
    RevealRejected,
    Expired,
    Requeued,
    Completed,
    Failed,
    Cancelled,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Submitted => "submitted",
            EventKind::Assigned => "assigned",
            EventKind::Acked => "acked",
            EventKind::PhaseOpened => "precommit_phase_opened",
            EventKind::Precommitted => "precommitted",
            EventKind::PhaseClosed => "precommit_phase_closed",
            EventKind::Revealed => "revealed",
            EventKind::RevealRejected => "reveal_rejected",
            EventKind::Expired => "expired",
            EventKind::Requeued => "requeued",
            EventKind::Completed => "completed",
            EventKind::Failed => "failed",
            EventKind::Cancelled => "cancelled",
        }
    }
}

/// A transition of a task, published after apply for event streams and long polls.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub task: TaskId,
    pub session: SessionId,
    pub state: TaskState,
    /// The miner whose action or timeout caused it, if any.
    pub miner: Option<MinerId>,
    pub what: EventKind,
    pub at_ms: u64,
}

/// The outcome of a successful command: its response and the transitions it caused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub response: Response,
    pub events: Vec<Event>,
}
