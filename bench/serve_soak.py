"""Soak test of `rfm serve --record`: R open-loop robots over WebSocket for D minutes, each ending its episode
every ~E seconds, while the server's memory and the recorder's backlog are sampled.

    python bench/serve_soak.py [--robots 32] [--rate 2] [--minutes 10] [--episode-s 20]

--rate must stay below the capacity bench/serve_capacity.py finds for this machine, engine and transport (robots
served at p99 <= the budget, times their rate, is the request rate the server sustains): a soak is about what
accumulates (memory, recorder backlog, episodes) under a sustainable load, not about saturation. The default,
0.5 Hz x 32 robots = 16 req/s, is well below the ~35-40 req/s that serve_capacity.py found for the default
checkpoint on a 2-core CPU machine (torch or onnx, ws), which leaves CPU for the recorder's video encoding.
The recording goes into a temporary directory outside the repository (removed afterwards unless --keep-record).
RSS after warm-up is the sample at the end of the first minute (or of the first half of a shorter run); latency
is also reported per minute (per fifth of a shorter run), to show drift. Exits 1
when any request failed or was refused. Writes bench/results/serve_soak.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere in the repo

from bench._serve_common import machine_info, observations, resolve_checkpoint
from bench.serve_capacity import ENGINES, add_common_args, run_load, start_server

BACKLOG = "rfm_recorder_backlog"  # gauge of steps queued for the recorder, when the server exports it
RESULTS = ROOT / "bench" / "results"


def robot_payloads(obs: list[dict]) -> list[tuple[bytes, bytes]]:
    """Per robot: its request and the same request ending the episode, both in the robot's own session."""
    from rfm.client.wire import encode_observation

    return [(encode_observation(o, "msgpack", session_id=f"soak-robot-{i}"),
             encode_observation({**o, "episode_end": True}, "msgpack", session_id=f"soak-robot-{i}"))
            for i, o in enumerate(obs)]


class Sampler:
    """Server RSS and /metrics gauges every few seconds while the load runs."""

    def __init__(self, server) -> None:
        self.server, self.samples = server, []

    def __call__(self, elapsed_s: float) -> None:
        sample = {"t_s": round(elapsed_s, 1), **self.server.rss_mb(), "cpu_s": round(self.server.cpu_s(), 1)}
        try:
            m = self.server.metrics()
            sample["backlog"] = m.get(BACKLOG)
            sample["queue_depth"] = m.get("rfm_queue_depth")
        except httpx.HTTPError as e:  # a busy server may not answer /metrics in time: note it, go on
            sample["metrics_error"] = type(e).__name__
        self.samples.append(sample)
        print(f"  {elapsed_s:7.1f} s  RSS {sample['rss_mb']:7.1f} MB  backlog {sample.get('backlog')}  "
              f"queue {sample.get('queue_depth')}", flush=True)


