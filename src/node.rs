//! A node: opens its storage, starts Raft, the proposer, the peer channel and the
//! public API, and shuts them down in order on SIGTERM/SIGINT.
//!
//! [`Node`] is what the API handlers hold: the Raft handle and proposer for writes,
//! the applied-state reader for reads, the peer client for the leader's read index.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::config::{parse_members, NodeConfig};
use crate::raft::network::{Network, PeerClient};
use crate::raft::proposer::{Proposer, ProposerConfig};
use crate::raft::types::{NodeId, Raft};
use crate::store::AppliedState;
use crate::{api, peer, raft, shutdown, store};

/// A running node, as its handlers see it.
pub struct Node {
    pub id: NodeId,
    pub config: NodeConfig,
    pub raft: Raft,
    pub state: Arc<AppliedState>,
    pub proposer: Proposer,
    pub peers: PeerClient,
    /// Relays operator calls to the leader's API.
    pub http: reqwest::Client,
    pub metrics: PrometheusHandle,
    pub started: Instant,
    /// Triggered when the node stops: long polls and event streams end.
    pub stop: shutdown::Shutdown,
}

/// The process-wide Prometheus recorder (installed once, shared by in-process nodes).
fn prometheus() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
                ])
                .expect("buckets")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests); ours still renders.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Addresses a started node listens on (useful when ports were chosen by the OS).
#[derive(Clone, Debug)]
pub struct Bound {
    pub api: std::net::SocketAddr,
    pub peer: std::net::SocketAddr,
}

/// Starts a node and runs it until `shutdown` resolves.
pub async fn run(config: NodeConfig, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let api = TcpListener::bind(config.api_addr).await.with_context(|| format!("binding API {}", config.api_addr))?;
    let peer = TcpListener::bind(config.peer_addr).await.with_context(|| format!("binding peer {}", config.peer_addr))?;
    serve(config, api, peer, shutdown).await
}

/// Runs a node on already-bound listeners.
pub async fn serve(
    config: NodeConfig,
    api_listener: TcpListener,
    peer_listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate()?;
    let id = config.id;
    let (log_store, state_store) =
        store::open(&config.data_dir, id, &config.cluster_name).await.context("opening storage")?;
    let state = state_store.reader();
    let peers = PeerClient::new(config.cluster_secret.clone());
    let raft_config = Arc::new(config.raft_config()?);
    let raft = Raft::new(id, raft_config, Network::new(peers.clone()), log_store, state_store)
        .await
        .context("starting raft")?;

    if let Some(spec) = &config.initial_cluster {
        let members = parse_members(spec)?;
        if members.contains_key(&id) && raft::bootstrap(&raft, members).await? {
            tracing::info!("initialised a new cluster");
        }
    }

    let mut tasks = JoinSet::new();
    let proposer = Proposer::start(
        id,
        raft.clone(),
        state.clone(),
        peers.clone(),
        ProposerConfig {
            max_commands: config.max_batch_commands,
            max_bytes: config.max_batch_bytes,
            max_inflight: config.max_inflight,
            tick: std::time::Duration::from_millis(config.tick_ms),
        },
        &mut tasks,
    );
    let stop = shutdown::Shutdown::new();
    let node = Arc::new(Node {
        id,
        config: config.clone(),
        raft: raft.clone(),
        state,
        proposer: proposer.clone(),
        peers,
        http: reqwest::Client::builder().tcp_nodelay(true).build().context("HTTP client")?,
        metrics: prometheus(),
        started: Instant::now(),
        stop: stop.clone(),
    });

    let peer_ctx = Arc::new(peer::PeerContext {
        id,
        raft: raft.clone(),
        proposer,
        secret: config.cluster_secret.clone(),
        write_timeout: config.write_timeout(),
    });
    let peer_app = peer::router(peer_ctx);
    let api_app = api::router(node.clone());
    tracing::info!(
        id,
        api = %api_listener.local_addr()?,
        peer = %peer_listener.local_addr()?,
        data = %config.data_dir.display(),
        "node started"
    );
    let mut servers = JoinSet::new();
    {
        let stop = stop.clone();
        servers.spawn(async move {
            axum::serve(peer_listener, peer_app).with_graceful_shutdown(stop.wait()).await.context("peer server")
        });
    }
    {
        let stop = stop.clone();
        servers.spawn(async move {
            axum::serve(api_listener, api_app).with_graceful_shutdown(stop.wait()).await.context("API server")
        });
    }
    let result = tokio::select! {
        _ = shutdown => Ok(()),
        Some(done) = servers.join_next() => match done {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow::anyhow!("server task: {e}")),
        },
    };
    tracing::info!("shutting down");
    stop.trigger();
    // Long polls and event streams end with the stop signal; give in-flight requests a moment.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while servers.join_next().await.is_some() {}
    })
    .await;
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown");
    }
    tasks.abort_all();
    drop(node);
    tracing::info!("stopped");
    result
}
