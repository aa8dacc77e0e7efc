"""How many control ticks a recording server's recorder writes per second, for a field-shaped robot.

    python bench/record_throughput.py [--robots 3] [--ticks 1200] [--episode-ticks 200] [--budget-mb 1024]
                                      [--images video,image] [--out bench/results/record_throughput.json]

Robots with three 128 x 128 cameras, 14 joints, 50 Hz (the ALOHA fixture's shape at the default model's input size)
each report every tick (as POST /v1/ticks does) into rfm.runtime.recorder.Recorder in this process, which writes
them as a LeRobot v3.0 dataset; a tick the queue has no room for waits and is sent again, as the server answers 503
and the SDK retries. Frames are a fixed gradient plus noise (the encoder's work is realistic). Throughput is ticks
enqueued and written over wall time, until everything is on disk. A fleet of N such robots needs N x 50 ticks/s.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rfm.config import RobotInterface
from rfm.runtime.recorder import Recorder

RESULTS = ROOT / "bench" / "results" / "record_throughput.json"
CAMERAS = ["cam_high", "cam_left_wrist", "cam_right_wrist"]


def run(images: str, robots: int, ticks: int, episode_ticks: int, budget_mb: float) -> dict:
    itf = RobotInterface(cameras=CAMERAS, image_size=(128, 128), state_names=[f"q{i}" for i in range(14)],
                         action_names=[f"a{i}" for i in range(14)], chunk_size=25, control_hz=50.0,
                         robot_type="aloha")
    rng = np.random.default_rng(0)
    base = np.linspace(0, 200, 3 * 128 * 128).reshape(3, 128, 128)
    pool = [np.stack([(base + rng.integers(0, 40, base.shape)).astype(np.uint8) for _ in CAMERAS]) for _ in range(50)]
    root = Path(tempfile.mkdtemp(prefix="rfm-record-bench-"))
    try:
        rec = Recorder(root / "rec", itf, max_buffer_mb=budget_mb, use_videos=images == "video")
        waited, t0 = 0.0, time.perf_counter()
        for t in range(ticks):
            for r in range(robots):
                while not rec.room(2):  # the server's 503: the robot sends the batch again
                    time.sleep(0.002)
                    waited += 0.002
                rec.record_tick(f"robot-{r}", pool[(t + r) % len(pool)], np.full(14, t, np.float32), "fold the towel",
                                np.zeros(14, np.float32), index=t % episode_ticks,
                                episode_end=t % episode_ticks == episode_ticks - 1, success=True)
        rec.close()
        seconds = time.perf_counter() - t0
        return {"images": images, "robots": robots, "ticks": robots * ticks, "seconds": round(seconds, 2),
                "ticks_per_s": round(robots * ticks / seconds, 1), "robots_at_50hz": round(robots * ticks / seconds / 50, 1),
                "episodes": rec.episodes_written, "lost": rec.episodes_lost, "dropped": rec.dropped,
                "waited_s": round(waited, 2), "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--robots", type=int, default=3)
    ap.add_argument("--ticks", type=int, default=1200, help="ticks per robot")
    ap.add_argument("--episode-ticks", type=int, default=200)
    ap.add_argument("--budget-mb", type=float, default=1024.0)
    ap.add_argument("--images", default="video,image")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    rows = [run(kind, args.robots, args.ticks, args.episode_ticks, args.budget_mb) for kind in args.images.split(",")]
    print(f"{'images':<6} {'ticks':>6} {'s':>7} {'ticks/s':>8} {'robots@50Hz':>11} {'episodes':>8} {'lost':>4} "
          f"{'max RSS MB':>10}")
    for r in rows:
        print(f"{r['images']:<6} {r['ticks']:>6} {r['seconds']:>7} {r['ticks_per_s']:>8} {r['robots_at_50hz']:>11} "
              f"{r['episodes']:>8} {r['lost']:>4} {r['max_rss_mb']:>10}")
    out = {"machine": platform.processor() or platform.machine(), "command": " ".join(sys.argv),
           "budget_mb": args.budget_mb, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
