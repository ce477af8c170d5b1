#!/usr/bin/env bash
# Session Queue side by side with etcd and RabbitMQ, in one run on one machine.
#
# Starts a three-member etcd (Debian's etcd-server) on loopback and drives it with
# wrk (etcd-put.lua: a fresh key, 256-byte value per request) at 1, 16, 64 and 256
# connections; stops it; starts a three-node RabbitMQ (Debian's rabbitmq-server,
# benches/rabbitmq.sh) and drives a durable quorum queue with publisher confirms
# from benches/amqp.rs (256-byte messages, one in flight per connection, through the
# node holding the queue's leader); stops it; starts a three-node Session Queue cluster and drives its
# leader with the same wrk load (submit.lua: one task, 256-byte payload per request);
# then runs the project's own benchmarks (batch submits of 1,000 and 5,000 tasks a
# call; full lifecycles with k=1, all calls to the leader, then spread over the nodes).
# Writes results.json, results.md (a table with the ratios ours/etcd and ours/RabbitMQ) and
# throughput.svg / latency.svg into the output directory.
#
#   benches/compare.sh [OUT_DIR]        (default: bench-results/<date>)
#   SQ_COMPARE_SECS=10 SQ_COMPARE_CONNS="1 16 64 256"
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
secs=${SQ_COMPARE_SECS:-10}
conns=${SQ_COMPARE_CONNS:-"1 16 64 256"}
out=${1:-$root/bench-results/$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$out"
work=$(mktemp -d)
chmod 755 "$work" # the RabbitMQ nodes run as the rabbitmq user and keep their data here
etcd_pids=()
cleanup() {
  for p in "${etcd_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  "$root/benches/rabbitmq.sh" stop "$work/rabbitmq" >/dev/null 2>&1 || true
  SQ_CLUSTER_DATA="$work/sq" SQ_API_PORT_BASE=27000 "$root/cluster/down.sh" --wipe >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

"$root/cluster/install-deps.sh"
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v etcd >/dev/null || missing+=(etcd-server)
command -v etcdctl >/dev/null || missing+=(etcd-client)
command -v python3 >/dev/null || missing+=(python3)
command -v rabbitmq-server >/dev/null || missing+=(rabbitmq-server)
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/session-queue/target}
(cd "$root" && cargo build --release --quiet && cargo build --release --quiet --bench amqp)
bin="$CARGO_TARGET_DIR/release/session-queue"
amqp_load=$(ls -t "$CARGO_TARGET_DIR"/release/deps/amqp-* | grep -v '\.d$' | sed -n 1p)

# Before each system: the previous one's processes gone, its dirty pages written
# back (`sync`), then a few quiet seconds. Each system then starts from the same
# quiet machine the first one had; without it, the row after RabbitMQ ran while
# the kernel was likely still writing back what the brokers had left, and its
# one-connection tail paid for it (p99 8.7 ms against 1.8-2.3 ms on a quiet machine).
settle() { # pattern of the previous system's command lines
  for _ in $(seq 150); do pgrep -f "$1" >/dev/null || break; sleep 0.2; done
  sync
  sleep 3
}

# wrk with one of our load scripts plus the JSON reporter; prints the JSON line.
run_wrk() { # script url conns
  cat "$root/benches/wrk/$1" "$root/benches/wrk/report.lua" >"$work/load.lua"
  wrk -t1 -c"$3" -d"${secs}s" --timeout 10s -s "$work/load.lua" "$2" | sed -n 's/^WRK_JSON //p'
}

machine=$(python3 - <<'EOF'
import json, os, platform
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
mem = int(next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal"))) // 1024
print(json.dumps({"cpus": os.cpu_count(), "cpu": cpu, "mem_mib": mem, "kernel": platform.release()}))
EOF
)
echo "machine: $machine"

# ---- etcd ----
echo "== etcd: three members on loopback"
cluster="n1=http://127.0.0.1:12380,n2=http://127.0.0.1:22380,n3=http://127.0.0.1:32380"
for i in 1 2 3; do
  etcd --name "n$i" --data-dir "$work/etcd/n$i" \
    --listen-peer-urls "http://127.0.0.1:${i}2380" --initial-advertise-peer-urls "http://127.0.0.1:${i}2380" \
    --listen-client-urls "http://127.0.0.1:${i}2379" --advertise-client-urls "http://127.0.0.1:${i}2379" \
    --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token compare \
    >"$work/etcd-n$i.log" 2>&1 &
  etcd_pids+=($!)
done
endpoints=127.0.0.1:12379,127.0.0.1:22379,127.0.0.1:32379
for _ in $(seq 100); do
  ETCDCTL_API=3 etcdctl --endpoints=$endpoints endpoint health >/dev/null 2>&1 && break
  sleep 0.2
done
etcd_version=$(etcd --version | sed -n 1p)  # sed reads it all: head would end etcd with SIGPIPE under pipefail
leader=$(ETCDCTL_API=3 etcdctl --endpoints=$endpoints endpoint status -w json |
  python3 -c 'import sys,json; s=json.load(sys.stdin); print(next(e["Endpoint"] for e in s if e["Status"]["leader"]==e["Status"]["header"]["member_id"]))')
echo "etcd leader: $leader ($etcd_version)"
: >"$work/etcd.jsonl"
for c in $conns; do
  r=$(run_wrk etcd-put.lua "http://$leader" "$c")
  echo "etcd  c=$c $r"
  echo "{\"system\":\"etcd\",\"connections\":$c,\"wrk\":$r}" >>"$work/etcd.jsonl"
done
for p in "${etcd_pids[@]}"; do kill "$p" 2>/dev/null || true; done
wait "${etcd_pids[@]}" 2>/dev/null || true
etcd_pids=()
settle "$work/etcd"

# ---- RabbitMQ ----
echo "== RabbitMQ: three nodes on loopback, a quorum queue"
# Debian's package may start a broker of its own on install: it would hold 5672.
if command -v service >/dev/null; then service rabbitmq-server stop >/dev/null 2>&1 || true; fi
rabbitmq_version=$("$root/benches/rabbitmq.sh" start "$work/rabbitmq" | tail -n 1)
echo "RabbitMQ $rabbitmq_version"
: >"$work/rabbitmq.jsonl"
for c in $conns; do
  # The queue is declared through node 1, which then holds its leader.
  r=$("$amqp_load" --uri "amqp://127.0.0.1:5672/%2f" -c "$c" -d "$secs" | sed -n 's/^WRK_JSON //p')
  echo "rabbitmq c=$c $r"
  echo "{\"system\":\"rabbitmq\",\"connections\":$c,\"wrk\":$r}" >>"$work/rabbitmq.jsonl"
done
"$root/benches/rabbitmq.sh" stop "$work/rabbitmq" >/dev/null 2>&1 || true
settle "$work/rabbitmq"

# ---- Session Queue ----
echo "== Session Queue: three nodes on loopback"
export SQ_CLUSTER_DATA="$work/sq" SQ_API_PORT_BASE=27000 SQ_PEER_PORT_BASE=28000 SQ_BIN="$bin"
"$root/cluster/up.sh" | tail -n 1
leader_id=$(curl -fsS "http://127.0.0.1:27001/v1/cluster?local=true" | python3 -c 'import sys,json; print(json.load(sys.stdin)["leader"])')
api="127.0.0.1:$((27000 + leader_id))"
session=$(curl -fsS -X POST "http://$api/v1/sessions" -d '{"owner":"compare","retention_ms":600000}' |
  python3 -c 'import sys,json; print(json.load(sys.stdin)["id"])')
: >"$work/sq.jsonl"
for c in $conns; do
  r=$(SESSION=$session run_wrk submit.lua "http://$api" "$c")
  echo "ours  c=$c $r"
  echo "{\"system\":\"session-queue\",\"connections\":$c,\"wrk\":$r}" >>"$work/sq.jsonl"
done
# A fresh cluster for each of the project's own benchmarks, so none runs on the
# hundreds of thousands of tasks the previous one left behind.
fresh_cluster() {
  "$root/cluster/down.sh" --wipe >/dev/null
  "$root/cluster/up.sh" >/dev/null
  leader_id=$(curl -fsS "http://127.0.0.1:27001/v1/cluster?local=true" | python3 -c 'import sys,json; print(json.load(sys.stdin)["leader"])')
  api="127.0.0.1:$((27000 + leader_id))"
}
# own NAME "DESCRIPTION" MODE ARGS...: one run of the project's load generator on a
# fresh cluster; --nodes is the leader unless ARGS name other nodes.
all="127.0.0.1:27001,127.0.0.1:27002,127.0.0.1:27003"
: >"$work/own.jsonl"
own() {
  local name=$1 description=$2 mode=$3
  shift 3
  echo "== Session Queue: $description"
  fresh_cluster
  local nodes=$api
  if [ "${1:-}" = "--all-nodes" ]; then nodes=$all; shift; fi
  "$bin" bench "$mode" --nodes "$nodes" -d "$secs" --json "$work/$name.json" "$@" | tail -n 2
  echo "{\"name\":\"$name\",\"description\":\"$description\",\"mode\":\"$mode\"}" >>"$work/own.jsonl"
}
own batch "batch submits, 4 connections, 1,000 tasks a call" batch -c 4 --batch-size 1000
own batch-5000 "batch submits, 4 connections, 5,000 tasks a call" batch -c 4 --batch-size 5000
own lifecycle "full lifecycles, k=1, 256 in flight, 8 miners, all calls to the leader" \
  lifecycle -c 256 --miners 8 --miner-capacity 64
own lifecycle-spread "full lifecycles, k=1, 256 in flight, 8 miners, calls spread over the three nodes" \
  lifecycle --all-nodes -c 256 --miners 8 --miner-capacity 64
own lifecycle-steps "full lifecycles, k=1, 256 in flight, 8 miners stepping in bulk (--batch-steps), all calls to the leader" \
  lifecycle -c 256 --miners 8 --miner-capacity 64 --batch-steps
own lifecycle-steps-spread "full lifecycles, k=1, 256 in flight, 8 miners stepping in bulk (--batch-steps), calls spread over the three nodes" \
  lifecycle --all-nodes -c 256 --miners 8 --miner-capacity 64 --batch-steps
"$root/cluster/down.sh" --wipe >/dev/null

python3 "$root/benches/report.py" "$work" "$out" "$machine" "$etcd_version" "$secs" "$rabbitmq_version"
echo "results in $out"
