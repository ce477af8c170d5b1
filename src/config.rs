//! A node's configuration: command-line flags, each also read from an environment
//! variable (`SQ_…`) and from an optional TOML file (`--config`), in that order of
//! precedence (flag, then environment, then file, then the default).
//!
//! Every limit the node enforces lives here with its default, so the README's table
//! of limits and this file say the same thing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};

use crate::raft::types::{NodeAddr, NodeId};

/// How the node writes its log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

/// The example cluster secret `cluster/docker-compose.yml` ships with: public, so a node
/// refuses it unless told this is a demo (`--demo` / `SQ_DEMO=1`).
pub const EXAMPLE_CLUSTER_SECRET: &str = "dev-only-cluster-secret-change-me";

/// Room in a Raft entry for a single write's other fields beside its largest blob
/// (key, nonce, ids, framing).
const MESSAGE_SLACK: usize = 64 << 10;

/// Flags of `session-queue node`. Its `Debug` form redacts the secret and the keys.
#[derive(Args, Clone)]
pub struct NodeConfig {
    /// A TOML file with any of these settings (keys as the long flag names, with `_` or `-`).
    #[arg(long, env = "SQ_CONFIG")]
    pub config: Option<PathBuf>,

    /// This node's id in the cluster (a positive integer, unique and never reused).
    #[arg(long, env = "SQ_NODE_ID")]
    pub id: NodeId,

    /// Where the public HTTP API listens.
    #[arg(long, env = "SQ_API_ADDR", default_value = "127.0.0.1:7001")]
    pub api_addr: SocketAddr,

    /// Where the peer channel (Raft, forwarded writes, read index) listens.
    #[arg(long, env = "SQ_PEER_ADDR", default_value = "127.0.0.1:8001")]
    pub peer_addr: SocketAddr,

    /// The API address other nodes and clients should use (default: --api-addr).
    #[arg(long, env = "SQ_ADVERTISE_API")]
    pub advertise_api: Option<String>,

    /// The peer address other nodes should use (default: --peer-addr).
    #[arg(long, env = "SQ_ADVERTISE_PEER")]
    pub advertise_peer: Option<String>,

    /// Where this node keeps its RocksDB and snapshots.
    #[arg(long, env = "SQ_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// The members of a brand-new cluster, `ID=API_ADDR/PEER_ADDR,...`. A node with
    /// empty storage that is listed here initialises the cluster with these members
    /// when --initial-cluster-state is `new`; every listed node is given the same
    /// value. Ignored once the node has state.
    /// Leave unset on a node that will be added with `cluster add`.
    #[arg(long, env = "SQ_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,

