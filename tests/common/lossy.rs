//! Power-loss disks for test clusters: one `lossyfs` process (the FUSE filesystem of
//! `tests/lossyfs`) per node, each mounting a node's data directory over a backing
//! directory of its own. [`LossyDisks::lose_power`] drops everything that node did
//! not fsync; kill the node first, as a power loss would.
//!
//! Needs root, /dev/fuse and `fusermount3` (Debian's `fuse3`, which
//! `cluster/install-deps.sh` installs). The `lossyfs` binary is built next to the
//! node's binary (it is a default member of the workspace); when it is missing it
//! is built here with cargo.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// One mounted lossyfs per node; unmounted and stopped on drop.
pub struct LossyDisks {
    dir: TempDir,
    mounts: Vec<Mount>,
}

struct Mount {
    point: PathBuf,
    control: PathBuf,
    child: Child,
}

fn lossyfs_binary() -> Result<PathBuf, String> {
    let bin = super::binary()
        .parent()
        .expect("binary dir")
        .join("lossyfs");
    if bin.exists() {
        return Ok(bin);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "lossyfs", "--manifest-path"])
        .arg(&manifest)
        .status()
        .map_err(|e| format!("building lossyfs: {e}"))?;
    if !status.success() || !bin.exists() {
        return Err(format!(
            "building lossyfs failed ({status}); expected {}",
            bin.display()
        ));
    }
    Ok(bin)
}

/// Why lossyfs cannot be mounted here, if it cannot.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (FUSE mounts for power-loss disks)".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("no /dev/fuse".into());
    }
    if Command::new("fusermount3").arg("-V").output().is_err() {
        return Some("no fusermount3 (Debian package fuse3; cluster/install-deps.sh)".into());
    }
    None
}

/// Sends one command line to a lossyfs control socket; Ok when it answers `ok`.
fn command(socket: &Path, line: &str) -> Result<(), String> {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).map_err(|e| e.to_string())?;
    writeln!(stream, "{line}").map_err(|e| e.to_string())?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(|e| e.to_string())?;
    match answer.trim() {
        "ok" => Ok(()),
        other => Err(format!("{line}: {other}")),
    }
}

impl LossyDisks {
    /// Mounts `n` lossyfs filesystems, at `root()/node1` .. `root()/node{n}`.
    pub fn create(n: usize) -> Result<Self, String> {
        if let Some(why) = unavailable() {
            return Err(why);
        }
        let bin = lossyfs_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("sq-lossy-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let mut disks = LossyDisks {
            dir,
            mounts: Vec::new(),
        };
        for id in 1..=n {
            let point = disks.root().join(format!("node{id}"));
            let backing = disks.dir.path().join("backing").join(format!("node{id}"));
            let control = disks.dir.path().join(format!("node{id}.sock"));
            for d in [&point, &backing] {
                std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
            }
            let log = std::fs::File::create(disks.dir.path().join(format!("lossyfs{id}.log")))
                .map_err(|e| e.to_string())?;
            let child = Command::new(&bin)
                .arg(&point)
                .arg(&backing)
                .arg("--control")
                .arg(&control)
                .stdin(Stdio::null())
                .stdout(log.try_clone().map_err(|e| e.to_string())?)
                .stderr(log)
                .spawn()
                .map_err(|e| format!("starting {}: {e}", bin.display()))?;
            disks.mounts.push(Mount {
                point,
                control,
                child,
            });
            // Up when its control socket answers.
            let deadline = Instant::now() + Duration::from_secs(10);
            while command(&disks.mounts[id - 1].control, "ping").is_err() {
                if Instant::now() > deadline {
                    return Err(format!("lossyfs for node {id} did not come up"));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(disks)
    }

    /// Where the nodes' data directories are (`node{id}` under it): `data_root`.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// Node `i` (0-based) loses power: everything it did not fsync is gone. The
    /// node's process must be dead already.
    pub fn lose_power(&self, i: usize) {
        command(&self.mounts[i].control, "lose-power")
            .unwrap_or_else(|e| panic!("lossyfs of node {}: {e}", i + 1));
    }
}

impl Drop for LossyDisks {
    fn drop(&mut self) {
        for m in &mut self.mounts {
            let _ = Command::new("fusermount3")
                .arg("-uz")
                .arg(&m.point)
                .stderr(Stdio::null())
                .status();
            let _ = m.child.kill();
            let _ = m.child.wait();
        }
    }
}
