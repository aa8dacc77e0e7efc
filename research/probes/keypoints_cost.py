"""What the spatial-softmax keypoint token costs at inference: tiny preset, Meta-World interface (2 x 128 px),
without keypoints, with `vision_keypoints=16`, and with 3 of them triangulated (`vision_points=3`, the point token),
timed side by side (alternating rounds, one torch thread, median of 15).

    .venv/bin/python research/probes/keypoints_cost.py
Prints a table and writes research/probes/results/keypoints_cost.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from rfm import RFMPolicy
from rfm.robots import make_sawyer_example

RESULTS = Path(__file__).parent / "results" / "keypoints_cost.json"


def main() -> int:
    torch.set_num_threads(1)
    itf, _ = make_sawyer_example()
    # two cameras 2 m from the origin looking at it (the cost does not depend on the calibration's values)
    stereo = [[[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 2.0]], [[0, 0, 1.0, 0], [0, 1.0, 0, 0], [1.0, 0, 0, 2.0]]]
    policies = {"none": RFMPolicy.build("tiny", interface=itf, vision_keypoints=0),
                "kp16": RFMPolicy.build("tiny", interface=itf, vision_keypoints=16),
                "kp16+points3": RFMPolicy.build("tiny", interface=itf, vision_keypoints=16, vision_points=3,
                                                camera_projections=stereo)}
    rows = []
    for batch in (1, 8):
        images = np.random.default_rng(0).integers(0, 256, (batch, 2, 3, 128, 128), dtype=np.uint8)
        state, texts = np.zeros((batch, 4), np.float32), ["reach the red target"] * batch
        for p in policies.values():
            p.predict(images, state, texts)  # warm-up
        times: dict[str, list[float]] = {k: [] for k in policies}
        for _ in range(15):
            for k, p in policies.items():
                t0 = time.perf_counter()
                p.predict(images, state, texts)
                times[k].append(time.perf_counter() - t0)
        ms = {k: float(np.median(v) * 1e3) for k, v in times.items()}
        rows.append({"batch": batch, "ms_no_keypoints": ms["none"], "ms_16_keypoints": ms["kp16"],
                     "ratio": ms["kp16"] / ms["none"], "ms_16_keypoints_3_points": ms["kp16+points3"],
                     "points_ratio": ms["kp16+points3"] / ms["kp16"]})
        print(f"batch {batch:>2}: no keypoints {ms['none']:6.1f} ms   16 keypoints {ms['kp16']:6.1f} ms "
              f"(x{ms['kp16'] / ms['none']:.2f})   + 3 points {ms['kp16+points3']:6.1f} ms "
              f"(x{ms['kp16+points3'] / ms['kp16']:.2f})")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=2))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