    /// How a node with an empty data directory starts: `new` creates the cluster of
    /// --initial-cluster (give it to every initial member, on the first start only);
    /// `existing` joins only when added through membership, as a new learner, and
    /// never votes before. A node with data ignores it. A node whose data was lost
    /// and whose old peers remember it does not bootstrap even under `new`.
    #[arg(
        long,
        env = "SQ_INITIAL_CLUSTER_STATE",
        value_enum,
        default_value = "existing"
    )]
    pub initial_cluster_state: crate::raft::bootstrap::ClusterState,

    /// Goes into the cluster id a bootstrap makes (with the cluster name and the
    /// members), so two clusters with the same members get different ids; give
    /// every initial member the same value (e.g. a random one per new cluster).
    #[arg(long, env = "SQ_INITIAL_CLUSTER_TOKEN", default_value = "")]
    pub initial_cluster_token: String,

    /// The cluster's name, recorded in the data directory so a node never starts on
    /// another cluster's data.
    #[arg(long, env = "SQ_CLUSTER_NAME", default_value = "session-queue")]
    pub cluster_name: String,

    /// The secret every node-to-node request must carry (at least 16 bytes). Required,
    /// unless --cluster-secret-file gives it.
    #[arg(
        long,
        env = "SQ_CLUSTER_SECRET",
        hide_env_values = true,
        default_value = "",
        hide_default_value = true
    )]
    pub cluster_secret: String,

    /// A file holding the cluster secret (e.g. a Docker secret,
    /// `/run/secrets/cluster_secret`); surrounding whitespace is ignored. When given,
    /// it wins over --cluster-secret.
    #[arg(long, env = "SQ_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,

    /// Accept the example cluster secret of `cluster/docker-compose.yml` (a demo only: that
    /// secret is public).
    #[arg(long, env = "SQ_DEMO", value_parser = clap::builder::FalseyValueParser::new())]
    pub demo: bool,

    /// When set, user and router calls, operator reads (and miner registration, unless
    /// --miner-key is set) must carry `Authorization: Bearer <key>`.
    #[arg(long, env = "SQ_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// The operator key: membership changes must carry `Authorization: Bearer <key>`.
    /// Unset, they are refused over HTTP (403). The API key does not grant them.
    #[arg(long, env = "SQ_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,

    /// When set, miner registration (`POST /v1/miners`) takes this key (or the API
    /// key), so miners need not hold the API key.
    #[arg(long, env = "SQ_MINER_KEY", hide_env_values = true)]
    pub miner_key: Option<String>,

    /// Log format.
    #[arg(long, env = "SQ_LOG_FORMAT", value_enum, default_value = "plain")]
    pub log_format: LogFormat,

    /// Raft heartbeat interval, ms. openraft sends a heartbeat every 1.5 intervals
    /// and gives an empty AppendEntries (a heartbeat) this long to be answered;
    /// replication requests carrying entries get --replication-timeout-ms instead.
    #[arg(long, env = "SQ_HEARTBEAT_MS", default_value_t = 100)]
    pub heartbeat_ms: u64,

    /// Election timeout range, ms. Each node draws its timeout t in [min, max] once.
    /// A follower that hears no leader for max + t starts an election (openraft 0.9
    /// adds the leader lease, which is the max, to the drawn timeout), and a node that
    /// heard a leader within max votes for no one else. So a dead leader is replaced
    /// after roughly max + min to 2 × max.
    #[arg(long, env = "SQ_ELECTION_MIN_MS", default_value_t = 250)]
    pub election_min_ms: u64,
    #[arg(long, env = "SQ_ELECTION_MAX_MS", default_value_t = 500)]
    pub election_max_ms: u64,

    /// How long one replication request carrying entries (at most 16 entries and
    /// --max-replication-bytes) may take, the follower's fsync included, ms.
    #[arg(long, env = "SQ_REPLICATION_TIMEOUT_MS", default_value_t = 2_000)]
    pub replication_timeout_ms: u64,

    /// Build a snapshot (and purge the log before it) every this many log entries.
    #[arg(long, env = "SQ_SNAPSHOT_ENTRIES", default_value_t = 20_000)]
    pub snapshot_entries: u64,

    /// How long a snapshot chunk may take to install on a follower, ms.
    #[arg(long, env = "SQ_INSTALL_SNAPSHOT_TIMEOUT_MS", default_value_t = 30_000)]
    pub install_snapshot_timeout_ms: u64,

    /// Group commit: most commands packed into one Raft entry.
    #[arg(long, env = "SQ_MAX_BATCH_COMMANDS", default_value_t = 4096)]
    pub max_batch_commands: usize,

    /// Group commit: most bytes of commands packed into one Raft entry.
    #[arg(long, env = "SQ_MAX_BATCH_BYTES", default_value_t = 2 << 20)]
    pub max_batch_bytes: usize,

    /// Group commit: batches in flight at once on the leader. One is best with
    /// openraft 0.9, which appends (and fsyncs) entries one at a time anyway: the
    /// next batch fills while the current one commits (see docs/PERFORMANCE.md).
    #[arg(long, env = "SQ_MAX_INFLIGHT", default_value_t = 1)]
    pub max_inflight: usize,

    /// How long a write waits for a leader (elections, forwarding) before 503, ms.
    #[arg(long, env = "SQ_WRITE_TIMEOUT_MS", default_value_t = 10_000)]
    pub write_timeout_ms: u64,

    /// How often the leader checks for due timeouts and proposes a tick, ms.
    #[arg(long, env = "SQ_TICK_MS", default_value_t = 100)]
    pub tick_ms: u64,

    /// Largest task payload or revealed output, bytes (HTTP 413 above).
    #[arg(long, env = "SQ_MAX_PAYLOAD_BYTES", default_value_t = 1 << 20)]
    pub max_payload_bytes: usize,

    /// Most tasks in one batch submit (HTTP 413 above).
    #[arg(long, env = "SQ_MAX_BATCH_TASKS", default_value_t = 10_000)]
    pub max_batch_tasks: usize,

    /// Largest HTTP request body, bytes (HTTP 413 above).
    #[arg(long, env = "SQ_MAX_BODY_BYTES", default_value_t = 32 << 20)]
    pub max_body_bytes: usize,

    /// Most steps in one miner steps call (`POST /v1/miners/{id}/steps`; HTTP 413
    /// above). At most `--max-batch-commands`: one call's steps share one entry.
    #[arg(long, env = "SQ_MAX_STEPS", default_value_t = 1024)]
    pub max_steps: usize,

    /// Largest body of a miner steps call, bytes (HTTP 413 above). Its steps must
    /// also fit in one Raft entry (`--max-batch-bytes`).
    #[arg(long, env = "SQ_MAX_STEPS_BODY_BYTES", default_value_t = 4 << 20)]
    pub max_steps_body_bytes: usize,

    /// How long finished tasks are kept, unless a session says otherwise, ms.
    #[arg(long, env = "SQ_RETENTION_MS", default_value_t = 24 * 3600 * 1000)]
    pub retention_ms: u64,

    /// A miner that sends nothing for this long is gone, unless it registers with its
    /// own timeout, ms.
    #[arg(long, env = "SQ_MINER_HEARTBEAT_TIMEOUT_MS", default_value_t = 15_000)]
    pub miner_heartbeat_timeout_ms: u64,

    /// Threads running the node's tasks (default: one per CPU).
    #[arg(long, env = "SQ_WORKER_THREADS")]
    pub worker_threads: Option<usize>,

    /// Most unfinished tasks a session may hold, unless it says otherwise (HTTP 429
    /// `queue_full` above).
    #[arg(long, env = "SQ_MAX_QUEUED_TASKS", default_value_t = 1_000_000)]
    pub max_queued_tasks: u64,

    /// Keep the payload of a finished task until it is purged, unless a session says
    /// otherwise; by default a task drops its payload when it finishes.
    #[arg(long, env = "SQ_KEEP_FINISHED_PAYLOADS", default_value_t = false,
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub keep_finished_payloads: bool,

    /// Longest long poll (`wait`, `wait_ms`, `timeout`) a client may ask for, ms.
    #[arg(long, env = "SQ_MAX_WAIT_MS", default_value_t = 60_000)]
    pub max_wait_ms: u64,

    /// Most connections the API listener keeps open at once; past it a new
    /// connection is closed at once and the open ones are still served.
    #[arg(long, env = "SQ_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// Most connections the peer listener keeps open at once.
    #[arg(long, env = "SQ_MAX_PEER_CONNECTIONS", default_value_t = 512)]
    pub max_peer_connections: usize,

    /// Longest a request's headers (or a TLS handshake) may take to arrive, ms.
    #[arg(long, env = "SQ_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,

    /// A connection with no request in flight for this long is closed, ms.
    #[arg(long, env = "SQ_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub idle_timeout_ms: u64,

    /// Longest a request's body may take to arrive after its headers, ms; past it the
    /// request is answered 408 and nothing is written.
    #[arg(long, env = "SQ_BODY_READ_TIMEOUT_MS", default_value_t = 30_000)]
    pub body_read_timeout_ms: u64,

    /// The API's TLS certificate (PEM, the chain with this node's first). With
    /// --tls-key the API speaks https only; every node of a cluster must do the same.
    #[arg(long, env = "SQ_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "SQ_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// The CA a node trusts when it calls another node's https API itself (relaying
    /// a membership change to the leader, gathering cluster status); default
    /// --peer-ca.
    #[arg(long, env = "SQ_TLS_CA")]
    pub tls_ca: Option<PathBuf>,

    /// This node's certificate for the peer channel (PEM): with --peer-tls-key and
    /// --peer-ca the peer channel speaks mutual TLS, as server and as client.
    #[arg(long, env = "SQ_PEER_TLS_CERT")]
    pub peer_tls_cert: Option<PathBuf>,

    /// The private key of --peer-tls-cert (PEM).
    #[arg(long, env = "SQ_PEER_TLS_KEY")]
    pub peer_tls_key: Option<PathBuf>,

    /// The CA of the peer channel (PEM): a peer, client or server, must hold a
    /// certificate it signed.
    #[arg(long, env = "SQ_PEER_CA")]
    pub peer_ca: Option<PathBuf>,
    /// Most recent task transitions kept in memory (about 64 bytes each) for event
    /// streams: a client resumes from any of them (`Last-Event-ID`, `?after=`) on any
    /// node, an older id gets a `resync` event, and a reader further behind than this
    /// gets `lagged`. At least 16.
    #[arg(long, env = "SQ_EVENT_WINDOW", default_value_t = crate::store::DEFAULT_EVENT_WINDOW)]
    pub event_window: usize,

    /// Most writes waiting in this node's proposer at once (queued or on their way
    /// to the log); past it a write is refused at once with HTTP 429 `overloaded`.
    #[arg(long, env = "SQ_MAX_PENDING_PROPOSALS", default_value_t = 16_384)]
    pub max_pending_proposals: usize,

    /// Most encoded bytes of writes waiting in this node's proposer at once; past it
    /// a write is refused at once with HTTP 429 `overloaded`.
    #[arg(long, env = "SQ_MAX_PENDING_BYTES", default_value_t = 256 << 20)]
    pub max_pending_bytes: usize,

    /// The cluster's state (tasks with their payloads and results, sessions, miners,
    /// idempotency keys) may take about this many bytes of memory on each node; past
    /// it new tasks and sessions are refused with HTTP 429 `state_full`. The leader's
    /// value is carried in the log, so every node applies the same bound.
    #[arg(long, env = "SQ_MAX_STATE_BYTES", default_value_t = 8 << 30)]
    pub max_state_bytes: u64,

    /// Most bytes of entries one replication request carries (at least one entry,
    /// each at most --max-batch-bytes), so it fits in --replication-timeout-ms.
    #[arg(long, env = "SQ_MAX_REPLICATION_BYTES", default_value_t = 32 << 20)]
    pub max_replication_bytes: usize,

    /// Most event streams (`GET /v1/sessions/{id}/events`) this node serves at once;
    /// past it a new one is answered 503 `too_many_waiters`.
    #[arg(long, env = "SQ_MAX_EVENT_STREAMS", default_value_t = 1024)]
    pub max_event_streams: usize,

    /// Most long polls (`?wait=` task reads, `?wait_ms=` assignment lists) this node
    /// holds at once; past it a new one is answered 503 `too_many_waiters`.
    #[arg(long, env = "SQ_MAX_LONG_POLLS", default_value_t = 4096)]
    pub max_long_polls: usize,
}

