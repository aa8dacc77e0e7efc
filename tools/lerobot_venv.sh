#!/usr/bin/env bash
# Build the separate lerobot 0.4.4 venv that the opt-in bench/lerobot_*.py baselines run in.
#
#     tools/lerobot_venv.sh [VENV]          # default /tmp/lerobot-venv
#
# The recipe of bench/lerobot_compat.py's docstring: lerobot pins an older torch, so torch 2.13.0 (CPU) goes in
# first and a constraint file keeps every later pip call from replacing it; lerobot, torchvision and torchcodec go
# in with --no-deps; then lerobot's own requirements (read from its installed metadata) except
# torch/torchvision/torchcodec, plus its "async" extra (grpcio, protobuf, matplotlib) for the async-inference
# policy server. Idempotent: a venv that already imports all of that is left as it is.
# Training on video datasets also needs the system's libav* for torchcodec (apt-get install ffmpeg): the pyav
# fallback goes through torchvision's VideoReader, which torchvision 0.28 no longer has.
set -euo pipefail

VENV=${1:-/tmp/lerobot-venv}
PYTHON=${PYTHON:-python3}
TORCH=2.13.0
LEROBOT=0.4.4
TORCHVISION=0.28.0
TORCHCODEC=0.13.0

# PyPI's torchvision is a CUDA build whose C++ ops cannot load beside a CPU torch; declaring the two op schemas
# first lets it import (ACT uses only its ResNet). The same shim as bench/lerobot_act.py's.
CHECK='
import torch
lib = torch.library.Library("torchvision", "DEF")
for op in ("nms", "qnms"):
    lib.define(op + "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
import lerobot, grpc, google.protobuf, matplotlib
import lerobot.async_inference.policy_server, lerobot.policies.act.modeling_act, lerobot.scripts.lerobot_train
assert torch.__version__.split("+")[0] == "'$TORCH'", torch.__version__
assert lerobot.__version__ == "'$LEROBOT'", lerobot.__version__
'

# run from the venv: importing lerobot's policy server creates logs/ in the working directory
check() { (cd "$VENV" && "$VENV/bin/python" -c "$CHECK"); }

if [ -x "$VENV/bin/python" ] && check >/dev/null 2>&1; then
    echo "$VENV already has lerobot $LEROBOT with torch $TORCH and the async server's packages"
    exit 0
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check)
CONSTRAINTS="$VENV/rfm-constraints.txt"
echo "torch==$TORCH" > "$CONSTRAINTS"

"${PIP[@]}" "torch==$TORCH"
"${PIP[@]}" -c "$CONSTRAINTS" --no-deps "lerobot==$LEROBOT" "torchvision==$TORCHVISION" "torchcodec==$TORCHCODEC"

# lerobot's requirements for this Python, and its "async" extra (which names the "grpcio-dep" extra), without the
# torch family installed above
mapfile -t REQS < <("$VENV/bin/python" - <<'EOF'
from importlib.metadata import requires
try:
    from packaging.requirements import Requirement
except ImportError:  # torch does not bring packaging; pip vendors it
    from pip._vendor.packaging.requirements import Requirement

SKIP = {"torch", "torchvision", "torchcodec"}
reqs = [Requirement(r) for r in requires("lerobot")]

def wanted(extra):
    out = []
    for r in reqs:
        if r.marker is not None and not r.marker.evaluate({"extra": extra}):
            continue
        if extra and (r.marker is None or r.marker.evaluate({"extra": ""})):
            continue  # a base requirement, listed once under extra ""
        if r.name == "lerobot":
            for sub in r.extras:
                out += wanted(sub)
        elif r.name not in SKIP:
            out.append(str(r).split(";")[0])
    return out

print("\n".join(dict.fromkeys(wanted("") + wanted("async"))))
EOF
)
"${PIP[@]}" -c "$CONSTRAINTS" "${REQS[@]}"

check
if ! ldconfig -p 2>/dev/null | grep -q libavutil; then
    echo "note: no system libav* found; lerobot-train decodes videos through torchcodec, which needs them" \
         "(apt-get install ffmpeg)" >&2
fi
echo "built $VENV: lerobot $LEROBOT, torch $TORCH, async inference (grpcio) ready"
