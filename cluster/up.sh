#!/usr/bin/env bash
# Starts a three-node Session Queue cluster on this machine, building it first if
# needed, and returns once the cluster has a leader.
#
#   API    127.0.0.1:7001, :7002, :7003   (SQ_API_PORT_BASE, default 7000)
#   peers  127.0.0.1:8001, :8002, :8003   (SQ_PEER_PORT_BASE, default 8000)
#   data and logs under cluster/data/     (SQ_CLUSTER_DATA)
#
# Idempotent: run again, it starts only the nodes that are not running; a restarted
# node rejoins with its data. Only the very first run creates the cluster
# (--initial-cluster-state new, with a random --initial-cluster-token); later runs
# start nodes with `existing`, so a node whose data directory is gone comes back
# blank: it does not vote as the member it was (see docs/DEPLOY.md to replace it). SQ_API_KEY, when set, is required by the API;
# SQ_MINER_KEY, when set, gates miner registration.
#
# Secrets, kept with the data (mode 0600) so restarts reuse them:
#   cluster-secret  the node-to-node secret (or SQ_CLUSTER_SECRET)
#   admin-key       the operator key for `cluster add` / `cluster remove` (or
#                   SQ_ADMIN_KEY): SQ_ADMIN_KEY=$(cat cluster/data/admin-key)
# Stop with cluster/down.sh (--wipe also deletes the data).
#
# --tls: https on the API and mutual TLS between the nodes. The first run makes a
# throwaway CA and a certificate per node (`session-queue certs`) in
# cluster/data/tls/; later runs (with --tls or without) keep TLS while that
# directory is there. Clients trust the CA with --ca-file / SQ_CA_FILE (curl:
# --cacert): SQ_CA_FILE=cluster/data/tls/ca.pem session-queue cluster status
set -euo pipefail

tls=false
for arg in "$@"; do
  case "$arg" in
    --tls) tls=true ;;
    *) echo "usage: $0 [--tls]" >&2; exit 2 ;;
  esac
done

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
data=${SQ_CLUSTER_DATA:-$here/data}
api_base=${SQ_API_PORT_BASE:-7000}
peer_base=${SQ_PEER_PORT_BASE:-8000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/session-queue/target}
export PATH="$HOME/.cargo/bin:$PATH"

"$here/install-deps.sh"
if [ -z "${SQ_BIN:-}" ]; then
  SQ_BIN="$CARGO_TARGET_DIR/release/session-queue"
  if [ -t 2 ]; then
    # On a terminal: cargo's progress, and a word first when nothing is built yet.
    [ -x "$SQ_BIN" ] || echo "building session-queue (release): the first build compiles RocksDB from source and takes about 15 minutes" >&2
    (cd "$root" && cargo build --release)
  else
    (cd "$root" && cargo build --release --quiet)
  fi
fi

mkdir -p "$data"
# One secret per cluster, kept with its data so restarts reuse it.
if [ -n "${SQ_CLUSTER_SECRET:-}" ]; then
  secret=$SQ_CLUSTER_SECRET
elif [ -s "$data/cluster-secret" ]; then
  secret=$(cat "$data/cluster-secret")
else
  secret=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  (umask 077 && printf '%s' "$secret" >"$data/cluster-secret")
fi
# The operator key, likewise: membership changes need it.
if [ -n "${SQ_ADMIN_KEY:-}" ]; then
  admin_key=$SQ_ADMIN_KEY
  admin_where="SQ_ADMIN_KEY"
elif [ -s "$data/admin-key" ]; then
  admin_key=$(cat "$data/admin-key")
  admin_where="$data/admin-key"
else
  admin_key=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  (umask 077 && printf '%s' "$admin_key" >"$data/admin-key")
  admin_where="$data/admin-key"
fi
# Files from before these were made private, too.
chmod 600 "$data/cluster-secret" "$data/admin-key" 2>/dev/null || true

# TLS: certificates made once; their directory also marks the cluster as TLS, so a
# restart without --tls keeps it.
tls_dir="$data/tls"
if [ -s "$tls_dir/ca.pem" ]; then
  tls=true
elif $tls; then
  for i in 1 2 3; do
    if [ -s "$data/node$i.pid" ] && kill -0 "$(cat "$data/node$i.pid")" 2>/dev/null; then
      echo "node $i runs without TLS: stop the cluster first (cluster/down.sh), then up.sh --tls" >&2
      exit 1
    fi
  done
  "$SQ_BIN" certs --out "$tls_dir" --nodes node1,node2,node3 >/dev/null
  echo "made a throwaway CA and node certificates in $tls_dir"
