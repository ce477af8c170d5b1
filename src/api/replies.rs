//! The JSON answers of the API as typed structs.
//!
//! Handlers serialize these and nothing else, and the OpenAPI document
//! ([`super::openapi`]) is derived from the same types, so the document cannot drift
//! from what a node sends. Ids are strings with a kind prefix (`s-`, `m-`, `t-`),
//! bytes are standard base64, times are milliseconds of cluster time.
//!
//! The machine's own types stay free of API concerns: each view here is built from
//! them with a `from_*` constructor.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::wire::base64;
use crate::machine::{Miner, PoolView, Session, SessionState, SlotState, StateCounts, Task};
use crate::machine::{MinerState, TaskState};

/// A task's state on the wire.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskStateName {
    Queued,
    Acked,
    Precommitted,
    Committed,
    Completed,
    Failed,
    Cancelled,
}

impl From<TaskState> for TaskStateName {
    fn from(s: TaskState) -> Self {
        match s {
            TaskState::Queued => Self::Queued,
            TaskState::Acked => Self::Acked,
            TaskState::Precommitted => Self::Precommitted,
            TaskState::Committed => Self::Committed,
            TaskState::Completed => Self::Completed,
            TaskState::Failed => Self::Failed,
            TaskState::Cancelled => Self::Cancelled,
        }
    }
}

/// A miner's slot of a task, on the wire.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SlotStateName {
    Assigned,
    Acked,
    Precommitted,
    Committed,
    Expired,
    Rejected,
}

impl From<SlotState> for SlotStateName {
    fn from(s: SlotState) -> Self {
        match s {
            SlotState::Assigned => Self::Assigned,
            SlotState::Acked => Self::Acked,
            SlotState::Precommitted => Self::Precommitted,
            SlotState::Committed => Self::Committed,
            SlotState::Expired => Self::Expired,
            SlotState::Rejected => Self::Rejected,
        }
    }
}

/// A miner's place in the pool, on the wire.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MinerStateName {
    Pooled,
    Reserved,
    Draining,
    Gone,
}

impl From<MinerState> for MinerStateName {
    fn from(s: MinerState) -> Self {
        match s {
            MinerState::Pooled => Self::Pooled,
            MinerState::Reserved => Self::Reserved,
            MinerState::Draining => Self::Draining,
            MinerState::Gone => Self::Gone,
        }
    }
}

/// A session's state on the wire.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionStateName {
    Open,
    Closed,
}

/// Tasks per state.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, ToSchema)]
pub struct Counts {
    pub queued: u64,
    pub acked: u64,
    pub precommitted: u64,
    pub committed: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
}

impl From<StateCounts> for Counts {
    fn from(c: StateCounts) -> Self {
        Counts {
            queued: c.queued,
            acked: c.acked,
            precommitted: c.precommitted,
            committed: c.committed,
            completed: c.completed,
            failed: c.failed,
            cancelled: c.cancelled,
        }
    }
}

/// A session: its settings (defaults filled in), state and counters.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionView {
    #[schema(example = "s-1")]
    pub id: String,
    pub owner: String,
    /// k: miners per task.
    pub redundancy: u8,
    /// q: matching reveals that complete a task.
    pub quorum: u8,
    pub priority: i32,
    pub tag: Option<String>,
    pub max_nodes: u32,
    pub ack_timeout_ms: u64,
    pub precommit_timeout_ms: u64,
    pub commit_timeout_ms: u64,
    pub max_attempts: u32,
    pub retention_ms: u64,
    pub idle_release_ms: u64,
    pub queue_timeout_ms: u64,
    pub idempotency_window_ms: u64,
    pub max_queued_tasks: u64,
    pub keep_finished_payloads: bool,
    pub state: SessionStateName,
    pub created_ms: u64,
    pub closed_ms: Option<u64>,
    /// Ids of the miners reserved for the session.
    pub reserved_nodes: Vec<String>,
    /// The session's tasks per state.
    pub counts: Counts,
    pub submitted_total: u64,
    /// Slots of queued tasks waiting for a miner.
    pub open_slots: u64,
    /// Slots held by miners and not yet finished.
    pub active_slots: u64,
    /// The log index of the state this was read from.
    pub applied_index: u64,
}

