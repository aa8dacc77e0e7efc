#!/usr/bin/env bash
# checkpoints/base: a model pretrained on the 38 tasks of rfm.sim.metaworld.BASE38_TASKS and on no other task, the
# base `rfm adapt` fine-tunes to held-out tasks (examples/adapt_ml45.sh). Sized for one GPU; each stage is skipped
# when its output is complete, so rerunning continues where it stopped.
#   1. EPISODES scripted demos per task (seeds 0..), corner + topview at 128 px, jittered starts, lossless, with the
#      simulator's object/goal positions (pretraining may use simulator aids; adaptation may not).
#   2. before training, the dataset's task list (meta/tasks, and every episode's env task) is checked against the 38
#      (`rfm data check-tasks`): a task outside them stops the script, named.
#   3. training with checkpoints/default's options (examples/default_checkpoint.sh, its config.json meta.training):
#      3 triangulated points relative to the hand, keypoints trained onto the objects and the goal, chunks of 16,
#      EMA 0.995, tasks balanced, dropout 0; PRESET, STEPS x BATCH at LR.
#   4. the check is recorded in the model card (config.json meta.data.task_check, shown under "Data") and written
#      beside the checkpoint (RUNS_DIR/task_check.json).
#   5. 20 unseen episodes per task (EVAL_EPISODES), recorded in the card; the checkpoint becomes checkpoints/base.
# Usage: examples/pretrain_base.sh [EPISODES] [RUNS_DIR]   (defaults 50, runs/base)
#   PRESET (tiny | small, default small), STEPS (default 30000), BATCH (default 64), LR (default 5e-4), WORKERS
#   (simulation processes, default 8), CACHE_GB (decoded-frame cache, default 16), DATA (dataset directory, or several
#   comma-separated, default data/base38-EPISODES-128ct-j15-env), TRAIN_ARGS (appended to rfm train; later flags win),
#   EVAL_ARGS (appended to rfm eval), TASKS (default base38; a few of them for a quick try, still checked against all
#   38), DEST (where the checkpoint goes, default checkpoints/base), INIT (a checkpoint to continue from instead of
#   starting from scratch, e.g. checkpoints/default, trained on MT10 only: the CPU-sized recipe; its card and lineage
#   are checked against the 38 with the data, and its architecture is kept), WORLD_MODEL (a weight, e.g. 0.1: pretrain
#   with the world-model objective, training aid world_model; give the run its own RUNS_DIR and DEST to compare the two;
#   TRAIN_ARGS="--set aids.world_model.horizon=80" predicts a second ahead instead of one chunk).
set -euo pipefail
cd "$(dirname "$0")/.."
RFM=${RFM:-.venv/bin/rfm}
EPISODES=${1:-50}
OUT=${2:-runs/base}
PRESET=${PRESET:-small}
STEPS=${STEPS:-30000}
BATCH=${BATCH:-64}
LR=${LR:-5e-4}
WORKERS=${WORKERS:-8}
CACHE_GB=${CACHE_GB:-16}
EVAL_EPISODES=${EVAL_EPISODES:-20}
DATA=${DATA:-data/base38-$EPISODES-128ct-j15-env}
TASKS=${TASKS:-base38}
DEST=${DEST:-checkpoints/base}
MODEL='{"vision_keypoint_source": "branch", "vision_points": 3, "relative_points": true, "dropout": 0.0}'
export MUJOCO_GL=${MUJOCO_GL:-osmesa} HF_HUB_OFFLINE=1

steps_done() {  # the steps a run's checkpoint records, 0 if none
  python3 -c "import json; print(json.load(open('$1/checkpoint/config.json'))['meta']['training']['steps_done'])" \
    2>/dev/null || echo 0
}

test -e "${DATA%%,*}" || $RFM data generate metaworld --tasks "$TASKS" --episodes "$EPISODES" --cameras corner,topview \
  --size 128 --start-jitter 15 --workers "$WORKERS" --out "$DATA"

echo "== $DATA: the 38 base tasks and no other?"
mkdir -p "$OUT"
CHECK=(--tasks base38 --out "$OUT/task_check.json" ${INIT:+--init "$INIT"})
$RFM data check-tasks "$DATA" "${CHECK[@]}"

if [ "$(steps_done "$OUT")" = "$STEPS" ]; then
  echo "== $OUT: $STEPS steps done"
else
  # shellcheck disable=SC2086  # TRAIN_ARGS is a list of flags
  if [ -n "${INIT:-}" ]; then ARCH=(--init "$INIT"); else ARCH=(--preset "$PRESET" --model "$MODEL" --head chunk); fi
  $RFM train --dataset "$DATA" --out "$OUT" "${ARCH[@]}" --resume \
    --steps "$STEPS" --batch-size "$BATCH" --lr "$LR" --warmup-steps 200 --ema-decay 0.995 --chunk-size 16 \
    --save-every 1000 --balance tasks --set aids.keypoints.weight=1 --frame-cache-gb "$CACHE_GB" --num-workers 4 \
    --no-progress ${WORLD_MODEL:+--set aids.world_model.weight=$WORLD_MODEL} ${TRAIN_ARGS:-}
fi

$RFM data check-tasks "$DATA" "${CHECK[@]}" --record "$OUT/checkpoint"

RESULTS="$OUT/$TASKS-${EVAL_EPISODES}ep.json"
# shellcheck disable=SC2086  # EVAL_ARGS is a list of flags
test -f "$RESULTS" || $RFM eval --checkpoint "$OUT/checkpoint" --tasks "$TASKS" --episodes "$EVAL_EPISODES" \
  --workers "$WORKERS" --update-card --no-progress --out "$RESULTS" ${EVAL_ARGS:-}

rm -rf "$DEST.new" && cp -r "$OUT/checkpoint" "$DEST.new"
rm -rf "$DEST.new/training_state" "$DEST" && mv "$DEST.new" "$DEST"
echo "== $DEST <- $OUT/checkpoint (tasks checked: $OUT/task_check.json)"
