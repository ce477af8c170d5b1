//! The process's Prometheus recorder, and the upkeep that keeps its histograms
//! bounded.
//!
//! The recorder keeps every histogram sample (one per HTTP request, per proposer
//! batch, per group write of the state) as a raw value until it folds them into the
//! histogram's buckets: when `/metrics` is rendered, or when its upkeep runs. The
//! exporter spawns that upkeep only when it also serves the scrape endpoint itself;
//! a node serves `/metrics` on its own API, so it runs the upkeep itself
//! ([`keep_up`], every [`UPKEEP_PERIOD`]). Without it, a node that nobody scraped
//! kept every sample it had ever recorded: its memory grew by about 20 bytes per
//! request (docs/PERFORMANCE.md, "Histogram samples held until a scrape").
//!
//! The recorder's sample storage (`metrics-util`'s `AtomicBucket`) is lock-free and
//! not exact under a drain that races a record: a writer that starts a new block
//! makes it the tail before linking the blocks behind it, so a drain in that
//! instant misses them. An upkeep or a render can therefore drop some samples
//! recorded at that very moment, from a histogram's count and buckets. At one drain
//! every few seconds this is rare; a test that hammered one histogram with an
//! upkeep every 5 ms lost about 1 % of two million samples. Counters and gauges
//! (the request totals among them) are plain atomics and exact.

use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// How often the node folds recorded histogram samples into buckets: the
/// exporter's own default. At 100,000 requests a second that holds at most about
/// 8 MiB of samples between two upkeeps.
pub const UPKEEP_PERIOD: Duration = Duration::from_secs(5);

/// The process-wide Prometheus recorder (installed once, shared by in-process nodes).
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0,
                    5.0, 10.0,
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

/// Folds the recorder's histogram samples into buckets every `every` (the first
/// time at once), until the task is dropped, counting each in
/// `sq_metrics_upkeeps_total`. Several nodes in one process may each run one: an
/// upkeep with nothing recorded since the last is cheap.
pub async fn keep_up(handle: PrometheusHandle, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        handle.run_upkeep();
        metrics::counter!("sq_metrics_upkeeps_total").increment(1);
    }
}
