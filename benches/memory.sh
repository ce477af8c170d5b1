#!/usr/bin/env bash
# Memory of queued work in a real cluster: three nodes, TASKS (default 1,000,000)
# tasks of 256 bytes queued through the batch endpoint with no miners, then each
# node's resident memory (RSS, and its peak, VmHWM) and the bytes per queued task.
# Then node 3 is replaced as docs/DEPLOY.md says (a wiped node stays blank and never
# votes, by design): it is stopped and removed from the cluster, a node with a new id
# (4) and an empty data directory is started (`--initial-cluster-state existing`)
# and added; it catches up by a snapshot of the whole state (with MEM_BATCH=100: with
# the default, the log is short enough to be replayed), and its peak RSS (VmHWM)
# shows what the install held. Its RSS is sampled every second into
# $MEM_DIR/node4-rss.csv, and the leader's log is searched for replication errors.
#
#   benches/memory.sh [TASKS=1000000]
#
# Environment: SQ_BIN (default $CARGO_TARGET_DIR/release/session-queue), MEM_DIR
# (default /tmp/sq-memory, wiped first), MEM_PORT (API base port, default 7300;
# peers on +101..+103), MEM_SNAPSHOT_ENTRIES (default 500: the batch entries of a
# million tasks are about 1,000), MEM_BATCH (tasks a batch call, default 1000; 100
# makes ten times the entries, more than openraft keeps after a snapshot, so that
# node 4 must catch up by snapshot).
set -euo pipefail

tasks=${1:-1000000}
bin=${SQ_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/session-queue/target}/release/session-queue}
dir=${MEM_DIR:-/tmp/sq-memory}
port=${MEM_PORT:-7300}
[ -x "$bin" ] || { echo "no binary at $bin" >&2; exit 1; }

rm -rf "$dir"
mkdir -p "$dir"
secret=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
admin=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
members=""
nodes=""
for i in 1 2 3; do
  members+="${members:+,}$i=127.0.0.1:$((port + i))/127.0.0.1:$((port + 100 + i))"
  nodes+="${nodes:+,}127.0.0.1:$((port + i))"
done
declare -A pid
# start ID [FLAGS...]: an initial member by default.
start() {
  local id=$1
  shift
  [ $# -gt 0 ] || set -- --initial-cluster "$members" --initial-cluster-state new
  SQ_CLUSTER_SECRET="$secret" SQ_ADMIN_KEY="$admin" nice "$bin" node --id "$id" \
    --api-addr "127.0.0.1:$((port + id))" --peer-addr "127.0.0.1:$((port + 100 + id))" \
    --data-dir "$dir/node$id" "$@" \
    --snapshot-entries "${MEM_SNAPSHOT_ENTRIES:-500}" >>"$dir/node$id.log" 2>&1 &
  pid[$id]=$!
}
cluster() {
  SQ_ADMIN_KEY="$admin" "$bin" cluster --nodes "127.0.0.1:$((port + 1)),127.0.0.1:$((port + 2))" "$@"
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

# Node 3 replaced by node 4 from nothing (docs/DEPLOY.md, "replace a node"): node 4
# catches up by a snapshot of the whole state.
kill -TERM "${pid[3]}"
wait "${pid[3]}" 2>/dev/null || true
unset 'pid[3]'
cluster remove 3 >/dev/null
from1=$(wc -l <"$dir/node1.log")
from2=$(wc -l <"$dir/node2.log")
start 4 --initial-cluster-state existing
for _ in $(seq 100); do
  curl -fsS -o /dev/null "http://127.0.0.1:$((port + 4))/health" 2>/dev/null && break
  sleep 0.3
done
began=$(date +%s)
cluster add 4 "127.0.0.1:$((port + 4))" "127.0.0.1:$((port + 104))" >"$dir/add.out" 2>&1 &
adding=$!
peer_conns() {
  curl -fsS "http://127.0.0.1:$((port + $1))/metrics" 2>/dev/null |
    awk '/^sq_connections_open\{listener="peer"\}/ {printf "%d", $NF}'
}
echo "seconds,rss_mib,tasks,peer_connections" >"$dir/node4-rss.csv"
for _ in $(seq 900); do
  have=$(held 4 || echo 0)
  echo "$(($(date +%s) - began)),$(($(kib 4 VmRSS) / 1024)),${have:-0},$(peer_conns 4 || true)" >>"$dir/node4-rss.csv"
  [ "${have:-0}" = "$n" ] && break
  sleep 1
done
caught=$(($(date +%s) - began))
wait "$adding" 2>/dev/null || true
sleep 15
echo "node 4 (replacing node 3) after catching up in ${caught} s: holds $(held 4) tasks, RSS $(($(kib 4 VmRSS) / 1024)) MiB, peak $(($(kib 4 VmHWM) / 1024)) MiB"
grep -c "installed snapshot" "$dir/node4.log" | sed 's/^/snapshots installed by node 4: /' || true
since() { tail -n +"$((from1 + 1))" "$dir/node1.log"; tail -n +"$((from2 + 1))" "$dir/node2.log"; }
echo "log lines of nodes 1 and 2 since the add: $(since | grep -c -i 'payload too large' || true)" \
  "'payload too large', $(since | grep -c 'timeout after' || true) 'timeout after'," \
  "$(since | grep -c 'RPCError' || true) 'RPCError'"
