#!/usr/bin/env bash
# The adaptation grid: each ML45 test task alone and all five together (ml45-test), adapted with `rfm adapt`
# (DEMOS demos per task with no simulator state, STEPS fine-tuning steps per task -- five tasks together train
# 5 x STEPS, the budget of the five alone -- EPISODES unseen episodes per task) from
# checkpoints/base, from checkpoints/default and from scratch (checkpoints/default's architecture, the same steps);
# then `rfm compare` rows, paired by seed: scratch -> base, scratch -> default, default -> base.
# The arms of one task set train on the same demos: the first arm generates them, the others take them (--dataset).
# Every run is resumable (rfm adapt reuses its finished stages), so rerunning the script continues where it stopped.
# Usage: examples/adapt_ml45.sh [OUT] [STEPS]   (defaults runs/adapt-ml45, 2000)
#   DEMOS (default 10), EPISODES (default 50), WORKERS (default 2), ARMS (default "default base scratch"),
#   ADAPT_ARGS (appended to every rfm adapt, e.g. "--threads 2", or "--action-steps 8,4,2 --select-episodes 50" to
#   score each mode and run each task in the one chosen on validation episodes), SETS (the task sets, default the six
#   above).
#   An arm whose checkpoint is missing is skipped (examples/pretrain_base.sh makes checkpoints/base).
set -euo pipefail
cd "$(dirname "$0")/.."
RFM=${RFM:-.venv/bin/rfm}
PY="$(dirname "$(command -v "$RFM")")/python"  # the interpreter rfm is installed in
OUT=${1:-runs/adapt-ml45}
STEPS=${2:-2000}
DEMOS=${DEMOS:-10}
EPISODES=${EPISODES:-50}
WORKERS=${WORKERS:-2}
ARMS=${ARMS:-default base scratch}
SETS=${SETS:-bin-picking-v3 box-close-v3 door-lock-v3 door-unlock-v3 hand-insert-v3 ml45-test}
export MUJOCO_GL=${MUJOCO_GL:-osmesa} HF_HUB_OFFLINE=1

for tasks in $SETS; do
  demos=""
  n=$("$PY" -c "from rfm.sim.metaworld import expand_tasks; print(len(expand_tasks('$tasks')))")  # tasks in the set
  for arm in $ARMS; do
    init=$arm; [ "$arm" = scratch ] || init=checkpoints/$arm
    if [ "$arm" != scratch ] && [ ! -f "$init/config.json" ]; then
      echo "== skip $tasks from $arm: no $init"
      continue
    fi
    run=$OUT/$tasks/$arm
    echo "== $tasks from $arm -> $run ($((STEPS * n)) steps)"
    # shellcheck disable=SC2086  # ADAPT_ARGS is a list of flags
    $RFM adapt --task "$tasks" --init "$init" --out "$run" --demos "$DEMOS" --steps "$((STEPS * n))" \
      --episodes "$EPISODES" --workers "$WORKERS" --no-progress ${demos:+--dataset "$demos"} ${ADAPT_ARGS:-}
    [ -n "$demos" ] || demos=$run/demos
  done
done

echo "== success per task set and start (mean over its tasks, $EPISODES episodes each)"
for tasks in $SETS; do
  for arm in $ARMS; do
    f=$OUT/$tasks/$arm/adapt.json
    if [ -f "$f" ]; then
      python3 -c "import json; r = json.load(open('$f')); \
s = r.get('selected'); \
print(f\"{'$tasks':<18}{'$arm':<10}{100 * r['eval']['mean_success_rate']:6.1f}%\" \
      + (f\"  {100 * s['mean_success_rate']:6.1f}% in the chosen modes {s['action_steps']}\" if s else ''))"
    fi
  done
done

for tasks in $SETS; do
  for pair in "scratch base" "scratch default" "default base"; do
    read -r a b <<< "$pair"
    A=$OUT/$tasks/$a/eval.json
    B=$OUT/$tasks/$b/eval.json
    if [ -f "$A" ] && [ -f "$B" ]; then
      echo "== $tasks: $a -> $b"
      $RFM compare "$A" "$B" --out "$OUT/$tasks/compare-$a-$b.json"
    fi
  done
done
