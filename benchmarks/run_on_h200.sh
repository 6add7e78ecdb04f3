#!/usr/bin/env bash
# One-shot GPU suite for the device tool (issue 12). From the repository root on the H200:
#   bash benchmarks/run_on_h200.sh        (device tool: timeout_s=480)
# The suite stops starting rows after --budget-s (300 s; the whole-ensemble rows have 120 s
# more) and rewrites its JSON after every row, so `timeout 425` (a hard stop well inside the
# tool's 480 s, after at most 20 s of the dispatch probe) still leaves results;
# 480 s + the machine's start (28 s on 2026-11-30) leaves room for one rerun in 15 minutes.
# Extra arguments go to the suite, e.g. a rerun filling skipped rows:
#   bash benchmarks/run_on_h200.sh --rows '14:map' --skip optimizer step_loop ensemble
set -uo pipefail
export PYTHONUNBUFFERED=1
out=${OUT:-/tmp/out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/nvidia-smi.txt" 2>&1
# The host's cost per buffer of a jitted call (a loop member's step was dispatch-bound there).
timeout 20 python3 benchmarks/dispatch_buffers.py --output "$out/dispatch_buffers_gpu.json" 2>&1 \
  | tee "$out/dispatch_buffers_gpu.log"
timeout 425 python3 benchmarks/trainer.py --suite gpu --budget-s 300 \
  --output "$out/trainer_gpu.json" "$@" 2>&1 | tee "$out/trainer_gpu.log"
status=${PIPESTATUS[0]}
echo "suite exit status $status (124: hit the 425 s timeout; the JSON holds the rows done)"
exit "$status"
