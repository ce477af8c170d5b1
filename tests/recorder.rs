//! The node's Prometheus recorder holds histogram samples only until its upkeep
//! folds them into buckets, so a node that nobody scrapes does not grow by a
//! sample per request. Live heap bytes are counted by this binary's own allocator.
//!
//! The test runs on one thread, so the upkeep task runs only while the test sleeps:
//! a sample recorded at the very instant another thread drains the histogram may
//! be lost by the recorder's storage (see `src/recorder.rs`), and the count at the
//! end must be exact.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call goes to the system allocator unchanged; only a count is kept.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Records `n` samples into the request histogram, as `n` requests would.
fn record(n: usize) {
    for i in 0..n {
        metrics::histogram!("sq_http_request_seconds", "route" => "/health", "method" => "GET")
            .record((i % 1000) as f64 * 1e-6);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn histogram_samples_are_folded_away_without_a_scrape() {
    const SAMPLES: usize = 2_000_000; // 16 MB as raw f64 values
    let handle = session_queue::recorder::prometheus();
    record(1); // the histogram exists before the count starts
    handle.run_upkeep();

    // Without an upkeep the samples stay in memory.
    let before = LIVE.load(Ordering::Relaxed);
    record(SAMPLES / 20);
    let held = LIVE.load(Ordering::Relaxed) - before;
    assert!(
        held >= (SAMPLES / 20 * 8) as isize,
        "the recorder is expected to hold raw samples until an upkeep ({held} bytes held)"
    );
    handle.run_upkeep();

    // With the node's upkeep running, they do not pile up, though nobody renders.
    // (The recorder frees drained samples a little later, through an epoch
    // collector: hence a bound of a quarter, not zero.)
    let upkeep = tokio::spawn(session_queue::recorder::keep_up(
        handle.clone(),
        Duration::from_millis(5),
    ));
    let before = LIVE.load(Ordering::Relaxed);
    for _ in 0..40 {
        record(SAMPLES / 40);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    record(1);
    let left = LIVE.load(Ordering::Relaxed) - before;
    upkeep.abort();
    assert!(
        left < (SAMPLES * 8 / 4) as isize,
        "{left} bytes still held with the upkeep running (the samples were {} bytes)",
        SAMPLES * 8
    );
    // And the samples were counted, not lost.
    let text = handle.render();
    let count = text
        .lines()
        .find(|l| l.starts_with("sq_http_request_seconds_count") && l.contains("/health"))
        .expect("the request histogram is rendered");
    let n: f64 = count.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(n as usize, SAMPLES / 20 + SAMPLES + 2, "{count}");
}
