//! `TestCluster`: real node processes of the `session-queue` binary on loopback ports
//! chosen free at run time, with their data in a temporary directory, and the faults
//! a test needs: SIGKILL, SIGSTOP/SIGCONT, restart, wipe. Everything is killed and
//! deleted when the cluster is dropped.

#![allow(dead_code)]

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
}

impl Default for Options {
    fn default() -> Self {
        Options { nodes: 3, api_key: None, flags: vec![] }
    }
}

pub struct TestCluster {
    pub dir: TempDir,
    pub nodes: Vec<NodeProc>,
    pub secret: String,
    pub options: Options,
    members: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind a free port").local_addr().expect("local addr").port()
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_session-queue"))
}

impl TestCluster {
    /// Starts `n` nodes forming a new cluster and waits for a leader.
    pub async fn start(n: usize) -> Self {
        Self::start_with(Options { nodes: n, ..Options::default() }).await
    }

    pub async fn start_with(options: Options) -> Self {
        let dir = tempfile::Builder::new().prefix("sq-test-").tempdir().expect("temp dir");
        let mut nodes = Vec::new();
        for i in 0..options.nodes {
            let id = i as u64 + 1;
            nodes.push(NodeProc {
                id,
                api_port: free_port(),
                peer_port: free_port(),
                data_dir: dir.path().join(format!("node{id}")),
                log: dir.path().join(format!("node{id}.log")),
                child: None,
                paused: false,
            });
        }
        let members = nodes
            .iter()
            .map(|n| format!("{}=127.0.0.1:{}/127.0.0.1:{}", n.id, n.api_port, n.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster =
            TestCluster { dir, nodes, secret: "test-cluster-secret-0123456789".into(), options, members };
        for i in 0..cluster.nodes.len() {
            cluster.spawn(i, true);
        }
        cluster.wait_for_leader(Duration::from_secs(30)).await;
        cluster
    }

    fn spawn(&mut self, i: usize, initial: bool) {
        let node = &self.nodes[i];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log).expect("log file");
        let mut cmd = Command::new(binary());
        cmd.arg("node")
            .arg("--id")
            .arg(node.id.to_string())
            .arg("--api-addr")
            .arg(format!("127.0.0.1:{}", node.api_port))
            .arg("--peer-addr")
            .arg(format!("127.0.0.1:{}", node.peer_port))
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(&self.options.flags)
            .env("SQ_CLUSTER_SECRET", &self.secret)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        if initial {
            cmd.arg("--initial-cluster").arg(&self.members);
        }
        if let Some(key) = &self.options.api_key {
            cmd.env("SQ_API_KEY", key);
        }
        let child = cmd.spawn().expect("start a node");
        let node = &mut self.nodes[i];
        node.child = Some(child);
        node.paused = false;
    }

    /// `host:port` of node `i`'s API (0-based index).
    pub fn api(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.nodes[i].api_port)
    }

    pub fn url(&self, i: usize) -> String {
        format!("http://{}", self.api(i))
    }

    /// A client of every node.
    pub fn client(&self) -> Client {
        let nodes: Vec<String> = (0..self.nodes.len()).map(|i| self.api(i)).collect();
        Client::new(&nodes, self.options.api_key.clone())
    }

    /// A client of node `i` only.
    pub fn client_of(&self, i: usize) -> Client {
        Client::new(&[self.api(i)], self.options.api_key.clone())
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
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

    /// Starts a stopped node again on its data.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i, true);
    }

    /// Deletes a stopped node's data.
    pub fn wipe(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none(), "stop the node before wiping it");
        let _ = std::fs::remove_dir_all(&self.nodes[i].data_dir);
    }

    /// Adds a brand-new node process (not yet a member); returns its index.
    pub fn spawn_new(&mut self) -> usize {
        let id = self.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        self.nodes.push(NodeProc {
            id,
            api_port: free_port(),
            peer_port: free_port(),
            data_dir: self.dir.path().join(format!("node{id}")),
            log: self.dir.path().join(format!("node{id}.log")),
            child: None,
            paused: false,
        });
        let i = self.nodes.len() - 1;
        self.spawn(i, false);
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
                panic!("no agreed leader within {timeout:?}; logs:\n{}", self.logs());
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
                panic!("node {} did not apply {index} within {timeout:?}; logs:\n{}", self.nodes[i].id, self.logs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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
