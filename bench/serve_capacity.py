"""Open-loop capacity of `rfm serve`: how many robots, each asking for an action chunk at a fixed rate, it serves
within a latency budget.

    python bench/serve_capacity.py [--engines torch,onnx] [--transports ws,http] [--rate 10] [--quick]

Each simulated robot sends one request per period (1/rate, +-10% jitter) whether or not its previous answer came
back (open loop), so a saturated server shows up as growing latency, 504s, refusals (503) and timeouts rather than
as a slower robot. For every configuration (engine x batching x transport; batching on: --batching on, auto:
the server's default, which batches where its warm-up shows a batch pays, off: --max-batch 1) the number of robots grows
until the server is clearly saturated (p99 over twice the largest budget, or more than 5% of requests failed or
refused), then --past-saturation more counts (admission by deadline at work), each configuration on a fresh server started with --timeout-ms = the largest budget. Load generators are separate processes (asyncio inside, --robots-per-proc
robots each) on the same machine; their CPU share, their scheduling lag and the server's CPU are reported
with every cell. Transports: ws (/v1/ws, msgpack frames), openpi (/openpi, msgpack-numpy packed with the real
openpi-client when installed) and http (POST /v1/act, msgpack). Latency percentiles are over requests answered
200 within --timeout-s; a request answered later, or with any error other than 503, counts as failed; a 503 counts
as refused. Headline: robots served with p99 <= each budget and no failed or refused request (at that N and every
smaller N). Writes bench/results/serve_capacity.json and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import os
import random
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere in the repo

from bench._serve_common import Server, machine_busy, machine_info, observations, openpi_observation, pct

TRANSPORTS = ("ws", "openpi", "http")
ENGINES = ("torch", "onnx", "onnx-int8")
ROBOTS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)
QUICK_ROBOTS = (1, 2, 4, 8)
RESULTS = ROOT / "bench" / "results"


# --- one load generator process ------------------------------------------------------------------------------
@dataclass
class Load:
    """What one generator process sends: per robot a request (and the request that ends its episode, or None),
    at rate_hz each with +-jitter, for `seconds` from the parent's start signal; requests scheduled in the first
    warmup_s are sent but not counted."""

    url: str
    transport: str
    payloads: list[tuple[bytes, bytes | None]]
    rate_hz: float
    seconds: float
    warmup_s: float
    timeout_s: float
    jitter: float = 0.1
    episode_s: float | None = None  # end each robot's episode about this often (the request flag episode_end)
    seed: int = 0


@dataclass(eq=False)
class Request:
    scheduled: float  # time.perf_counter() the robot meant to send it
    measured: bool
    at: float  # seconds from the start of the run it was scheduled at


class Tally:
    """Outcomes of one process's requests; only `measured` ones (scheduled after the warm-up) are counted."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.sent = self.answered = self.refused = self.failed = self.episode_ends = 0
        self.outstanding = self.open = 0  # sent and not answered yet: all, measured ones
        self.latency: list[float] = []
        self.at: list[float] = []  # when each answered request was scheduled, seconds from the start
        self.lag: list[float] = []  # how late the generator fired each request: its own scheduling delay
        self.errors: Counter = Counter()

    def fire(self, req: Request, now: float, episode_end: bool) -> None:
        self.outstanding += 1
        if req.measured:
            self.sent += 1
            self.open += 1
            self.episode_ends += episode_end
            self.lag.append(now - req.scheduled)

    def ok(self, req: Request) -> None:
        self.outstanding -= 1
        seconds = time.perf_counter() - req.scheduled
        if not req.measured:
            return
        self.open -= 1
        if seconds > self.timeout_s:
            self.fail_counted("late")
        else:
            self.answered += 1
            self.latency.append(seconds)
            self.at.append(req.at)

    def error(self, req: Request, status: int, what: str) -> None:
        self.outstanding -= 1
        if req.measured:
            self.open -= 1
            if status == 503:
                self.refused += 1
            else:
                self.fail_counted(f"{status} {what}" if status else what)

    def fail_counted(self, what: str) -> None:
        self.failed += 1
        self.errors[what] += 1


