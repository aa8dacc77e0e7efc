"""What the spatial-softmax keypoint token costs at inference: tiny preset, Meta-World interface (2 x 128 px),
with and without `vision_keypoints`, timed side by side (alternating rounds, one torch thread, median of 15).

    .venv/bin/python bench/keypoints_cost.py
Prints a table and writes bench/results/keypoints_cost.json.
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
    policies = {k: RFMPolicy.build("tiny", interface=itf, vision_keypoints=k) for k in (0, 16)}
    rows = []
    for batch in (1, 8):
        images = np.random.default_rng(0).integers(0, 256, (batch, 2, 3, 128, 128), dtype=np.uint8)
        state, texts = np.zeros((batch, 4), np.float32), ["reach the red target"] * batch
        for p in policies.values():
            p.predict(images, state, texts)  # warm-up
        times: dict[int, list[float]] = {k: [] for k in policies}
        for _ in range(15):
            for k, p in policies.items():
                t0 = time.perf_counter()
                p.predict(images, state, texts)
                times[k].append(time.perf_counter() - t0)
        ms = {k: float(np.median(v) * 1e3) for k, v in times.items()}
        rows.append({"batch": batch, "ms_no_keypoints": ms[0], "ms_16_keypoints": ms[16], "ratio": ms[16] / ms[0]})
        print(f"batch {batch:>2}: no keypoints {ms[0]:6.1f} ms   16 keypoints {ms[16]:6.1f} ms   ratio {ms[16] / ms[0]:.2f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=2))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
