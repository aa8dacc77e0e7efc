#!/usr/bin/env bash
# Closed-loop success of the default's edge exports: ONNX Runtime fp32/int8 and OpenVINO fp32/int8 against PyTorch
# fp32, MT10, the same unseen seeds for every row (paired), 8 actions per request (the default's mode).
#   examples/edge_closed_loop.sh [CALIB_DATASET] [OUT_DIR] [EPISODES_PER_TASK]
# int8 is calibrated on CALIB_DATASET's camera frames (a Meta-World dataset from `rfm data generate`) and, as by
# default, leaves the modules the model marks in float (keypoint heatmaps, point token); `ort-int8-all` quantises
# every block (--keep-fp32 none). Resumable: an export or a result file that exists is kept. Ends with
# `rfm compare` of each row against PyTorch.
set -euo pipefail
CALIB=${1:?usage: examples/edge_closed_loop.sh CALIB_DATASET [OUT_DIR] [EPISODES_PER_TASK]}
OUT=${2:-runs/edge-closed-loop}
EPISODES=${3:-50}
CKPT=${CKPT:-checkpoints/default}
RFM=${RFM:-rfm}
WORKERS=${WORKERS:-2}
mkdir -p "$OUT"
export_() {  # dir, then rfm export options
  local dir=$1; shift
  [ -f "$OUT/$dir/export.json" ] && { echo "== export $dir: done"; return; }
  echo "== export $dir"
  $RFM export --checkpoint "$CKPT" --out "$OUT/$dir" --calib-dataset "$CALIB" "$@"
}
run() {  # name, model dir, backend
  [ -f "$OUT/$1.json" ] && { echo "== eval $1: done"; return; }
  echo "== eval $1"
  $RFM eval --checkpoint "$2" --backend "$3" --tasks mt10 --episodes "$EPISODES" --action-steps 8 \
    --workers "$WORKERS" --no-progress --out "$OUT/$1.json"
}
export_ ort-fp32 --precision fp32
export_ ort-int8 --precision int8
export_ ort-int8-all --precision int8 --keep-fp32 none
export_ ov-fp32 --precision fp32 --target openvino
export_ ov-int8 --precision int8 --target openvino
export_ ort-fp16 --precision fp16
run torch-fp32 "$CKPT" torch
run ort-int8 "$OUT/ort-int8" onnx
run ov-int8 "$OUT/ov-int8" openvino
run ort-int8-all "$OUT/ort-int8-all" onnx
run ort-fp32 "$OUT/ort-fp32" onnx
run ov-fp32 "$OUT/ov-fp32" openvino
run ort-fp16 "$OUT/ort-fp16" onnx
for row in ort-fp32 ort-int8 ort-int8-all ov-fp32 ov-int8 ort-fp16; do
  [ -f "$OUT/$row.json" ] && $RFM compare "$OUT/torch-fp32.json" "$OUT/$row.json" --out "$OUT/compare-$row.json"
done