class Robot:
    """One simulated robot: fires its requests on schedule; subclasses say how a request travels."""

    def __init__(self, load: Load, tally: Tally, index: int) -> None:
        self.load, self.tally = load, tally
        self.payload, self.end_payload = load.payloads[index]
        self.rng = random.Random(load.seed * 1_000_003 + index)

    async def connect(self) -> None:
        """Open the connection before the clock starts."""

    def send(self, req: Request, payload: bytes) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        """Close the connection after the run."""

    async def run(self, start: float) -> None:
        ld, period = self.load, 1.0 / self.load.rate_hz
        t = start + self.rng.uniform(0, period)  # robots start out of phase
        next_end = t + ld.episode_s * self.rng.uniform(0.8, 1.2) if ld.episode_s and self.end_payload else math.inf
        while t < start + ld.seconds:
            delay = t - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            end = t >= next_end
            if end:
                next_end = t + ld.episode_s * self.rng.uniform(0.8, 1.2)
            req = Request(t, t - start >= ld.warmup_s, t - start)
            self.tally.fire(req, time.perf_counter(), end)
            self.send(req, self.end_payload if end else self.payload)
            t += period * self.rng.uniform(1 - ld.jitter, 1 + ld.jitter)


class WsRobot(Robot):
    """rfm /v1/ws: binary msgpack frames answered in order on one connection; errors arrive in-band."""

    path = "/v1/ws"

    def __init__(self, load: Load, tally: Tally, index: int) -> None:
        super().__init__(load, tally, index)
        self.ws = None
        self.pending: deque[Request] = deque()  # sent on self.ws, not answered yet, oldest first
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.sender_task: asyncio.Task | None = None
        self.tasks: set[asyncio.Task] = set()

    async def connect(self) -> None:
        import websockets

        url = self.load.url.replace("http", "ws", 1) + self.path
        ws = await asyncio.wait_for(websockets.connect(url, max_size=None, compression=None), self.load.timeout_s + 5)
        await self.handshake(ws)
        self.ws, self.pending = ws, deque()
        self._spawn(self.read(ws, self.pending))

    async def handshake(self, ws) -> None:
        pass

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def send(self, req: Request, payload: bytes) -> None:
        if self.sender_task is None:
            self.sender_task = asyncio.create_task(self.sender())
            self.tasks.add(self.sender_task)
        self.outbox.put_nowait((req, payload))

    async def sender(self) -> None:
        """One frame at a time (a socket the server does not read yet holds the rest back, as it would a robot)."""
        import websockets

        while True:
            req, payload = await self.outbox.get()
            pending = None
            try:
                if self.ws is None:
                    await self.connect()
                pending = self.pending
                pending.append(req)
                await self.ws.send(payload)
            except (OSError, TimeoutError, websockets.WebSocketException) as e:
                if pending is None:
                    self.tally.error(req, 0, f"connect: {type(e).__name__}")
                elif req in pending:  # else the reader has failed it already, with the connection
                    pending.remove(req)
                    self.tally.error(req, 0, f"send: {type(e).__name__}")

    async def read(self, ws, pending: deque[Request]) -> None:
        import websockets

        try:
            async for message in ws:
                if pending:
                    self.answer(pending.popleft(), message)
        except websockets.ConnectionClosed:
            pass
        finally:
            while pending:
                self.tally.error(pending.popleft(), 0, "connection closed")
            if self.ws is ws:
                self.ws = None

    def answer(self, req: Request, message: bytes | str) -> None:
        import msgpack

        reply = msgpack.unpackb(message) if isinstance(message, bytes) else json.loads(message)
        if "error" in reply:
            self.tally.error(req, int(reply.get("status", 500)), str(reply["error"]))
        else:
            self.tally.ok(req)

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.ws is not None:
            await self.ws.close()


