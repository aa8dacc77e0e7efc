#!/usr/bin/env bash
# Success and action jerk vs simulated inference delay, the same unseen seeds for every configuration (paired).
#   examples/delay_sweep.sh [CHECKPOINT] [OUT_DIR] [EPISODES_PER_TASK]
# Modes: naive asynchronous execution (8 actions per request; the chunk computed from tick t is usable at t + D,
# the robot executing the previous one until then) and temporal ensembling (a chunk every tick, each usable D
# ticks late); and, for a checkpoint trained for delay-aware continuation (model.prefix_max > 0), continuation:
# 8 actions per request, each request carrying the actions the robot executes until its answer is usable, which
# the new chunk continues. Delays in control ticks at 80 Hz: 0, 4, 8, 12 = 0, 50, 100, 150 ms. Resumable: a
# configuration whose result file exists is skipped. SEED sets the first evaluation seed (another block of
# unseen episodes: SEED=1000010).
set -euo pipefail
CKPT=${1:-checkpoints/default}
OUT=${2:-runs/delay-sweep}
EPISODES=${3:-10}
RFM=${RFM:-rfm}
WORKERS=${WORKERS:-1}
SEED=${SEED:-1000000}
mkdir -p "$OUT"
run() {  # name, then rfm eval options
  local name=$1; shift
  [ -f "$OUT/$name.json" ] && { echo "== $name: done"; return; }
  echo "== $name"
  $RFM eval --checkpoint "$CKPT" --tasks mt10 --episodes "$EPISODES" --workers "$WORKERS" --no-progress \
    --seed "$SEED" --out "$OUT/$name.json" "$@"
}
prefix_max=$(python3 -c "import json; print(json.load(open('$CKPT/config.json'))['model'].get('prefix_max', 0))")
for d in 0 4 8 12; do run "async-k8-d$d" --action-steps 8 --delay "$d"; done
for d in 0 4 8 12; do run "ensemble-d$d" --ensemble --delay "$d"; done
if [ "$prefix_max" -gt 0 ]; then  # at D = 0 nothing is committed: the async-k8-d0 run is that cell
  for d in 4 8 12; do run "continuation-k8-d$d" --action-steps 8 --delay "$d" --continuation; done
fi
