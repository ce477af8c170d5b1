//! A private network for test nodes, so links between nodes can be cut one by one.
//!
//! Every node gets a network namespace of its own with its own IP address
//! (`10.X.Y.11`, `.12`, ...) on `eth0`, one end of a veth pair whose other end is a
//! port of a bridge. The bridge lives in a hub namespace of its own (so the host's
//! firewall never sees the bridged traffic), and one more veth pair joins the hub to
//! the namespace of the test process, which gets `10.X.Y.1` and so reaches every node
//! directly: clients are never partitioned, only the nodes from each other.
//!
//! A cut link drops every packet between two nodes (iptables `DROP` in both nodes'
//! namespaces, in and out; where iptables is missing, `blackhole` routes instead), so
//! connections stall the way they do behind a failed switch: no reset, no refusal.
//!
//! Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN for `ip netns`). Names carry the
//! process id and a random tag, the subnet is picked among unused ones, and
//! everything is deleted on drop (deleting a namespace deletes its veths, including
//! the end in the test's namespace).

use std::collections::BTreeSet;
use std::process::Command;

/// A set of namespaces for `n` nodes. See the module documentation.
pub struct NetLab {
    tag: String,
    hub: String,
    nodes: Vec<String>,
    subnet: (u8, u8),
    root_veth: String,
    iptables: bool,
    cuts: BTreeSet<(usize, usize)>,
}

/// Runs a command; its stderr on failure.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program} {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip(args: &[&str]) -> Result<String, String> {
    run("ip", args)
}

impl NetLab {
    /// Creates the namespaces, or says why it cannot (not root, no `ip`, no
    /// namespaces in this kernel or container).
    pub fn create(n: usize) -> Result<NetLab, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root".into());
        }
        ip(&["-V"]).map_err(|e| format!("the ip command is missing: {e}"))?;
        let tag = format!("sq{}{:04x}", std::process::id(), rand::random::<u16>());
        let subnet = pick_subnet()?;
        let mut lab = NetLab {
            hub: format!("{tag}-hub"),
            tag,
            nodes: Vec::new(),
            subnet,
            root_veth: format!("sqv{:08x}", rand::random::<u32>()),
            iptables: false,
            cuts: BTreeSet::new(),
        };
        lab.build(n)?; // on error, dropping `lab` deletes what was made
        Ok(lab)
    }

    fn build(&mut self, n: usize) -> Result<(), String> {
        let hub = self.hub.clone();
        ip(&["netns", "add", &hub])?;
        ip(&["-n", &hub, "link", "set", "lo", "up"])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        // The test process's way in.
        let gateway = self.gateway();
        ip(&[
            "link",
            "add",
            &self.root_veth,
            "type",
            "veth",
            "peer",
            "name",
            "up0",
            "netns",
            &hub,
        ])?;
        ip(&[
            "addr",
            "add",
            &format!("{gateway}/24"),
            "dev",
            &self.root_veth,
        ])?;
        ip(&["link", "set", &self.root_veth, "up"])?;
        ip(&["-n", &hub, "link", "set", "up0", "master", "br0"])?;
        ip(&["-n", &hub, "link", "set", "up0", "up"])?;
        for i in 0..n {
            let ns = format!("{}-n{}", self.tag, i + 1);
            ip(&["netns", "add", &ns])?;
            self.nodes.push(ns.clone());
            let port = format!("vn{}", i + 1);
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &hub, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &hub, "link", "set", &port, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", self.ip(i)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        self.iptables = self.nodes.first().is_some_and(|ns| {
            ip(&["netns", "exec", ns, "iptables", "-w", "-L", "INPUT", "-n"]).is_ok()
        });
        Ok(())
    }

    fn gateway(&self) -> String {
        format!("10.{}.{}.1", self.subnet.0, self.subnet.1)
    }

    /// Node `i`'s address (0-based index).
    pub fn ip(&self, i: usize) -> String {
        format!("10.{}.{}.{}", self.subnet.0, self.subnet.1, 11 + i)
    }

    /// Node `i`'s namespace.
    pub fn namespace(&self, i: usize) -> &str {
        &self.nodes[i]
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// How links are cut: `iptables` or `blackhole routes`.
    pub fn method(&self) -> &'static str {
        if self.iptables {
            "iptables DROP"
        } else {
            "blackhole routes"
        }
    }

    fn rules(&self, from: usize, to: usize, add: bool) -> Result<(), String> {
        let ns = &self.nodes[from];
        let peer = self.ip(to);
        if self.iptables {
            let op = if add { "-I" } else { "-D" };
            ip(&[
                "netns", "exec", ns, "iptables", "-w", op, "INPUT", "-s", &peer, "-j", "DROP",
            ])?;
            ip(&[
                "netns", "exec", ns, "iptables", "-w", op, "OUTPUT", "-d", &peer, "-j", "DROP",
            ])?;
        } else {
            let op = if add { "add" } else { "del" };
            ip(&["-n", ns, "route", op, "blackhole", &format!("{peer}/32")])?;
        }
        Ok(())
    }

    /// Cuts the link between nodes `a` and `b` (both directions).
    pub fn cut(&mut self, a: usize, b: usize) {
        let link = (a.min(b), a.max(b));
        if a == b || self.cuts.contains(&link) {
            return;
        }
        self.rules(a, b, true).expect("cut a link");
        self.rules(b, a, true).expect("cut a link");
        self.cuts.insert(link);
    }

    /// Restores the link between `a` and `b`.
    pub fn heal(&mut self, a: usize, b: usize) {
        let link = (a.min(b), a.max(b));
        if self.cuts.remove(&link) {
            self.rules(a, b, false).expect("heal a link");
            self.rules(b, a, false).expect("heal a link");
        }
    }

    /// Cuts node `i` off from every other node.
    pub fn isolate(&mut self, i: usize) {
        for j in 0..self.nodes.len() {
            self.cut(i, j);
        }
    }

    /// Restores every link.
    pub fn heal_all(&mut self) {
        for (a, b) in self.cuts.clone() {
            self.heal(a, b);
        }
    }

    /// The links cut now.
    pub fn cuts(&self) -> Vec<(usize, usize)> {
        self.cuts.iter().copied().collect()
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for ns in self.nodes.iter().chain([&self.hub]) {
            let _ = ip(&["netns", "del", ns]);
        }
        // Normally gone with the hub; make sure.
        let _ = ip(&["link", "del", &self.root_veth]);
    }
}

/// A `10.X.Y.0/24` no interface or route of this host uses (other test runs included).
fn pick_subnet() -> Result<(u8, u8), String> {
    let used = format!(
        "{}\n{}",
        ip(&["-4", "-o", "addr", "show"])?,
        ip(&["-4", "route", "show", "table", "all"])?
    );
    for _ in 0..200 {
        let (x, y) = (200 + rand::random::<u8>() % 50, rand::random::<u8>());
        let prefix = format!("10.{x}.{y}.");
        if !used.contains(&prefix) {
            return Ok((x, y));
        }
    }
    Err("no free 10.x.y.0/24 subnet".into())
}