class OpenpiRobot(WsRobot):
    """/openpi: metadata frame on connect, msgpack-numpy replies; an error is a text frame, then the server closes
    the connection (what was still in flight on it fails) and the robot reconnects for its next request."""

    path = "/openpi"

    async def handshake(self, ws) -> None:
        await asyncio.wait_for(ws.recv(), self.load.timeout_s + 5)  # server metadata

    def answer(self, req: Request, message: bytes | str) -> None:
        if isinstance(message, str):  # "503 overloaded: ..."
            code, _, rest = message.partition(" ")
            self.tally.error(req, int(code) if code.isdigit() else 500, rest.split(":", 1)[0][:40] or message[:40])
        else:
            unpackb(message)
            self.tally.ok(req)


def unpackb(message: bytes) -> dict:
    """msgpack-numpy -> dict, with the real openpi-client when it is installed."""
    try:
        from openpi_client import msgpack_numpy
    except ImportError:
        import msgpack

        return msgpack.unpackb(message, strict_map_key=False)
    return msgpack_numpy.unpackb(message)


class HttpRobot(Robot):
    """POST /v1/act with a msgpack body; every request its own task, so a slow answer holds nothing back."""

    def __init__(self, load: Load, tally: Tally, index: int, client) -> None:
        super().__init__(load, tally, index)
        self.client = client
        self.tasks: set[asyncio.Task] = set()

    async def connect(self) -> None:
        await self.client.get("/healthz")  # opens a keep-alive connection

    def send(self, req: Request, payload: bytes) -> None:
        task = asyncio.create_task(self.post(req, payload))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def post(self, req: Request, payload: bytes) -> None:
        import httpx

        try:
            r = await self.client.post("/v1/act", content=payload, headers={"content-type": "application/msgpack"})
        except httpx.TimeoutException:
            self.tally.error(req, 0, "timeout")
        except httpx.HTTPError as e:
            self.tally.error(req, 0, type(e).__name__)
        else:
            if r.status_code == 200:
                self.tally.ok(req)
            else:
                code = r.json().get("error", "") if r.headers.get("content-type", "").endswith("json") else ""
                self.tally.error(req, r.status_code, code)


async def generate(load: Load, conn) -> dict:
    """Connect every robot, say ready, wait for the start time, run, drain, report."""
    import httpx

    tally = Tally(load.timeout_s)
    client = None
    if load.transport == "http":
        n = len(load.payloads)
        client = httpx.AsyncClient(base_url=load.url, timeout=load.timeout_s,
                                   limits=httpx.Limits(max_connections=8 * n + 4, max_keepalive_connections=8 * n + 4))
        robots: list[Robot] = [HttpRobot(load, tally, i, client) for i in range(n)]
    else:
        cls = OpenpiRobot if load.transport == "openpi" else WsRobot
        robots = [cls(load, tally, i) for i in range(len(load.payloads))]
    await asyncio.gather(*(r.connect() for r in robots))
    conn.send("ready")
    start_wall = await asyncio.to_thread(conn.recv)
    start = time.perf_counter() + (start_wall - time.time())
    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    running = asyncio.gather(*(r.run(start) for r in robots))  # the warm-up is run on schedule, just not counted
    await asyncio.sleep(max(0.0, start + load.warmup_s - time.perf_counter()))
    cpu0 = sum(os.times()[:2])
    await running
    cpu = sum(os.times()[:2]) - cpu0  # this process's CPU over the measured sending window
    until = time.perf_counter() + load.timeout_s + 1
    while tally.outstanding > 0 and time.perf_counter() < until:
        await asyncio.sleep(0.02)
    errors = dict(tally.errors, **({"unanswered": tally.open} if tally.open else {}))
    out = {"sent": tally.sent, "answered": tally.answered, "refused": tally.refused, "episode_ends": tally.episode_ends,
           "failed": tally.failed + tally.open, "errors": errors, "latency": tally.latency, "at": tally.at, "lag": tally.lag,
           "cpu_s": cpu}  # taken before closing: what is still open now is unanswered, not "connection closed"
    for r in robots:
        await r.close()
    if client is not None:
        await client.aclose()
    return out


def generator_main(load: Load, conn, nice: int) -> None:
    """Entry point of a generator process: results (or the error) go back over `conn`."""
    if nice:
        os.nice(nice)
    try:
        conn.send(asyncio.run(generate(load, conn)))
    except Exception as e:  # noqa: BLE001 - reported by the parent
        conn.send({"error": f"{type(e).__name__}: {e}"})


