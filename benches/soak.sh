#!/usr/bin/env bash
# Soak: a three-node cluster driven at a steady submit-to-complete rate by the bench's
# simulated miners (`session-queue bench lifecycle --rate`), each node's resident
# memory (RSS; also its anonymous part, the allocator's committed bytes and RocksDB's
# memory pools from /metrics) and the tasks it holds sampled every 10 s into a CSV,
# then plotted (benches/plot_soak.py writes an SVG). Memory should be flat once finished tasks
# start to be purged (after the retention, one minute here).
#
#   benches/soak.sh [MINUTES=30] [RATE=300]
#
# Environment: SQ_BIN (the binary; default $CARGO_TARGET_DIR/release/session-queue),
# SOAK_DIR (data, logs, CSV; default /tmp/sq-soak, wiped first), SOAK_PORT (API base
# port; nodes on +1..+3, peers on +101..+103; default 7600), SOAK_OUT (the SVG;
# default docs/perf/soak.svg), SOAK_INFLIGHT (tasks in flight at most, default 256),
# SOAK_RETENTION_MS (default 60000), SOAK_SNAPSHOT_ENTRIES (default 20000).
# Everything runs under `nice`: the machine may be shared.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
minutes=${1:-30}
rate=${2:-300}
bin=${SQ_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/session-queue/target}/release/session-queue}
dir=${SOAK_DIR:-/tmp/sq-soak}
port=${SOAK_PORT:-7600}
out=${SOAK_OUT:-$root/docs/perf/soak.svg}
inflight=${SOAK_INFLIGHT:-256}
retention=${SOAK_RETENTION_MS:-60000}
snapshots=${SOAK_SNAPSHOT_ENTRIES:-20000}
[ -x "$bin" ] || { echo "no binary at $bin (build with cargo build --release, or set SQ_BIN)" >&2; exit 1; }
# A port already taken (another cluster on the same machine) would let the load and
# the samples reach that cluster's nodes instead of these: refuse to start.
for i in 1 2 3; do
  for p in $((port + i)) $((port + 100 + i)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "port $p is already in use (another cluster?); pick another SOAK_PORT" >&2
      exit 1
    fi
  done
done

rm -rf "$dir"
mkdir -p "$dir"
secret=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
members=""
nodes=""
for i in 1 2 3; do
  members+="${members:+,}$i=127.0.0.1:$((port + i))/127.0.0.1:$((port + 100 + i))"
  nodes+="${nodes:+,}127.0.0.1:$((port + i))"
done
pids=()
stop() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop EXIT
for i in 1 2 3; do
  SQ_CLUSTER_SECRET="$secret" nice "$bin" node --id "$i" \
    --api-addr "127.0.0.1:$((port + i))" --peer-addr "127.0.0.1:$((port + 100 + i))" \
    --data-dir "$dir/node$i" --initial-cluster "$members" --initial-cluster-state new \
    --snapshot-entries "$snapshots" >"$dir/node$i.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq 300); do
  ready=0
  for i in 1 2 3; do
    curl -fsS -o /dev/null "http://127.0.0.1:$((port + i))/ready" 2>/dev/null && ready=$((ready + 1))
  done
  [ "$ready" -eq 3 ] && break
  sleep 0.3
done
[ "$ready" -eq 3 ] || { echo "the cluster did not get ready; see $dir/node*.log" >&2; exit 1; }

csv="$dir/rss.csv"
echo "seconds,node1_rss_kib,node2_rss_kib,node3_rss_kib,tasks_held,$(
  for i in 1 2 3; do printf 'node%s_anon_kib,node%s_heap_kib,node%s_rocksdb_kib,' "$i" "$i" "$i"; done
)leader" >"$csv"
rss() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
# Per node: its anonymous resident memory (/proc), what the allocator holds
# committed and what RocksDB holds in memtables, block cache and table readers (its
# /metrics), in KiB; a node that does not answer counts 0.
parts() {
  local anon heap rocks
  anon=$(awk '/^RssAnon:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0)
  read -r heap rocks < <(curl -fsS "http://127.0.0.1:$((port + $2))/metrics" 2>/dev/null |
    awk '/^sq_allocator_committed_bytes\{/ {h = $NF}
         /^sq_store_(memtable|block_cache|table_readers)_bytes\{/ {r += $NF}
         END {printf "%d %d\n", h / 1024, r / 1024}')
  echo "${anon:-0},${heap:-0},${rocks:-0}"
}
leader() {
  curl -fsS "http://127.0.0.1:$((port + 1))/metrics" 2>/dev/null |
    awk '/^sq_raft_leader_id\{/ {printf "%d", $NF}'
}
held() {
  curl -fsS "http://127.0.0.1:$((port + 1))/metrics" 2>/dev/null |
    awk '/^sq_tasks\{/ {s += $NF} END {printf "%d", s}'
}
(
  start=$SECONDS
  while true; do
    echo "$((SECONDS - start)),$(rss "${pids[0]}"),$(rss "${pids[1]}"),$(rss "${pids[2]}"),$(held),$(parts "${pids[0]}" 1),$(parts "${pids[1]}" 2),$(parts "${pids[2]}" 3),$(leader)" >>"$csv"
    sleep 10
  done
) &
sampler=$!

# The session, with the short retention (so finished tasks are purged as it runs).
session=$(curl -fsS -X POST "http://127.0.0.1:$((port + 1))/v1/sessions" \
  -d "{\"owner\":\"soak\",\"redundancy\":1,\"quorum\":1,\"max_nodes\":8,\"retention_ms\":$retention,\"idle_release_ms\":600000}" |
  sed -n 's/.*"id":"\([^"]*\)".*/\1/p')
# A binary without --rate (older builds) runs closed-loop: SOAK_INFLIGHT tasks in
# flight at all times, which the cluster serves at a steady rate of its own.
rate_flag=()
if "$bin" bench --help 2>/dev/null | grep -q -- --rate; then rate_flag=(--rate "$rate"); fi
nice "$bin" bench lifecycle --nodes "$nodes" -c "$inflight" "${rate_flag[@]}" \
  --session "$session" --duration "$((minutes * 60))" \
  --miners 8 --miner-capacity 64 --json "$dir/bench.json" >"$dir/bench.txt" 2>&1 || true
sleep 10
kill "$sampler" 2>/dev/null || true
cat "$dir/bench.txt" | tail -n 8
cp "$csv" "${out%.svg}.csv"
if ((${#rate_flag[@]})); then load="$rate tasks/s submitted"; else load="$inflight tasks in flight (closed loop)"; fi
python3 "$here/plot_soak.py" "$csv" "$out" \
  "3 nodes, $load, k=1, 256-byte payloads, retention $((retention / 1000)) s"
echo "CSV: ${out%.svg}.csv, plot: $out"