impl SessionView {
    pub fn from_session(s: &Session, applied_index: u64) -> Self {
        SessionView {
            id: s.id.to_string(),
            owner: s.spec.owner.clone(),
            redundancy: s.spec.redundancy,
            quorum: s.spec.quorum,
            priority: s.spec.priority,
            tag: s.spec.tag.clone(),
            max_nodes: s.spec.max_nodes,
            ack_timeout_ms: s.spec.ack_timeout_ms,
            precommit_timeout_ms: s.spec.precommit_timeout_ms,
            commit_timeout_ms: s.spec.commit_timeout_ms,
            max_attempts: s.spec.max_attempts,
            retention_ms: s.spec.retention_ms,
            idle_release_ms: s.spec.idle_release_ms,
            queue_timeout_ms: s.spec.queue_timeout_ms,
            idempotency_window_ms: s.spec.idempotency_window_ms,
            max_queued_tasks: s.spec.max_queued_tasks,
            keep_finished_payloads: s.spec.keep_finished_payloads,
            state: match s.state {
                SessionState::Open => SessionStateName::Open,
                SessionState::Closed => SessionStateName::Closed,
            },
            created_ms: s.created_ms,
            closed_ms: s.closed_ms,
            reserved_nodes: s.reserved.iter().map(|m| m.to_string()).collect(),
            counts: s.counts.into(),
            submitted_total: s.submitted_total,
            open_slots: s.open_slots,
            active_slots: s.active_slots,
            applied_index,
        }
    }
}

/// `POST /v1/sessions/{id}/close`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionClosed {
    pub id: String,
    pub state: SessionStateName,
    /// Unfinished tasks the close cancelled.
    pub cancelled: u64,
}

/// One miner's slot of a task.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AssignmentView {
    pub miner_id: String,
    pub state: SlotStateName,
    pub assigned_ms: u64,
}

/// A state the task entered, and when.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct HistoryEntry {
    pub state: TaskStateName,
    pub at_ms: u64,
}

/// A task: state, assignments, result.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskView {
    #[schema(example = "t-1")]
    pub id: String,
    pub session_id: String,
    pub state: TaskStateName,
    pub priority: i32,
    pub attempts: u32,
    pub idempotency_key: Option<String>,
    /// How long it may wait in the queue; 0 for no limit.
    pub queue_timeout_ms: u64,
    /// While it waits in the queue with a limit: when it fails as expired.
    pub queue_deadline_ms: Option<u64>,
    pub assignments: Vec<AssignmentView>,
    /// The agreed output (base64), once completed.
    #[schema(content_encoding = "base64")]
    pub result: Option<String>,
    /// Why it failed, when it did.
    pub failure: Option<String>,
    pub created_ms: u64,
    pub finished_ms: Option<u64>,
    pub history: Vec<HistoryEntry>,
    /// The log index of the state this was read from.
    pub applied_index: u64,
}

impl TaskView {
    pub fn from_task(t: &Task, applied_index: u64) -> Self {
        TaskView {
            id: t.id.to_string(),
            session_id: t.session.to_string(),
            state: t.state.into(),
            priority: t.priority,
            attempts: t.attempts,
            idempotency_key: t.idempotency_key.as_deref().map(str::to_string),
            queue_timeout_ms: t.queue_timeout_ms,
            queue_deadline_ms: t.queue_deadline,
            assignments: t
                .assignments
                .iter()
                .map(|a| AssignmentView {
                    miner_id: a.miner.to_string(),
                    state: a.state.into(),
                    assigned_ms: a.assigned_ms,
                })
                .collect(),
            result: t.result().map(base64),
            failure: t.failure().map(str::to_string),
            created_ms: t.created_ms,
            finished_ms: t.finished_ms(),
            history: t
                .history
                .iter()
                .map(|(s, at)| HistoryEntry {
                    state: (*s).into(),
                    at_ms: *at,
                })
                .collect(),
            applied_index,
        }
    }
}

/// `POST /v1/sessions/{id}/tasks`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskSubmitted {
    pub task_id: String,
    /// False when the idempotency key matched an earlier task (whose id this is).
    pub created: bool,
}

/// `POST /v1/sessions/{id}/tasks:batch`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchSubmitted {
    /// The tasks' ids, in the order of the request.
    pub task_ids: Vec<String>,
    /// How many were created (the others matched an earlier idempotency key).
    pub created: u64,
}

/// A task's new state after cancel, ack, precommit or commit.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskUpdated {
    pub task_id: String,
    pub state: TaskStateName,
}

/// `POST /v1/miners`: the token is shown once; only its hash is kept.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct MinerRegistered {
    #[schema(example = "m-1")]
    pub miner_id: String,
    /// The miner's bearer token for its own calls.
    pub token: String,
}

