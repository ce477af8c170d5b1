//! A node: opens its storage, starts Raft, the proposer, the peer channel and the
//! public API (each over TLS when configured, see [`crate::tls`]), then applies the
//! bootstrap rules ([`crate::raft::bootstrap`]), and shuts them down in order on
//! SIGTERM/SIGINT.
//!
//! [`Node`] is what the API handlers hold: the Raft handle and proposer for writes,
//! the applied-state reader for reads, the peer client for the leader's read index.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::config::{parse_members, NodeConfig};
use crate::raft::bootstrap::{self, Bootstrap};
use crate::raft::identity::{derive_cluster_id, ClusterIdentity};
use crate::raft::network::{Network, PeerClient};
use crate::raft::peer_auth::PeerAuth;
use crate::raft::proposer::{Proposer, ProposerConfig};
use crate::raft::types::{NodeId, Raft};
use crate::store::AppliedState;
use crate::{api, listener, peer, shutdown, store};

/// A running node, as its handlers see it.
pub struct Node {
    pub id: NodeId,
    pub config: NodeConfig,
    pub raft: Raft,
    pub state: Arc<AppliedState>,
    pub proposer: Proposer,
    pub peers: PeerClient,
    /// Linearizable reads, sharing read-index rounds.
    pub reads: Arc<crate::raft::read::Reads>,
    /// Relays operator calls to the leader's API.
    pub http: reqwest::Client,
    pub metrics: PrometheusHandle,
    pub started: Instant,
    /// Triggered when the node stops: long polls and event streams end.
    pub stop: shutdown::Shutdown,
}

/// Starts a node and runs it until `shutdown` resolves.
pub async fn run(
    config: NodeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let api = TcpListener::bind(config.api_addr)
        .await
        .with_context(|| format!("binding API {}", config.api_addr))?;
    let peer = TcpListener::bind(config.peer_addr)
        .await
        .with_context(|| format!("binding peer {}", config.peer_addr))?;
    serve(config, api, peer, shutdown).await
}

/// Runs a node on already-bound listeners until `shutdown` resolves or a server fails.
pub async fn serve(
    config: NodeConfig,
    api_listener: TcpListener,
    peer_listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut running = start(config, api_listener, peer_listener).await?;
    // On a worker thread, not on this one (`block_on`'s): the watch wakes on every
    // change of openraft's metrics, several per entry, and each wake of this
    // thread is a futex wake and a context switch.
    let mut failed = tokio::spawn(raft_failed(running.node.raft.clone()));
    let result = tokio::select! {
        _ = shutdown => Ok(()),
        Some(done) = running.servers.join_next() => match done {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow::anyhow!("server task: {e}")),
        },
        e = &mut failed => Err(e.unwrap_or_else(|e| anyhow::anyhow!("raft watch task: {e}"))),
    };
    failed.abort();
    running.stop().await;
    result
}

/// Resolves when Raft stops by itself: a storage error (a full disk, a failing
/// device) ends openraft's core for good. The node then exits with the reason
/// rather than keep answering (and reporting itself ready) without Raft; once the
/// cause is fixed, a restart resumes from the synced log.
async fn raft_failed(raft: Raft) -> anyhow::Error {
    let mut metrics = raft.metrics();
    let fatal = match metrics.wait_for(|m| m.running_state.is_err()).await {
        Ok(m) => m.running_state.clone().err().map(|e| e.to_string()),
        Err(_) => None,
    };
    let reason = fatal.unwrap_or_else(|| "raft stopped".into());
    tracing::error!(error = %reason, "raft stopped; the node exits");
    anyhow::anyhow!("raft stopped: {reason}; the node cannot go on (free disk space or fix the storage, then restart it)")
}

/// A started node: its handle and the tasks serving it.
pub struct Running {
    pub node: Arc<Node>,
    servers: JoinSet<anyhow::Result<()>>,
    tasks: JoinSet<()>,
}

impl Running {
    /// Stops serving (in-flight requests get a moment to finish), then stops Raft.
    pub async fn stop(mut self) {
        tracing::info!("shutting down");
        self.node.stop.trigger();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while self.servers.join_next().await.is_some() {}
        })
        .await;
        self.servers.abort_all();
        if let Err(e) = self.node.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        tracing::info!("stopped");
    }
}

