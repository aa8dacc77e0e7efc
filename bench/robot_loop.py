"""What the SDK costs a robot's control loop: step() time and tick jitter of a 50 Hz field-shaped robot, recording or not.

    python bench/robot_loop.py [--checkpoint CKPT] [--ticks 300] [--rounds 2] [--out bench/results/robot_loop.json]

A fake robot (three native 480 x 640 cameras whose frames change each tick, 14 joints, 50 Hz) runs
`ChunkExecutor(RFMClient(url))` in its own process, pinned to one core where the OS allows; `rfm serve` runs on the
other. Episodes alternate between six arms, `rounds` times each: a server started with `--record` or without, and
the executor's own recorder (`recorder="auto"`, the default) or none (`recorder=None`); and a robot running the
model's ONNX export itself on its core (`ChunkExecutor(runner)`), recording to its disk (`LocalRecorder`) or not.
Per arm: step() p50/p99/max, the tick's start against its schedule (jitter), ticks more than 10 ms late, and what
each recording holds against the ticks run. Without --checkpoint a tiny model is fine-tuned on the ALOHA-shaped
fixture (20 steps, for its interface: the numbers are the SDK's, not the model's).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results" / "robot_loop.json"
FIXTURE = ROOT.parent / "shared" / "fixtures" / "lerobot-v3.0" / "aloha-480x640"
HZ = 50.0
ARMS = [("record", "auto"), ("record", "none"), ("plain", "auto"), ("plain", "none"), ("device", "local"),
        ("device", "none")]


def _pin(core: int) -> list[str]:
    """taskset prefix for one core, where there is taskset and more than one core."""
    return ["taskset", "-c", str(core)] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []


def robot(target: str, arm: str, ticks: int, episode: int, record_dir: str) -> dict:
    """One episode of the fake robot (run in its own process): per-tick start, schedule and step() time. `target`:
    the server's URL, or the export the robot runs itself (arm "local": recording into `record_dir`)."""
    from contextlib import ExitStack

    from rfm.client import ChunkExecutor, RFMClient

    rng = np.random.default_rng(episode)
    frames = [rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for _ in range(3)]
    cams = ["cam_high", "cam_left_wrist", "cam_right_wrist"]
    state = np.zeros(14, np.float32)
    t_start, sched, step_s = [], [], []
    with ExitStack() as stack:
        if target.startswith("http"):
            policy = stack.enter_context(RFMClient(target, robot_id=f"bench-{episode}"))
            recorder = "auto" if arm == "auto" else None
        else:
            from rfm.runtime import LocalRecorder, load_runner

            policy = load_runner(target, backend="onnx", intra_op_threads=1)
            recorder = (stack.enter_context(LocalRecorder(record_dir, policy, session_id=f"bench-{episode}"))
                        if arm == "local" else None)
        ex = stack.enter_context(ChunkExecutor(policy, recorder=recorder))
        next_t = time.monotonic() + 0.2
        for k in range(ticks):
            if next_t > time.monotonic():
                time.sleep(next_t - time.monotonic())
            for i, f in enumerate(frames):  # a camera driver writing its buffer in place
                y, x = (7 * k + 40 * i) % 420, (11 * k + 90 * i) % 580
                f[y:y + 60, x:x + 60] = k % 256
            state[0] = k
            t = time.monotonic()
            ex.step({"images": dict(zip(cams, frames)), "state": state,
                     "instruction": "transfer the cube from the left arm to the right arm"})
            t_start.append(t), sched.append(next_t), step_s.append(time.monotonic() - t)
            next_t = max(next_t + 1 / HZ, time.monotonic() - 1 / HZ)  # after an overrun: no burst to catch up
        ex.end_episode(success=True)
    return {"t": t_start, "sched": sched, "step_s": step_s}


def serve(checkpoint: str, port: int, record: Path | None, log: Path) -> subprocess.Popen:
    cmd = [*_pin(0), sys.executable, "-m", "rfm.cli.main", "serve", "--checkpoint", checkpoint, "--port", str(port),
           "--threads", "1", "--log-level", "warning", *(["--record", str(record)] if record else [])]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    import httpx

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models").json().get("engine") not in (None, "torch"):
                return proc  # on the engine it settles on (a first start serves PyTorch while it exports)
        except (httpx.HTTPError, ValueError):
            pass
        if proc.poll() is not None:
            raise SystemExit(f"rfm serve exited: {log.read_text()[-2000:]}")
        time.sleep(0.5)
    raise SystemExit("rfm serve was not on its engine within 180 s")


