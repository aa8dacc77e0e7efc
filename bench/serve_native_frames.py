"""A field robot's native frames through `rfm serve`: fitted on the robot (the SDK's default) or sent as they are.

    python bench/serve_native_frames.py [--checkpoint DIR] [--requests 200] [--rounds 6]

A model whose three cameras are 480x640 (ALOHA-shaped: 14 joints; by default the tiny preset, untrained: the
model's weights do not change what is measured) served by an `rfm serve` subprocess on its default engine with one
intra-op thread. One robot (RFMClient, WebSocket and HTTP) sends back-to-back requests with native frames, with
`fit_frames` on (the SDK fits them to the model's 128x128 before sending, rfm.client.frames) and off (the server
fits them). Rounds alternate the two. Per request: the end-to-end p50/p99 on the robot (fitting included), the
server's own time (`timings.total_ms`) and its decode stage, the body size, and the server's CPU per request.
Writes bench/results/serve_native_frames.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench._serve_common import Server, machine_info, pct
from rfm.client import RFMClient
from rfm.client.frames import FrameFitter
from rfm.client.wire import encode_observation

RESULTS = ROOT / "bench" / "results" / "serve_native_frames.json"
CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")
NATIVE = (480, 640)


def aloha_checkpoint() -> Path:
    """The tiny preset at 128x128 for three 480x640 cameras and 14 joints, untrained."""
    from rfm import RFMPolicy
    from rfm.config import RobotInterface

    names = [f"joint_{i}" for i in range(14)]
    itf = RobotInterface(cameras=list(CAMERAS), image_size=(128, 128), state_names=names, action_names=names,
                         chunk_size=16, control_hz=50.0, robot_type="aloha",
                         native_sizes={c: NATIVE for c in CAMERAS})
    path = Path(tempfile.mkdtemp(prefix="rfm-native-")) / "aloha-tiny"
    RFMPolicy.build("tiny", interface=itf).save_pretrained(path)
    return path


def run(url: str, transport: str, fit: bool, obs: list[dict], n: int) -> dict:
    e2e, server, decode = [], [], []
    with RFMClient(url, transport=transport, fit_frames=fit) as robot:
        robot.act(obs[0])  # connection, description
        for i in range(n):
            t = time.perf_counter()
            out = robot.infer(obs[i % len(obs)])
            e2e.append(1000 * (time.perf_counter() - t))
            server.append(out["timings"]["total_ms"])
            decode.append(out["timings"]["decode_ms"])
    return {"e2e": e2e, "server": server, "decode": decode}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="a model with 480x640 native cameras (default: tiny, untrained)")
    ap.add_argument("--requests", type=int, default=200, help="per transport, mode and round")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    ckpt = Path(args.checkpoint) if args.checkpoint else aloha_checkpoint()
    rng = np.random.default_rng(0)
    server = Server(ckpt, max_batch=8, threads=1, max_wait_ms=0, extra=("--engine-cache", tempfile.mkdtemp()))
    try:
        with RFMClient(server.url) as c:
            desc = c.models()
        state = [0.0] * len(desc["state_names"])
        natives = {c: tuple(desc["native_sizes"][c]) for c in desc["cameras"]}
        obs = [{"images": {c: rng.integers(0, 256, (*s, 3), dtype=np.uint8) for c, s in natives.items()},
                "state": state, "instruction": "insert the peg into the socket"} for _ in range(8)]
        fitter = FrameFitter(desc)
        sizes = {"native": len(encode_observation(obs[0])), "fitted": len(encode_observation(fitter.observation(obs[0])))}
        cells: dict[tuple[str, bool], dict] = {}
        for _ in range(args.rounds):
            for transport in ("ws", "http"):
                for fit in (True, False):
                    cpu0 = server.cpu_s()
                    r = run(server.url, transport, fit, obs, args.requests)
                    r["server_cpu_ms"] = [1000 * (server.cpu_s() - cpu0) / (args.requests + 1)]
                    cell = cells.setdefault((transport, fit), {k: [] for k in r})
                    for k, v in r.items():
                        cell[k] += v
    finally:
        server.stop()
    rows = []
    for (transport, fit), c in cells.items():
        rows.append({"transport": transport, "frames": "fitted on the robot" if fit else "native, fitted by the server",
                     "body_bytes": sizes["fitted" if fit else "native"],
                     "e2e_p50_ms": round(statistics.median(c["e2e"]), 2), "e2e_p99_ms": round(pct(c["e2e"], 99), 2),
                     "server_p50_ms": round(statistics.median(c["server"]), 2),
                     "decode_p50_ms": round(statistics.median(c["decode"]), 2),
                     "server_cpu_ms_per_request": round(statistics.median(c["server_cpu_ms"]), 2)})
    print(f"{'transport':<9} {'frames':<30} {'body':>10} {'e2e p50':>8} {'e2e p99':>8} {'server':>7} {'decode':>7} "
          f"{'srv CPU':>8}")
    for r in rows:
        print(f"{r['transport']:<9} {r['frames']:<30} {r['body_bytes']:>10,} {r['e2e_p50_ms']:>8} {r['e2e_p99_ms']:>8} "
              f"{r['server_p50_ms']:>7} {r['decode_p50_ms']:>7} {r['server_cpu_ms_per_request']:>8}")
    report = {"config": {"checkpoint": str(ckpt) if args.checkpoint else "tiny preset, untrained, 3 x 480x640",
                         "requests": args.requests, "rounds": args.rounds, "threads": 1},
              "results": rows, "machine": machine_info()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
