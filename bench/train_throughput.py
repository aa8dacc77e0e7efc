"""Training throughput (samples/s) per preset and head: forward + backward + AdamW step on realistic batches.

    python bench/train_throughput.py [--presets tiny,small,base] [--batch 32] [--steps 10] [--device auto]

Model-only (batches pre-built in memory, augmentation included), so it isolates the network cost; the data
loader's own throughput is bench/data_throughput.py. Prints a table, writes bench/results/train_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from rfm import RFMPolicy
from rfm.config import RobotInterface
from rfm.train.augment import augment


def measure(preset: str, head: str, batch: int, steps: int, device: torch.device, size: int) -> dict:
    itf = RobotInterface(cameras=["corner2", "gripperPOV"], image_size=(size, size), state_names=[f"s{i}" for i in range(4)],
                         action_names=[f"a{i}" for i in range(4)], chunk_size=16)
    policy = RFMPolicy.build(preset, interface=itf, head=head).to(device)
    policy.text.to(device)
    net = policy.net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    images = torch.randint(0, 256, (batch, 2, 3, size, size), dtype=torch.uint8, device=device)
    state, actions = torch.randn(batch, 4, device=device), torch.randn(batch, 16, 4, device=device)
    text, mask = policy.encode_text(["push the puck to the goal"] * batch)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    def step() -> None:
        with amp:
            loss = net.loss(augment(images, 6, 0.2), state, text, mask, actions)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):  # warm-up
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    return {"preset": preset, "head": head, "batch": batch, "image_size": size, "params": policy.num_parameters(),
            "samples_per_s": batch * steps / dt, "step_ms": 1000 * dt / steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="tiny,small")
    ap.add_argument("--heads", default="chunk,flow")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_throughput.json"))
    args = ap.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    rows = [measure(p, h, args.batch, args.steps, device, args.size)
            for p in args.presets.split(",") for h in args.heads.split(",")]
    print(f"\ntraining throughput on {device} ({platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads), batch {args.batch}, 2 cameras x {args.size} px\n")
    print(f"{'preset':<8}{'head':<7}{'params':>10}{'step ms':>10}{'samples/s':>11}")
    for r in rows:
        print(f"{r['preset']:<8}{r['head']:<7}{r['params'] / 1e6:>9.2f}M{r['step_ms']:>10.1f}{r['samples_per_s']:>11.1f}")
    result = {"device": str(device), "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
              "cpu_count": os.cpu_count(), "torch": torch.__version__, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
