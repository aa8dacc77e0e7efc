#!/usr/bin/env bash
# The bundled default checkpoint, from nothing to checkpoints/default (CPU: about 3 h on 2 cores, evaluation not
# included). Each stage is skipped when its output is complete, so rerunning continues where it stopped.
#   1. 50 scripted demos per MT10 task (seeds 0.. and 1000.., jittered starts), corner + topview at 128 px, lossless,
#      with the simulator's object/goal positions and camera projections.
#   2. examples/small_data_cycles.sh: tiny preset, keypoints trained onto the objects and the goal, 3 of them
#      triangulated into world-frame points relative to the hand; three cycles of 6,000 x 8 with warm restarts, the
#      last at lr 2.5e-4.
#   3. examples/dagger_round.sh on all ten tasks: the chain serves 4 simulated robots (one action per request,
#      10 episodes per task, seeds 420,000..), the scripted expert labels what they see; 3,000 x 8 fine-tune on the
#      demos + that recording.
#   4. a second round on reach alone from that model: 40 episodes (seeds 440,000..), 1,500 x 8 at lr 1e-4 on the
#      demos + both recordings. docs/RESULTS.md has how the result scores, and the commands.
# Usage: examples/default_checkpoint.sh [RUNS_DIR] (default runs/default-recipe)
set -euo pipefail
cd "$(dirname "$0")/.."
RFM=${RFM:-.venv/bin/rfm}
OUT=${1:-runs/default-recipe}
D1=data/mt10-20-128ct-j15-env
D2=data/mt10-30-128ct-j15-s1000-env
export MUJOCO_GL=${MUJOCO_GL:-osmesa} HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

steps_done() {  # the steps a run's checkpoint records, 0 if none
  python3 -c "import json; print(json.load(open('$1/checkpoint/config.json'))['meta']['training']['steps_done'])" \
    2>/dev/null || echo 0
}

test -d $D1 || $RFM data generate metaworld --tasks mt10 --episodes 20 --cameras corner,topview --size 128 \
  --start-jitter 15 --workers 2 --out $D1
test -d $D2 || $RFM data generate metaworld --tasks mt10 --episodes 30 --seed 1000 --cameras corner,topview \
  --size 128 --start-jitter 15 --workers 2 --out $D2

RFM=$RFM CACHE_GB=5 EPISODES=0 examples/small_data_cycles.sh $D1,$D2 "$OUT/chain" 3

FINETUNE='--batch-size 8 --warmup-steps 200 --model {"dropout":0.0} --set aids.keypoints.weight=1 --frame-cache-gb 6 --threads 2 --num-workers 1'
[ "$(steps_done "$OUT/round1")" = 3000 ] || \
  RFM=$RFM FLEET_SEED=420000 TRAIN_ARGS="$FINETUNE --lr 2.5e-4" \
  examples/dagger_round.sh "$OUT/chain-c3/checkpoint" $D1,$D2 "$OUT/round1" mt10 10 3000
[ "$(steps_done "$OUT/round2")" = 1500 ] || \
  RFM=$RFM FLEET_SEED=440000 TRAIN_ARGS="$FINETUNE --lr 1e-4 --warmup-steps 100" \
  examples/dagger_round.sh "$OUT/round1/checkpoint" $D1,$D2,"$OUT/round1/recorded" "$OUT/round2" reach-v3 40 1500

rm -rf checkpoints/default.new && cp -r "$OUT/round2/checkpoint" checkpoints/default.new
rm -rf checkpoints/default.new/training_state checkpoints/default && mv checkpoints/default.new checkpoints/default
echo "== checkpoints/default <- $OUT/round2/checkpoint"
