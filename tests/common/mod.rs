//! `TestCluster`: real node processes of the `session-queue` binary on loopback ports
//! chosen free at run time, with their data in a temporary directory, and the faults
//! a test needs: SIGKILL, SIGSTOP/SIGCONT, restart, wipe, and a replacement under a
//! new id. The first start creates the cluster (`--initial-cluster-state new`), a
//! restart runs as `cluster/up.sh` restarts a node (`existing`). Everything is
//! killed and deleted when the cluster is dropped.
//!
//! Started with a [`netns::NetLab`] ([`TestCluster::start_with_net`]), each node runs
//! in a network namespace of its own with its own address, and links between nodes
//! can be cut (network partitions). With [`lossy::LossyDisks`] (their root as
//! `data_root`), each node's data directory is a power-loss filesystem.

#![allow(dead_code)]

pub mod lossy;
pub mod netns;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use session_queue::client::Client;
use tempfile::TempDir;

/// One node process and where it listens.
pub struct NodeProc {
    pub id: u64,
    /// The address it listens on: 127.0.0.1, or its own in a network namespace.
    pub host: String,
    /// The network namespace it runs in, if any.
    pub netns: Option<String>,
    pub api_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

/// Settings of a test cluster.
#[derive(Clone, Debug)]
pub struct Options {
    pub nodes: usize,
    pub api_key: Option<String>,
    /// Extra flags for every node.
    pub flags: Vec<String>,
    /// Where the nodes' data directories go (default: the cluster's temporary
    /// directory, which also holds the logs).
    pub data_root: Option<PathBuf>,
    /// Extra environment of every node process.
    pub env: Vec<(String, String)>,
    /// Extra environment of one node process, by index (node `i` gets `node_env[i]`,
    /// when there is one), after `env`: e.g. a preloaded library with a file of its own.
    pub node_env: Vec<Vec<(String, String)>>,
    /// The CA of the nodes' API certificates, when their API speaks TLS: the
    /// cluster's clients and URLs then use https and trust it.
    pub ca_file: Option<PathBuf>,
    /// Start every node under `ulimit -n` of this many file descriptors (soft and
    /// hard), as on a host with a low limit. Loopback nodes only.
    pub nofile: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nodes: 3,
            api_key: None,
            flags: vec![],
            data_root: None,
            env: vec![],
            node_env: vec![],
            ca_file: None,
            nofile: None,
        }
    }
}

pub struct TestCluster {
    pub dir: TempDir,
    pub nodes: Vec<NodeProc>,
    pub secret: String,
    pub options: Options,
    /// The nodes' network namespaces, when they run in them.
    pub net: Option<netns::NetLab>,
    members: String,
    /// The smallest id no node has had (ids are never reused).
    next_id: u64,
}

/// `n` free ports, each handed out once per test process.
///
/// Ports come from below the kernel's ephemeral range (`ip_local_port_range`), so
/// neither an outgoing connection's local port nor another test's `bind(0)` can take
/// one between the choice and the node binding it (a restarted node rebinds its old
/// ports, which a kernel-chosen port could have reused meanwhile). Each candidate is
/// checked by binding it; the walk starts at a point derived from the process id so
/// two test binaries running at once walk different stretches.
pub fn free_ports(n: usize) -> Vec<u16> {
    use std::sync::Mutex;
    static NEXT: Mutex<Option<u32>> = Mutex::new(None);
    let (low, high) = chosen_port_range();
    let span = high - low;
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    let mut cursor = next.unwrap_or_else(|| low + (std::process::id() * 7919) % span);
    let mut ports = Vec::with_capacity(n);
    let mut tried = 0;
    while ports.len() < n {
        assert!(tried < span, "no free port left in {low}..{high}");
        tried += 1;
        let port = cursor as u16;
        cursor = low + (cursor + 1 - low) % span;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            ports.push(port);
        }
    }
    *next = Some(cursor);
    ports
}

