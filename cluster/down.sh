#!/usr/bin/env bash
# Stops the nodes started by cluster/up.sh (SIGTERM, then SIGKILL after 15 s).
# --wipe also deletes their data and logs.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
data=${SQ_CLUSTER_DATA:-$here/data}
wipe=false
for arg in "$@"; do
  case "$arg" in
    --wipe) wipe=true ;;
    *) echo "usage: $0 [--wipe]" >&2; exit 2 ;;
  esac
done

pids=()
for f in "$data"/node*.pid; do
  [ -e "$f" ] || continue
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" && pids+=("$pid")
  fi
  rm -f "$f"
done
for pid in "${pids[@]}"; do
  for _ in $(seq 150); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
done
echo "stopped ${#pids[@]} node(s)"
if $wipe; then
  rm -rf "$data"
  echo "wiped $data"
fi