/// A miner as the pool sees it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct MinerView {
    pub id: String,
    pub name: String,
    pub capacity: u32,
    pub tags: Vec<String>,
    pub state: MinerStateName,
    /// The session reserving it, if any.
    pub session_id: Option<String>,
    /// Tasks on which it holds an unfinished slot.
    pub in_flight: u64,
    pub last_heartbeat_ms: u64,
    pub heartbeat_timeout_ms: u64,
    /// Slots it finished with a valid reveal.
    pub revealed: u64,
    /// Slots it lost to a timeout.
    pub expired: u64,
    /// Its recent rejected reveals.
    pub rejections: u64,
    pub applied_index: u64,
}

impl MinerView {
    pub fn from_miner(m: &Miner, applied_index: u64) -> Self {
        MinerView {
            id: m.id.to_string(),
            name: m.name.clone(),
            capacity: m.capacity,
            tags: m.tags.iter().cloned().collect(),
            state: m.state.into(),
            session_id: m.reserved_by.map(|s| s.to_string()),
            in_flight: m.active.len() as u64,
            last_heartbeat_ms: m.last_heartbeat_ms,
            heartbeat_timeout_ms: m.heartbeat_timeout_ms,
            revealed: m.revealed,
            expired: m.expired,
            rejections: m.rejections.len() as u64,
            applied_index,
        }
    }
}

/// One unfinished slot of the calling miner.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct MinerAssignment {
    pub task_id: String,
    pub session_id: String,
    /// The task's payload (base64); null once dropped.
    #[schema(content_encoding = "base64")]
    pub payload: Option<String>,
    /// The miner's slot.
    pub state: SlotStateName,
    pub task_state: TaskStateName,
    /// When the slot was given (tells a new slot of a task from an old one).
    pub assigned_ms: Option<u64>,
}

impl MinerAssignment {
    /// The entry of a task, without its payload: the caller reads the payload
    /// outside the state lock (see [`crate::machine::PayloadAt`]) and sets it.
    pub fn from_task(t: &Task, slot: SlotState, assigned_ms: Option<u64>) -> Self {
        MinerAssignment {
            task_id: t.id.to_string(),
            session_id: t.session.to_string(),
            payload: None,
            state: slot.into(),
            task_state: t.state.into(),
            assigned_ms,
        }
    }
}

/// `GET /v1/miners/{id}/assignments`: one page, oldest task first.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AssignmentsPage {
    pub assignments: Vec<MinerAssignment>,
    /// The last entry's task id when more follow (pass it as `after_task`), else null.
    pub next_after_task: Option<String>,
    /// Pass as `after` to long-poll for the next change.
    pub applied_index: u64,
}

/// `GET /v1/sessions`: one page of sessions, newest first.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionsPage {
    pub sessions: Vec<SessionView>,
    /// The last entry's id when older sessions follow (pass it as `before`), else null.
    pub next_before: Option<String>,
    /// The log index of the state this was read from.
    pub applied_index: u64,
}

/// `GET /v1/pool/miners`: one page of miners, newest first; never a token.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct MinersPage {
    pub miners: Vec<MinerView>,
    /// The last entry's id when older miners follow (pass it as `before`), else null.
    pub next_before: Option<String>,
    /// The log index of the state this was read from.
    pub applied_index: u64,
}

/// The node pool and its scaling signal.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PoolCounts {
    pub pooled: u64,
    pub reserved: u64,
    pub draining: u64,
    pub gone: u64,
    /// Slots of queued tasks waiting for a miner, all sessions.
    pub open_slots: u64,
    /// Free capacity of the miners reserved by sessions.
    pub free_capacity: u64,
    pub completed_last_minute: u64,
    /// Miners the open sessions want beyond what they hold.
    pub wanted: u64,
    /// Positive: this many more miners would be put to work; negative: this many
    /// pooled miners have nothing to do.
    pub delta: i64,
}

impl From<PoolView> for PoolCounts {
    fn from(p: PoolView) -> Self {
        PoolCounts {
            pooled: p.pooled,
            reserved: p.reserved,
            draining: p.draining,
            gone: p.gone,
            open_slots: p.open_slots,
            free_capacity: p.free_capacity,
            completed_last_minute: p.completed_last_minute,
            wanted: p.wanted,
            delta: p.delta,
        }
    }
}

/// `GET /v1/pool`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PoolStatus {
    pub pool: PoolCounts,
    /// Tasks per state, all sessions.
    pub tasks: Counts,
    pub applied_index: u64,
}