fi
scheme=http
curl_tls=()
if $tls; then
  scheme=https
  curl_tls=(--cacert "$tls_dir/ca.pem")
fi
# A brand-new cluster only if no node has ever joined one (has a cluster id).
state=new
for i in 1 2 3; do
  if [ -s "$data/node$i/CLUSTER_ID" ] || [ -d "$data/node$i/db" ]; then state=existing; fi
done
if [ "$state" = new ] || [ ! -s "$data/cluster-token" ]; then
  head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$data/cluster-token"
fi
token=$(cat "$data/cluster-token")
blank=()

members=""
for i in 1 2 3; do
  members+="${members:+,}$i=127.0.0.1:$((api_base + i))/127.0.0.1:$((peer_base + i))"
done

running() { [ -s "$data/node$1.pid" ] && kill -0 "$(cat "$data/node$1.pid")" 2>/dev/null; }

for i in 1 2 3; do
  if [ "$state" = existing ] && [ ! -s "$data/node$i/CLUSTER_ID" ]; then
    blank+=("$i")
  fi
  if running "$i"; then
    echo "node $i already running (pid $(cat "$data/node$i.pid"))"
    continue
  fi
  tls_args=()
  if $tls; then
    tls_args=(--tls-cert "$tls_dir/node$i.pem" --tls-key "$tls_dir/node$i-key.pem"
      --peer-tls-cert "$tls_dir/node$i.pem" --peer-tls-key "$tls_dir/node$i-key.pem"
      --peer-ca "$tls_dir/ca.pem")
  fi
  SQ_CLUSTER_SECRET="$secret" SQ_ADMIN_KEY="$admin_key" nohup "$SQ_BIN" node \
    --id "$i" \
    --api-addr "127.0.0.1:$((api_base + i))" \
    --peer-addr "127.0.0.1:$((peer_base + i))" \
    --data-dir "$data/node$i" \
    --initial-cluster "$members" \
    "${tls_args[@]}" \
    --initial-cluster-state "$state" \
    --initial-cluster-token "$token" \
    >>"$data/node$i.log" 2>&1 </dev/null &
  echo $! >"$data/node$i.pid"
  echo "node $i started (pid $!), API $scheme://127.0.0.1:$((api_base + i)), log $data/node$i.log"
done

for i in "${blank[@]}"; do
  echo "node $i has no data (its directory was lost) but the cluster exists: it runs blank and" >&2
  echo "  does not vote as the member it was. Replace it (docs/DEPLOY.md, 'More nodes, and" >&2
  echo "  replacing one'): cluster remove $i, then add a node with a new id." >&2
done

# Wait until every node (but blank ones) answers and one of them leads.
deadline=$((SECONDS + 90))
until
  ready=0
  for i in 1 2 3; do
    curl -fsS "${curl_tls[@]}" -o /dev/null "$scheme://127.0.0.1:$((api_base + i))/ready" 2>/dev/null && ready=$((ready + 1))
  done
  [ "$ready" -ge $((3 - ${#blank[@]})) ]
do
  for i in 1 2 3; do
    if ! running "$i"; then
      echo "node $i exited; last lines of its log:" >&2
      tail -n 20 "$data/node$i.log" >&2
      exit 1
    fi
  done
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "the cluster did not get ready in 90 s; see $data/node*.log" >&2
    exit 1
  fi
  sleep 0.3
done
ask=1
for i in 1 2 3; do
  case " ${blank[*]} " in *" $i "*) ;; *) ask=$i; break ;; esac
done
leader=$(curl -fsS "${curl_tls[@]}" "$scheme://127.0.0.1:$((api_base + ask))/v1/cluster?local=true" ${SQ_API_KEY:+-H "Authorization: Bearer $SQ_API_KEY"} | sed -n 's/.*"leader":\([0-9]*\).*/\1/p')
echo "cluster ready: leader is node ${leader:-?}; try: curl -s ${curl_tls[*]:+${curl_tls[*]} }$scheme://127.0.0.1:$((api_base + 1))/v1/cluster"
if $tls; then
  echo "TLS: API over https, mutual TLS between nodes; clients trust $tls_dir/ca.pem:"
  echo "  SQ_CA_FILE=$tls_dir/ca.pem session-queue cluster status"
fi
if [ "$admin_where" = SQ_ADMIN_KEY ]; then
  echo "admin key (for cluster add/remove): the SQ_ADMIN_KEY you gave"
else
  echo "admin key (for cluster add/remove): in $admin_where (mode 0600); e.g. SQ_ADMIN_KEY=\$(cat $admin_where) session-queue cluster add ..."
fi
