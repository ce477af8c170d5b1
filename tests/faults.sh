#!/usr/bin/env bash
# The long fault run: the harness of tests/faults (three node processes, or
# SQ_FAULT_NODES of them; clients, readers, simulated miners, the nemesis and the
# checker; see docs/FAULTS.md) with faults injected for SQ_FAULT_SECS seconds
# (default 600). The history, the checker's report (report.txt, report.json) and,
# on failure, the node logs go to SQ_FAULT_OUT (default: fault-runs/<date> in the
# build's target directory). Run it as root for network partitions (network
# namespaces); otherwise the run goes on without them and says so (under CI=true
# it fails instead). Exits non-zero on any violation.
# Other settings: SQ_FAULT_NODES (node count, default 3; e.g. 5), SQ_FAULT_KINDS
# (comma-separated fault kinds; default every kind that applies), SQ_FAULT_SEED
# (replay a fault schedule), SQ_FAULT_DRAIN_SECS.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
"$root/cluster/install-deps.sh"
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/session-queue/target}
export SQ_FAULT_SECS=${SQ_FAULT_SECS:-600}
export SQ_FAULT_OUT=${SQ_FAULT_OUT:-$CARGO_TARGET_DIR/fault-runs/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$SQ_FAULT_OUT"
cd "$root"
echo "fault run: ${SQ_FAULT_NODES:-3} nodes, ${SQ_FAULT_SECS} s of faults; history and report in $SQ_FAULT_OUT"
status=0
cargo test --release --test faults -- --exact fault_run_loses_nothing --nocapture "$@" 2>&1 \
    | tee "$SQ_FAULT_OUT/run.log" || status=$?
echo
if [[ -f "$SQ_FAULT_OUT/report.txt" ]]; then
    echo "checker report ($SQ_FAULT_OUT/report.txt):"
    cat "$SQ_FAULT_OUT/report.txt"
else
    echo "no report written; see $SQ_FAULT_OUT/run.log"
    status=1
fi
exit "$status"