/// One node's own view of the cluster (`GET /v1/cluster?local=true`).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct LocalView {
    pub id: u64,
    /// Its Raft role: leader, follower, candidate, learner, shutdown.
    pub state: String,
    pub term: u64,
    pub leader: Option<u64>,
    pub last_log_index: Option<u64>,
    pub applied_index: u64,
    pub snapshot_index: Option<u64>,
    pub uptime_ms: u64,
}

/// A member as the node asked sees it, with the member's own view when it answered.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct MemberStatus {
    pub id: u64,
    pub api: String,
    pub peer: String,
    pub voter: bool,
    pub reachable: bool,
    pub state: Option<String>,
    pub term: Option<u64>,
    pub applied_index: Option<u64>,
    /// The last log index the leader knows replicated to it (on the leader only).
    pub matched_index: Option<u64>,
}

/// `GET /v1/cluster`: members, leader, term, applied index per node.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ClusterStatus {
    /// The node that answered.
    pub node: u64,
    pub leader: Option<u64>,
    pub term: u64,
    pub members: Vec<MemberStatus>,
    pub applied_index: u64,
}

/// `GET /v1/cluster`: the whole cluster, or with `local=true` the answering node only.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ClusterAnswer {
    Cluster(ClusterStatus),
    Local(LocalView),
}

/// A member of the configuration.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Member {
    pub id: u64,
    pub api: String,
    pub peer: String,
    pub voter: bool,
}

/// The configuration after a membership change.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct MembershipChanged {
    pub ok: bool,
    pub members: Vec<Member>,
}

/// `GET /health`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
    pub id: u64,
}

/// `GET /ready`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    pub ready: bool,
    pub leader: Option<u64>,
    pub applied_index: u64,
    /// Log entries this node has not applied yet.
    pub behind: u64,
    /// This node leads but no quorum answered it recently.
    pub quorum_lost: bool,
}

/// One server-sent event of `GET /v1/sessions/{id}/events`, as a client reads it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionEvent {
    /// The `id:` line of a `transition`: `<log index>-<position among that entry's
    /// events>`, the same on every node; send it back as `Last-Event-ID` (or `?after=`)
    /// to resume. `lagged` and `resync` have none.
    #[schema(pattern = "^[0-9]+-[0-9]+$")]
    pub id: Option<String>,
    /// `transition`, `lagged` or `resync`.
    #[schema(pattern = "^(transition|lagged|resync)$")]
    pub event: String,
    /// JSON, a `StreamEvent`: `TransitionEvent`, `LaggedEvent` or `ResyncEvent` by `event`.
    #[schema(content_media_type = "application/json")]
    pub data: String,
}

/// One WebSocket text message of `GET /v1/sessions/{id}/events` (after the upgrade):
/// the same events as the server-sent ones, as one JSON object each.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionEventMessage {
    /// As the SSE `id:`: `<log index>-<position>` for a `transition` (pass it as
    /// `?after=` to resume), null for `lagged` and `resync`.
    #[schema(pattern = "^[0-9]+-[0-9]+$")]
    pub id: Option<String>,
    /// `transition`, `lagged` or `resync`.
    #[schema(pattern = "^(transition|lagged|resync)$")]
    pub event: String,
    pub data: StreamEvent,
}

/// The `data` of an event of `GET /v1/sessions/{id}/events`: a transition, or a
/// notice that the stream skipped some (`lagged`, `resync`: re-read the tasks).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum StreamEvent {
    Transition(TransitionEvent),
    Lagged(LaggedEvent),
    Resync(ResyncEvent),
}

/// `event: lagged`: the client read too slowly and missed this many events.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LaggedEvent {
    pub missed: u64,
}

/// `event: resync`: the stream cannot give every event since the id asked for;
/// re-read the tasks, the stream goes on live. `reason` `window`: the resume id is
/// older than the node's event window, which holds the events of entries after
/// `index`; `snapshot`: this node installed a snapshot up to `index`, whose
/// transitions were never applied here one by one.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResyncEvent {
    pub index: u64,
    #[schema(pattern = "^(window|snapshot)$")]
    pub reason: String,
}

/// The `data` of an `event: transition` of `GET /v1/sessions/{id}/events`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TransitionEvent {
    pub task_id: String,
    pub session_id: String,
    pub state: TaskStateName,
    /// What happened: submitted, assigned, acked, precommit_phase_opened, precommitted,
    /// precommit_phase_closed, revealed, reveal_rejected, expired, requeued,
    /// completed, failed, cancelled.
    pub what: String,
    pub miner_id: Option<String>,
    pub at_ms: u64,
    /// The log index of the entry that caused it.
    pub index: u64,
}
