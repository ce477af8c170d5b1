#!/usr/bin/env bash
# Runs every test of Session Queue: unit and property tests, openraft's storage
# suite, and the integration tests that start real node processes on free loopback
# ports. Installs missing system packages first (see cluster/install-deps.sh).
# Extra arguments go to `cargo test` (e.g. a test name filter).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
"$root/cluster/install-deps.sh"
export PATH="$HOME/.cargo/bin:$PATH"
# One build profile (release) for tests, scripts and benchmarks, in a target
# directory outside the clone so every checkout reuses the (large) RocksDB build.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/session-queue/target}
cd "$root"
cargo test --release "$@"
# On a full run (no arguments): the Python client's suite against a real cluster,
# and the operator page in a real browser (headless Chromium).
if [ $# -eq 0 ]; then
  "$root/tests/python.sh"
  "$root/tests/page.sh"
fi
