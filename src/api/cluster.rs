//! Operator endpoints: cluster status (with every member's view), adding and
//! removing members online, liveness, readiness and Prometheus metrics.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use utoipa::IntoParams;

use super::error::ErrorBody;
use super::replies::{
    ClusterAnswer, ClusterStatus, Health, LocalView, Member, MemberStatus, MembershipChanged,
    Readiness,
};
use super::wire::AddMember;
use super::{ApiError, JsonBody, QueryParams};
use crate::machine::TaskState;
use crate::node::Node;
use crate::raft::network::PeerError;
use crate::raft::types::NodeAddr;
use crate::raft::{self, MembershipError};

/// This node's own view.
fn local_view(node: &Node) -> LocalView {
    let m = node.raft.metrics().borrow().clone();
    LocalView {
        id: node.id,
        state: format!("{:?}", m.state).to_lowercase(),
        term: m.current_term,
        leader: m.current_leader,
        last_log_index: m.last_log_index,
        applied_index: node.state.applied_index(),
        snapshot_index: m.snapshot.map(|s| s.index),
        uptime_ms: node.started.elapsed().as_millis() as u64,
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatusQuery {
    /// `true`: only the answering node's own view.
    local: Option<bool>,
}

/// Members, leader, term, and each member's applied index (asked over its API).
#[utoipa::path(get, path = "/v1/cluster", tag = "cluster", operation_id = "cluster_status",
    params(StatusQuery),
    responses(
        (status = 200, description = "The cluster as this node sees it (with `local=true`: this node's own view)", body = ClusterAnswer),
        (status = 400, description = "A bad query parameter (`invalid`)", body = ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn status(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    QueryParams(q): QueryParams<StatusQuery>,
) -> Json<ClusterAnswer> {
    let me = local_view(&node);
    if q.local == Some(true) {
        return Json(ClusterAnswer::Local(me));
    }
    let m = node.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership().clone();
    let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
    let mut members = Vec::new();
    for (id, addr) in membership.nodes() {
        let view = if *id == node.id {
            Some(me.clone())
        } else {
            let mut req = node
                .http
                .get(node.api_url(&addr.api, "/v1/cluster?local=true"))
                .timeout(Duration::from_millis(500));
            if let Some(auth) = headers.get(header::AUTHORIZATION) {
                req = req.header(header::AUTHORIZATION, auth);
            }
            match req.send().await {
                Ok(r) if r.status().is_success() => r.json::<LocalView>().await.ok(),
                _ => None,
            }
        };
        members.push(MemberStatus {
            id: *id,
            api: addr.api.clone(),
            peer: addr.peer.clone(),
            voter: voters.contains(id),
            reachable: view.is_some(),
            state: view.as_ref().map(|v| v.state.clone()),
            term: view.as_ref().map(|v| v.term),
            applied_index: view.as_ref().map(|v| v.applied_index),
            matched_index: m
                .replication
                .as_ref()
                .and_then(|r| r.get(id).cloned().flatten())
                .map(|l| l.index),
        });
    }
    Json(ClusterAnswer::Cluster(ClusterStatus {
        node: node.id,
        leader: m.current_leader,
        term: m.current_term,
        members,
        applied_index: node.state.applied_index(),
    }))
}

/// Runs a membership change here if this node leads, else relays the call to the leader.
async fn on_leader(
    node: &Node,
    headers: &HeaderMap,
    method: Method,
    path: &str,
    body: Option<Value>,
    change: impl std::future::Future<Output = Result<(), MembershipError>>,
) -> Result<Json<MembershipChanged>, ApiError> {
    match change.await {
        Ok(()) => Ok(Json(MembershipChanged {
            ok: true,
            members: members(node),
        })),
        Err(MembershipError::NotLeader(Some(leader))) if leader != node.id => {
            let addr = node
                .raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .get_node(&leader)
                .map(|n| n.api.clone())
                .ok_or_else(|| ApiError::Unavailable {
                    code: "unavailable",
                    message: "leader unknown".into(),
                    retry_after: 1,
                })?;
            let mut req = node
                .http
                .request(method, node.api_url(&addr, path))
                .timeout(Duration::from_secs(120));
            if let Some(auth) = headers.get(header::AUTHORIZATION) {
                req = req.header(header::AUTHORIZATION, auth);
            }
            if let Some(body) = body {
                req = req.json(&body);
            }
            let resp = req.send().await.map_err(|e| ApiError::Unavailable {
                code: "unavailable",
                message: format!("relaying to the leader: {e}"),
                retry_after: 1,
            })?;
            let status = resp.status();
            let value: Value = resp.json().await.unwrap_or(Value::Null);
            if status.is_success() {
                serde_json::from_value(value)
                    .map(Json)
                    .map_err(|e| ApiError::Unavailable {
                        code: "outcome_unknown",
                        message: format!("the leader's answer was not understood: {e}"),
                        retry_after: 1,
                    })
            } else {
                let message = value["error"]["message"]
                    .as_str()
                    .unwrap_or("the leader refused")
                    .to_string();
                Err(match status.as_u16() {
                    400 => ApiError::BadRequest(message),
                    401 => ApiError::Unauthorized(message),
                    403 => ApiError::Forbidden(message),
                    404 => ApiError::NotFound(message),
                    409 => ApiError::Conflict(message),
                    _ => ApiError::Unavailable {
                        code: "unavailable",
                        message,
                        retry_after: 1,
                    },
                })
            }
        }
        Err(MembershipError::NotLeader(_)) => Err(ApiError::Unavailable {
            code: "unavailable",
            message: "no leader".into(),
            retry_after: 1,
        }),
        Err(MembershipError::Refused(m)) => Err(ApiError::Conflict(m)),
    }
}

fn members(node: &Node) -> Vec<Member> {
    let m = node.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
    membership
        .nodes()
        .map(|(id, a)| Member {
            id: *id,
            api: a.api.clone(),
            peer: a.peer.clone(),
            voter: voters.contains(id),
        })
        .collect()
}

/// Adds a node online (as a learner, then a voter once caught up).
#[utoipa::path(post, path = "/v1/cluster/members", tag = "cluster", operation_id = "add_member",
    request_body = AddMember,
    responses(
        (status = 200, description = "The configuration with the new member", body = MembershipChanged),
        (status = 400, description = "An id of 0, or an address missing (`invalid`)", body = ErrorBody),
        (status = 404, description = "Relayed from the leader (`not_found`)", body = ErrorBody),
        (status = 409, description = "The change is refused now (e.g. another change in progress) (`conflict`)", body = ErrorBody),
        (status = 503, description = "No leader, or the leader could not be reached (`unavailable`), or its answer was not understood (`outcome_unknown`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ),
    security(("admin_key" = [])))]
pub async fn add_member(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<AddMember>,
) -> Result<impl IntoResponse, ApiError> {
    if body.id == 0 || body.api.is_empty() || body.peer.is_empty() {
        return Err(ApiError::bad(
            "id must be positive and api and peer addresses given",
        ));
    }
    let addr = NodeAddr {
        api: body.api.clone(),
        peer: body.peer.clone(),
    };
    let value = serde_json::to_value(&body).expect("serialisable");
    let change = async {
        prove_member(&node, body.id, &addr).await?;
        raft::add_member(&node.raft, body.id, addr.clone()).await
    };
    on_leader(
        &node,
        &headers,
        Method::POST,
        "/v1/cluster/members",
        Some(value),
        change,
    )
    .await
}

/// Before a node becomes a member (and the leader replicates to it): it must prove
/// it holds the cluster secret and belong to no other cluster. A made-up address
/// is refused here and gets nothing but a hello.
/// A node that does not answer yet (it may be starting) is asked again for ten
/// seconds.
async fn prove_member(node: &Node, id: u64, addr: &NodeAddr) -> Result<(), MembershipError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let error = match node
            .peers
            .hello(id, &addr.peer, Duration::from_secs(2))
            .await
        {
            Ok(_) => return Ok(()),
            Err(e @ PeerError::Unreachable(..)) if std::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "the node to add does not answer yet");
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
            Err(e) => e,
        };
        return Err(MembershipError::Refused(format!(
            "node {id} at {} was not added: {error}",
            addr.peer
        )));
    }
}

/// Removes a node online.
#[utoipa::path(delete, path = "/v1/cluster/members/{id}", tag = "cluster", operation_id = "remove_member",
    params(("id" = String, Path, description = "Node id (a positive integer)")),
    responses(
        (status = 200, description = "The configuration without the member", body = MembershipChanged),
        (status = 400, description = "Relayed from the leader (`invalid`)", body = ErrorBody),
        (status = 404, description = "Not a node id (`not_found`)", body = ErrorBody),
        (status = 409, description = "Not a member, the last voter, or another change in progress (`conflict`)", body = ErrorBody),
        (status = 503, description = "No leader, or the leader could not be reached (`unavailable`), or its answer was not understood (`outcome_unknown`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ),
    security(("admin_key" = [])))]
pub async fn remove_member(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::NotFound(format!("unknown member {id}")))?;
    let path = format!("/v1/cluster/members/{id}");
    let change = raft::remove_member(&node.raft, id);
    on_leader(&node, &headers, Method::DELETE, &path, None, change).await
}

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = "/health", tag = "operator", operation_id = "health",
    responses((status = 200, description = "The process serves HTTP", body = Health)))]