def drain_backlog(server, limit_s: float = 120) -> float | None:
    """Seconds until the recorder backlog is empty after the load stops (None without the gauge)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        backlog = server.metrics().get(BACKLOG)
        if backlog is None:
            return None
        if backlog == 0:
            return round(time.monotonic() - t0, 1)
        time.sleep(1)
    return float("inf")


def summarise(cell: dict, samples: list[dict], warm_s: float, seconds: float) -> dict:
    """Latency and outcome counts of the run; RSS after warm-up vs the last sample under load (the one taken
    after the load stopped is reported apart: an idle server trims its heap)."""
    rss = [s for s in samples if s["t_s"] < seconds]
    warm = next((s for s in rss if s["t_s"] >= warm_s), rss[-1] if rss else None)
    end = rss[-1] if rss else None
    backlogs = [s["backlog"] for s in samples if s.get("backlog") is not None]
    win = [w["p99_ms"] for w in cell["windows"]]
    out = {"requests": cell["sent"], "answered": cell["answered"], "failed": cell["failed"],
           "refused": cell["refused"], "errors": cell["errors"], "p50_ms": cell["p50_ms"], "p99_ms": cell["p99_ms"],
           "max_ms": cell["max_ms"], "p99_first_window_ms": win[0] if win else None,
           "p99_last_window_ms": win[-1] if win else None, "req_s": cell["req_s"], "episode_ends_sent": cell["episode_ends"],
           "server_cpu_pct": cell["server_cpu_pct"], "generator_cpu_pct": cell["generator_cpu_pct"],
           "machine_cpu_pct": cell["machine_cpu_pct"], "generator_lag_p99_ms": cell["generator_lag_p99_ms"]}
    if warm and end:
        out.update(rss_after_warmup_mb=warm["rss_mb"], rss_warmup_at_s=warm["t_s"], rss_end_mb=end["rss_mb"],
                   rss_growth_pct=round(100 * (end["rss_mb"] - warm["rss_mb"]) / warm["rss_mb"], 1),
                   peak_rss_mb=max(s["peak_rss_mb"] for s in samples), rss_idle_after_mb=samples[-1]["rss_mb"])
    out["max_backlog"] = max(backlogs) if backlogs else None
    out["backlog_metric"] = BACKLOG if backlogs else f"absent: the server exports no {BACKLOG}"
    return out


def episodes_written(record_dir: Path) -> int | None:
    info = record_dir / "meta" / "info.json"
    return json.loads(info.read_text()).get("total_episodes") if info.is_file() else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(p)
    p.add_argument("--engine", default="onnx", choices=ENGINES, help="as `rfm serve --engine` (its default on a CPU: onnx)")
    p.add_argument("--robots", type=int, default=32)
    p.add_argument("--rate", type=float, default=0.5,
                   help="requests per second per robot: keep robots x rate below the capacity serve_capacity.py finds")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--episode-s", type=float, default=20.0, help="each robot ends its episode about this often")
    p.add_argument("--sample-s", type=float, default=5.0, help="seconds between RSS / metrics samples")
    p.add_argument("--timeout-s", type=float, default=2.0, help="a request not answered within this has failed")
    p.add_argument("--server-timeout-ms", type=float, default=1000.0, help="the server's --timeout-ms")
    p.add_argument("--record-images", default="video", choices=["video", "image"])
    p.add_argument("--record-dir", default=None, help="default: a new temporary directory, removed afterwards")
    p.add_argument("--keep-record", action="store_true", help="keep the recorded dataset")
    p.add_argument("--out", default=str(RESULTS / "serve_soak.json"))
    args = p.parse_args(argv)
    seconds = 60 * args.minutes
    warm_s = min(60.0, seconds / 2)

    ckpt, origin = resolve_checkpoint(args.checkpoint)
    tmp = None if args.record_dir else Path(tempfile.mkdtemp(prefix="rfm-soak-"))
    record_dir = Path(args.record_dir) if args.record_dir else tmp / "dataset"
    print(f"model: {ckpt} ({origin}); {args.robots} robots x {args.rate:g} Hz over ws for {args.minutes:g} min, "
          f"recording into {record_dir}; load average {os.getloadavg()[0]:.1f}", flush=True)
    res: dict = {"argv": argv if argv is not None else sys.argv[1:], "model": f"{ckpt} ({origin})",
                 "machine": machine_info(), "loadavg_before": [round(x, 2) for x in os.getloadavg()],
                 "settings": {k: getattr(args, k) for k in ("engine", "robots", "rate", "minutes", "episode_s",
                                                             "sample_s", "timeout_s", "server_timeout_ms", "max_batch",
                                                             "max_wait_ms", "threads", "record_images")}}
    server, note = start_server(ckpt, args.engine, args.max_batch, args, timeout_ms=args.server_timeout_ms,
                                extra=("--record", str(record_dir), "--record-images", args.record_images))
    if server is None:
        raise SystemExit(f"cannot start the server: {note}")
    res["note"], res["server_cmd"] = note, " ".join(server.cmd[3:])
    try:
        itf = httpx.get(server.url + "/v1/models").json()
        sampler = Sampler(server)
        cell = run_load(server, "ws", robot_payloads(observations(itf, args.robots)), rate_hz=args.rate,
                        seconds=seconds, warmup_s=min(5.0, seconds / 10), timeout_s=args.timeout_s,
                        robots_per_proc=args.robots_per_proc, nice=args.generator_nice, episode_s=args.episode_s,
                        monitor=sampler, monitor_s=args.sample_s, window_s=min(60.0, seconds / 5))
        sampler(seconds)
        res["backlog_drain_s"] = drain_backlog(server)
        res["summary"] = summarise(cell, sampler.samples, warm_s, seconds)
        res["latency_windows"] = cell["windows"]
        for w in cell["windows"]:
            print(f"  from {w['from_s']:7.1f} s: {w['answered']:>6} answered  p50 {w['p50_ms']:7.1f}  "
                  f"p99 {w['p99_ms']:7.1f} ms", flush=True)
        res["samples"] = sampler.samples
    finally:
        server.stop()  # the recorder writes the sessions still open
    res["summary"]["episodes_written"] = episodes_written(record_dir)
    if tmp is not None and not args.keep_record:
        shutil.rmtree(tmp, ignore_errors=True)
    s = res["summary"]
    print(json.dumps(s, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    ok = s["failed"] == 0 and s["refused"] == 0
    print(f"{'PASS' if ok else 'FAIL'}: {s['failed']} failed, {s['refused']} refused of {s['requests']}; "
          f"wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
