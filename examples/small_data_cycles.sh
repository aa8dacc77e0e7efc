#!/usr/bin/env bash
# The small-data recipe behind docs/RESULTS.md's 10-demo rows, in one command: CYCLES training cycles of STEPS x 8
# on DATA, the first from scratch, each later one a warm restart from the previous cycle's EMA weights
# (`--init --keep-init-stats`: fresh optimizer, 200-step warm-up, cosine decay, dropout 0), the last at LAST_LR;
# then a closed-loop evaluation of the last cycle on EPISODES unseen seeds per MT10 task.
# Usage: examples/small_data_cycles.sh DATA OUT [CYCLES] [STEPS]
#   DATA is a dataset or a comma-separated list of them; a single one is generated (10 demos per task, 2 x 128 px)
#   when it does not exist, a list is used as given. Cycle k's run is OUT-c<k>; a finished cycle is skipped and an
#   interrupted one resumed, so rerunning the command continues where it stopped.
#   MODEL: the first cycle's model overrides (JSON; default: 3 triangulated points, relative to the hand).
#   PRESET (default tiny; small is the GPU-sized model, 10.5 M parameters with MODEL), BATCH (default 8).
#   THREADS (default 2), LR (default 5e-4), LAST_LR (default 2.5e-4), EPISODES (default 50; 0 skips the evaluation),
#   CACHE_GB (decoded-frame cache, default 3: holds 10 demos per task; 50 need ~4).
set -euo pipefail
cd "$(dirname "$0")/.."
RFM=${RFM:-.venv/bin/rfm}
DATA=$1
OUT=$2
CYCLES=${3:-5}
STEPS=${4:-6000}
PRESET=${PRESET:-tiny}
BATCH=${BATCH:-8}
MODEL=${MODEL:-'{"vision_keypoint_source": "branch", "vision_points": 3, "relative_points": true}'}
THREADS=${THREADS:-2}
LR=${LR:-5e-4}
LAST_LR=${LAST_LR:-2.5e-4}
EPISODES=${EPISODES:-50}
CACHE_GB=${CACHE_GB:-3}
export MUJOCO_GL=${MUJOCO_GL:-osmesa} HF_HUB_OFFLINE=1 OMP_NUM_THREADS=$THREADS

if [[ "$DATA" != *,* && ! -d "$DATA" ]]; then  # a list is used as given: rfm train names a missing member
  echo "== generate $DATA: 10 scripted demos per MT10 task, corner + topview at 128 px"
  $RFM data generate metaworld --tasks mt10 --episodes 10 --cameras corner,topview --size 128 --start-jitter 15 \
    --workers "$THREADS" --out "$DATA"
fi

finished() {  # a cycle is done when its checkpoint records all STEPS steps
  python3 -c "import json,sys; m=json.load(open('$1/checkpoint/config.json')); \
sys.exit(0 if m.get('meta', {}).get('training', {}).get('steps_done') == $STEPS else 1)" 2>/dev/null
}

PREV=""
for k in $(seq 1 "$CYCLES"); do
  RUN="$OUT-c$k"
  lr=$LR; [ "$k" -eq "$CYCLES" ] && [ "$CYCLES" -gt 1 ] && lr=$LAST_LR
  if [ -z "$PREV" ]; then
    start=(--preset "$PRESET" --model "$MODEL")
  else
    start=(--init "$PREV/checkpoint" --keep-init-stats --model '{"dropout": 0.0}')
  fi
  if finished "$RUN"; then
    echo "== cycle $k/$CYCLES: $RUN already finished"
  else
    echo "== cycle $k/$CYCLES: $RUN, $STEPS x $BATCH at lr $lr ${PREV:+from $PREV}"
    # --resume continues an interrupted cycle from its last checkpoint and starts fresh where there is none
    $RFM train --dataset "$DATA" --out "$RUN" "${start[@]}" --resume --head chunk --steps "$STEPS" \
      --batch-size "$BATCH" --lr "$lr" --warmup-steps 200 --ema-decay 0.995 --chunk-size 16 --save-every 500 \
      --balance tasks --set aids.keypoints.weight=1 --frame-cache-gb "$CACHE_GB" --threads "$THREADS" --num-workers 1 --no-progress
  fi
  PREV=$RUN
done

if [ "$EPISODES" -gt 0 ]; then
  echo "== evaluate $PREV on $EPISODES unseen seeds per MT10 task"
  $RFM eval --checkpoint "$PREV/checkpoint" --tasks mt10 --episodes "$EPISODES" --workers "$THREADS" --update-card \
    --out "$OUT-mt10-${EPISODES}ep.json"
fi
