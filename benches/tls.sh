#!/usr/bin/env bash
# What TLS costs: `session-queue bench submit` against a three-node cluster without
# TLS and with it (cluster/up.sh --tls: https on the API, mutual TLS between the
# nodes), at 1 and 64 connections, back to back, a fresh cluster for every run, the
# load on the leader. Rounds alternate which goes first, so a drift of the machine
# (other work on it) does not always fall on the same side. Prints a markdown table
# of every run, and the median per setting.
#
#   benches/tls.sh [OUT_DIR]       (default: bench-results/tls-<date>)
#   SQ_TLS_SECS=10 SQ_TLS_CONNS="1 64" SQ_TLS_ROUNDS=3 SQ_BIN=...
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
secs=${SQ_TLS_SECS:-10}
conns=${SQ_TLS_CONNS:-"1 64"}
rounds=${SQ_TLS_ROUNDS:-3}
out=${1:-$root/bench-results/tls-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$out"
work=$(mktemp -d)
export SQ_CLUSTER_DATA="$work/cluster" SQ_API_PORT_BASE=27100 SQ_PEER_PORT_BASE=28100
cleanup() {
  "$root/cluster/down.sh" --wipe >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/session-queue/target}
if [ -z "${SQ_BIN:-}" ]; then
  (cd "$root" && cargo build --release --quiet)
  SQ_BIN="$CARGO_TARGET_DIR/release/session-queue"
fi
export SQ_BIN

# One run: a fresh cluster (TLS or not), `bench submit` on its leader, torn down.
run() { # mode(plain|tls) conns round
  local mode=$1 c=$2 r=$3 flags=() curl_tls=() scheme=http
  if [ "$mode" = tls ]; then
    flags=(--tls)
    curl_tls=(--cacert "$SQ_CLUSTER_DATA/tls/ca.pem")
    scheme=https
  fi
  "$root/cluster/up.sh" "${flags[@]}" >"$work/up.log" 2>&1 || { cat "$work/up.log" >&2; exit 1; }
  local leader
  leader=$(curl -fsS "${curl_tls[@]}" "$scheme://127.0.0.1:$((SQ_API_PORT_BASE + 1))/v1/cluster?local=true" |
    sed -n 's/.*"leader":\([0-9]*\).*/\1/p')
  local ca=()
  [ "$mode" = tls ] && ca=(--ca-file "$SQ_CLUSTER_DATA/tls/ca.pem")
  "$SQ_BIN" bench submit "${ca[@]}" --nodes "127.0.0.1:$((SQ_API_PORT_BASE + leader))" \
    -c "$c" -d "$secs" --json "$out/$mode-c$c-r$r.json" >"$work/bench.log" 2>&1 ||
    { cat "$work/bench.log" >&2; exit 1; }
  "$root/cluster/down.sh" --wipe >/dev/null
  echo "round $r, $mode, $c connections: $(python3 -c '
import json, sys
o = json.load(open(sys.argv[1]))["operations"][0]
l = o["latency_ms"]
print("%.0f/s p50 %.2f ms p99 %.2f ms errors %d" % (o["ops_per_sec"], l["p50"], l["p99"], o["errors"]))
' "$out/$mode-c$c-r$r.json")" >&2
}

for r in $(seq "$rounds"); do
  for c in $conns; do
    if [ $((r % 2)) -eq 1 ]; then order="plain tls"; else order="tls plain"; fi
    for mode in $order; do run "$mode" "$c" "$r"; done
  done
done

python3 - "$out" "$rounds" $conns <<'EOF' | tee "$out/results.md"
import json, statistics, sys
out, rounds, conns = sys.argv[1], int(sys.argv[2]), [int(c) for c in sys.argv[3:]]
def op(mode, c, r):
    return json.load(open(f"{out}/{mode}-c{c}-r{r}.json"))["operations"][0]
print("| connections | round | plain tasks/s | plain p50 / p99 ms | TLS tasks/s | TLS p50 / p99 ms | TLS/plain |")
print("|---|---|---|---|---|---|---|")
for c in conns:
    for r in range(1, rounds + 1):
        p, t = op("plain", c, r), op("tls", c, r)
        print(f"| {c} | {r} | {p['ops_per_sec']:,.0f} | {p['latency_ms']['p50']:.2f} / {p['latency_ms']['p99']:.2f} "
              f"| {t['ops_per_sec']:,.0f} | {t['latency_ms']['p50']:.2f} / {t['latency_ms']['p99']:.2f} "
              f"| {t['ops_per_sec'] / p['ops_per_sec']:.2f}× |")
    med = lambda mode, f: statistics.median(f(op(mode, c, r)) for r in range(1, rounds + 1))
    rate = lambda o: o["ops_per_sec"]
    p50 = lambda o: o["latency_ms"]["p50"]
    p99 = lambda o: o["latency_ms"]["p99"]
    print(f"| {c} | median | {med('plain', rate):,.0f} | {med('plain', p50):.2f} / {med('plain', p99):.2f} "
          f"| {med('tls', rate):,.0f} | {med('tls', p50):.2f} / {med('tls', p99):.2f} "
          f"| {med('tls', rate) / med('plain', rate):.2f}× |")
EOF
