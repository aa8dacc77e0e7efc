"""Opt-in side-by-side: LeRobot's async-inference PolicyServer (gRPC) serving the real lerobot ACT, against
`rfm serve` serving an rfm checkpoint, under the same open-loop robots on this machine.

Not part of the test suite and installs nothing itself: it needs the lerobot venv (tools/lerobot_venv.sh) and, for
ACT, a lerobot-train output directory; with --dataset it trains one first, the way bench/lerobot_act.py does.

    tools/lerobot_venv.sh /tmp/lerobot-venv
    .venv/bin/python bench/lerobot_serve.py --lerobot-python /tmp/lerobot-venv/bin/python \
        --act /tmp/lr/act [--dataset /tmp/lr/mt10-10-128ct-j15-env --train-steps 200] \
        [--checkpoint checkpoints/default] [--quick] [--out bench/results/lerobot_serve.json]

Both servers run side by side (an idle one costs no CPU) with one torch thread each; for each robot count N
(1, 2, 4, ... 32; --quick: 1 and 2 only, short cells) the two are measured back to back, and a server leaves the
sweep after the first N it does not serve. Each robot sends an observation of the dataset's shapes (2 cameras
128x128 + state 4) at 10 Hz, open loop, from load-generator processes (bench/lerobot_load.py): rfm over WebSocket
/v1/ws (msgpack), lerobot with its own RobotClient protocol (gRPC, pickled TimedObservation, must_go). A count N is
served when p99 latency (observation sent -> its chunk received) <= 100 ms and no tick failed. LeRobot's server
runs with inference_latency=0 (its default 1/30 s pads every reply) and fps=10. Server RSS is VmRSS/VmHWM of the
server process: after the model is loaded and warm, the peak, and after the sweep. Prints a table and writes --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _serve_common import Server
from lerobot_act import PRIVILEGED, TORCHVISION_SHIM, train_act, without_feature

from rfm.data.lerobot import LeRobotDataset
from serving.server import free_port

ROOT = Path(__file__).resolve().parents[1]
LOAD = Path(__file__).with_name("lerobot_load.py")
RESULTS = Path(__file__).parent / "results" / "lerobot_serve.json"
P99_LIMIT_MS = 100.0

POLICY_SERVER = TORCHVISION_SHIM + r'''
import runpy, sys
torch.set_num_threads(1)
sys.argv = ["policy_server", *sys.argv[1:]]
runpy.run_module("lerobot.async_inference.policy_server", run_name="__main__")
'''

LOAD_IN_LEROBOT = TORCHVISION_SHIM + r'''
import runpy, sys
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


def rss_mb(pid: int) -> dict:
    """VmRSS and VmHWM (peak) of a process, in MB."""
    status = dict(ln.split(":", 1) for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in ln)
    return {k: round(int(status[v].split()[0]) / 1024, 1) for k, v in (("rss_mb", "VmRSS"), ("peak_mb", "VmHWM"))}


class LerobotServer:
    """lerobot.async_inference.policy_server in the lerobot venv, on a free port; it loads the policy named by the
    first client's SendPolicyInstructions (every client's, in fact)."""

    def __init__(self, python: str, workdir: Path) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        self.log = open(workdir / "policy_server.log", "wb")  # noqa: SIM115 - closed in stop()
        # cwd: the server writes logs/policy_server_<time>.log into its working directory
        self.proc = subprocess.Popen([python, "-c", POLICY_SERVER, "--host=127.0.0.1", f"--port={self.port}",
                                      "--fps=10", "--inference_latency=0", "--obs_queue_timeout=2"],
                                     cwd=workdir, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"policy server exited; see {workdir / 'policy_server.log'}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError("policy server not listening")
            time.sleep(0.25)

    def compute_ms(self, since: int) -> tuple[float | None, int]:
        """p50 of the "Observation N | Total time: X ms" it logged (pre-processing, ACT, post-processing) after byte
        offset `since`, and the log's end offset."""
        self.log.flush()
        text = Path(self.log.name).read_bytes()
        ms = [float(m) for m in re.findall(rb"Observation \d+ \| Total time: ([\d.]+)ms", text[since:])]
        return (round(statistics.median(ms), 2) if ms else None), len(text)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def load(cmd: list[str], robots: int, seconds: float, warmup: float) -> dict:
    """One load-generator process; its JSON line."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([*cmd, "--robots", str(robots), "--seconds", str(seconds), "--warmup", str(warmup)],
                         check=False, capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=600)
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("{")]
    if run.returncode or not lines:
        raise RuntimeError(f"load generator failed ({run.returncode}): {run.stderr[-2000:]}")
    return json.loads(lines[-1])


def served(cell: dict) -> bool:
    return cell["failed"] == 0 and cell["p99_ms"] is not None and cell["p99_ms"] <= P99_LIMIT_MS


def act_checkpoint(args: argparse.Namespace) -> tuple[Path, dict]:
    """The ACT pretrained_model directory under --act, trained first (with --dataset) when there is none."""
    out = Path(args.act)
    pretrained = out / "checkpoints" / "last" / "pretrained_model"
    record = out.parent / f"{out.name}-training.json"  # lerobot owns `out`; ours lies beside it
    if not pretrained.exists():
        if not args.dataset:
            sys.exit(f"{pretrained} does not exist: pass --dataset to train ACT first")
        if out.exists():
            sys.exit(f"{out} exists without a final checkpoint: remove it or choose another --act")
        dataset = Path(args.dataset)
        if PRIVILEGED in LeRobotDataset(dataset).features:  # ACT sees what rfm's policy sees, as in lerobot_act.py
            dataset = without_feature(dataset, PRIVILEGED, Path(f"{out}-dataset"))
        pretrained, wall = train_act(args.lerobot_python, dataset, out, args.train_steps, args.train_batch_size,
                                     args.chunk_size, 1, 1, [])
        record.write_text(json.dumps({"dataset": str(args.dataset), "steps": args.train_steps,
                                      "batch_size": args.train_batch_size, "threads": 1,
                                      "train_wall_s": round(wall, 1)}, indent=2))
    train = json.loads((pretrained / "train_config.json").read_text())
    info = {"checkpoint": str(pretrained), "steps": train["steps"], "batch_size": train["batch_size"],
            "dataset": train["dataset"]["root"]}
    if record.exists():
        info["train_wall_s"] = json.loads(record.read_text())["train_wall_s"]
    return pretrained, info


def sweep(args: argparse.Namespace, pretrained: Path, workdir: Path) -> dict:
    counts = [1, 2] if args.quick else [n for n in (1, 2, 4, 8, 16, 32) if n <= args.max_robots]
    seconds, warmup = (4.0, 1.0) if args.quick else (args.seconds, 1.0)
    rfm = Server(Path(args.checkpoint), 32, 1, 2.0)
    lerobot = LerobotServer(args.lerobot_python, workdir)
    gens = {"rfm": [sys.executable, str(LOAD), "rfm", rfm.url.replace("http", "ws") + "/v1/ws"],
            "lerobot": [args.lerobot_python, "-c", LOAD_IN_LEROBOT, str(LOAD), "lerobot", lerobot.address,
                        "--policy-path", str(pretrained.resolve()), "--chunk", str(args.chunk_size)]}
    pids = {"rfm": rfm.proc.pid, "lerobot": lerobot.proc.pid}
    res: dict = {name: {"cells": {}} for name in gens}
    try:
        for name, cmd in gens.items():  # load the model (lerobot: on the first client) and warm both up
            load(cmd, 1, 2.0, 2.0)
            res[name]["rss_warm"] = rss_mb(pids[name])
        live, offset = set(gens), lerobot.compute_ms(0)[1]
        for n in counts:
            for name in [g for g in gens if g in live]:
                load_avg = round(os.getloadavg()[0], 2)
                cell = load(gens[name], n, seconds, warmup)
                cell["loadavg_1m_before"] = load_avg
                if name == "lerobot":
                    cell["server_compute_p50_ms"], offset = lerobot.compute_ms(offset)
                res[name]["cells"][str(n)] = cell
                print(f"  {name:8s} {n:>2} robots: p50 {cell['p50_ms']} ms  p99 {cell['p99_ms']} ms  "
                      f"failed {cell['failed']}/{cell['failed'] + cell['answered']}  "
                      f"server compute p50 {cell['server_compute_p50_ms']} ms  load {load_avg}", flush=True)
                if not served(cell):
                    live.discard(name)
            if not live:
                break
        for name in gens:
            res[name]["rss_after"] = rss_mb(pids[name])
    finally:
        rfm.stop()
        lerobot.stop()
    for name, r in res.items():
        ok = [int(n) for n, c in r["cells"].items() if served(c)]
        r["robots_served"] = max(ok, default=0)
        one = r["cells"].get("1", {})
        r["p50_ms_1_robot"] = one.get("p50_ms")
    return res


def table(res: dict) -> str:
    counts = sorted({int(n) for r in res["servers"].values() for n in r["cells"]})
    head = ("| server | model | p50 ms, 1 robot (server compute) | robots served | "
            + " | ".join(f"p99 ms / failed, {n}" for n in counts)
            + " | RSS MB warm / peak / after |")
    lines = [head, "|" + "---|" * (5 + len(counts))]
    for name, r in res["servers"].items():
        cells = [f"{c['p99_ms']} / {c['failed']}" if (c := r["cells"].get(str(n))) else "—" for n in counts]
        compute = r["cells"].get("1", {}).get("server_compute_p50_ms")
        lines.append(f"| {name} | {r['model']} | {r['p50_ms_1_robot']} ({compute}) | {r['robots_served']} | "
                     + " | ".join(cells)
                     + f" | {r['rss_warm']['rss_mb']} / {r['rss_after']['peak_mb']} / {r['rss_after']['rss_mb']} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lerobot-python", required=True, help="python of the lerobot venv (tools/lerobot_venv.sh)")
    p.add_argument("--act", required=True, help="lerobot-train output directory of the ACT to serve")
    p.add_argument("--dataset", default=None, help="train ACT on this dataset first when --act has no checkpoint")
    p.add_argument("--train-steps", type=int, default=200)
    p.add_argument("--train-batch-size", type=int, default=8)
    p.add_argument("--chunk-size", type=int, default=16)
    p.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "default"), help="rfm checkpoint to serve")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds per (server, robots) cell")
    p.add_argument("--max-robots", type=int, default=32)
    p.add_argument("--quick", action="store_true", help="1 and 2 robots, 4 s cells: a smoke test")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args()

    pretrained, act = act_checkpoint(args)
    with tempfile.TemporaryDirectory(prefix="lerobot-serve-") as tmp:
        servers = sweep(args, pretrained, Path(tmp))
    servers["rfm"]["model"] = f"rfm {Path(args.checkpoint).name}"
    servers["lerobot"]["model"] = f"lerobot ACT, {act['steps']} steps"
    res = {"argv": sys.argv[1:], "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
           "robot_hz": 10, "p99_limit_ms": P99_LIMIT_MS, "torch_threads_per_server": 1, "quick": args.quick,
           "observation": "2 cameras (128, 128, 3) uint8 + state (4,) float32, chunk 16 x 4",
           "transports": {"rfm": "WebSocket /v1/ws, msgpack", "lerobot": "gRPC AsyncInference, pickled TimedObservation"},
           "act": act, "servers": {"rfm": servers["rfm"], "lerobot": servers["lerobot"]}}
    print("\n" + table(res))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
