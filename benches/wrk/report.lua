-- Shared by the wrk scripts of benches/compare.sh: prints one JSON line with the
-- throughput and latency percentiles when the run ends.
function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format(
    'WRK_JSON {"requests": %d, "seconds": %.3f, "rps": %.1f, "errors": %d, '
      .. '"p50_ms": %.3f, "p90_ms": %.3f, "p99_ms": %.3f, "p999_ms": %.3f, "max_ms": %.3f, "mean_ms": %.3f}\n',
    summary.requests, secs, summary.requests / secs, errors,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency:percentile(99.9) / 1000, latency.max / 1000, latency.mean / 1000))
end
