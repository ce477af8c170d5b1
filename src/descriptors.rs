//! File descriptors: how many the node may open, and how they are shared between
//! RocksDB, the peer channel and the public API.
//!
//! Every connection costs a descriptor, and so does every file RocksDB keeps open.
//! A node whose listener took the last descriptor could not open an SST file, and
//! RocksDB would then fail a write and stop Raft. So at start the node:
//! - raises its soft `RLIMIT_NOFILE` to the hard limit (many systems start processes
//!   at a soft 1024 with a hard limit far higher);
//! - caps the files RocksDB keeps open (`max_open_files`) at a share of that limit;
//! - keeps a reserve for everything else (the write-ahead log and manifest, snapshot
//!   files, outgoing peer and forwarding connections, the runtime's own);
//! - clips the listeners' connection caps (`--max-connections`,
//!   `--max-peer-connections`) to what is left, and logs it.
//!
//! The arithmetic is the pure [`plan`], unit-tested below; [`raise_limit`] is the
//! one system call.

/// Descriptors set aside for everything that is neither a listener's connection nor
/// a RocksDB table file.
pub const RESERVE: u64 = 128;

/// Fewest and most table files RocksDB may keep open.
const MIN_ROCKS_FILES: u64 = 32;
const MAX_ROCKS_FILES: u64 = 1024;

/// How the descriptors of one node are shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// The descriptor limit the plan was made for.
    pub limit: u64,
    /// RocksDB's `max_open_files`.
    pub rocks_files: u64,
    /// The API listener's connection cap.
    pub api_connections: usize,
    /// The peer listener's connection cap.
    pub peer_connections: usize,
    /// Whether a configured cap was lowered to fit.
    pub clipped: bool,
}

/// Shares `limit` descriptors: RocksDB an eighth (32..=1024 files), [`RESERVE`] for
/// the rest of the process, and what remains to the listeners: the peer listener at
/// most a quarter of it, the API listener the others, each never above its
/// configured cap and never below 1.
pub fn plan(limit: u64, api_cap: usize, peer_cap: usize) -> Budget {
    let rocks_files = (limit / 8).clamp(MIN_ROCKS_FILES, MAX_ROCKS_FILES);
    let left = limit.saturating_sub(rocks_files + RESERVE);
    let peer = (peer_cap as u64).min(left / 4).max(1);
    let api = (api_cap as u64).min(left.saturating_sub(peer)).max(1);
    Budget {
        limit,
        rocks_files,
        api_connections: api as usize,
        peer_connections: peer as usize,
        clipped: api < api_cap as u64 || peer < peer_cap as u64,
    }
}

/// Raises the soft descriptor limit to the hard one; returns (soft, hard) as they
/// are afterwards, or `None` if the limit cannot be read.
pub fn raise_limit() -> Option<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    Some((lim.rlim_cur as u64, lim.rlim_max as u64))
}

/// Raises the limit, plans the budget for the configured caps and logs it.
pub fn budget(api_cap: usize, peer_cap: usize) -> Budget {
    let (soft, hard) = raise_limit().unwrap_or((1024, 1024));
    // RLIM_INFINITY reads as u64::MAX: plan for a generous finite number.
    let limit = soft.min(1 << 20);
    let budget = plan(limit, api_cap, peer_cap);
    if budget.clipped {
        tracing::warn!(
            soft,
            hard,
            rocksdb_open_files = budget.rocks_files,
            max_connections = budget.api_connections,
            max_peer_connections = budget.peer_connections,
            "the file descriptor limit is low: connection caps clipped to fit it \
             (raise `ulimit -n` to serve more connections)"
        );
    } else {
        tracing::info!(
            soft,
            hard,
            rocksdb_open_files = budget.rocks_files,
            max_connections = budget.api_connections,
            max_peer_connections = budget.peer_connections,
            "file descriptor budget"
        );
    }
    budget
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generous_limit_keeps_the_configured_caps() {
        let b = plan(65_536, 4096, 512);
        assert_eq!((b.api_connections, b.peer_connections), (4096, 512));
        assert_eq!(b.rocks_files, 1024);
        assert!(!b.clipped);
    }

    #[test]
    fn a_low_limit_clips_the_caps_so_everything_fits() {
        for limit in [256u64, 1024, 4096, 5000] {
            let b = plan(limit, 4096, 512);
            assert!(b.clipped, "{limit}");
            let used =
                b.rocks_files + RESERVE + b.api_connections as u64 + b.peer_connections as u64;
            assert!(used <= limit, "{limit}: {b:?}");
            assert!(b.api_connections >= b.peer_connections, "{b:?}");
        }
        let b = plan(1024, 4096, 512);
        assert_eq!(b.rocks_files, 128);
        assert_eq!((b.api_connections, b.peer_connections), (576, 192));
    }

    #[test]
    fn even_an_absurd_limit_leaves_one_connection_each() {
        let b = plan(16, 4096, 512);
        assert_eq!((b.api_connections, b.peer_connections), (1, 1));
        assert_eq!(b.rocks_files, MIN_ROCKS_FILES);
    }
}
