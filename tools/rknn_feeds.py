"""Write the policy.onnx feeds and fp32 reference actions that tools/rknn_check.py needs, into one .npz.

Runs in rfm's own venv (torch, onnxruntime); the RKNN check runs in a separate venv (tools/rknn_venv.sh) whose
torch/onnx/numpy pins clash with rfm's, so everything rfm-specific is computed here, once:

    .venv/bin/python tools/rknn_feeds.py EXPORT_DIR DATASET OUT.npz [--checkpoint DIR] \
        [--calib-samples 64] [--held-out 16]

Frames are chosen as `rfm export` chooses them (rfm.export.samples.dataset_samples: evenly spaced calibration
frames, held-out frames between them) and turned into feeds by the same path (rfm.export.feeds). The .npz holds,
per policy.onnx input NAME, `calib/NAME` (N, ...) and `held/NAME` (M, ...) with the dtypes of policy.onnx, plus
`ref_torch` and `ref_onnx` (M, H, D_a) float32: the held-out actions in robot units from PyTorch fp32 eager and
from onnxruntime on EXPORT_DIR/policy.onnx (fp32 exports only, so the reference is the float graph).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from rfm.export.feeds import observation_arrays
from rfm.export.parity import torch_reference
from rfm.export.samples import dataset_samples
from rfm.model.policy import RFMPolicy
from rfm.runtime.manifest import POLICY_FILE, read_manifest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("export_dir", help="an fp32 `rfm export` directory")
    p.add_argument("dataset", help="LeRobot dataset dir whose cameras match the policy's")
    p.add_argument("out", help=".npz to write")
    p.add_argument("--checkpoint", help="the exported checkpoint (default: export.json's `checkpoint`)")
    p.add_argument("--calib-samples", type=int, default=64, help="calibration frames (default 64)")
    p.add_argument("--held-out", type=int, default=16, help="held-out frames for parity (default 16)")
    args = p.parse_args()

    manifest = read_manifest(args.export_dir)
    if manifest["precision"] != "fp32":
        raise SystemExit(f"{args.export_dir}: precision {manifest['precision']!r}; export with --precision fp32")
    ckpt = args.checkpoint or manifest.get("checkpoint")
    if not ckpt or not Path(ckpt).is_dir():
        raise SystemExit(f"checkpoint {ckpt!r} not found; pass --checkpoint (the directory that was exported)")
    policy = RFMPolicy.from_pretrained(ckpt)
    samples = dataset_samples(args.dataset, args.calib_samples, args.held_out, policy.interface)
    calib = observation_arrays(policy, samples.calibration, seed=1)
    held = observation_arrays(policy, samples.held_out, seed=2)

    session = ort.InferenceSession(str(Path(args.export_dir) / POLICY_FILE), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    arrays = {f"calib/{k}": calib[k] for k in names} | {f"held/{k}": held[k] for k in names}
    arrays["ref_torch"] = torch_reference(policy, held).astype(np.float32)
    arrays["ref_onnx"] = session.run(["actions"], {k: held[k] for k in names})[0].astype(np.float32)
    arrays["meta"] = np.array(json.dumps({"dataset": str(args.dataset), "checkpoint": str(ckpt), "inputs": names}))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, **arrays)
    shapes = ", ".join(f"{k} {v.shape} {v.dtype}" for k, v in arrays.items() if k != "meta")
    print(f"wrote {args.out}: {shapes}")


if __name__ == "__main__":
    main()
