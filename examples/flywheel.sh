#!/usr/bin/env bash
# The deployment flywheel, end to end on one machine:
#   serve a policy with recording on -> a simulated fleet acts through it (the scripted expert labels each step,
#   DAgger-style) -> fine-tune on what the fleet saw -> evaluate before/after on unseen seeds -> export for the edge.
# Fine-tuning aggregates (DAgger): the checkpoint's own training data (DEMOS, read from its model card) plus the
# recording, so what the fleet taught is added without forgetting the rest. DEMOS=none trains on the recording alone.
# The robots run as real ones do: ACTION_STEPS actions per request (default 8), each chunk usable DELAY control ticks
# after its observation (default 0; the robot executes the previous chunk meanwhile), with CONTINUATION=1 sending
# the actions committed for those ticks (a checkpoint with model.prefix_max > 0). They report every tick they
# executed, so the recording holds one frame per control tick; evaluation runs the same way.
# Usage: examples/flywheel.sh [CHECKPOINT] [TASKS] [EPISODES] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
RFM=${RFM:-.venv/bin/rfm}
CKPT=${1:-checkpoints/default}
TASKS=${2:-reach-v3,drawer-open-v3,push-v3}
EPISODES=${3:-10}
STEPS=${4:-400}
OUT=${OUT:-runs/flywheel}
ACTION_STEPS=${ACTION_STEPS:-8}
DELAY=${DELAY:-0}
EXEC="--action-steps $ACTION_STEPS --delay $DELAY"
[ "${CONTINUATION:-0}" = 1 ] && EXEC="$EXEC --continuation"
PORT=${PORT:-8765}
export MUJOCO_GL=${MUJOCO_GL:-osmesa} HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
DEMOS=${DEMOS:-$(python3 -c "import json,sys; print(json.load(open('$CKPT/config.json'))['meta'].get('data', {}).get('dataset', ''))")}
if [ "$DEMOS" = "none" ] || [ -z "$DEMOS" ]; then DEMOS=""; fi
if [ -n "$DEMOS" ] && ! [ -d "${DEMOS%%,*}" ]; then
  echo "the checkpoint was trained on $DEMOS, which is not here: regenerate it (see docs/RESULTS.md) or set DEMOS=none" >&2
  exit 2
fi
rm -rf "$OUT" && mkdir -p "$OUT"

echo "== 1. before: closed-loop success of $CKPT"
$RFM eval --checkpoint "$CKPT" --tasks "$TASKS" --episodes "$EPISODES" $EXEC --out "$OUT/before.json" --no-progress

echo "== 2-3. serve with recording on, the fleet works (expert corrections recorded), fine-tune${DEMOS:+ aggregated with $DEMOS}"
ROBOTS=2 MAX_STEPS=500 PORT=$PORT RFM=$RFM FLEET_ARGS="$EXEC ${FLEET_ARGS:-}" TRAIN_ARGS="--warmup-steps 20 --ema-decay 0.99 --save-every $STEPS --num-workers 0" \
  examples/dagger_round.sh "$CKPT" "${DEMOS:-none}" "$OUT/round" "$TASKS" "$EPISODES" "$STEPS"

echo "== 4. after: same tasks, same unseen seeds"
$RFM eval --checkpoint "$OUT/round/checkpoint" --tasks "$TASKS" --episodes "$EPISODES" $EXEC --out "$OUT/after.json" \
  --no-progress

echo "== 5. export the improved policy for the edge"
$RFM export --checkpoint "$OUT/round/checkpoint" --out "$OUT/export-int8" --precision int8 \
  --calib-dataset "$OUT/round/recorded" --calib-samples 64

python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
b, a = json.load(open(f"{out}/before.json")), json.load(open(f"{out}/after.json"))
print(f"\n{'task':<26}{'before':>8}{'after':>8}")
for t in b["tasks"]:
    print(f"{t:<26}{b['tasks'][t]['success_rate'] * 100:>7.0f}%{a['tasks'][t]['success_rate'] * 100:>7.0f}%")
print(f"{'mean':<26}{b['mean_success_rate'] * 100:>7.1f}%{a['mean_success_rate'] * 100:>7.1f}%")
PY
