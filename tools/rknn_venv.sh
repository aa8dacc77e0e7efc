#!/usr/bin/env bash
# Build the separate rknn-toolkit2 venv that tools/rknn_check.py runs in (Rockchip RK3588-class NPUs).
#
#     tools/rknn_venv.sh [VENV]          # default /tmp/rknn-venv
#
# rknn-toolkit2 pins torch <= 2.4, onnx <= 1.18 and numpy <= 1.26, which clash with rfm's, so it gets its own
# venv, opt-in like tools/lerobot_venv.sh. The toolkit imports torch even for ONNX input, and PyPI's torch 2.4.0
# is the CUDA build: with its nvidia-* wheels the venv is about 5.6 GB (it runs on the CPU; no GPU is needed).
# Versions are the ones tools/rknn_check.py was measured with: a constraint file pins them for every pip call
# (rknn-toolkit2 2.3.2, for one, breaks with onnx >= 1.19: "module 'onnx' has no attribute 'mapping'").
# rknn-toolkit2 2.5.0 has wheels for CPython 3.6-3.12 on x86_64/aarch64 Linux (none for 3.13); measured with
# 3.11. PYTHON picks the interpreter (default python3).
# Idempotent: a venv that already imports the pinned toolkit is left as it is.
set -euo pipefail

VENV=${1:-/tmp/rknn-venv}
PYTHON=${PYTHON:-python3}
RKNN=2.5.0
PINS=(
    "rknn-toolkit2==$RKNN"
    "torch==2.4.0"
    "onnx==1.18.0"
    "onnxruntime==1.26.0"
    "numpy==1.26.4"
    "protobuf==4.25.4"
)

CHECK='
from importlib.metadata import version
from rknn.api import RKNN
assert version("rknn-toolkit2") == "'$RKNN'", version("rknn-toolkit2")
print("rknn-toolkit2", version("rknn-toolkit2"), "| torch", version("torch"), "| onnx", version("onnx"),
      "| onnxruntime", version("onnxruntime"), "| numpy", version("numpy"))
'

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "$CHECK" 2>/dev/null; then
    echo "$VENV already has rknn-toolkit2 $RKNN"
    exit 0
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
CONSTRAINTS="$VENV/rfm-constraints.txt"
printf '%s\n' "${PINS[@]}" > "$CONSTRAINTS"
if ! "$VENV/bin/python" -m pip install --disable-pip-version-check -c "$CONSTRAINTS" "rknn-toolkit2==$RKNN"; then
    echo "error: pip could not install rknn-toolkit2==$RKNN into $VENV ($("$VENV/bin/python" -V), $(uname -m));" \
         "PyPI has its wheels for CPython 3.6-3.12 on x86_64/aarch64 Linux only: try PYTHON=python3.11" >&2
    exit 1
fi

"$VENV/bin/python" -c "$CHECK"
echo "built $VENV: run tools/rknn_check.py with $VENV/bin/python"
