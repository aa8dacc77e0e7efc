"""What the serving benchmarks share: the model, an `rfm serve` subprocess, simulated observations, /proc readings.

Used by bench/serve_load.py (closed loop), bench/serve_capacity.py (open loop) and bench/serve_soak.py. Importing
it stays cheap (no torch): the open-loop load generators import it in every worker process.
"""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RFM = [sys.executable, "-c", "import sys; from rfm.cli.main import main; sys.exit(main())"]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


# --- model ---------------------------------------------------------------------------------------------------
def resolve_checkpoint(arg: str | None) -> tuple[Path, str]:
    if arg:
        return Path(arg), "given"
    default = ROOT / "checkpoints" / "default"
    if (default / "config.json").exists():
        return default, "checkpoints/default"
    from rfm import RFMPolicy

    path = Path(tempfile.mkdtemp(prefix="rfm-bench-")) / "small"
    RFMPolicy.build("small").save_pretrained(path)
    return path, "fresh small preset (untrained)"


# --- server --------------------------------------------------------------------------------------------------
class Server:
    """`rfm serve` in a subprocess on a free port; `extra` is appended to its command line.

    queue_size None keeps the server's default. Raises RuntimeError with the end of its stderr when the process
    exits or reports a failed model load before it is ready."""

    def __init__(self, ckpt: Path, max_batch: int, threads: int, max_wait_ms: float, *,
                 timeout_ms: float = 120000, queue_size: int | None = 1024, extra: tuple[str, ...] = (),
                 ready_timeout_s: float = 600) -> None:
        from serving.server import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [*RFM, "serve", "--checkpoint", str(ckpt), "--port", str(self.port), "--max-batch",
                    str(max_batch), "--max-wait-ms", str(max_wait_ms), "--threads", str(threads), "--timeout-ms",
                    str(timeout_ms), *(["--queue-size", str(queue_size)] if queue_size else []), *extra,
                    "--log-level", "warning"]
        # a file, not a pipe: a chatty server never blocks on a full pipe; closed by stop()
        self.log = tempfile.TemporaryFile()  # noqa: SIM115
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.stderr_tail()}")
            try:
                r = httpx.get(self.url + "/readyz")
                if r.status_code == 200:
                    break
                body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
                if body.get("status") == "failed":
                    self.stop()
                    raise RuntimeError(f"server failed to load the model: {body.get('detail')}")
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"server not ready after {ready_timeout_s} s")
            time.sleep(0.25)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr_tail(self, n: int = 2000) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-n:]

    def rss_mb(self) -> dict:
        status = Path(f"/proc/{self.proc.pid}/status").read_text().splitlines()
        get = lambda k: next(int(ln.split()[1]) / 1024 for ln in status if ln.startswith(k))
        return {"rss_mb": round(get("VmRSS:"), 1), "peak_rss_mb": round(get("VmHWM:"), 1)}

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the server process has used so far, all its threads."""
        return process_cpu_s(self.proc.pid)

    def metrics(self) -> dict[str, float]:
        """GET /metrics as {sample name with labels: value} (Prometheus text format, comments dropped)."""
        out = {}
        for line in httpx.get(self.url + "/metrics").text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# --- simulated robots ----------------------------------------------------------------------------------------
def observations(itf: dict, n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    h, w = itf["image_size"]
    return [{"images": {c: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for c in itf["cameras"]},
             "state": rng.standard_normal(itf["state_dim"]).astype(np.float32),
             "instruction": ["pick up the red block", "open the drawer"][i % 2]} for i in range(n)]


def openpi_observation(o: dict) -> dict:
    """An rfm observation as the openpi keys the server maps by default (see serving/openpi.py)."""
    cams = list(o["images"])
    payload = {"observation/image": o["images"][cams[0]], "observation/state": o["state"], "prompt": o["instruction"]}
    if len(cams) > 1:
        payload["observation/wrist_image"] = o["images"][cams[1]]
    for i, c in enumerate(cams[2:], start=2):
        payload[f"observation/image_{i}"] = o["images"][c]
    return payload


# --- machine -------------------------------------------------------------------------------------------------
def process_cpu_s(pid: int) -> float:
    """utime + stime of a process from /proc/<pid>/stat, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU jiffies of the whole machine from /proc/stat: the difference of two readings gives
    the share of all cores in use by anyone."""
    cpu = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = cpu[3] + cpu[4]  # idle + iowait
    return float(sum(cpu) - idle), float(sum(cpu))


def machine_info() -> dict:
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), platform.machine())
    mem = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
               if ln.startswith("MemTotal:"))
    versions = {}
    for pkg in ("torch", "onnxruntime", "uvicorn", "websockets", "httpx", "openpi-client"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=False).stdout.strip()
    except OSError:
        rev = ""
    return {"cpu": model, "cores": os.cpu_count(), "memory_gb": round(mem / 1024 ** 2, 1),
            "platform": platform.platform(), "python": platform.python_version(), "git": rev or None,
            "packages": versions}
