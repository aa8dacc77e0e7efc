#!/usr/bin/env bash
# Success and action jerk vs simulated inference delay, the same unseen seeds for every configuration (paired).
#   examples/delay_sweep.sh [CHECKPOINT] [OUT_DIR] [EPISODES_PER_TASK]
# Modes: naive asynchronous execution (8 actions per request; the chunk computed from tick t is usable at t + D,
# the robot executing the previous one until then) and temporal ensembling (a chunk every tick, each usable D
# ticks late). Delays in control ticks at 80 Hz: 0, 4, 8, 12 = 0, 50, 100, 150 ms. Resumable: a configuration
# whose result file exists is skipped.
set -euo pipefail
CKPT=${1:-checkpoints/default}
OUT=${2:-runs/delay-sweep}
EPISODES=${3:-10}
RFM=${RFM:-rfm}
WORKERS=${WORKERS:-1}
mkdir -p "$OUT"
run() {  # name, then rfm eval options
  local name=$1; shift
  [ -f "$OUT/$name.json" ] && { echo "== $name: done"; return; }
  echo "== $name"
  $RFM eval --checkpoint "$CKPT" --tasks mt10 --episodes "$EPISODES" --workers "$WORKERS" --no-progress \
    --out "$OUT/$name.json" "$@"
}
for d in 0 4 8 12; do run "async-k8-d$d" --action-steps 8 --delay "$d"; done
for d in 0 8; do run "ensemble-d$d" --ensemble --delay "$d"; done