impl std::fmt::Debug for NodeConfig {
    /// Every setting but the secret and the keys, which show as `<redacted>`: the
    /// config may be logged, they must not be.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |key: &Option<String>| key.as_ref().map(|_| "<redacted>");
        f.debug_struct("NodeConfig")
            .field("config", &self.config)
            .field("id", &self.id)
            .field("api_addr", &self.api_addr)
            .field("peer_addr", &self.peer_addr)
            .field("advertise_api", &self.advertise_api)
            .field("advertise_peer", &self.advertise_peer)
            .field("data_dir", &self.data_dir)
            .field("initial_cluster", &self.initial_cluster)
            .field("initial_cluster_state", &self.initial_cluster_state)
            .field("initial_cluster_token", &self.initial_cluster_token)
            .field("cluster_name", &self.cluster_name)
            .field("cluster_secret", &"<redacted>")
            .field("cluster_secret_file", &self.cluster_secret_file)
            .field("demo", &self.demo)
            .field("api_key", &hidden(&self.api_key))
            .field("admin_key", &hidden(&self.admin_key))
            .field("miner_key", &hidden(&self.miner_key))
            .field("log_format", &self.log_format)
            .field("heartbeat_ms", &self.heartbeat_ms)
            .field("election_min_ms", &self.election_min_ms)
            .field("election_max_ms", &self.election_max_ms)
            .field("snapshot_entries", &self.snapshot_entries)
            .field("max_batch_commands", &self.max_batch_commands)
            .field("max_batch_bytes", &self.max_batch_bytes)
            .field("max_inflight", &self.max_inflight)
            .field("write_timeout_ms", &self.write_timeout_ms)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_steps", &self.max_steps)
            .field("max_steps_body_bytes", &self.max_steps_body_bytes)
            .field("max_connections", &self.max_connections)
            .field("max_peer_connections", &self.max_peer_connections)
            .field("header_read_timeout_ms", &self.header_read_timeout_ms)
            .field("idle_timeout_ms", &self.idle_timeout_ms)
            .field("body_read_timeout_ms", &self.body_read_timeout_ms)
            // Paths only: the keys' contents are read by crate::tls, never logged.
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("tls_ca", &self.tls_ca)
            .field("peer_tls_cert", &self.peer_tls_cert)
            .field("peer_tls_key", &self.peer_tls_key)
            .field("peer_ca", &self.peer_ca)
            .field("event_window", &self.event_window)
            .field("max_pending_proposals", &self.max_pending_proposals)
            .field("max_pending_bytes", &self.max_pending_bytes)
            .field("max_state_bytes", &self.max_state_bytes)
            .field("max_replication_bytes", &self.max_replication_bytes)
            .field("max_event_streams", &self.max_event_streams)
            .field("max_long_polls", &self.max_long_polls)
            .finish_non_exhaustive()
    }
}

