//! Scale of the state machine: apply 1,000,000 submits of 256-byte payloads (in
//! batches of 1,000, as the batch endpoint sends them), then complete every task
//! through ack, precommit and reveal, timing each 100,000 to show the cost stays
//! linear, and report the memory the million queued tasks take, then the memory the
//! million finished tasks take (their payloads dropped, result and history kept
//! until retention).
//!
//! As on a node, a payload's bytes leave the state once the store has written them
//! (see `machine::PayloadAt`): the bench releases them after every batch, where the
//! node's store would have written its group, so the figures are the state a node
//! holds (the payloads are in RocksDB there, not counted here).
//!
//! Memory is reported two ways: the process's resident set (RSS, what the operating
//! system counts; the node's allocator, mimalloc, is used here too) and the live heap
//! bytes the state holds (counted by a wrapper around the allocator: what was asked
//! for and not freed, without the allocator's rounding and free pages). Both per task.
//!
//! Run: `cargo bench --bench scale` (`SQ_SCALE_TASKS` to change the count).

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use session_queue::machine::{
    sha256, Command, Key, MinerAuth, NewTask, Response, SessionSpec, State,
};

/// mimalloc, as the node uses, counting the bytes currently allocated.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live_bytes() -> f64 {
    LIVE.load(Ordering::Relaxed) as f64
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Prints the memory the tasks take now, relative to `(rss0, live0)`.
fn report(what: &str, total: usize, (rss0, live0): (f64, f64)) {
    let rss = rss_mib() - rss0;
    let live = live_bytes() - live0;
    println!(
        "{total} {what} tasks of 256-byte payload: {rss:.0} MiB resident ({:.0} bytes per task), \
         state heap {:.0} MiB ({:.0} bytes per task)",
        rss * 1048576.0 / total as f64,
        live / 1048576.0,
        live / total as f64
    );
}

/// What the node's store does when it writes a group: takes the changed keys and
/// drops the in-memory copies of the payloads it wrote.
fn written(s: &mut State) {
    let mut payloads: Vec<_> = s
        .take_dirty()
        .into_iter()
        .filter_map(|k| match k {
            Key::Payload(id) => Some(id),
            _ => None,
        })
        .collect();
    payloads.sort_unstable();
    payloads.dedup();
    s.release_payloads(&payloads);
}

fn main() {
    let total: usize = std::env::var("SQ_SCALE_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let step = total / 10;
    let mut s = State::new();
    let spec = SessionSpec {
        owner: "scale".into(),
        redundancy: 1,
        quorum: 1,
        priority: 0,
        tag: None,
        max_nodes: 256,
        ack_timeout_ms: 3_600_000,
        precommit_timeout_ms: 3_600_000,
        commit_timeout_ms: 3_600_000,
        max_attempts: 3,
        retention_ms: 24 * 3_600_000,
        idle_release_ms: 3_600_000,
        queue_timeout_ms: 0,
        idempotency_window_ms: 24 * 3_600_000,
        max_queued_tasks: 100_000_000,
        keep_finished_payloads: false,
    };
    let Response::SessionCreated { session } =
        s.apply(&Command::CreateSession(spec), 1).unwrap().response
    else {
        panic!()
    };
    let base = (rss_mib(), live_bytes());
    println!(
        "{:<10} {:>12} {:>14} {:>10}",
        "phase", "tasks done", "commands/s", "RSS MiB"
    );
    let mut done = 0;
    let mut t = Instant::now();
    while done < total {
        let batch = Command::SubmitTasks {
            session,
            tasks: (0..1000)
                .map(|_| NewTask {
                    payload: vec![b'p'; 256].into(),
                    priority: None,
                    idempotency_key: None,
                    queue_timeout_ms: None,
                })
                .collect(),
        };
        s.apply(&batch, 2).unwrap();
        written(&mut s);
        done += 1000;
        if done % step == 0 {
            println!(
                "{:<10} {:>12} {:>14.0} {:>10.0}",
                "submit",
                done,
                step as f64 / t.elapsed().as_secs_f64(),
                rss_mib()
            );
            t = Instant::now();
        }
    }
    report("queued", total, base);

    // 256 miners with room for 4,096 tasks each take every task.
    let mut miners = Vec::new();
    for i in 0..256 {
        let token_hash = sha256(&[format!("token-{i}").as_bytes()]);
        let r = s.apply(
            &Command::RegisterMiner {
                name: format!("m{i}"),
                capacity: 4096,
                tags: vec![],
                token_hash,
                heartbeat_timeout_ms: 3_600_000,
            },
            3,
        );
        let Response::MinerRegistered { miner } = r.unwrap().response else {
            panic!()
        };
        miners.push(MinerAuth { miner, token_hash });
    }
    let (output, nonce) = (b"answer".to_vec(), b"nonce".to_vec());
    let hash = sha256(&[&output, &nonce]);
    let mut completed = 0;
    let mut commands = 0u64;
    t = Instant::now();
    while completed < total {
        let mut progressed = false;
        for auth in &miners {
            let work: Vec<_> = s
                .assignments_of(auth.miner)
                .into_iter()
                .map(|(task, _)| task.id)
                .take(512)
                .collect();
            for task in work {
                s.apply(&Command::Ack { task, auth: *auth }, 4).unwrap();
                s.apply(
                    &Command::Precommit {
                        task,
                        auth: *auth,
                        hash,
                    },
                    4,
                )
                .unwrap();
                s.apply(
                    &Command::Reveal {
                        task,
                        auth: *auth,
                        output: output.clone(),
                        nonce: nonce.clone(),
                    },
                    4,
                )
                .unwrap();
                commands += 3;
                completed += 1;
                progressed = true;
                if completed % step == 0 {
                    println!(
                        "{:<10} {:>12} {:>14.0} {:>10.0}",
                        "complete",
                        completed,
                        commands as f64 / t.elapsed().as_secs_f64(),
                        rss_mib()
                    );
                    t = Instant::now();
                    commands = 0;
                }
            }
            written(&mut s);
        }
        assert!(
            progressed,
            "no miner had work with {completed} of {total} completed"
        );
    }
    assert_eq!(s.depth().completed, total as u64);
    report("finished", total, base);
}
