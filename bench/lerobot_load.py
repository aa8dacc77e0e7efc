"""Open-loop robots for bench/lerobot_serve.py: N robots, each sending an observation at a fixed rate and
receiving action chunks, against `rfm serve` (WebSocket /v1/ws, msgpack) or LeRobot's async-inference
PolicyServer (gRPC, pickled TimedObservation, as lerobot's RobotClient sends them).

Runs in a process of its own, in whichever venv has the client side: the rfm venv for `rfm`, the lerobot venv for
`lerobot` (bench/lerobot_serve.py starts it there behind the torchvision shim). Needs only numpy besides the
client libraries, imported per protocol. Prints one JSON line:

    python bench/lerobot_load.py rfm ws://127.0.0.1:PORT/v1/ws --robots 4 --seconds 10
    python bench/lerobot_load.py lerobot 127.0.0.1:PORT --robots 1 --seconds 10 --policy-path PRETRAINED_DIR

Each robot has a sender thread (one observation per tick, on schedule whatever the server does: open loop) and a
receiver thread; latency is from sending an observation to receiving the chunk computed from it. A tick fails when
its chunk has not arrived by the end of the run (plus a grace period: a server may drop observations, as lerobot's
keeps only the newest) or the server answered with an error.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import numpy as np

CAMERAS, SIZE, STATE_NAMES = ("corner", "topview"), 128, ("hand_x", "hand_y", "hand_z", "gripper_open")
TASK = "press the button from above"


def observation(seed: int) -> dict:
    """The dataset's shapes: images {cam: (128, 128, 3) uint8} for 2 cameras, state (4,) float32."""
    rng = np.random.default_rng(seed)
    return {"images": {c: rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for c in CAMERAS},
            "state": rng.uniform(-0.5, 0.5, len(STATE_NAMES)).astype(np.float32), "instruction": TASK}


class RfmRobot:
    """One WebSocket connection to `rfm serve`'s /v1/ws; replies come in request order."""

    def __init__(self, url: str, seed: int, **_: object) -> None:
        import msgpack
        from websockets.sync.client import connect

        from rfm.client.wire import encode_observation

        self.unpack = msgpack.unpackb
        self.body = encode_observation(observation(seed), "msgpack")
        self.ws = connect(url, max_size=16 * 1024 * 1024)
        self.pending: list[int] = []  # ticks sent and not yet answered, oldest first
        self.lock = threading.Lock()

    def send(self, tick: int) -> None:
        with self.lock:
            self.pending.append(tick)
        self.ws.send(self.body)

    def receive(self) -> tuple[int | None, str | None, float | None]:
        """(tick answered, error, the server's inference_ms) of the next reply."""
        reply = self.unpack(self.ws.recv())
        with self.lock:
            tick = self.pending.pop(0)
        if "error" in reply:
            return tick, str(reply["error"]), None
        return tick, None, reply["timings"]["inference_ms"]

    def close(self) -> None:
        self.ws.close()


class LerobotRobot:
    """lerobot's RobotClient protocol: Ready, SendPolicyInstructions (pickled RemotePolicyConfig), then
    SendObservations (a pickled TimedObservation in chunks) per tick while a receiver loops on GetActions."""

    def __init__(self, address: str, seed: int, policy_path: str = "", chunk: int = 16, hz: float = 10.0) -> None:
        import pickle

        import grpc
        from lerobot.async_inference.helpers import RemotePolicyConfig, TimedObservation
        from lerobot.datasets.utils import hw_to_dataset_features
        from lerobot.transport import services_pb2, services_pb2_grpc
        from lerobot.transport.utils import grpc_channel_options, send_bytes_in_chunks

        self.pickle, self.pb, self.timed, self.chunks = pickle, services_pb2, TimedObservation, send_bytes_in_chunks
        obs = observation(seed)
        # what a lerobot Robot's get_observation() returns: one float per motor, one (H, W, 3) array per camera
        self.raw = {**dict(zip(STATE_NAMES, obs["state"].tolist())), **obs["images"], "task": TASK}
        hardware = {**{n: float for n in STATE_NAMES}, **{c: (SIZE, SIZE, 3) for c in CAMERAS}}
        features = hw_to_dataset_features(hardware, "observation", use_video=False)
        self.channel = grpc.insecure_channel(address, grpc_channel_options(initial_backoff=f"{1 / hz:.4f}s"))
        self.stub = services_pb2_grpc.AsyncInferenceStub(self.channel)
        self.stub.Ready(services_pb2.Empty())
        spec = RemotePolicyConfig("act", policy_path, features, chunk, "cpu")
        self.stub.SendPolicyInstructions(services_pb2.PolicySetup(data=pickle.dumps(spec)))
        self.sent: dict[float, int] = {}  # observation timestamp -> tick
        self.misrouted = 0  # chunks received that answer another robot's observation

    def send(self, tick: int) -> None:
        # must_go: every tick wants a chunk (RobotClient sets it when its action queue is empty), so the server's
        # similar-observation filter does not drop it
        obs = self.timed(timestamp=time.time(), observation=self.raw, timestep=tick, must_go=True)
        self.sent[obs.timestamp] = tick
        self.stub.SendObservations(self.chunks(self.pickle.dumps(obs), self.pb.Observation, silent=True))

    def receive(self) -> tuple[int | None, str | None, float | None]:
        reply = self.stub.GetActions(self.pb.Empty())
        if len(reply.data) == 0:
            return None, None, None  # the server's "no observation queued in time": RobotClient just asks again
        actions = self.pickle.loads(reply.data)
        tick = self.sent.pop(actions[0].get_timestamp(), None)
        if tick is None:
            self.misrouted += 1
        return tick, None, None  # the server logs its compute time; bench/lerobot_serve.py reads it there

    def close(self) -> None:
        self.channel.close()