pub async fn health(State(node): State<Arc<Node>>) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        id: node.id,
    })
}

/// Readiness: a leader is known, this node's applied state is close to its log, and,
/// if this node leads, a quorum has answered it recently (a leader cut off from the
/// others keeps its role until it hears of a newer term, but can commit nothing).
#[utoipa::path(get, path = "/ready", tag = "operator", operation_id = "ready",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready (same body)", body = Readiness),
    ))]
pub async fn ready(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let m = node.raft.metrics().borrow().clone();
    let applied = node.state.applied_index();
    let behind = m.last_log_index.unwrap_or(0).saturating_sub(applied);
    let quorum_lost = m.state.is_leader()
        && m.millis_since_quorum_ack
            .is_some_and(|ms| ms > node.config.election_max_ms);
    let ready = m.current_leader.is_some() && behind <= 1000 && !quorum_lost;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Readiness {
        ready,
        leader: m.current_leader,
        applied_index: applied,
        behind,
        quorum_lost,
    };
    (status, Json(body))
}

/// Prometheus text: request counters and latencies, Raft, queue depth, batches.
#[utoipa::path(get, path = "/metrics", tag = "operator", operation_id = "metrics",
    responses(
        (status = 200, description = "Prometheus text exposition format", body = String, content_type = "text/plain"),
    ),
    security(("api_key" = [])))]