impl NodeConfig {
    /// Reads the cluster secret from --cluster-secret-file, when given.
    pub fn read_secret_file(&mut self) -> anyhow::Result<()> {
        if let Some(path) = &self.cluster_secret_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading --cluster-secret-file {}", path.display()))?;
            self.cluster_secret = text.trim().to_string();
        }
        Ok(())
    }

    /// Checks what clap cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.id == 0 {
            bail!("--id must be a positive integer");
        }
        if self.cluster_secret.len() < 16 {
            bail!("--cluster-secret (or --cluster-secret-file) is required, at least 16 bytes");
        }
        if self.cluster_secret == EXAMPLE_CLUSTER_SECRET && !self.demo {
            bail!(
                "--cluster-secret is the public example value of cluster/docker-compose.yml: \
                 set SQ_CLUSTER_SECRET to a secret of your own (e.g. \
                 `head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \\n'`), or SQ_DEMO=1 \
                 for a throwaway demo"
            );
        }
        let keys = [
            ("--api-key", &self.api_key),
            ("--admin-key", &self.admin_key),
            ("--miner-key", &self.miner_key),
        ];
        for (flag, key) in keys {
            if key.as_deref().is_some_and(str::is_empty) {
                bail!("{flag} must not be empty when given");
            }
        }
        for (i, (a, x)) in keys.iter().enumerate() {
            for (b, y) in &keys[i + 1..] {
                if x.is_some() && x == y {
                    bail!("{a} and {b} must differ: each grants a different role");
                }
            }
        }
        if self.heartbeat_ms == 0
            || self.election_min_ms <= self.heartbeat_ms * 2
            || self.election_max_ms <= self.election_min_ms
        {
            bail!("need 0 < heartbeat × 2 < election-min < election-max");
        }
        if self.replication_timeout_ms < self.heartbeat_ms {
            bail!("--replication-timeout-ms must be at least --heartbeat-ms");
        }
        if self.max_batch_commands == 0 || self.max_inflight == 0 || self.max_batch_bytes < 1024 {
            bail!("group-commit limits must be positive (max-batch-bytes at least 1024)");
        }
        if self.max_payload_bytes > crate::machine::limits::MAX_BLOB_BYTES {
            bail!(
                "--max-payload-bytes is above the hard limit of {}",
                crate::machine::limits::MAX_BLOB_BYTES
            );
        }
        if self.max_queued_tasks == 0
            || self.max_queued_tasks > crate::machine::limits::MAX_QUEUED_TASKS
        {
            bail!(
                "--max-queued-tasks must be 1..={}",
                crate::machine::limits::MAX_QUEUED_TASKS
            );
        }
        if self.max_connections == 0 || self.max_peer_connections == 0 {
            bail!("--max-connections and --max-peer-connections must be positive");
        }
        if self.header_read_timeout_ms == 0
            || self.idle_timeout_ms == 0
            || self.body_read_timeout_ms == 0
        {
            bail!(
                "--header-read-timeout-ms, --idle-timeout-ms and --body-read-timeout-ms must \
                 be positive"
            );
        }
        if self.max_steps == 0 || self.max_steps > self.max_batch_commands {
            bail!(
                "--max-steps must be 1..=--max-batch-commands (one call's steps share one entry)"
            );
        }
        if self.max_steps_body_bytes < 1024 {
            bail!("--max-steps-body-bytes must be at least 1024");
        }
        if self.event_window < 16 {
            bail!("--event-window must be at least 16");
        }
        // One task of the largest payload, or one reveal of the largest output, must
        // fit in one Raft entry.
        if self.max_batch_bytes < self.max_payload_bytes + MESSAGE_SLACK {
            bail!(
                "--max-batch-bytes must be at least --max-payload-bytes + {MESSAGE_SLACK} \
                 (the largest single write must fit in one Raft entry)"
            );
        }
        if self.max_pending_proposals == 0 || self.max_pending_bytes < self.max_batch_bytes {
            bail!(
                "--max-pending-proposals must be positive and --max-pending-bytes at least \
                 --max-batch-bytes"
            );
        }
        if self.max_replication_bytes < self.max_batch_bytes {
            bail!("--max-replication-bytes must be at least --max-batch-bytes");
        }
        if self.max_event_streams == 0 || self.max_long_polls == 0 {
            bail!("--max-event-streams and --max-long-polls must be positive");
        }
        if let Some(spec) = &self.initial_cluster {
            parse_members(spec)?;
        }
        self.validate_tls()
    }

    /// TLS flags come in sets: the API's certificate and key together (and a CA to
    /// reach the other nodes' APIs), the peer channel's three together.
    fn validate_tls(&self) -> anyhow::Result<()> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            bail!("--tls-cert and --tls-key go together: give both or neither");
        }
        let peer = [&self.peer_tls_cert, &self.peer_tls_key, &self.peer_ca];
        if peer.iter().any(|p| p.is_some()) && !peer.iter().all(|p| p.is_some()) {
            bail!(
                "--peer-tls-cert, --peer-tls-key and --peer-ca go together: give all three or none"
            );
        }
        if self.tls_cert.is_none() && self.tls_ca.is_some() {
            bail!("--tls-ca is for a node whose API speaks TLS: give --tls-cert and --tls-key too");
        }
        if self.tls_cert.is_some() && self.api_ca().is_none() {
            bail!(
                "--tls-cert needs --tls-ca (or --peer-ca): the CA of the other nodes' API \
                 certificates, for the calls a node relays to the leader's API"
            );
        }
        Ok(())
    }

    /// Whether the API speaks https (and so every node's API, to this node).
    pub fn api_tls(&self) -> bool {
        self.tls_cert.is_some()
    }

    /// The CA this node trusts in other nodes' API certificates.
    pub fn api_ca(&self) -> Option<&std::path::Path> {
        self.tls_ca.as_deref().or(self.peer_ca.as_deref())
    }

    /// Whether the peer channel speaks mutual TLS.
    pub fn peer_tls(&self) -> bool {
        self.peer_ca.is_some()
    }

    /// What the API listener (`peer = false`) or the peer listener allows.
    pub fn listener_limits(&self, peer: bool) -> crate::listener::ListenerLimits {
        crate::listener::ListenerLimits {
            max_connections: if peer {
                self.max_peer_connections
            } else {
                self.max_connections
            },
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            body_read_timeout: Duration::from_millis(self.body_read_timeout_ms),
        }
    }

    /// This node's advertised addresses.
    pub fn advertised(&self) -> NodeAddr {
        NodeAddr {
            api: self
                .advertise_api
                .clone()
                .unwrap_or_else(|| self.api_addr.to_string()),
            peer: self
                .advertise_peer
                .clone()
                .unwrap_or_else(|| self.peer_addr.to_string()),
        }
    }

    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }

    pub fn replication_timeout(&self) -> Duration {
        Duration::from_millis(self.replication_timeout_ms)
    }

    /// How recently the leader must have heard from a quorum to answer refusals from
    /// its applied state: openraft's leader lease (the longest election timeout, during
    /// which the nodes that answered it vote for no one else) less two heartbeat
    /// intervals, for the age of the metrics the proposer reads (openraft reports them
    /// at least every 1.5 intervals).
    pub fn refusal_lease(&self) -> Duration {
        Duration::from_millis(self.election_max_ms.saturating_sub(2 * self.heartbeat_ms))
    }

    /// openraft's configuration from these settings.
    pub fn raft_config(&self) -> anyhow::Result<openraft::Config> {
        let config = openraft::Config {
            cluster_name: self.cluster_name.clone(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_min_ms,
            election_timeout_max: self.election_max_ms,
            install_snapshot_timeout: self.install_snapshot_timeout_ms,
            // One replication request carries at most this many entries (each at most
            // --max-batch-bytes); the network layer further cuts it to
            // --max-replication-bytes (openraft 0.9 counts entries only), so it stays
            // within --replication-timeout-ms.
            max_payload_entries: 16,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_entries),
            snapshot_max_chunk_size: 4 << 20,
            max_in_snapshot_log_to_keep: 1000,
            purge_batch_size: 256,
            replication_lag_threshold: self.snapshot_entries,
            ..Default::default()
        };
        config.validate().context("raft configuration")
    }
}