# --- the parent: start generators, measure the server ---------------------------------------------------------
def run_load(server: Server, transport: str, payloads: list[tuple[bytes, bytes | None]], *, rate_hz: float,
             seconds: float, warmup_s: float, timeout_s: float, robots_per_proc: int, nice: int = 0,
             jitter: float = 0.1, episode_s: float | None = None, monitor=None, monitor_s: float = 5.0,
             window_s: float | None = None) -> dict:
    """Drive `server` with len(payloads) open-loop robots spread over generator processes; one result dict.

    monitor(elapsed_s), when given, is called about every monitor_s seconds while the load runs; with window_s the
    result also has "windows": answered count, p50 and p99 of the requests scheduled in each window_s seconds."""
    n_procs = math.ceil(len(payloads) / robots_per_proc)
    ctx = mp.get_context("spawn")  # a clean interpreter: no inherited threads or sockets
    procs, pipes = [], []
    for k in range(n_procs):
        load = Load(server.url, transport, payloads[k::n_procs], rate_hz, seconds, warmup_s, timeout_s, jitter,
                    episode_s, seed=k)
        parent, child = ctx.Pipe()
        p = ctx.Process(target=generator_main, args=(load, child, nice), daemon=True)
        p.start()
        procs.append(p)
        pipes.append(parent)
    try:
        for pipe in pipes:
            if not pipe.poll(120):
                raise TimeoutError("a load generator did not connect within 120 s")
            msg = pipe.recv()
            if msg != "ready":
                raise RuntimeError(f"load generator failed: {msg.get('error')}")
        start = time.time() + 0.3
        for pipe in pipes:
            pipe.send(start)
        time.sleep(max(0.0, start + warmup_s - time.time()))
        cpu0, busy0, t0 = server.cpu_s(), machine_busy(), time.time()
        next_tick = t0
        while (now := time.time()) < start + seconds:
            if monitor is not None and now >= next_tick:
                monitor(now - start)
                next_tick += monitor_s
            wake = min(next_tick, start + seconds) if monitor is not None else start + seconds
            time.sleep(max(0.0, wake - time.time()))
        cpu1, busy1, t1 = server.cpu_s(), machine_busy(), time.time()
        parts = []
        for pipe in pipes:
            if not pipe.poll(timeout_s + 60):
                raise TimeoutError("a load generator did not report")
            part = pipe.recv()
            if "error" in part:
                raise RuntimeError(f"load generator failed: {part['error']}")
            parts.append(part)
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    wall = t1 - t0
    lat = [x for p in parts for x in p["latency"]]
    lag = [x for p in parts for x in p["lag"]]
    errors: Counter = Counter()
    for p in parts:
        errors.update(p["errors"])
    total = lambda k: sum(p[k] for p in parts)
    return {"robots": len(payloads), "procs": n_procs, "measured_s": round(seconds - warmup_s, 2),
            "sent": total("sent"), "answered": total("answered"), "failed": total("failed"),
            "refused": total("refused"), "episode_ends": total("episode_ends"), "errors": dict(errors),
            "p50_ms": round(1000 * pct(lat, 50), 2), "p99_ms": round(1000 * pct(lat, 99), 2),
            "max_ms": round(1000 * max(lat), 2) if lat else float("nan"),
            "req_s": round(total("answered") / (seconds - warmup_s), 2),
            "offered_req_s": round(total("sent") / (seconds - warmup_s), 2),
            "server_cpu_pct": round(100 * (cpu1 - cpu0) / wall, 1),  # of one core
            "generator_cpu_pct": round(100 * total("cpu_s") / (seconds - warmup_s), 1),  # of one core, all procs
            "machine_cpu_pct": round(100 * (busy1[0] - busy0[0]) / max(busy1[1] - busy0[1], 1), 1),  # all cores
            "generator_lag_p99_ms": round(1000 * pct(lag, 99), 2),
            **({"windows": windows([(a, x) for p in parts for a, x in zip(p["at"], p["latency"])], window_s)}
               if window_s else {})}