def stats(runs: list[dict]) -> dict:
    """Per arm, the first 10 ticks of each episode left out (connection set-up, the first chunk waited for)."""
    step = np.concatenate([np.asarray(r["step_s"])[10:] for r in runs]) * 1000
    jitter = np.concatenate([(np.asarray(r["t"]) - np.asarray(r["sched"]))[10:] for r in runs]) * 1000
    return {"ticks": int(step.size), "step_ms_p50": round(float(np.percentile(step, 50)), 3),
            "step_ms_p99": round(float(np.percentile(step, 99)), 3), "step_ms_max": round(float(step.max()), 2),
            "jitter_ms_p50": round(float(np.percentile(jitter, 50)), 3),
            "jitter_ms_p99": round(float(np.percentile(jitter, 99)), 3), "late_over_10ms": int((jitter > 10).sum())}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="a checkpoint of a 3-camera robot (default: a tiny fine-tune on the fixture)")
    p.add_argument("--ticks", type=int, default=300, help="ticks per episode")
    p.add_argument("--rounds", type=int, default=2, help="episodes per arm, the arms alternating")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--_robot", nargs=4, metavar=("TARGET", "ARM", "EPISODE", "RECORD_DIR"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._robot:  # the robot's process
        target, arm, episode, record_dir = args._robot
        print(json.dumps(robot(target, arm, args.ticks, int(episode), record_dir)))
        return 0
    work = Path(tempfile.mkdtemp(prefix="rfm-robot-loop-"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        ckpt = args.checkpoint
        if ckpt is None:
            subprocess.run([sys.executable, "-m", "rfm.cli.main", "train", "--dataset", str(FIXTURE), "--preset", "tiny",
                            "--steps", "20", "--batch-size", "4", "--num-workers", "0", "--warmup-steps", "1",
                            "--no-progress", "--out", str(work / "run")], check=True, capture_output=True)
            ckpt = str(work / "run" / "checkpoint")
        from serving.server import free_port

        load = os.getloadavg()[0]
        ports = {"record": free_port(), "plain": free_port()}
        servers = {"record": serve(ckpt, ports["record"], work / "rec", work / "record.log"),
                   "plain": serve(ckpt, ports["plain"], None, work / "plain.log")}
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        subprocess.run([sys.executable, "-m", "rfm.cli.main", "export", "--checkpoint", ckpt, "--out",
                        str(work / "export")], check=True, capture_output=True)
        urls["device"] = str(work / "export")  # the robot runs the fp32 export on its own core
        runs: dict[tuple[str, str], list[dict]] = {a: [] for a in ARMS}
        episode = 0
        for _ in range(args.rounds):
            for server, arm in ARMS:
                out = subprocess.run([*_pin(1), sys.executable, __file__, "--ticks", str(args.ticks), "--_robot",
                                      urls[server], arm, str(episode), str(work / "local")], check=True,
                                     capture_output=True, text=True)
                runs[(server, arm)].append(json.loads(out.stdout.strip().splitlines()[-1]))
                episode += 1
        for proc in servers.values():
            proc.terminate()
            proc.wait(60)
        from rfm.data.reader import LeRobotDataset

        recorded = LeRobotDataset(work / "rec").num_frames
        recorded_local = LeRobotDataset(work / "local").num_frames
        where = {"record": "--record", "plain": "no --record", "device": "none: the export on the robot"}
        rows = [{"server": where[s], "recorder": a, **stats(runs[(s, a)])} for s, a in ARMS]
        expected = args.rounds * args.ticks
        print(f"robot: 3 x 480x640 cameras, 14 joints, {HZ:g} Hz, {args.rounds} x {args.ticks} ticks per arm; "
              f"the server's recording holds {recorded} frames for the {expected} ticks executed with recorder=auto, "
              f"the robot's own {recorded_local} for the {expected} with recorder=local")
        print("| server | recorder | step() p50 / p99 / max ms | tick jitter p50 / p99 ms | ticks > 10 ms late |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['server']} | {r['recorder']} | {r['step_ms_p50']:.2f} / {r['step_ms_p99']:.2f} / "
                  f"{r['step_ms_max']:.1f} | {r['jitter_ms_p50']:.2f} / {r['jitter_ms_p99']:.2f} | "
                  f"{r['late_over_10ms']} |")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rows": rows, "recorded_frames": recorded,
                                        "recorded_frames_local": recorded_local, "ticks_recorded_arm": expected,
                                        "hz": HZ, "ticks": args.ticks, "rounds": args.rounds,
                                        "checkpoint": args.checkpoint or "tiny fine-tune on aloha-480x640",
                                        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                                        "load_1min_before": load}, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