pub async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let m = node.raft.metrics().borrow().clone();
    let labels = [("node", node.id.to_string())];
    metrics::gauge!("sq_raft_term", &labels).set(m.current_term as f64);
    metrics::gauge!("sq_raft_is_leader", &labels).set(if m.state.is_leader() { 1.0 } else { 0.0 });
    metrics::gauge!("sq_raft_leader_id", &labels).set(m.current_leader.unwrap_or(0) as f64);
    metrics::gauge!("sq_raft_last_log_index", &labels).set(m.last_log_index.unwrap_or(0) as f64);
    metrics::gauge!("sq_raft_applied_index", &labels).set(node.state.applied_index() as f64);
    let (depth, pool, sizes) = node.state.read(|s| (s.depth(), s.pool(), s.sizes()));
    for state in TaskState::ALL {
        let n = match state {
            TaskState::Queued => depth.queued,
            TaskState::Acked => depth.acked,
            TaskState::Precommitted => depth.precommitted,
            TaskState::Committed => depth.committed,
            TaskState::Completed => depth.completed,
            TaskState::Failed => depth.failed,
            TaskState::Cancelled => depth.cancelled,
        };
        metrics::gauge!("sq_tasks", "node" => node.id.to_string(), "state" => state.as_str())
            .set(n as f64);
    }
    metrics::gauge!("sq_miners_reserved", &labels).set(pool.reserved as f64);
    metrics::gauge!("sq_miners_pooled", &labels).set(pool.pooled as f64);
    metrics::gauge!("sq_pool_scaling_delta", &labels).set(pool.delta as f64);
    metrics::gauge!("sq_sessions", &labels).set(sizes.0 as f64);
    let store = node.state.store_memory();
    metrics::gauge!("sq_store_memtable_bytes", &labels).set(store.memtables as f64);
    metrics::gauge!("sq_store_block_cache_bytes", &labels).set(store.block_cache as f64);
    metrics::gauge!("sq_store_block_cache_pinned_bytes", &labels)
        .set(store.block_cache_pinned as f64);
    metrics::gauge!("sq_store_table_readers_bytes", &labels).set(store.table_readers as f64);
    let heap = crate::allocator::committed();
    metrics::gauge!("sq_allocator_committed_bytes", &labels).set(heap.current as f64);
    metrics::gauge!("sq_allocator_committed_peak_bytes", &labels).set(heap.peak as f64);
    let stats = node.proposer.stats();
    use std::sync::atomic::Ordering::Relaxed;
    metrics::gauge!("sq_proposer_batches_total", &labels).set(stats.batches.load(Relaxed) as f64);
    metrics::gauge!("sq_proposer_commands_total", &labels).set(stats.commands.load(Relaxed) as f64);
    metrics::gauge!("sq_proposer_forwarded_batches_total", &labels)
        .set(stats.forwarded_batches.load(Relaxed) as f64);
    metrics::gauge!("sq_proposer_ticks_total", &labels).set(stats.ticks.load(Relaxed) as f64);
    metrics::gauge!("sq_proposer_refused_commands_total", &labels)
        .set(stats.refused.load(Relaxed) as f64);
    metrics::gauge!("sq_proposer_ambiguous_batches_total", &labels)
        .set(stats.ambiguous.load(Relaxed) as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        node.metrics.render(),
    )
}