def windows(at_latency: list[tuple[float, float]], window_s: float) -> list[dict]:
    """[(scheduled at, latency s)] -> per window of window_s seconds: its start, answered count, p50, p99 (ms)."""
    buckets: dict[int, list[float]] = {}
    for at, x in at_latency:
        buckets.setdefault(int(at // window_s), []).append(x)
    return [{"from_s": round(k * window_s, 1), "answered": len(v), "p50_ms": round(1000 * pct(v, 50), 2),
             "p99_ms": round(1000 * pct(v, 99), 2)} for k, v in sorted(buckets.items())]


def start_server(ckpt: Path, engine: str, max_batch: int, args: argparse.Namespace, timeout_ms: float,
                 extra: tuple[str, ...] = ()) -> tuple[Server | None, str]:
    """(server, note) for one engine, or (None, why not). A server that rejects --engine runs torch without it."""
    start = lambda flags: Server(ckpt, max_batch, args.threads, args.max_wait_ms, timeout_ms=timeout_ms,
                                 queue_size=None, extra=(*flags, *extra))
    try:
        return start(("--engine", engine)), ""
    except RuntimeError as e:
        if "--engine" not in str(e):  # argparse: "unrecognized arguments: --engine" / "argument --engine: invalid"
            return None, f"server failed: {str(e)[-600:]}"
        if engine != "torch":
            return None, f"the server does not accept --engine {engine}"
    return start(()), "the server has no --engine flag: ran its default (torch)"


# --- the sweep -----------------------------------------------------------------------------------------------
def payloads_for(transport: str, obs: list[dict]) -> list[tuple[bytes, None]]:
    """Request bodies, encoded once: msgpack for ws and http, msgpack-numpy for openpi."""
    if transport == "openpi":
        try:
            from openpi_client.msgpack_numpy import packb
        except ImportError:  # the server's own msgpack-numpy writer, same format
            from serving.openpi import pack as packb
        return [(packb(openpi_observation(o)), None) for o in obs]
    from rfm.client.wire import encode_observation

    return [(encode_observation(o, "msgpack"), None) for o in obs]


def saturated(cell: dict, budgets: list[float]) -> bool:
    """Clearly past capacity: p99 over twice the largest budget, or more than 5% failed or refused."""
    bad = cell["failed"] + cell["refused"]
    return not cell["answered"] or cell["p99_ms"] > 2 * max(budgets) or bad > 0.05 * max(cell["sent"], 1)


def served(cells: list[dict], budget_ms: float) -> int:
    """Most robots with p99 <= budget and no failed or refused request, at that N and every N below it."""
    best = 0
    for c in sorted(cells, key=lambda c: c["robots"]):
        if c["failed"] or c["refused"] or not c["answered"] or c["p99_ms"] > budget_ms:
            break
        best = c["robots"]
    return best


def sweep(server: Server, transport: str, obs: list[dict], robots: list[int], args: argparse.Namespace) -> list[dict]:
    payloads = payloads_for(transport, obs)
    cells = []
    for n in robots:
        load = os.getloadavg()[0]
        cell = run_load(server, transport, payloads[:n], rate_hz=args.rate, seconds=args.duration,
                        warmup_s=args.warmup, timeout_s=args.timeout_s, robots_per_proc=args.robots_per_proc,
                        nice=args.generator_nice, jitter=args.jitter)
        cell["loadavg_1m_before"] = round(load, 2)
        cells.append(cell)
        print(f"    {n:>3} robots: sent {cell['sent']:>5} ok {cell['answered']:>5} failed {cell['failed']:>4} "
              f"refused {cell['refused']:>4}  p50 {cell['p50_ms']:7.1f} p99 {cell['p99_ms']:7.1f} ms  "
              f"{cell['req_s']:6.1f} req/s  server {cell['server_cpu_pct']:5.1f}%  gen {cell['generator_cpu_pct']:5.1f}% "
              f"(lag p99 {cell['generator_lag_p99_ms']:.1f} ms)  machine {cell['machine_cpu_pct']:5.1f}%  "
              f"load {load:.1f}", flush=True)
        if cell["errors"]:
            print(f"          errors: {cell['errors']}", flush=True)
        if saturated(cell, args.budgets):
            cell["saturated"] = True
        past = sum(bool(c.get("saturated")) for c in cells) - 1  # cells run beyond the first saturated one
        if past >= args.past_saturation:
            break
    return cells


def run_configs(ckpt: Path, args: argparse.Namespace) -> dict:
    """One fresh server per configuration, so no state (queue, the admission's cost estimates) carries over."""
    robots = sorted(args.robots)
    configs: dict = {}
    obs = None
    unavailable: dict[str, str] = {}  # engine -> why
    for engine in args.engines:
        for batching, max_batch in (("on", args.max_batch), ("auto", args.max_batch), ("off", 1)):
            if batching not in args.batching:
                continue
            flags = () if batching == "off" else ("--batching", batching)
            for tr in args.transports:
                key, load = f"{engine}/batching_{batching}/{tr}", os.getloadavg()
                base = {"engine": engine, "batching": batching, "max_batch": max_batch, "transport": tr,
                        "loadavg_before": [round(x, 2) for x in load]}
                print(f"{key} (--max-batch {max_batch}); load average {load[0]:.1f}", flush=True)
                server, note = (None, unavailable[engine]) if engine in unavailable else \
                    start_server(ckpt, engine, max_batch, args, timeout_ms=max(args.budgets), extra=flags)
                if server is None and "--batching" in note and batching == "on":  # an older server: it always batches
                    server, note = start_server(ckpt, engine, max_batch, args, timeout_ms=max(args.budgets))
                if server is None:
                    print(f"  unavailable: {note}", flush=True)
                    if "--batching" not in note:  # (an older server without the flag still runs the others)
                        unavailable[engine] = note
                    configs[key] = {**base, "available": False, "note": note}
                    continue
                try:
                    import httpx

                    model = httpx.get(server.url + "/v1/models").json()
                    obs = obs or observations(model, max(robots))
                    cells = sweep(server, tr, obs, robots, args)
                    configs[key] = {**base, "available": True, "note": note, "server_cmd": " ".join(server.cmd[3:]),
                                    "served_engine": model.get("engine", model.get("backend")),
                                    "served_batching": model.get("server", {}).get("batching"),
                                    "cells": cells, "served": {str(b): served(cells, b) for b in args.budgets},
                                    "saturated_at": next((c["robots"] for c in cells if c.get("saturated")), None),
                                    "server_rss_after": server.rss_mb()}
                finally:
                    server.stop()
    return configs


# --- report --------------------------------------------------------------------------------------------------
def print_summary(configs: dict, budgets: list[float]) -> None:
    heads = "".join(f" served@{b:g}ms" for b in budgets)
    print(f"\n{'configuration':<32}{heads}  max req/s  saturated at")
    for key, c in configs.items():
        if not c["available"]:
            print(f"{key:<32} unavailable: {c['note']}")
            continue
        row = "".join(f" {c['served'][str(b)]:>{len(f' served@{b:g}ms') - 1}}" for b in budgets)
        best = max((x["req_s"] for x in c["cells"]), default=0.0)
        print(f"{key:<32}{row}  {best:9.1f}  {c['saturated_at'] or '-'}")


def plot(configs: dict, budgets: list[float], rate: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_ref) = plt.subplots(2, 1, figsize=(8, 8), sharex=True, height_ratios=(3, 2))
    ns = set()
    for key, c in configs.items():
        cells = [x for x in c.get("cells", []) if x["answered"]]
        if cells:
            line = ax.plot([x["robots"] for x in cells], [x["p99_ms"] for x in cells], marker="o", label=key)
            ax_ref.plot([x["robots"] for x in cells], [100 * x["refused"] / max(1, x["sent"]) for x in cells],
                        marker="o", color=line[0].get_color())
            ns.update(x["robots"] for x in cells)
    ax.set_xscale("log", base=2)
    ax_ref.set_xticks(sorted(ns), [str(n) for n in sorted(ns)])
    ax.minorticks_off()
    ax_ref.minorticks_off()
    for b in budgets:
        ax.axhline(b, color="grey", linestyle="--", linewidth=1)
        ax.text(ax.get_xlim()[0], b, f" {b:g} ms", va="bottom", color="grey", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("p99 latency of answered requests (ms)")
    ax.set_title("rfm serve: p99 latency and refusals vs robots")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax_ref.set_xlabel(f"robots ({rate:g} Hz each, open loop)")
    ax_ref.set_ylabel("refused at once (503), % of sent")
    ax_ref.grid(True, alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_common_args(p: argparse.ArgumentParser) -> None:
    """Options this script and serve_soak.py share: the model, the server's batching, the load generators."""
    p.add_argument("--checkpoint", default=None, help="default: checkpoints/default")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1) - 1),
                   help="server intra-op threads (default: all cores but one)")
    p.add_argument("--robots-per-proc", type=int, default=16, help="robots per load generator process")
    p.add_argument("--generator-nice", type=int, default=0,
                   help="raise the generators' niceness by this, so they yield CPU to the server (default 0: their "
                        "own scheduling lag, reported per cell, stays low on a busy machine)")


def csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    from bench._serve_common import resolve_checkpoint

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(p)
    p.add_argument("--engines", type=csv, default=["torch", "onnx"], help=f"comma-separated, of {', '.join(ENGINES)}")
    p.add_argument("--transports", type=csv, default=["ws", "http"], help=f"comma-separated, of {', '.join(TRANSPORTS)}")
    p.add_argument("--batching", type=csv, default=["on", "auto", "off"],
                   help="on (--batching on), auto (the server's default: batches where a batch pays), off (--max-batch 1)")
    p.add_argument("--robots", type=int, nargs="+", default=None, help=f"robot counts (default {' '.join(map(str, ROBOTS))})")
    p.add_argument("--rate", type=float, default=10.0, help="requests per second per robot")
    p.add_argument("--jitter", type=float, default=0.1, help="each period is 1/rate times 1 +- this")
    p.add_argument("--budgets", type=lambda t: [float(x) for x in csv(t)], default=[50.0, 100.0],
                   help="p99 latency budgets in ms; the server's --timeout-ms is the largest")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per cell, warm-up included")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds at the start of a cell not counted")
    p.add_argument("--timeout-s", type=float, default=1.0, help="a request not answered within this has failed")
    p.add_argument("--past-saturation", type=int, default=2,
                   help="robot counts still run after the first saturated one (what overload looks like)")
    p.add_argument("--quick", action="store_true", help=f"robots {' '.join(map(str, QUICK_ROBOTS))}, 3 s per cell")
    p.add_argument("--out", default=str(RESULTS / "serve_capacity.json"))
    p.add_argument("--plot", default=None, help="PNG path (default: --out with .png)")
    args = p.parse_args(argv)
    for name, values, allowed in (("--engines", args.engines, ENGINES), ("--transports", args.transports, TRANSPORTS),
                                  ("--batching", args.batching, ("on", "auto", "off"))):
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            p.error(f"{name} {','.join(values)}: expected a comma-separated list of {', '.join(allowed)}")
    if args.quick:
        args.robots = args.robots or list(QUICK_ROBOTS)
        args.duration, args.warmup = 3.0, 0.5
    args.robots = args.robots or list(ROBOTS)
    if args.warmup >= args.duration:
        p.error(f"--warmup {args.warmup} must be shorter than --duration {args.duration}")

    ckpt, origin = resolve_checkpoint(args.checkpoint)
    print(f"model: {ckpt} ({origin}); {args.rate:g} Hz per robot, budgets {args.budgets} ms", flush=True)
    res = {"argv": argv if argv is not None else sys.argv[1:], "model": f"{ckpt} ({origin})", "machine": machine_info(),
           "settings": {k: getattr(args, k) for k in ("rate", "jitter", "budgets", "duration", "warmup", "timeout_s",
                                                       "max_batch", "max_wait_ms", "threads", "robots_per_proc",
                                                       "generator_nice", "robots")},
           "server_timeout_ms": max(args.budgets)}
    res["configs"] = run_configs(ckpt, args)
    print_summary(res["configs"], args.budgets)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    png = Path(args.plot) if args.plot else out.with_suffix(".png")
    plot(res["configs"], args.budgets, args.rate, png)
    print(f"wrote {out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
