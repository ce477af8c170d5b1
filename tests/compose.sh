#!/usr/bin/env bash
# Tests the container deployment for real: builds the node image (cluster/image.sh),
# starts cluster/docker-compose.yml as a throw-away compose project on free loopback
# ports, waits for three healthy containers, then runs the ignored Rust test
# tests/compose.rs against them:
#
#   - a task's whole life (session, miners, submit, ack, precommit, commit) with
#     every call sent to one container, for each container, the result read from all;
#   - the leader's container stopped (`docker stop`), then in a second round killed
#     (`docker kill`), while idempotent submits go on through the other two: every
#     acknowledged task must be on every node, and the container catches up when
#     started again;
#   - a container cut off its network (`docker network disconnect`), the leader and
#     then a follower: the other two keep taking writes, and it catches up once
#     reconnected.
#
# Everything the project created (containers, network, volumes) is removed at the
# end, on failure too. Without a Docker engine it prints why and exits 0.
#
# Settings: SQ_IMAGE (session-queue:latest), and those of cluster/image.sh.
# --tls: the same against the TLS cluster (cluster/docker-compose.tls.yml: https on
# the APIs, mutual TLS between the nodes), the test trusting its CA.
set -euo pipefail

tls=false
for arg in "$@"; do
  case "$arg" in
    --tls) tls=true ;;
    *) echo "usage: $0 [--tls]" >&2; exit 2 ;;
  esac
done

root=$(cd "$(dirname "$0")/.." && pwd)
started=$SECONDS

if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
  echo "compose test skipped: no Docker engine here (docker info failed)"
  exit 0
fi
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose)
else
  echo "compose test: a Docker engine is here but neither 'docker compose' nor 'docker-compose'" >&2
  exit 1
fi

export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/session-queue/target}
export SQ_IMAGE=${SQ_IMAGE:-session-queue:latest}
# The test restarts containers itself; no restart policy may do it behind its back.
export SQ_RESTART=no
export SQ_PUBLISH_ADDR=127.0.0.1
# A cluster secret of this run's own: the compose file refuses its public example.
SQ_CLUSTER_SECRET=${SQ_CLUSTER_SECRET:-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')}
export SQ_CLUSTER_SECRET
read -r SQ_NODE1_API_PORT SQ_NODE2_API_PORT SQ_NODE3_API_PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
')
export SQ_NODE1_API_PORT SQ_NODE2_API_PORT SQ_NODE3_API_PORT
project="sqcomposetest$$"
services=(node1 node2 node3)

files=(-f "$root/cluster/docker-compose.yml")
$tls && files+=(-f "$root/cluster/docker-compose.tls.yml")
dc() { "${compose[@]}" -p "$project" "${files[@]}" "$@"; }

log() { echo "[compose.sh $((SECONDS - started))s] $*"; }

teardown() {
  dc down -v --remove-orphans -t 5 >/dev/null 2>&1 || true
  local left
  left=$( (docker ps -aq --filter "label=com.docker.compose.project=$project"
    docker volume ls -q --filter "label=com.docker.compose.project=$project"
    docker network ls -q --filter "label=com.docker.compose.project=$project") 2>/dev/null || true)
  if [ -n "$left" ]; then
    echo "compose test: left behind by project $project: $left" >&2
    return 1
  fi
}

on_exit() {
  local rc=$?
  trap - EXIT
  [ -z "${ca_tmp:-}" ] || rm -f "$ca_tmp"
  if [ "$rc" -ne 0 ]; then
    echo "compose test FAILED (exit $rc) after $((SECONDS - started)) s; last lines of each container:" >&2
    dc logs --no-color --tail 40 >&2 2>/dev/null || true
  fi
  teardown || rc=1
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

log "building the image $SQ_IMAGE"
bash "$root/cluster/image.sh"
# Build the test before the containers start, and run that very binary below: no
# compile (or wait for cargo's lock) while the cluster is up. It is the test of
# `cargo test --release --test compose -- --ignored --nocapture`.
log "building the test"
test_bin=$(cd "$root" && cargo test --release --quiet --test compose --no-run --message-format=json |
  python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "compose" and m.get("executable"):
        print(m["executable"])
')
[ -x "$test_bin" ] || { echo "compose test: no test binary from cargo" >&2; exit 1; }

log "starting compose project $project (API on 127.0.0.1:$SQ_NODE1_API_PORT, :$SQ_NODE2_API_PORT, :$SQ_NODE3_API_PORT)"
dc up -d

containers=()
for s in "${services[@]}"; do
  id=$(dc ps -q "$s")
  [ -n "$id" ] || { echo "compose test: no container for $s" >&2; exit 1; }
  containers+=("$id")
done
network=$(docker inspect -f '{{range $name, $_ := .NetworkSettings.Networks}}{{$name}} {{end}}' "${containers[0]}" | awk '{print $1}')
[ -n "$network" ] || { echo "compose test: node1 has no network" >&2; exit 1; }

# Health checks: each container reports healthy once its GET /ready answers 200.
deadline=$((SECONDS + 120))
while :; do
  states=()
  for id in "${containers[@]}"; do
    states+=("$(docker inspect -f '{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$id")")
  done
  [ "${states[*]}" = "running/healthy running/healthy running/healthy" ] && break
  for st in "${states[@]}"; do
    case "$st" in running/*) ;; *) echo "compose test: a container is not running: ${states[*]}" >&2; exit 1 ;; esac
  done
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "compose test: containers not healthy in 120 s: ${states[*]}" >&2
    exit 1
  fi
  sleep 1
done
log "three healthy containers on network $network"

export SQ_COMPOSE_APIS="127.0.0.1:$SQ_NODE1_API_PORT,127.0.0.1:$SQ_NODE2_API_PORT,127.0.0.1:$SQ_NODE3_API_PORT"
export SQ_COMPOSE_CONTAINERS
SQ_COMPOSE_CONTAINERS=$(IFS=,; echo "${containers[*]}")
export SQ_COMPOSE_SERVICES
SQ_COMPOSE_SERVICES=$(IFS=,; echo "${services[*]}")
export SQ_COMPOSE_NETWORK="$network"
# The nodes' API key, if the environment file sets one.
env_file=${SQ_ENV_FILE:-compose.env}
[[ "$env_file" = /* ]] || env_file="$root/cluster/$env_file"
key=$(sed -n 's/^SQ_API_KEY=//p' "$env_file" | tail -n 1)
if [ -n "$key" ]; then export SQ_API_KEY="$key"; else unset SQ_API_KEY; fi

if $tls; then
  # The CA the certs service made, for the test's https clients.
  ca_tmp=$(mktemp)
  export SQ_CA_FILE="$ca_tmp"
  dc run --rm --no-deps --entrypoint cat certs /tls/ca.pem >"$SQ_CA_FILE"
  log "TLS: the nodes' CA is in $SQ_CA_FILE"
else
  unset SQ_CA_FILE
fi

(cd "$root" && "$test_bin" --ignored --nocapture)

log "tearing down"
trap - EXIT
teardown
[ -z "${ca_tmp:-}" ] || rm -f "$ca_tmp"
echo "compose test passed in $((SECONDS - started)) s ($($tls && echo "TLS, ")image $SQ_IMAGE, $("${compose[@]}" version --short 2>/dev/null || echo compose))"