/// Opens storage, starts Raft, the proposer, the peer channel and the API.
pub async fn start(
    config: NodeConfig,
    api_listener: TcpListener,
    peer_listener: TcpListener,
) -> anyhow::Result<Running> {
    config.validate()?;
    let tls = crate::tls::NodeTls::load(&config)?;
    let id = config.id;
    // Descriptors first: RocksDB's share is fixed before it opens, and the listeners'
    // caps fit in what is left.
    let fds = crate::descriptors::budget(config.max_connections, config.max_peer_connections);
    let tuning = store::Tuning {
        max_open_files: fds.rocks_files.min(i32::MAX as u64) as i32,
    };
    let (mut log_store, state_store) =
        store::open_tuned(&config.data_dir, id, &config.cluster_name, tuning)
            .await
            .context("opening storage")?;
    let state = state_store.reader();
    let start = read_start(&mut log_store).await?;
    let pristine = start.vote.is_none() && start.last_log_index.is_none();
    let restored = crate::raft::read::RestoredLeadership::at_start(
        id,
        start.vote.as_ref(),
        start.last_log_index.unwrap_or(0),
    );
    let identity = Arc::new(
        ClusterIdentity::open(id, config.data_dir.clone()).context("reading the cluster id")?,
    );
    let mut peers = PeerClient::new(config.cluster_secret.clone()).with_identity(identity.clone());
    if let Some(client) = tls.peer_client.clone() {
        peers = peers.with_tls(client);
    }
    state.event_window().set_capacity(config.event_window);
    let raft_config = Arc::new(config.raft_config()?);
    let encoded_entries = log_store.encoded_entries();
    let raft = Raft::new(
        id,
        raft_config,
        Network::new(
            peers.clone(),
            config.replication_timeout(),
            config.max_replication_bytes,
        )
        .with_encoded_entries(encoded_entries.clone()),
        log_store,
        state_store,
    )
    .await
    .context("starting raft")?;

    let mut tasks = JoinSet::new();
    // Histogram samples are held until folded into buckets; without this a node
    // nobody scrapes keeps every one.
    tasks.spawn(crate::recorder::keep_up(
        crate::recorder::prometheus(),
        crate::recorder::UPKEEP_PERIOD,
    ));
    tasks.spawn(crate::raft::identity::follow_membership(
        identity.clone(),
        raft.clone(),
    ));
    let proposer = Proposer::start(
        id,
        raft.clone(),
        state.clone(),
        peers.clone(),
        ProposerConfig {
            max_commands: config.max_batch_commands,
            max_bytes: config.max_batch_bytes,
            max_pending: config.max_pending_proposals,
            max_pending_bytes: config.max_pending_bytes,
            limits: crate::machine::Limits {
                max_state_bytes: config.max_state_bytes,
            },
            max_inflight: config.max_inflight,
            tick: std::time::Duration::from_millis(config.tick_ms),
            quorum_lost_after: std::time::Duration::from_millis(config.election_max_ms),
            lease: config.refusal_lease(),
        },
        &mut tasks,
    );
    let stop = shutdown::Shutdown::new();
    let node = Arc::new(Node {
        id,
        config: config.clone(),
        raft: raft.clone(),
        reads: crate::raft::read::Reads::new(
            id,
            restored,
            raft.clone(),
            peers.clone(),
            state.clone(),
        ),
        state,
        proposer: proposer.clone(),
        peers,
        http: relay_client(tls.api_client.clone())?,
        metrics: crate::recorder::prometheus(),
        started: Instant::now(),
        stop: stop.clone(),
    });
    let peer_app = peer::router(Arc::new(peer::PeerContext {
        id,
        raft: raft.clone(),
        proposer,
        auth: PeerAuth::new(id, &config.cluster_secret),
        encoded: encoded_entries,
        identity: identity.clone(),
        write_timeout: config.write_timeout(),
        restored,
        refused_logged: Default::default(),
    }));
    let api_app = api::router(node.clone());
    tracing::info!(
        id,
        api = %api_listener.local_addr()?,
        peer = %peer_listener.local_addr()?,
        data = %config.data_dir.display(),
        api_tls = config.api_tls(),
        peer_tls = config.peer_tls(),
        "node started"
    );
    let mut servers = JoinSet::new();
    servers.spawn(listener::serve(
        "peer",
        peer_listener,
        peer_app,
        crate::listener::ListenerLimits {
            max_connections: fds.peer_connections,
            ..config.listener_limits(true)
        },
        tls.peer.clone(),
        stop.clone(),
    ));
    servers.spawn(listener::serve(
        "api",
        api_listener,
        api_app,
        crate::listener::ListenerLimits {
            max_connections: fds.api_connections,
            ..config.listener_limits(false)
        },
        tls.api.clone(),
        stop.clone(),
    ));
    // After the peer listener serves: bootstrapping asks the other initial members.
    let members = match &config.initial_cluster {
        Some(spec) => parse_members(spec)?,
        None => Default::default(),
    };
    let boot = Bootstrap {
        raft: raft.clone(),
        identity,
        peers: node.peers.clone(),
        state: config.initial_cluster_state,
        cluster_id: derive_cluster_id(
            &config.cluster_name,
            &config.initial_cluster_token,
            &members,
        ),
        members,
        pristine,
    };
    tasks.spawn(async move {
        if let Err(e) = bootstrap::start(boot).await {
            tracing::error!(error = %e, "bootstrap failed");
        }
    });
    Ok(Running {
        node,
        servers,
        tasks,
    })
}

/// What the log store held when the node started: its vote and last entry. No vote
/// and no log is a node that never took part (pristine); a vote of its own is a
/// leadership openraft restores ([`crate::raft::read::RestoredLeadership`]).
struct StartState {
    vote: Option<crate::raft::types::Vote>,
    last_log_index: Option<u64>,
}

async fn read_start(log: &mut store::LogStore) -> anyhow::Result<StartState> {
    use openraft::storage::RaftLogStorage;
    let vote = log.read_vote().await.context("reading the vote")?;
    let state = log.get_log_state().await.context("reading the log state")?;
    Ok(StartState {
        vote,
        last_log_index: state.last_log_id.map(|l| l.index),
    })
}

/// The client a node calls other nodes' APIs with (relays to the leader, cluster
/// status): https trusting `tls` when the API speaks TLS.
fn relay_client(tls: Option<rustls::ClientConfig>) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().tcp_nodelay(true);
    if let Some(tls) = tls {
        builder = builder.use_preconfigured_tls(tls);
    }
    builder.build().context("HTTP client")
}

impl Node {
    /// The URL of `path` on the API at `addr` (another node's advertised address):
    /// https when this node's API speaks TLS, as every node's must then.
    pub fn api_url(&self, addr: &str, path: &str) -> String {
        let scheme = if self.config.api_tls() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{addr}{path}")
    }
}
