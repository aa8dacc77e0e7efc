"""Training-sample throughput of rfm.data: WindowDataset + DataLoader, video vs PNG storage, cold vs warm cache.

Writes a synthetic dataset (moving shapes, two cameras) with the real writer, then times full passes of a
shuffled DataLoader. "cold" = first epoch (every episode decoded once, per worker); "warm" = second epoch with
persistent workers (frames come from the per-worker LRU cache). Prints a table and writes
bench/results/data_throughput.json.

    .venv/bin/python bench/data_throughput.py                 # defaults: 24 episodes x 100 frames, 2 cams, 128 px
    .venv/bin/python bench/data_throughput.py --dataset DIR   # an existing dataset instead of the synthetic one
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from rfm.data.lerobot import LeRobotDataset, LeRobotDatasetWriter
from rfm.data.windows import WindowDataset, collate_windows, interface_from_dataset


def synthetic_frame(t: int, ep: int, size: int, flip: bool) -> np.ndarray:
    """A gradient background with a moving disc: compresses like a simple rendered scene."""
    yy, xx = np.mgrid[0:size, 0:size]
    cx = size / 2 + size / 3 * np.cos(0.07 * t + ep)
    cy = size / 2 + size / 3 * np.sin(0.05 * t + 2 * ep)
    img = np.stack([xx * 255 // size, yy * 255 // size, np.full_like(xx, 60 + 7 * ep % 120)], -1).astype(np.uint8)
    img[(xx - cx) ** 2 + (yy - cy) ** 2 < (size / 8) ** 2] = (250, 40, 40)
    return img[::-1] if flip else img


def build(root: Path, vcodec: str | None, episodes: int, length: int, size: int) -> float:
    """Writes the synthetic set: video in `vcodec`, or PNG in parquet when vcodec is None."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    w = LeRobotDatasetWriter(root, fps=20, robot_type="synthetic", cameras={"front": (size, size), "wrist": (size, size)},
                             state_names=[f"s{i}" for i in range(8)], action_names=[f"a{i}" for i in range(7)],
                             use_videos=vcodec is not None, vcodec=vcodec)
    for ep in range(episodes):
        for t in range(length):
            w.add_frame(images={"front": synthetic_frame(t, ep, size, False), "wrist": synthetic_frame(t, ep, size, True)},
                        state=rng.standard_normal(8), action=rng.standard_normal(7), task=f"task {ep % 4}")
        w.save_episode()
    w.finalize()
    return time.perf_counter() - t0


def run_epochs(ds: LeRobotDataset, workers: int, batch: int, image_size: int, chunk: int) -> dict:
    itf = interface_from_dataset(ds, chunk_size=chunk, image_size=(image_size, image_size))
    wd = WindowDataset(ds, itf)
    loader = DataLoader(wd, batch_size=batch, shuffle=True, num_workers=workers, collate_fn=collate_windows,
                        persistent_workers=workers > 0, drop_last=False)
    out = {}
    for name in ("cold", "warm"):
        t0 = time.perf_counter()
        n = sum(b["state"].shape[0] for b in loader)
        dt = time.perf_counter() - t0
        out[name] = {"samples": n, "seconds": round(dt, 3), "samples_per_s": round(n / dt, 1)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default=None, help="existing dataset dir (default: build synthetic video + image ones)")
    ap.add_argument("--episodes", type=int, default=24)
    ap.add_argument("--length", type=int, default=100)
    ap.add_argument("--size", type=int, default=128, help="stored image size")
    ap.add_argument("--image-size", type=int, default=128, help="model input size (resize target)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--vcodecs", nargs="+", default=["h264", "av1"], help="video codecs to compare (h264: the default)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "data_throughput.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows, builds = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.dataset:
            sets = {Path(args.dataset).name: Path(args.dataset)}
        else:
            sets = {}
            for kind, vcodec in [*((f"video-{c}", c) for c in args.vcodecs), ("image", None)]:
                root = Path(tmp) / kind
                builds[kind] = round(build(root, vcodec, args.episodes, args.length, args.size), 2)
                sets[kind] = root
        for kind, root in sets.items():
            ds = LeRobotDataset(root)
            t0 = time.perf_counter()
            ds.decode_episode(ds.episodes[0].index, ds.cameras[0])
            decode_fps = ds.episodes[0].length / (time.perf_counter() - t0)
            for workers in args.workers:
                res = run_epochs(ds, workers, args.batch, args.image_size, args.chunk)
                rows.append({"storage": kind, "workers": workers, "frames": ds.num_frames, "cameras": len(ds.cameras),
                             "decode_fps_one_camera": round(decode_fps, 1),
                             "cold_samples_per_s": res["cold"]["samples_per_s"],
                             "warm_samples_per_s": res["warm"]["samples_per_s"],
                             "size_on_disk_mb": round(ds.size_bytes() / 2**20, 2)})
    print(f"{'storage':<11} {'workers':>7} {'frames':>7} {'disk MB':>8} {'decode fps':>10} {'cold samples/s':>15} "
          f"{'warm samples/s':>15}")
    for r in rows:
        print(f"{r['storage']:<11} {r['workers']:>7} {r['frames']:>7} {r['size_on_disk_mb']:>8} "
              f"{r['decode_fps_one_camera']:>10} {r['cold_samples_per_s']:>15} {r['warm_samples_per_s']:>15}")
    report = {"config": {k: v for k, v in vars(args).items() if k != "out"}, "build_seconds": builds, "results": rows,
              "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "torch": torch.__version__,
                          "platform": platform.platform()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
