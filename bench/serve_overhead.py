"""Where a served request's time goes, at batch 1: the bare engine against `rfm serve` over HTTP and WebSocket.

    python bench/serve_overhead.py [--checkpoint DIR] [--engines torch,onnx] [--requests 800] [--rounds 16]

For each engine: the bare runner (`runner.predict_batch` on a prepared batch, and `runner.predict` on the raw
observation, which adds validation) in this process, then one robot sending requests back to back to a real
`rfm serve` subprocess over HTTP msgpack (http.client, keep-alive) and WebSocket /v1/ws msgpack (websockets sync
client). Rounds alternate between bare and served so load from other processes spreads over both. The server's
own `timings` split its part: decode (body read, parse, validation), queue (hand-off to the batch thread and back),
inference, and the rest of the handler; what is left of the end-to-end time is HTTP/WebSocket framing, the socket
and the client. Overhead paired = the median over rounds of (round's e2e p50 - round's bare p50), which the
machine's drift between rounds does not move; outside inference = per request, e2e - the server's inference time
(what the server and transport add, whatever the engine's speed). The SDK's RFMClient runs the same loop over both of its transports (sdk-http: httpx POST, sdk-ws:
one WebSocket), encoding each observation as a robot does. Overhead = end-to-end p50 - bare `predict_batch` p50. Writes bench/results/serve_overhead.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import msgpack
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench._serve_common import Server
from rfm.client.wire import encode_observation

RESULTS = ROOT / "bench" / "results" / "serve_overhead.json"
STAGES = ("decode_ms", "queue_ms", "inference_ms", "handler_rest_ms", "outside_handler_ms")


def p50(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def bare(runner, obs: dict, n: int) -> dict:
    batch = runner.make_batch([obs])
    pb, pr = [], []
    for _ in range(n):
        t = time.perf_counter()
        runner.predict_batch(batch)
        pb.append(1000 * (time.perf_counter() - t))
        t = time.perf_counter()
        runner.predict(obs)
        pr.append(1000 * (time.perf_counter() - t))
    return {"predict_batch": pb, "predict": pr}


TRANSPORTS = ("http", "ws", "sdk-http", "sdk-ws")


def served(port: int, body: bytes, transport: str, n: int, obs: dict | None = None) -> list[dict]:
    """n requests back to back; per request the client's end-to-end ms and the server's timings."""
    out = []
    if transport.startswith("sdk-"):
        from rfm.client import RFMClient

        with RFMClient(f"http://127.0.0.1:{port}", transport=transport[4:]) as client:
            for _ in range(n):
                t = time.perf_counter()
                reply = client.infer(obs)
                out.append({"e2e_ms": 1000 * (time.perf_counter() - t), **reply["timings"]})
    elif transport == "http":
        conn = http.client.HTTPConnection("127.0.0.1", port)
        headers = {"Content-Type": "application/msgpack", "Accept": "application/msgpack"}
        for _ in range(n):
            t = time.perf_counter()
            conn.request("POST", "/v1/act", body, headers)
            r = conn.getresponse()
            data = r.read()
            e2e = 1000 * (time.perf_counter() - t)
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}: {data[:300]!r}")
            out.append({"e2e_ms": e2e, **msgpack.unpackb(data)["timings"]})
        conn.close()
    else:
        from websockets.sync.client import connect

        with connect(f"ws://127.0.0.1:{port}/v1/ws", max_size=None) as ws:
            for _ in range(n):
                t = time.perf_counter()
                ws.send(body)
                data = ws.recv()
                e2e = 1000 * (time.perf_counter() - t)
                reply = msgpack.unpackb(data)
                if "timings" not in reply:
                    raise RuntimeError(f"WebSocket error: {reply}")
                out.append({"e2e_ms": e2e, **reply["timings"]})
    return out


def breakdown(rows: list[dict]) -> dict:
    """p50 of each stage; handler_rest = total - decode - queue - inference; outside = e2e - total."""
    for r in rows:
        r["handler_rest_ms"] = r["total_ms"] - r.get("decode_ms", 0.0) - r["queue_ms"] - r["inference_ms"]
        r["outside_handler_ms"] = r["e2e_ms"] - r["total_ms"]
    return {"e2e_p50_ms": p50([r["e2e_ms"] for r in rows]), "e2e_p99_ms": float(np.percentile(
        [r["e2e_ms"] for r in rows], 99)), **{f"{k}_p50": p50([r.get(k, 0.0) for r in rows]) for k in STAGES}}


def run_engine(ckpt: Path, engine: str, args) -> dict:
    from rfm.export.engine import load_engine

    runner = load_engine(ckpt, engine, device="cpu", threads=1, cache_dir=args.engine_cache)
    obs = runner.dummy_observation("pick up the red block")
    rng = np.random.default_rng(0)
    obs["images"] = {c: rng.integers(0, 256, im.shape, dtype=np.uint8) for c, im in obs["images"].items()}
    body = encode_observation(obs, "msgpack")
    server = Server(ckpt, max_batch=32, threads=1, max_wait_ms=2.0, extra=["--engine", engine] + (
        ["--engine-cache", args.engine_cache] if args.engine_cache else []))
    try:
        samples: dict[str, list] = {"predict_batch": [], "predict": []} | {t: [] for t in TRANSPORTS}
        for t in TRANSPORTS:
            served(server.port, body, t, 30, obs)  # warm the connection path
        bare(runner, obs, 10)
        per = max(1, args.requests // args.rounds)
        paired: dict[str, list] = {t: [] for t in TRANSPORTS}  # per round: e2e p50 - that round's bare p50
        for _ in range(args.rounds):
            b = bare(runner, obs, per)
            samples["predict_batch"] += b["predict_batch"]
            samples["predict"] += b["predict"]
            for t in TRANSPORTS:
                rows = served(server.port, body, t, per, obs)
                samples[t] += rows
                paired[t].append(p50([r["e2e_ms"] for r in rows]) - p50(b["predict_batch"]))
    finally:
        server.stop()
    bare_p50 = p50(samples["predict_batch"])
    res = {"engine": runner.engine or engine, "bare_predict_batch_p50_ms": bare_p50,
           "bare_predict_p50_ms": p50(samples["predict"]), "requests_per_transport": len(samples["http"])}
    for t in TRANSPORTS:
        bd = breakdown(samples[t])
        bd["overhead_ms"] = bd["e2e_p50_ms"] - bare_p50
        bd["overhead_paired_ms"] = p50(paired[t])  # drift of the machine between rounds cancels
        bd["outside_inference_ms"] = p50([r["e2e_ms"] - r["inference_ms"] for r in samples[t]])
        res[t] = bd
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "default"))
    ap.add_argument("--engines", default="torch,onnx")
    ap.add_argument("--requests", type=int, default=800, help="requests per transport per engine")
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--engine-cache", default=None)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(1)
    results = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                           "python": platform.python_version(), "loadavg_before": os.getloadavg()},
               "checkpoint": args.checkpoint, "command": "python bench/serve_overhead.py " + " ".join(sys.argv[1:]),
               "engines": []}
    for engine in args.engines.split(","):
        r = run_engine(Path(args.checkpoint), engine, args)
        results["engines"].append(r)
    print("\n| engine | transport | bare p50 | e2e p50 | overhead | overhead paired | outside inference | "
          "server inference | decode | queue hop | handler rest | outside handler | e2e p99 |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results["engines"]:
        for t in TRANSPORTS:
            b = r[t]
            print(f"| {r['engine']} | {t} | {r['bare_predict_batch_p50_ms']:.2f} | {b['e2e_p50_ms']:.2f} | "
                  f"{b['overhead_ms']:.2f} | {b['overhead_paired_ms']:.2f} | {b['outside_inference_ms']:.2f} | "
                  f"{b['inference_ms_p50']:.2f} | {b['decode_ms_p50']:.2f} | "
                  f"{b['queue_ms_p50']:.2f} | {b['handler_rest_ms_p50']:.2f} | {b['outside_handler_ms_p50']:.2f} | "
                  f"{b['e2e_p99_ms']:.2f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