/// The stretch test ports come from: below the ephemeral range when it leaves room
/// (Linux defaults to 32768-60999), otherwise above it.
fn chosen_port_range() -> (u32, u32) {
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|x| x.parse::<u32>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    if ephemeral.0 >= 12000 {
        (10000, ephemeral.0)
    } else if ephemeral.1 <= 63000 {
        (ephemeral.1 + 1, 65535)
    } else {
        (10000, 30000)
    }
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_session-queue"))
}

impl TestCluster {
    /// Starts `n` nodes forming a new cluster and waits for a leader.
    pub async fn start(n: usize) -> Self {
        Self::start_with(Options {
            nodes: n,
            ..Options::default()
        })
        .await
    }

    pub async fn start_with(options: Options) -> Self {
        Self::start_with_net(options, None).await
    }

    /// Starts the cluster; with `net`, node `i` runs in the lab's namespace `i` and
    /// listens on the lab's address for it.
    pub async fn start_with_net(options: Options, net: Option<netns::NetLab>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sq-test-")
            .tempdir()
            .expect("temp dir");
        let data_root = options
            .data_root
            .clone()
            .unwrap_or_else(|| dir.path().to_path_buf());
        if let Some(net) = &net {
            assert!(
                net.len() >= options.nodes,
                "the network lab has too few namespaces"
            );
        }
        let mut nodes = Vec::new();
        let ports = free_ports(options.nodes * 2);
        for i in 0..options.nodes {
            let id = i as u64 + 1;
            let (host, netns, api_port, peer_port) = match &net {
                // A namespace of its own: the usual ports are free.
                Some(net) => (net.ip(i), Some(net.namespace(i).to_string()), 7001, 8001),
                None => (
                    "127.0.0.1".to_string(),
                    None,
                    ports[2 * i],
                    ports[2 * i + 1],
                ),
            };
            nodes.push(NodeProc {
                id,
                host,
                netns,
                api_port,
                peer_port,
                data_dir: data_root.join(format!("node{id}")),
                log: dir.path().join(format!("node{id}.log")),
                child: None,
                paused: false,
            });
        }
        let members = nodes
            .iter()
            .map(|n| {
                format!(
                    "{}={}:{}/{}:{}",
                    n.id, n.host, n.api_port, n.host, n.peer_port
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = TestCluster {
            dir,
            nodes,
            secret: "test-cluster-secret-0123456789".into(),
            options,
            net,
            members,
            next_id: 0,
        };
        for i in 0..cluster.nodes.len() {
            cluster.spawn(i, Some("new"));
        }
        cluster.wait_for_leader(Duration::from_secs(30)).await;
        cluster
    }

    /// Starts node `i`'s process; with `state`, as a member of `--initial-cluster`
    /// with that `--initial-cluster-state` (`new` creates the cluster, `existing`
    /// is how a restart runs, as `cluster/up.sh` does it).
    fn spawn(&mut self, i: usize, state: Option<&str>) {
        let node = &self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("log file");
        // `ip netns exec` execs the binary: the child's pid is the node's.
        let mut cmd = match (&node.netns, self.options.nofile) {
            (Some(ns), _) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(binary());
                cmd
            }
            // The shell sets the limit and execs the binary: the child's pid is the node's.
            (None, Some(n)) => {
                let mut cmd = Command::new("sh");
                cmd.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(binary());
                cmd
            }
            (None, None) => Command::new(binary()),
        };
        cmd.arg("node")
            .arg("--id")
            .arg(node.id.to_string())
            .arg("--api-addr")
            .arg(format!("{}:{}", node.host, node.api_port))
            .arg("--peer-addr")
            .arg(format!("{}:{}", node.host, node.peer_port))
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(&self.options.flags)
            .env("SQ_CLUSTER_SECRET", &self.secret)
            .env("RUST_LOG", "info,openraft=warn")
            // An error that stops a node ends its log as one message, not a backtrace
            // that pushes the message out of the tail a failing test prints.
            .env("RUST_LIB_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        if let Some(state) = state {
            cmd.arg("--initial-cluster")
                .arg(&self.members)
                .arg("--initial-cluster-state")
                .arg(state);
        }
        if let Some(key) = &self.options.api_key {
            cmd.env("SQ_API_KEY", key);
        }
        let own = self.options.node_env.get(i).into_iter().flatten();
        for (name, value) in self.options.env.iter().chain(own) {
            cmd.env(name, value);
        }
        let child = cmd.spawn().expect("start a node");
        let node = &mut self.nodes[i];
        node.child = Some(child);
        node.paused = false;
    }

    /// `host:port` of node `i`'s API (0-based index).
    pub fn api(&self, i: usize) -> String {
        format!("{}:{}", self.nodes[i].host, self.nodes[i].api_port)
    }

    /// `host:port` of node `i`'s peer channel.
    pub fn peer(&self, i: usize) -> String {
        format!("{}:{}", self.nodes[i].host, self.nodes[i].peer_port)
    }

    /// Node `i`'s API as a URL (https when the cluster's API speaks TLS).
    pub fn url(&self, i: usize) -> String {
        let scheme = if self.options.ca_file.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.api(i))
    }

    /// Node `i`'s Prometheus text (`GET /metrics`).
    pub async fn metrics_text(&self, i: usize) -> String {
        self.client_of(i)
            .http()
            .get(format!("{}/metrics", self.url(i)))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// A metric's value from node `i`'s Prometheus text (0 when absent).
    pub async fn metric(&self, i: usize, name: &str) -> f64 {
        let text = self.metrics_text(i).await;
        text.lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// A client of every node.
    pub fn client(&self) -> Client {
        let nodes: Vec<String> = (0..self.nodes.len()).map(|i| self.api(i)).collect();
        self.client_for(&nodes)
    }

    /// A client of node `i` only.
    pub fn client_of(&self, i: usize) -> Client {
        self.client_for(&[self.api(i)])
    }

    fn client_for(&self, nodes: &[String]) -> Client {
        Client::with_ca_file(
            nodes,
            self.options.api_key.clone(),
            self.options.ca_file.as_deref(),
        )
        .expect("a client of the test cluster")
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    pub fn is_paused(&self, i: usize) -> bool {
        self.nodes[i].paused
    }

    /// Node `i`'s process id, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(Child::id)
    }

    /// Node `i`'s exit status if its process has ended on its own (reaping it).
    pub fn exited(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        let status = self.nodes[i].child.as_mut()?.try_wait().ok()??;
        self.nodes[i].child = None;
        Some(status)
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            if self.nodes[i].paused {
                signal(&child, libc::SIGCONT);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a graceful exit.
    pub fn stop(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            signal(&child, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the process freezes, its sockets stay open.
    pub fn pause(&mut self, i: usize) {
        if let Some(child) = &self.nodes[i].child {
            signal(child, libc::SIGSTOP);
            self.nodes[i].paused = true;
        }
    }

    pub fn resume(&mut self, i: usize) {
        if let Some(child) = &self.nodes[i].child {
            signal(child, libc::SIGCONT);
            self.nodes[i].paused = false;
        }
    }

    /// Starts a stopped node again on its data, as `cluster/up.sh` restarts a node
    /// (`--initial-cluster-state existing`).
    pub fn restart(&mut self, i: usize) {
        self.restart_as(i, "existing");
    }

    /// Starts a stopped node again with this `--initial-cluster-state` (`new` is the
    /// command line that created the cluster, as a container keeps it).
    pub fn restart_as(&mut self, i: usize, state: &str) {
        self.kill(i);
        self.spawn(i, Some(state));
    }

    /// Gives the stopped, wiped node `i` a new id never used before (a replacement
    /// at the same address and data directory); returns it. Start it with
    /// [`TestCluster::start_joining`] and add it through membership.
    pub fn renumber(&mut self, i: usize) -> u64 {
        assert!(self.nodes[i].child.is_none(), "stop the node first");
        let id = self.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        let id = id.max(self.next_id);
        self.next_id = id + 1;
        self.nodes[i].id = id;
        id
    }

    /// Starts node `i` as a node to be added through membership (no
    /// `--initial-cluster`).
    pub fn start_joining(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i, None);
    }

    /// Deletes a stopped node's data.
    pub fn wipe(&mut self, i: usize) {
        assert!(
            self.nodes[i].child.is_none(),
            "stop the node before wiping it"
        );
        let dir = &self.nodes[i].data_dir;
        let _ = std::fs::remove_dir_all(dir);
        // A mount point (a power-loss disk) stays, emptied: make the removals
        // durable, or a later power loss would bring the old files back.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }

    /// Adds a brand-new node process (not yet a member); returns its index.
    pub fn spawn_new(&mut self) -> usize {
        assert!(self.net.is_none(), "spawn_new runs nodes on loopback only");
        let id = (self.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1).max(self.next_id);
        self.next_id = id + 1;
        let data_root = self
            .options
            .data_root
            .clone()
            .unwrap_or_else(|| self.dir.path().to_path_buf());
        let ports = free_ports(2);
        self.nodes.push(NodeProc {
            id,
            host: "127.0.0.1".into(),
            netns: None,
            api_port: ports[0],
            peer_port: ports[1],
            data_dir: data_root.join(format!("node{id}")),
            log: self.dir.path().join(format!("node{id}.log")),
            child: None,
            paused: false,
        });
        let i = self.nodes.len() - 1;
        self.spawn(i, None);
        i
    }

    /// This node's own view (`/v1/cluster?local=true`), if it answers.
    pub async fn local_view(&self, i: usize) -> Option<Value> {
        if !self.is_running(i) || self.nodes[i].paused {
            return None;
        }
        let (status, v) = self
            .client_of(i)
            .call(Method::GET, "/v1/cluster?local=true", None, None)
            .await
            .ok()?;
        status.is_success().then_some(v)
    }

    /// Waits until the running nodes agree on one leader; returns its index.
    pub async fn wait_for_leader(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let mut leaders = Vec::new();
            let mut running = 0;
            for i in 0..self.nodes.len() {
                if !self.is_running(i) || self.nodes[i].paused {
                    continue;
                }
                running += 1;
                if let Some(v) = self.local_view(i).await {
                    leaders.push(v["leader"].as_u64());
                }
            }
            if leaders.len() == running && running > 0 {
                if let Some(Some(leader)) = leaders.first().copied() {
                    if leaders.iter().all(|l| *l == Some(leader)) {
                        if let Some(i) = self.nodes.iter().position(|n| n.id == leader) {
                            if self.is_running(i) && !self.nodes[i].paused {
                                return i;
                            }
                        }
                    }
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "no agreed leader within {timeout:?}; logs:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until node `i` has applied at least `index`.
    pub async fn wait_applied(&self, i: usize, index: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.local_view(i).await {
                if v["applied_index"].as_u64().unwrap_or(0) >= index {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "node {} did not apply {index} within {timeout:?}; logs:\n{}",
                    self.nodes[i].id,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until node `i` has applied at least what node `from` has applied now.
    pub async fn wait_caught_up(&self, i: usize, from: usize, timeout: Duration) {
        let target = self
            .local_view(from)
            .await
            .and_then(|v| v["applied_index"].as_u64())
            .unwrap_or_else(|| panic!("node {} does not answer", self.nodes[from].id));
        self.wait_applied(i, target, timeout).await;
    }

    /// The tail of every node's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let text = std::fs::read_to_string(&n.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            out.push_str(&format!("--- node {} ---\n{}\n", n.id, tail.join("\n")));
        }
        out
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

/// Whether this runs under CI (`CI` set to `true` or `1`), where every scenario must
/// run: a test that cannot run its scenario here fails instead of skipping.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Says that `test` cannot run its scenario here, and why: under CI that is a
/// failure (panics); elsewhere it prints the reason and the caller returns (skips).
pub fn cannot_run(test: &str, why: &str) {
    if under_ci() {
        panic!("{test}: cannot run here under CI: {why}");
    }
    eprintln!("{test}: SKIPPED: {why} (under CI=true this fails)");
}

/// A session spec for tests: k miners, quorum q, short timeouts.
pub fn session_spec(k: u8, q: u8) -> Value {
    json!({
        "redundancy": k,
        "quorum": q,
        "max_nodes": 8,
        "ack_timeout_ms": 5000,
        "precommit_timeout_ms": 5000,
        "commit_timeout_ms": 5000,
    })
}
