//! Measuring and reporting a benchmark run: HDR latency histograms per operation,
//! counters, a progress bar when on a terminal, and the text and JSON summaries.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

/// One kind of operation's latencies and counts.
pub struct Recorder {
    pub name: &'static str,
    hist: Mutex<Histogram<u64>>,
    pub ok: AtomicU64,
    pub errors: AtomicU64,
    /// Items per operation (tasks per batch call), for throughput in items.
    pub items: AtomicU64,
}

impl Recorder {
    pub fn new(name: &'static str) -> Self {
        Recorder {
            name,
            hist: Mutex::new(
                Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds"),
            ),
            ok: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            items: AtomicU64::new(0),
        }
    }

    /// Records a successful operation of `items` items that took `took`.
    pub fn ok(&self, took: Duration, items: u64) {
        let us = (took.as_micros() as u64).clamp(1, 120_000_000);
        self.hist
            .lock()
            .expect("histogram lock")
            .record(us)
            .expect("in bounds");
        self.ok.fetch_add(1, Ordering::Relaxed);
        self.items.fetch_add(items, Ordering::Relaxed);
    }

    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The summary of this recorder over `elapsed`.
    pub fn summary(&self, elapsed: Duration) -> Value {
        let h = self.hist.lock().expect("histogram lock");
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let secs = elapsed.as_secs_f64().max(1e-9);
        let ok = self.ok.load(Ordering::Relaxed);
        let items = self.items.load(Ordering::Relaxed);
        json!({
            "operation": self.name,
            "ok": ok,
            "errors": self.errors.load(Ordering::Relaxed),
            "items": items,
            "ops_per_sec": ok as f64 / secs,
            "items_per_sec": items as f64 / secs,
            "latency_ms": {
                "mean": if h.is_empty() { 0.0 } else { h.mean() / 1000.0 },
                "p50": ms(0.5),
                "p90": ms(0.9),
                "p99": ms(0.99),
                "p99.9": ms(0.999),
                "max": h.max() as f64 / 1000.0,
            },
        })
    }
}

/// A progress bar over the run's duration (hidden when stderr is not a terminal).
pub fn progress(duration: Duration, label: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(duration.as_millis() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:40}] {elapsed}/{duration}")
            .expect("progress template")
            .progress_chars("=> "),
    );
    bar.set_message(label.to_string());
    bar
}

/// Ticks the bar with a live rate until `until`.
pub async fn drive_progress(bar: ProgressBar, started: Instant, until: Instant, main: &Recorder) {
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let elapsed = started.elapsed();
        bar.set_position(elapsed.as_millis() as u64);
        let rate = main.items.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64().max(1e-3);
        bar.set_message(format!("{} {:.0}/s", main.name, rate));
    }
    bar.finish_and_clear();
}

/// Prints the text table of a run (an error, not a panic, when stdout is closed).
pub fn print_text(report: &Value) -> std::io::Result<()> {
    use std::fmt::Write;
    let mut text = String::new();
    let _ = writeln!(
        text,
        "mode={}{} connections={} payload={}B duration={:.1}s",
        report["mode"].as_str().unwrap_or_default(),
        if report["batch_steps"] == true {
            " (batch steps)"
        } else {
            ""
        },
        report["connections"],
        report["payload_bytes"],
        report["duration_s"].as_f64().unwrap_or_default()
    );
    let _ = write!(
        text,
        "{:<12} {:>10} {:>8} {:>12} {:>12} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "operation",
        "ok",
        "errors",
        "ops/s",
        "items/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "mean ms"
    );
    for op in report["operations"].as_array().into_iter().flatten() {
        let l = &op["latency_ms"];
        let _ = write!(
            text,
            "\n{:<12} {:>10} {:>8} {:>12.0} {:>12.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            op["operation"].as_str().unwrap_or_default(),
            op["ok"],
            op["errors"],
            op["ops_per_sec"].as_f64().unwrap_or_default(),
            op["items_per_sec"].as_f64().unwrap_or_default(),
            l["p50"].as_f64().unwrap_or_default(),
            l["p99"].as_f64().unwrap_or_default(),
            l["p99.9"].as_f64().unwrap_or_default(),
            l["max"].as_f64().unwrap_or_default(),
            l["mean"].as_f64().unwrap_or_default(),
        );
    }
    if let Some(cpu) = report["client_cpu_us_per_request"].as_f64() {
        let _ = write!(
            text,
            "\nclient CPU: {:.2} s over {} requests, {:.1} us a request",
            report["client_cpu_s"].as_f64().unwrap_or_default(),
            report["requests"],
            cpu
        );
    }
    let m = &report["miner"];
    if let (Some(polls), Some(done)) = (m["polls"].as_u64(), report["completed"].as_u64()) {
        let listed = m["listed"].as_u64().unwrap_or_default();
        let _ = write!(
            text,
            "\nminers: {polls} polls ({:.2} a completed task, {:.1} entries and {:.1} new slots a poll), polls held back {} ms in all",
            polls as f64 / done.max(1) as f64,
            listed as f64 / polls.max(1) as f64,
            m["new_slots"].as_u64().unwrap_or_default() as f64 / polls.max(1) as f64,
            m["poll_held_ms"],
        );
    }
    crate::client::output::line(&text)
}

/// CPU time (user and system) this process has used so far.
pub fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}
