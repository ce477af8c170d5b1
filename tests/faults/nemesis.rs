//! The nemesis: injects one fault at a time into the cluster, heals it, lets the
//! cluster settle, and records each fault's start and end in the history.
//!
//! Faults (each a `fault` kind in the history):
//! - `kill-leader`, `kill-follower`: SIGKILL, down for a while, restarted on its data;
//! - `pause-leader`, `pause-follower`: SIGSTOP for longer than the election timeout
//!   (its sockets stay open, requests to it hang), then SIGCONT;
//! - `restart`: SIGTERM (graceful stop) of a random node, started again at once;
//! - `isolate`: a random node cut off from both others (clients still reach it);
//! - `isolate-leader`: the leader cut off from the majority;
//! - `leader-minority` (five nodes or more): the leader and one follower cut off
//!   from the others: the leader goes on appending entries to its follower that can
//!   never commit, writers write through both sides, and when the links heal the
//!   old leader steps down with entries in flight (the ambiguous outcomes that only
//!   idempotent writes may retry);
//! - `bridge`: two nodes cannot talk, the third talks to both (non-transitive);
//! - `power-loss`: a random node loses power: SIGKILL, and its disk (a lossyfs
//!   mount, [`crate::common::lossy`]) drops every write, create, rename and unlink
//!   it did not fsync; restarted on what is left;
//! - `power-loss-all`: every node at once loses power, then all restart;
//! - `wipe`: a follower is killed, its data directory wiped, and it is restarted
//!   under its old id as `cluster/up.sh` would (`--initial-cluster-state
//!   existing`): it must not vote nor take entries as the voter it was (its term
//!   stays 0, else the run fails). Healing is docs/DEPLOY.md's replacement: the old
//!   id is removed, and a node with a new id, the same address and an empty
//!   directory is added through membership (the cluster's admin key, [`ADMIN_KEY`]).
//!
//! `isolate` to `bridge` need the network namespaces of [`crate::common::netns`],
//! the power losses need lossyfs disks; without them those kinds are skipped. The order is shuffled round by round from a seed,
//! so every kind comes up about as often and a schedule can be replayed.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::history::{Event, Recorder};
use crate::common::lossy::LossyDisks;
use crate::common::TestCluster;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    KillLeader,
    KillFollower,
    PauseLeader,
    PauseFollower,
    Restart,
    Isolate,
    IsolateLeader,
    LeaderMinority,
    Bridge,
    PowerLoss,
    PowerLossAll,
    Wipe,
}

/// The admin key the fault run's nodes are started with (membership changes).
pub const ADMIN_KEY: &str = "fault-run-admin-key-0123";

impl Fault {
    pub const ALL: [Fault; 12] = [
        Fault::KillLeader,
        Fault::KillFollower,
        Fault::PauseLeader,
        Fault::PauseFollower,
        Fault::Restart,
        Fault::Isolate,
        Fault::IsolateLeader,
        Fault::LeaderMinority,
        Fault::Bridge,
        Fault::PowerLoss,
        Fault::PowerLossAll,
        Fault::Wipe,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::KillLeader => "kill-leader",
            Fault::KillFollower => "kill-follower",
            Fault::PauseLeader => "pause-leader",
            Fault::PauseFollower => "pause-follower",
            Fault::Restart => "restart",
            Fault::Isolate => "isolate",
            Fault::IsolateLeader => "isolate-leader",
            Fault::LeaderMinority => "leader-minority",
            Fault::Bridge => "bridge",
            Fault::PowerLoss => "power-loss",
            Fault::PowerLossAll => "power-loss-all",
            Fault::Wipe => "wipe",
        }
    }

    pub fn from_name(name: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == name)
    }

    fn needs_network(self) -> bool {
        matches!(
            self,
            Fault::Isolate | Fault::IsolateLeader | Fault::LeaderMinority | Fault::Bridge
        )
    }

    fn needs_disks(self) -> bool {
        matches!(self, Fault::PowerLoss | Fault::PowerLossAll)
    }

    /// Fewest nodes the fault makes sense with (a leader and a follower are a
    /// minority only from five nodes on).
    fn min_nodes(self) -> usize {
        match self {
            Fault::LeaderMinority => 5,
            _ => 3,
        }
    }

    /// Whether the fault can be injected into `nodes` nodes, with or without network
    /// namespaces and power-loss disks.
    pub fn possible(self, nodes: usize, network: bool, disks: bool) -> bool {
        nodes >= self.min_nodes()
            && (network || !self.needs_network())
            && (disks || !self.needs_disks())
    }
}