def drive(robot, index: int, n: int, hz: float, start: float, seconds: float, warmup: float, grace: float,
          out: dict) -> None:
    """Send on schedule (robots spread evenly over the tick) and collect (latency, error) per tick."""
    sent: dict[int, float] = {}
    done: dict[int, float] = {}
    model_ms: list[float] = []
    errors: list[str] = []
    stop = threading.Event()

    def receiver() -> None:
        while not stop.is_set():
            try:
                tick, error, ms = robot.receive()
            except Exception as e:  # noqa: BLE001 - the connection ended or failed; counted below
                if not stop.is_set():
                    errors.append(f"{type(e).__name__}: {e}"[:200])
                return
            if tick is not None:
                if error:
                    errors.append(error[:200])
                else:
                    done[tick] = time.perf_counter()
                    if ms is not None:
                        model_ms.append(ms)

    rx = threading.Thread(target=receiver, daemon=True)
    rx.start()
    ticks = int(seconds * hz)
    offset = index / (n * hz)
    for k in range(ticks):
        time.sleep(max(0.0, start + offset + k / hz - time.perf_counter()))
        sent[k] = time.perf_counter()
        try:
            robot.send(k)
        except Exception as e:  # noqa: BLE001
            errors.append(f"send: {type(e).__name__}: {e}"[:200])
    deadline = time.perf_counter() + grace
    while len(done) < ticks and time.perf_counter() < deadline and rx.is_alive():
        time.sleep(0.01)
    stop.set()
    measured = [k for k in range(ticks) if k / hz >= warmup]
    out[index] = {"latency_s": [done[k] - sent[k] for k in measured if k in done],
                  "failed": sum(k not in done for k in measured), "errors": errors[:5],
                  "model_ms": model_ms,
                  "misrouted": getattr(robot, "misrouted", 0)}
    try:
        robot.close()
    except Exception:  # noqa: BLE001, S110 - closing after the measurement
        pass


def run(protocol: str, target: str, robots: int, seconds: float, hz: float, warmup: float, grace: float,
        **kw: object) -> dict:
    cls = RfmRobot if protocol == "rfm" else LerobotRobot
    t0 = time.perf_counter()
    conns = [cls(target, seed=i, hz=hz, **kw) for i in range(robots)]  # connect (and hand-shake) one by one
    connect_s = time.perf_counter() - t0
    out: dict = {}
    start = time.perf_counter() + 0.2
    threads = [threading.Thread(target=drive, args=(r, i, robots, hz, start, seconds, warmup, grace, out))
               for i, r in enumerate(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat = np.array([x for r in out.values() for x in r["latency_s"]]) * 1000
    q = (lambda p: round(float(np.percentile(lat, p)), 2)) if len(lat) else (lambda p: None)
    model = [x for r in out.values() for x in r["model_ms"]]
    return {"robots": robots, "hz": hz, "seconds": seconds, "warmup_s": warmup, "connect_s": round(connect_s, 2),
            "answered": len(lat), "failed": sum(r["failed"] for r in out.values()),
            "misrouted": sum(r["misrouted"] for r in out.values()),
            "p50_ms": q(50), "p90_ms": q(90), "p99_ms": q(99), "max_ms": q(100),
            "server_compute_p50_ms": round(float(np.median(model)), 2) if model else None,
            "errors": [e for r in out.values() for e in r["errors"]][:5]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("protocol", choices=["rfm", "lerobot"])
    p.add_argument("target", help="rfm: ws://HOST:PORT/v1/ws; lerobot: HOST:PORT")
    p.add_argument("--robots", type=int, default=1)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--hz", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=1.0, help="ticks sent before this many seconds are not counted")
    p.add_argument("--grace", type=float, default=2.0, help="seconds to wait for the last chunks")
    p.add_argument("--policy-path", default="", help="lerobot: the pretrained_model directory the server loads")
    p.add_argument("--chunk", type=int, default=16, help="lerobot: actions_per_chunk")
    args = p.parse_args()
    kw = {"policy_path": args.policy_path, "chunk": args.chunk} if args.protocol == "lerobot" else {}
    print(json.dumps(run(args.protocol, args.target, args.robots, args.seconds, args.hz, args.warmup, args.grace,
                         **kw)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
