"""Start-up: how long a new process takes to load the instruction encoder, and `rfm serve` to answer /readyz.

    python bench/startup.py [--rounds 3]

Each measurement is a fresh Python process, rounds alternating between the configurations, median reported:
- the packaged MiniLM loaded as rfm does (`rfm.model.text.TextEncoder`: rfm/model/bert.py + tokenizers) against the
  same directory through transformers (`AutoModel` + `AutoTokenizer`), imports included, after `import torch`;
- `rfm serve --checkpoint checkpoints/default` from launch to a 200 from /readyz, on the torch engine and on the
  ONNX engine with its export already cached; and a first start (empty engine cache, the default engine): to
  /readyz, and until GET /v1/models says it serves on ONNX Runtime (the export made beside the serving engine);
- `rfm serve --prepare` into an empty cache (what an image build runs), and a start of the default engine with an
  empty writable cache and that prepared one in $RFM_ENGINE_PATH (an image's container), to /readyz on ONNX Runtime.

Prints a table, writes bench/results/startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from serving.server import free_port

ROOT = Path(__file__).resolve().parents[1]

LOAD = {
    "rfm TextEncoder (rfm.model.bert + tokenizers)": (
        "from rfm.model.text import TextEncoder; e = TextEncoder(); e.encode(['open the drawer'])"),
    "transformers AutoModel + AutoTokenizer": (
        "from transformers import AutoModel, AutoTokenizer; from rfm.model.text import resolve_text_encoder; "
        "p = str(resolve_text_encoder('all-MiniLM-L6-v2')); t = AutoTokenizer.from_pretrained(p, local_files_only=True); "
        "m = AutoModel.from_pretrained(p, local_files_only=True); m(**t(['open the drawer'], return_tensors='pt'))"),
}


def time_load(code: str) -> float:
    """Seconds for `code` in a fresh interpreter, torch already imported (it is in every rfm process)."""
    script = f"import time, torch\n_t0 = time.perf_counter()\n{code}\nprint(time.perf_counter() - _t0)"
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    return float(out.stdout.strip().splitlines()[-1])


def time_prepare(cache: Path) -> float:
    """Seconds of `rfm serve --prepare` making the default's ONNX engine in `cache` (export, load, one request)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "rfm.cli.main", "serve", "--checkpoint", "checkpoints/default", "--engine",
                    "onnx", "--engine-cache", str(cache), "--prepare", "--threads", "1", "--log-level", "warning"],
                   check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def time_serve(engine: str, cache: Path, until_onnx: dict | None = None, shipped: Path | None = None) -> float:
    """Seconds from launching `rfm serve` to its first 200 on /readyz; with `until_onnx`, it also waits until
    GET /v1/models says the ONNX engine serves and records those seconds there ("onnx_s"). `shipped`: a prepared
    engine cache in $RFM_ENGINE_PATH (then the server must be on ONNX Runtime once ready)."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RFM_CACHE_DIR": str(cache)}
    if shipped is not None:
        env["RFM_ENGINE_PATH"] = str(shipped)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "rfm.cli.main", "serve", "--checkpoint", "checkpoints/default",
                             "--port", str(port), "--engine", engine, "--threads", "1"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"rfm serve --engine {engine} exited with {proc.returncode}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    ready = time.perf_counter() - t0
                    if shipped is not None:
                        assert httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).json()["engine"] == "onnx"
                    while until_onnx is not None:
                        if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).json()["engine"] == "onnx":
                            until_onnx["onnx_s"] = time.perf_counter() - t0
                            break
                        time.sleep(0.1)
                    return ready
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "startup.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="rfm-startup-") as cache:
        time_serve("onnx", Path(cache))  # fills the engine cache: the ONNX rows below are warm starts
        rows: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for name, code in LOAD.items():
                rows.setdefault(f"load: {name}", []).append(time_load(code))
            for engine in ("torch", "onnx"):
                rows.setdefault(f"rfm serve --engine {engine} to /readyz", []).append(time_serve(engine, Path(cache)))
            with tempfile.TemporaryDirectory(prefix="rfm-first-start-") as empty:  # no export cached: a first start
                onnx: dict = {}
                rows.setdefault("first start, rfm serve (auto) to /readyz", []).append(
                    time_serve("auto", Path(empty), onnx))
                rows.setdefault("first start, rfm serve (auto) until it serves on onnx", []).append(onnx["onnx_s"])
            with tempfile.TemporaryDirectory(prefix="rfm-prepared-") as prepared, \
                    tempfile.TemporaryDirectory(prefix="rfm-empty-") as empty:  # an image's build, then its container
                rows.setdefault("rfm serve --prepare (engine onnx, empty cache)", []).append(time_prepare(Path(prepared)))
                rows.setdefault("rfm serve (auto), prepared engine in $RFM_ENGINE_PATH, to /readyz on onnx", []).append(
                    time_serve("auto", Path(empty), shipped=Path(prepared)))
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
              "rounds": args.rounds, "seconds": {k: {"median": statistics.median(v), "all": v} for k, v in rows.items()}}
    width = max(map(len, rows))
    print(f"{'measured (fresh process)':<{width}}  median s  all")
    for name, v in rows.items():
        print(f"{name:<{width}}  {statistics.median(v):8.2f}  {', '.join(f'{x:.2f}' for x in v)}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
