#!/usr/bin/env bash
# Memory of queued work in a real cluster: three nodes, TASKS (default 1,000,000)
# tasks of 256 bytes queued through the batch endpoint with no miners, then each
# node's resident memory (RSS, and its peak, VmHWM) and the bytes per queued task.
# Then node 3 is stopped, its data wiped, and it is started again: it catches up by
# a snapshot of the whole state, and its peak RSS shows what the install held.
#
#   benches/memory.sh [TASKS=1000000]
#
# Environment: SQ_BIN (default $CARGO_TARGET_DIR/release/session-queue), MEM_DIR
# (default /tmp/sq-memory, wiped first), MEM_PORT (API base port, default 7300;
# peers on +101..+103), MEM_SNAPSHOT_ENTRIES (default 500: the batch entries of a
# million tasks are about 1,000, and node 3 must find the log purged to need a
# snapshot), MEM_BATCH (tasks a batch call, default 1000; 100 makes ten times the
# entries, so that node 3 must catch up by snapshot).
set -euo pipefail

tasks=${1:-1000000}
bin=${SQ_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/session-queue/target}/release/session-queue}
dir=${MEM_DIR:-/tmp/sq-memory}
port=${MEM_PORT:-7300}
[ -x "$bin" ] || { echo "no binary at $bin" >&2; exit 1; }

rm -rf "$dir"
mkdir -p "$dir"
secret=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
members=""
nodes=""
for i in 1 2 3; do
  members+="${members:+,}$i=127.0.0.1:$((port + i))/127.0.0.1:$((port + 100 + i))"
  nodes+="${nodes:+,}127.0.0.1:$((port + i))"
done
declare -A pid
start() {
  SQ_CLUSTER_SECRET="$secret" nice "$bin" node --id "$1" \
    --api-addr "127.0.0.1:$((port + $1))" --peer-addr "127.0.0.1:$((port + 100 + $1))" \
    --data-dir "$dir/node$1" --initial-cluster "$members" --initial-cluster-state new \
    --snapshot-entries "${MEM_SNAPSHOT_ENTRIES:-500}" >>"$dir/node$1.log" 2>&1 &
  pid[$1]=$!
}
stop() {
  for i in "${!pid[@]}"; do kill -TERM "${pid[$i]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop EXIT
for i in 1 2 3; do start "$i"; done
ready() { curl -fsS -o /dev/null "http://127.0.0.1:$((port + $1))/ready" 2>/dev/null; }
for _ in $(seq 300); do
  ready 1 && ready 2 && ready 3 && break
  sleep 0.3
done
kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/${pid[$1]}/status"; }
held() {
  curl -fsS "http://127.0.0.1:$((port + $1))/metrics" 2>/dev/null |
    awk '/^sq_tasks\{/ {s += $NF} END {printf "%d", s}'
}
declare -A base
for i in 1 2 3; do base[$i]=$(kib "$i" VmRSS); done
echo "empty cluster: RSS ${base[1]} / ${base[2]} / ${base[3]} KiB"

# Queue the tasks: batch calls of 1,000 until the cluster holds enough.
while [ "$(held 1)" -lt "$tasks" ]; do
  nice "$bin" bench batch --nodes "$nodes" -c 4 -d 5 --batch-size "${MEM_BATCH:-1000}" >/dev/null 2>&1 || true
done
# Let every node apply everything, and the allocator settle.
for _ in $(seq 60); do
  [ "$(held 1)" = "$(held 2)" ] && [ "$(held 1)" = "$(held 3)" ] && break
  sleep 1
done
sleep 15
n=$(held 1)
echo "queued: $n tasks (256-byte payloads)"
for i in 1 2 3; do
  rss=$(kib "$i" VmRSS)
  echo "node $i: RSS $((rss / 1024)) MiB, peak $(($(kib "$i" VmHWM) / 1024)) MiB, $(((rss - base[$i]) * 1024 / n)) bytes a queued task above the empty node"
done

# Node 3 from nothing: it catches up by a snapshot of the whole state.
kill -TERM "${pid[3]}"
wait "${pid[3]}" 2>/dev/null || true
rm -rf "$dir/node3"
start 3
for _ in $(seq 600); do
  [ "$(held 3 || echo 0)" = "$n" ] && break
  sleep 1
done
sleep 15
echo "node 3 after catching up by snapshot: holds $(held 3) tasks, RSS $(($(kib 3 VmRSS) / 1024)) MiB, peak $(($(kib 3 VmHWM) / 1024)) MiB"
grep -c "installed snapshot" "$dir/node3.log" | sed 's/^/snapshots installed by node 3: /'