/// Parses `ID=API/PEER,ID=API/PEER,...`.
pub fn parse_members(spec: &str) -> anyhow::Result<std::collections::BTreeMap<NodeId, NodeAddr>> {
    let mut out = std::collections::BTreeMap::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addrs) = part
            .split_once('=')
            .with_context(|| format!("member {part:?}: expected ID=API/PEER"))?;
        let id: NodeId = id
            .trim()
            .parse()
            .with_context(|| format!("member {part:?}: bad id"))?;
        let (api, peer) = addrs
            .split_once('/')
            .with_context(|| format!("member {part:?}: expected API/PEER"))?;
        if id == 0 || api.is_empty() || peer.is_empty() {
            bail!("member {part:?}: id must be positive and both addresses given");
        }
        if out
            .insert(
                id,
                NodeAddr {
                    api: api.to_string(),
                    peer: peer.to_string(),
                },
            )
            .is_some()
        {
            bail!("member {id} is listed twice");
        }
    }
    if out.is_empty() {
        bail!("no members given");
    }
    Ok(out)
}

/// Turns the settings of a TOML file into command-line arguments placed before the
/// real ones, skipping any setting given as a flag or in the environment, so the
/// precedence is flag, environment, file, default.
pub fn args_with_config_file(args: Vec<String>) -> anyhow::Result<Vec<String>> {
    let path = args
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| {
            args.iter()
                .find_map(|a| a.strip_prefix("--config=").map(str::to_string))
        })
        .or_else(|| std::env::var("SQ_CONFIG").ok());
    let Some(path) = path else { return Ok(args) };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading config file {path}"))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("parsing config file {path}"))?;
    let mut extra = Vec::new();
    for (key, value) in table {
        let flag = key.replace('_', "-");
        let env = format!("SQ_{}", key.replace('-', "_").to_uppercase());
        let on_cli = args
            .iter()
            .any(|a| a == &format!("--{flag}") || a.starts_with(&format!("--{flag}=")));
        if on_cli || std::env::var_os(&env).is_some() {
            continue;
        }
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => bail!("config key {key}: unsupported value {other}"),
        };
        extra.push(format!("--{flag}={value}"));
    }
    // Insert right after the subcommand (the first two arguments: binary, "node").
    let split = args.len().min(2);
    let mut out: Vec<String> = args[..split].to_vec();
    out.extend(extra);
    out.extend_from_slice(&args[split..]);
    Ok(out)
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