/// Asks every running, unpaused node whom it follows (2 s per node); returns the
/// leader's index when a majority of all nodes names it.
pub async fn majority_leader(cluster: &TestCluster) -> Option<usize> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?;
    let mut votes = std::collections::BTreeMap::new();
    for i in 0..cluster.nodes.len() {
        if !cluster.is_running(i) || cluster.is_paused(i) {
            continue;
        }
        let Ok(resp) = http
            .get(format!("{}/v1/cluster?local=true", cluster.url(i)))
            .send()
            .await
        else {
            continue;
        };
        let Ok(v) = resp.json::<serde_json::Value>().await else {
            continue;
        };
        if let Some(leader) = v["leader"].as_u64() {
            *votes.entry(leader).or_insert(0usize) += 1;
        }
    }
    let (leader, n) = votes.into_iter().max_by_key(|(_, n)| *n)?;
    if n * 2 > cluster.nodes.len() {
        cluster.nodes.iter().position(|node| node.id == leader)
    } else {
        None
    }
}

/// Waits (at most `timeout`) until a majority agrees on a leader.
pub async fn settle(cluster: &TestCluster, timeout: Duration) -> Option<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(leader) = majority_leader(cluster).await {
            return Some(leader);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub struct Nemesis {
    rng: StdRng,
    round: Vec<Fault>,
    kinds: Vec<Fault>,
    /// Faults begun, by kind.
    pub injected: std::collections::BTreeMap<&'static str, u64>,
    /// The nodes' power-loss disks, when they run on them.
    disks: Option<LossyDisks>,
    /// What went wrong that the history's checker cannot see (a wiped node that
    /// voted, a replacement that could not be made).
    pub problems: Vec<String>,
}

impl Nemesis {
    /// A nemesis for `nodes` nodes injecting `kinds` (every possible kind if
    /// `None`); kinds that need network namespaces or power-loss disks are left out
    /// without them. `disks` must be those the cluster's data directories are on.
    pub fn new(
        seed: u64,
        network: bool,
        disks: Option<LossyDisks>,
        nodes: usize,
        kinds: Option<Vec<Fault>>,
    ) -> Self {
        let mut kinds: Vec<Fault> = kinds
            .unwrap_or_else(|| Fault::ALL.to_vec())
            .into_iter()
            .filter(|f| f.possible(nodes, network, disks.is_some()))
            .collect();
        let mut seen = Vec::new();
        kinds.retain(|f| {
            let new = !seen.contains(f);
            seen.push(*f);
            new
        });
        assert!(!kinds.is_empty(), "no fault kind can be injected here");
        Nemesis {
            rng: StdRng::seed_from_u64(seed),
            round: Vec::new(),
            kinds,
            injected: Default::default(),
            disks,
            problems: Vec::new(),
        }
    }

    /// The kinds this nemesis injects.
    pub fn kinds(&self) -> Vec<&'static str> {
        self.kinds.iter().map(|f| f.name()).collect()
    }

    fn next_fault(&mut self) -> Fault {
        if self.round.is_empty() {
            self.round = self.kinds.clone();
            self.round.shuffle(&mut self.rng);
        }
        self.round.pop().expect("a fault")
    }

    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.rng.random_range(lo..hi))
    }

    /// Injects faults until `until`, one at a time: fault, hold, heal, settle.
    pub async fn run(&mut self, cluster: &mut TestCluster, rec: &Recorder, until: Instant) {
        tokio::time::sleep(self.ms(2000, 4000)).await;
        // Until the time is up and every kind has come up at least once.
        let hard_stop = until + Duration::from_secs(120);
        while (Instant::now() < until || self.injected.len() < self.kinds.len())
            && Instant::now() < hard_stop
        {
            self.check_crashes(cluster, rec);
            let fault = self.next_fault();
            let leader = settle(cluster, Duration::from_secs(20)).await;
            let n = cluster.nodes.len();
            let follower = |rng: &mut StdRng| {
                let others: Vec<usize> = (0..n).filter(|&i| Some(i) != leader).collect();
                others[rng.random_range(0..others.len())]
            };
            let (targets, hold): (Vec<usize>, Duration) = match fault {
                Fault::KillLeader | Fault::PauseLeader | Fault::IsolateLeader => match leader {
                    Some(l) => (vec![l], Duration::ZERO),
                    None => {
                        self.round.push(fault); // no leader to hit now: later
                        continue;
                    }
                },
                Fault::LeaderMinority => match leader {
                    Some(l) => (vec![l, follower(&mut self.rng)], Duration::ZERO),
                    None => {
                        self.round.push(fault);
                        continue;
                    }
                },
                Fault::Bridge => {
                    let mid = self.rng.random_range(0..n);
                    let ends: Vec<usize> = (0..n).filter(|&i| i != mid).collect();
                    (ends, Duration::ZERO)
                }
                Fault::Restart | Fault::Isolate | Fault::PowerLoss => {
                    (vec![self.rng.random_range(0..n)], Duration::ZERO)
                }
                Fault::PowerLossAll => ((0..n).collect(), Duration::ZERO),
                Fault::KillFollower | Fault::PauseFollower | Fault::Wipe => {
                    (vec![follower(&mut self.rng)], Duration::ZERO)
                }
            };
            let hold = match fault {
                Fault::KillLeader | Fault::KillFollower | Fault::Wipe => self.ms(1000, 4000),
                Fault::PowerLoss | Fault::PowerLossAll => self.ms(500, 3000),
                // Longer than the longest election timeout (2 s).
                Fault::PauseLeader | Fault::PauseFollower => self.ms(2500, 5000),
                Fault::Isolate | Fault::IsolateLeader | Fault::LeaderMinority | Fault::Bridge => {
                    self.ms(3000, 6000)
                }
                Fault::Restart => hold,
            };
            let mut e = Event::new("nemesis", "fault");
            e.fault = Some(fault.name().into());
            e.phase = Some("start".into());
            e.nodes = Some(targets.clone());
            e.error = Some(format!(
                "leader before: {leader:?}, hold {} ms",
                hold.as_millis()
            ));
            rec.info(e.clone());
            *self.injected.entry(fault.name()).or_default() += 1;
            eprintln!(
                "[nemesis] {} nodes {targets:?} (leader {leader:?}) for {} ms",
                fault.name(),
                hold.as_millis()
            );
            match fault {
                Fault::KillLeader | Fault::KillFollower => cluster.kill(targets[0]),
                Fault::PauseLeader | Fault::PauseFollower => cluster.pause(targets[0]),
                Fault::Restart => tokio::task::block_in_place(|| cluster.stop(targets[0])),
                Fault::Wipe => {
                    cluster.kill(targets[0]);
                    cluster.wipe(targets[0]);
                    // As cluster/up.sh restarts a node whose directory is gone.
                    cluster.restart(targets[0]);
                }
                Fault::Isolate | Fault::IsolateLeader => {
                    cluster.net.as_mut().expect("network").isolate(targets[0])
                }
                Fault::LeaderMinority => {
                    let net = cluster.net.as_mut().expect("network");
                    for &inside in &targets {
                        for outside in (0..n).filter(|i| !targets.contains(i)) {
                            net.cut(inside, outside);
                        }
                    }
                }
                Fault::Bridge => cluster
                    .net
                    .as_mut()
                    .expect("network")
                    .cut(targets[0], targets[1]),
                Fault::PowerLoss | Fault::PowerLossAll => {
                    // The process dies first (nothing more reaches the disk), then
                    // the disk forgets what was not synced.
                    for &t in &targets {
                        cluster.kill(t);
                    }
                    let disks = self.disks.as_ref().expect("power-loss disks");
                    for &t in &targets {
                        disks.lose_power(t);
                    }
                }
            }
            tokio::time::sleep(hold).await;
            match fault {
                Fault::KillLeader | Fault::KillFollower | Fault::Restart => {
                    cluster.restart(targets[0])
                }
                Fault::PowerLoss | Fault::PowerLossAll => {
                    for &t in &targets {
                        cluster.restart(t);
                    }
                }
                Fault::PauseLeader | Fault::PauseFollower => cluster.resume(targets[0]),
                Fault::Wipe => self.replace_wiped(cluster, targets[0]).await,
                Fault::Isolate | Fault::IsolateLeader | Fault::LeaderMinority | Fault::Bridge => {
                    cluster.net.as_mut().expect("network").heal_all()
                }
            }
            e.phase = Some("end".into());
            e.error = None;
            rec.info(e);
            let settled = settle(cluster, Duration::from_secs(30)).await;
            if settled.is_none() {
                let mut e = Event::new("nemesis", "note");
                e.error = Some(format!(
                    "no majority leader 30 s after healing {}",
                    fault.name()
                ));
                rec.info(e);
                eprintln!(
                    "[nemesis] no majority leader 30 s after healing {}",
                    fault.name()
                );
            }
            tokio::time::sleep(self.ms(1000, 2500)).await;
        }
        self.check_crashes(cluster, rec);
    }

    /// Heals a `wipe`: checks the wiped node never voted nor took entries (its term
    /// is still 0), then replaces it as docs/DEPLOY.md says: removes its old id,
    /// starts a node with a new id at the same address on an empty directory
    /// (`--initial-cluster-state existing`), and adds it through membership.
    async fn replace_wiped(&mut self, cluster: &mut TestCluster, t: usize) {
        let old = cluster.nodes[t].id;
        match cluster.local_view(t).await {
            Some(v) if v["term"].as_u64() == Some(0) && v["state"] != "leader" => {}
            Some(v) => self.problems.push(format!(
                "wiped node {old} took part as the voter it was: {v}"
            )),
            None => self
                .problems
                .push(format!("wiped node {old} did not answer while blank")),
        }
        cluster.kill(t);
        cluster.wipe(t);
        let new = cluster.renumber(t);
        cluster.start_joining(t);
        let apis: Vec<String> = (0..cluster.nodes.len())
            .filter(|&i| i != t)
            .map(|i| cluster.api(i))
            .collect();
        let admin = session_queue::client::Client::new(&apis, Some(ADMIN_KEY.to_string()));
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut removed = false;
        let body = serde_json::json!({
            "id": new,
            "api": cluster.api(t),
            "peer": cluster.peer(t),
        });
        loop {
            let step = if removed {
                admin
                    .call(
                        reqwest::Method::POST,
                        "/v1/cluster/members",
                        Some(&body),
                        None,
                    )
                    .await
            } else {
                admin
                    .call(
                        reqwest::Method::DELETE,
                        &format!("/v1/cluster/members/{old}"),
                        None,
                        None,
                    )
                    .await
            };
            match step {
                Ok((status, _)) if status.is_success() => {
                    if removed {
                        eprintln!("[nemesis] wiped node {old} replaced by node {new}");
                        return;
                    }
                    removed = true;
                    continue;
                }
                Ok((_, v)) if !removed && v.to_string().contains("is not a member") => {
                    removed = true;
                    continue;
                }
                other => {
                    if Instant::now() > deadline {
                        self.problems.push(format!(
                            "could not replace wiped node {old} by {new}: {other:?}"
                        ));
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Records and restarts any node that exited on its own.
    pub fn check_crashes(&mut self, cluster: &mut TestCluster, rec: &Recorder) {
        for i in 0..cluster.nodes.len() {
            if let Some(status) = cluster.exited(i) {
                let mut e = Event::new("nemesis", "crash");
                e.nodes = Some(vec![i]);
                e.error = Some(format!(
                    "node {} exited by itself: {status}",
                    cluster.nodes[i].id
                ));
                rec.info(e);
                eprintln!(
                    "[nemesis] node {} exited by itself ({status}); restarting it\n{}",
                    cluster.nodes[i].id,
                    cluster.logs()
                );
                cluster.restart(i);
            }
        }
    }

    /// Undoes everything: resumes paused nodes, restarts stopped ones, heals the network.
    pub fn heal_everything(&mut self, cluster: &mut TestCluster) {
        for i in 0..cluster.nodes.len() {
            if cluster.is_paused(i) {
                cluster.resume(i);
            }
            if !cluster.is_running(i) {
                cluster.restart(i);
            }
        }
        if let Some(net) = cluster.net.as_mut() {
            net.heal_all();
        }
    }
}
