#!/usr/bin/env bash
# A three-node RabbitMQ cluster on loopback for benches/compare.sh, from Debian's
# rabbitmq-server: nodes rabbit1..3@localhost, AMQP on 5672..5674 (below the
# ephemeral port range, so a client's outgoing port never takes one), no plugins,
# data and logs under DIR (owned by the rabbitmq user, which Debian's wrapper runs
# the broker as; so DIR's parents must let that user through).
#
#   benches/rabbitmq.sh start DIR      starts and clusters the three nodes
#   benches/rabbitmq.sh stop DIR       stops them
set -euo pipefail
cmd=${1:?start|stop}
dir=${2:?data directory}
ctl() { rabbitmqctl -n "rabbit$1@localhost" "${@:2}"; }

case $cmd in
start)
  mkdir -p "$dir"
  echo "[]." >"$dir/enabled_plugins"
  for i in 1 2 3; do mkdir -p "$dir/n$i"; done
  chown -R rabbitmq:rabbitmq "$dir"
  for i in 1 2 3; do
    RABBITMQ_NODENAME="rabbit$i@localhost" RABBITMQ_NODE_PORT=$((5671 + i)) \
      RABBITMQ_DIST_PORT=$((25671 + i)) \
      RABBITMQ_MNESIA_BASE="$dir/n$i/mnesia" RABBITMQ_LOG_BASE="$dir/n$i/log" \
      RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" RABBITMQ_PID_FILE="$dir/n$i/pid" \
      RABBITMQ_CONFIG_FILE="$dir/rabbitmq" \
      setsid rabbitmq-server >"$dir/n$i.out" 2>&1 </dev/null &
  done
  for i in 1 2 3; do
    up=""
    for _ in $(seq 120); do
      if ctl "$i" await_startup --timeout 60 >/dev/null 2>&1; then up=1; break; fi
      grep -q "Kernel pid terminated" "$dir/n$i.out" && break
      sleep 1
    done
    [ -n "$up" ] || { echo "rabbit$i did not start; see $dir/n$i.out" >&2; exit 1; }
  done
  for i in 2 3; do
    ctl "$i" stop_app >/dev/null
    ctl "$i" join_cluster rabbit1@localhost >/dev/null
    ctl "$i" start_app >/dev/null
  done
  running=$(ctl 1 cluster_status --formatter json | python3 -c 'import sys,json; print(len(json.load(sys.stdin)["running_nodes"]))')
  [ "$running" = 3 ] || { echo "RabbitMQ cluster has $running running nodes, not 3" >&2; exit 1; }
  ctl 1 version 2>/dev/null | head -1
  ;;
stop)
  for i in 1 2 3; do ctl "$i" stop >/dev/null 2>&1 || true; done
  ;;
*)
  echo "usage: $0 start|stop DIR" >&2
  exit 2
  ;;
esac
