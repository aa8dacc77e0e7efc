#!/usr/bin/env bash
# One DAgger round through the server: serve CHECKPOINT with recording on -> a simulated fleet acts through it while
# the scripted expert labels every step (`rfm fleet --dagger`, seeds 200,000+: neither training nor evaluation
# seeds) -> fine-tune CHECKPOINT on DATA (comma-separated datasets, e.g. the demos and earlier rounds) plus the new
# recording. The recording is OUT/recorded, the fine-tuned checkpoint OUT/checkpoint (its model id is OUT's name).
# Usage: examples/dagger_round.sh CHECKPOINT DATA OUT [TASKS] [EPISODES] [STEPS]
#   DATA=none fine-tunes on the recording alone. Training flags: TRAIN_ARGS (appended; later flags win).
#   Fleet flags: FLEET_ARGS, e.g. "--takeover-error 1.0" (the expert drives 16 steps whenever the policy strays),
#   or "--action-steps 8 --delay 4" (robots executing 8 actions per request with 50 ms of latency at 80 Hz: every
#   tick they execute is recorded, through the SDK's ChunkExecutor and TickRecorder).
#   A later round should pass a new FLEET_SEED (e.g. 300000), so its robots meet new goal and object positions.
set -euo pipefail
cd "$(dirname "$0")/.."
RFM=${RFM:-.venv/bin/rfm}
CKPT=$1
DATA=$2
OUT=$3
TASKS=${4:-mt10}
EPISODES=${5:-20}
STEPS=${6:-2000}
PORT=${PORT:-8765}
ROBOTS=${ROBOTS:-4}
MAX_STEPS=${MAX_STEPS:-300}
FLEET_SEED=${FLEET_SEED:-200000}
export MUJOCO_GL=${MUJOCO_GL:-osmesa} HF_HUB_OFFLINE=1
[ "$DATA" = "none" ] && DATA=""
rm -rf "$OUT" && mkdir -p "$OUT"

echo "== serve $CKPT with recording on; $ROBOTS robots run $EPISODES episodes per task, the expert labels each step"
$RFM serve --checkpoint "$CKPT" --port "$PORT" --max-batch 8 --threads 1 --record "$OUT/recorded" \
  --record-images image --log-level warning &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 1; done
# shellcheck disable=SC2086
$RFM fleet --url "http://127.0.0.1:$PORT" --tasks "$TASKS" --episodes "$EPISODES" --robots "$ROBOTS" --dagger \
  --seed "$FLEET_SEED" --max-steps "$MAX_STEPS" --out "$OUT/fleet.json" ${FLEET_ARGS:-}
kill -TERM $SERVER && wait $SERVER || true   # graceful stop flushes open episodes
trap - EXIT
$RFM data info "$OUT/recorded"

echo "== fine-tune $CKPT on ${DATA:+$DATA + }the recording"
CHUNK=$(python3 -c "import json; print(json.load(open('$CKPT/config.json'))['interface']['chunk_size'])")
# shellcheck disable=SC2086
$RFM train --dataset "${DATA:+$DATA,}$OUT/recorded" --init "$CKPT" --keep-init-stats --out "$OUT" \
  --steps "$STEPS" --chunk-size "$CHUNK" --balance tasks --batch-size 32 --lr 2e-4 --warmup-steps 50 \
  --ema-decay 0.995 --save-every 500 --no-progress ${TRAIN_ARGS:-}
