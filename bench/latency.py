"""Inference latency per action chunk: TorchRunner (eager, torch.compile), OnnxRunner (fp32, fp16, int8) and
OpenVinoRunner (fp32, int8: the IR of `rfm export --target openvino`).

    python bench/latency.py [--presets tiny,small] [--heads chunk,flow] [--batch-sizes 1,8,32] [--quick]
    python bench/latency.py --presets "" --native-frames   # a field robot's native 480 x 640 frames vs the default
    python bench/latency.py --presets "" --checkpoint checkpoints/default --calib-dataset DATA   # a trained model

--native-frames: the bundled default (2 cameras at 128 x 128) beside a model fine-tuned from it on 480 x 640 data
(the ALOHA-shaped fixture: 3 cameras, 14 joints; `rfm train --init checkpoints/default`, a few steps: weights do
not change latency) and served native frames, which the runner fits to the model's 128 x 128; the same model given
frames already at 128 x 128, and the fitting alone (rfm.imaging.fit_frame, 3 frames), all at batch 1, same run.

Every backend runs the same observations through the full runner path (`runner.predict`: validation, batching,
cached text features, the network) and is timed side by side in one process; rounds alternate between backends
so that load from other processes is spread over all of them. Also reports FLOPs per chunk
(rfm.model.flops.count_flops) against this machine's measured peak fp32 matmul FLOP/s. Prints a table and
writes bench/results/latency.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault(
    "TORCHINDUCTOR_COMPILE_THREADS", "1"
)  # no compile worker pool competing with the timing
# Idle OpenMP threads sleep instead of spinning (unless --spin): on a shared 2-core machine, torch's spinning
# threads measured ~1 s per tiny-preset chunk instead of ~7 ms while other torch processes ran.
os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE" if "--spin" in sys.argv else "PASSIVE")

import numpy as np
import torch

from rfm import RFMPolicy
from rfm.config import RobotInterface
from rfm.runtime.base import Runner

INSTRUCTION = "push the puck to the goal"
BACKENDS = (
    "torch-eager", "torch-compile", "onnx-fp32", "onnx-fp16", "onnx-int8", "openvino-fp32", "openvino-int8"
)


def peak_matmul_flops(n: int = 2048, reps: int = 10) -> float:
    """Best-of-reps fp32 FLOP/s of an (n x n) @ (n x n) torch matmul: the practical compute ceiling.
    Best-of, because on a shared machine other processes only ever make it look slower."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def make_runners(
    policy: RFMPolicy, workdir: Path, backends: list[str], calib: int, threads: int | None, spin: bool,
    calib_dataset: str | None = None,
) -> tuple[dict[str, Runner], dict]:
    """Every requested backend for one policy; a backend that fails to build is skipped with the reason."""
    from rfm.export import ExportConfig, export_checkpoint
    from rfm.runtime.onnx_runner import OnnxRunner
    from rfm.runtime.openvino_runner import OpenVinoRunner
    from rfm.runtime.torch_runner import TorchRunner

    ckpt = policy.save_pretrained(workdir / "ckpt")
    runners: dict[str, Runner] = {}
    skipped: dict[str, str] = {}
    for name in backends:
        try:
            if name == "torch-eager":
                runners[name] = TorchRunner.from_checkpoint(ckpt, device="cpu", seed=0)
            elif name == "torch-compile":
                r = TorchRunner.from_checkpoint(ckpt, device="cpu", compile=True, seed=0)
                r.warmup((1,))  # compiles here; a failure skips the backend instead of the benchmark
                runners[name] = r
            else:
                runtime, precision = name.split("-")
                # text features are cached by every runner, so the table (no text graph) keeps the export fast
                export_checkpoint(
                    ckpt,
                    workdir / name,
                    ExportConfig(
                        precision=precision,
                        target="openvino" if runtime == "openvino" else "cpu",
                        calib_samples=calib,
                        calib_dataset=calib_dataset,
                        parity_samples=4,
                        text_encoder=False,
                        instructions=[INSTRUCTION],
                    ),
                )
                if runtime == "openvino":
                    runners[name] = OpenVinoRunner.from_dir(workdir / name, seed=0, intra_op_threads=threads)
                else:
                    runners[name] = OnnxRunner.from_dir(
                        workdir / name, seed=0, intra_op_threads=threads, allow_spinning=spin
                    )
        except Exception as e:  # noqa: BLE001 - report and continue with the other backends
            skipped[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return runners, skipped


def time_backends(
    runners: dict[str, Runner], obs: list[dict], iters: int, rounds: int
) -> dict[str, list[float]]:
    """Seconds per predict() call for each runner; `rounds` rounds of `iters` calls, alternating runners."""
    itf = next(iter(runners.values())).interface
    noise = (
        np.random.default_rng(0)
        .standard_normal((len(obs), itf.chunk_size, itf.action_dim))
        .astype(np.float32)
    )
    for r in runners.values():  # warm-up: allocations, kernels, text cache
        for _ in range(2):
            r.predict(obs, noise=noise)
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for name, r in runners.items():
            for _ in range(iters):
                t = time.perf_counter()
                r.predict(obs, noise=noise)
                times[name].append(time.perf_counter() - t)
    return times


def bench_policy(preset: str, head: str, args: argparse.Namespace, peak: float,
                 policy: RFMPolicy | None = None) -> list[dict]:
    """Rows for a random-weight preset, or for `policy` (a trained checkpoint, labelled `preset`)."""
    from rfm.model.flops import count_flops

    if policy is None:
        size = args.image_size
        itf = RobotInterface(
            cameras=["corner2", "gripperPOV"],
            image_size=(size, size),
            state_names=[f"s{i}" for i in range(4)],
            action_names=[f"a{i}" for i in range(4)],
            chunk_size=16,
        )
        torch.manual_seed(0)
        policy = RFMPolicy.build(preset, interface=itf, head=head)
    itf = policy.interface
    h, w = itf.image_size
    flops = count_flops(policy)["policy"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runners, skipped = make_runners(
            policy, Path(tmp), args.backends, args.calib_samples, args.threads, args.spin,
            calib_dataset=getattr(args, "calib_dataset", None),
        )
        rng = np.random.default_rng(0)
        for batch in args.batch_sizes:
            obs = [
                {
                    "images": {c: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for c in itf.cameras},
                    "state": rng.standard_normal(itf.state_dim).astype(np.float32),
                    "instruction": INSTRUCTION,
                }
                for _ in range(batch)
            ]
            iters = max(2, args.iters // max(1, batch // 4)) if batch > 1 else args.iters
            times = time_backends(runners, obs, iters, args.rounds)
            eager = np.median(times["torch-eager"]) if "torch-eager" in times else None
            for name in args.backends:
                row = {
                    "preset": preset,
                    "head": head,
                    "batch": batch,
                    "backend": name,
                    "params": policy.num_parameters(),
                    "flops_per_chunk": flops,
                }
                if name in skipped:
                    rows.append({**row, "skipped": skipped[name]})
                    continue
                t = np.asarray(times[name])
                p50 = float(np.median(t))
                achieved = flops * batch / p50
                rows.append(
                    {
                        **row,
                        "p50_ms": p50 * 1e3,
                        "p99_ms": float(np.percentile(t, 99)) * 1e3,
                        "samples": len(t),
                        "ms_per_chunk": p50 * 1e3 / batch,
                        "vs_torch_eager": (p50 / eager) if eager else None,
                        "achieved_gflops": achieved / 1e9,
                        "pct_of_peak": 100 * achieved / peak,
                    }
                )
            print_rows([r for r in rows if r["batch"] == batch])
    return rows


ROOT = Path(__file__).resolve().parents[1]
ALOHA = ROOT.parent / "shared" / "fixtures" / "lerobot-v3.0" / "aloha-480x640"


def native_checkpoint(workdir: Path) -> Path:
    """A model fine-tuned on 480 x 640 data: 2 steps of rfm train --init checkpoints/default on the ALOHA fixture."""
    from rfm.train.config import TrainConfig
    from rfm.train.loop import train

    cfg = TrainConfig(dataset=str(ALOHA), out=str(workdir / "native"), init=str(ROOT / "checkpoints" / "default"),
                      steps=2, batch_size=2, num_workers=0, warmup_steps=0, save_every=2, log_every=1)
    return train(cfg, progress=False)


def bench_native(args: argparse.Namespace) -> list[dict]:
    """Rows: the default at its own frames, the 480 x 640 fine-tune at native and at model-size frames, the fit."""
    from rfm.imaging import fit_frame
    from rfm.runtime import TorchRunner

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(args.native_checkpoint) if args.native_checkpoint else native_checkpoint(Path(tmp))
        default = TorchRunner.from_checkpoint(ROOT / "checkpoints" / "default")
        native = TorchRunner.from_checkpoint(ckpt)

    def obs(itf, native_frames: bool) -> list[dict]:
        size = {c: (itf.native_size(c) if native_frames else tuple(itf.image_size)) for c in itf.cameras}
        return [{"images": {c: rng.integers(0, 256, (*size[c], 3), dtype=np.uint8) for c in itf.cameras},
                 "state": rng.standard_normal(itf.state_dim).astype(np.float32).tolist(), "instruction": INSTRUCTION}]

    itf = native.interface
    cases = {"default@128x128": (default, obs(default.interface, False)),
             "native@480x640": (native, obs(itf, True)),
             "native@128x128": (native, obs(itf, False))}
    frames = [o for o in cases["native@480x640"][1][0]["images"].values()]
    for runner, o in cases.values():  # warm-up
        for _ in range(3):
            runner.predict(o)
    times: dict[str, list[float]] = {k: [] for k in [*cases, "fit 3 frames"]}
    for _ in range(args.rounds):
        for name, (runner, o) in cases.items():
            for _ in range(args.iters):
                t = time.perf_counter()
                runner.predict(o)
                times[name].append(time.perf_counter() - t)
        for _ in range(args.iters):
            t = time.perf_counter()
            for f in frames:
                fit_frame(f, tuple(itf.image_size), itf.aspect)
            times["fit 3 frames"].append(time.perf_counter() - t)
    base = float(np.median(times["default@128x128"]))
    rows = []
    for name, ts in times.items():
        p50, p99 = float(np.median(ts)), float(np.percentile(ts, 99))
        rows.append({"case": name, "p50_ms": 1e3 * p50, "p99_ms": 1e3 * p99, "vs_default": p50 / base,
                     "cameras": len(itf.cameras) if name != "default@128x128" else 2})
        print(f"native-frames {name:<16} p50 {1e3 * p50:7.2f} ms  p99 {1e3 * p99:7.2f} ms  "
              f"{p50 / base:5.2f}x the default", flush=True)
    return rows


def print_rows(rows: list[dict]) -> None:
    for r in rows:
        head = f"{r['preset']:<6} {r['head']:<5} B={r['batch']:<3} {r['backend']:<14}"
        if "skipped" in r:
            print(f"{head} skipped: {r['skipped']}")
            continue
        ratio = f"{r['vs_torch_eager']:.2f}x" if r["vs_torch_eager"] is not None else "-"
        print(
            f"{head} p50 {r['p50_ms']:8.2f} ms  p99 {r['p99_ms']:8.2f} ms  "
            f"{r['ms_per_chunk']:7.2f} ms/chunk  "
            f"vs eager {ratio:>6}  {r['achieved_gflops']:6.1f} GFLOP/s ({r['pct_of_peak']:4.1f}% of peak)",
            flush=True,
        )


def _openvino_version() -> str | None:
    try:
        import openvino
    except ImportError:
        return None
    return openvino.__version__.split("-")[0]


def machine() -> dict:
    import onnxruntime as ort

    cpu = platform.processor()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "openvino": _openvino_version(),
        "python": platform.python_version(),
        "load_avg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="tiny,small", help="comma-separated: tiny,small,base")
    ap.add_argument("--heads", default="chunk,flow")
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--backends", default=",".join(BACKENDS), help=f"subset of {','.join(BACKENDS)}")
    ap.add_argument("--iters", type=int, default=10, help="timed calls per backend per round (at batch 1)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds over the backends")
    ap.add_argument("--image-size", type=int, default=128, help="camera images are 2 x SIZE x SIZE")
    ap.add_argument("--calib-samples", type=int, default=32, help="int8 calibration samples (synthetic)")
    ap.add_argument(
        "--spin",
        action="store_true",
        help="let idle torch (OpenMP) and onnxruntime threads spin (default: they sleep; fairer on a "
        "shared machine)",
    )
    ap.add_argument(
        "--threads", type=int, default=None, help="torch and onnxruntime intra-op threads (default: all)"
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: tiny preset, chunk head, batch 1 and 8, few iterations",
    )
    ap.add_argument("--native-frames", action="store_true",
                    help="also time a model fine-tuned on 480 x 640 data served native frames, beside the default")
    ap.add_argument("--native-checkpoint", default=None,
                    help="that model (default: fine-tuned here from checkpoints/default on the ALOHA fixture)")
    ap.add_argument("--checkpoint", default=None,
                    help="also time this trained checkpoint (e.g. checkpoints/default) on every backend")
    ap.add_argument("--calib-dataset", default=None,
                    help="LeRobot dataset whose frames calibrate int8 (default: synthetic observations)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "latency.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.presets, args.heads, args.batch_sizes, args.iters, args.rounds, args.calib_samples = (
            "tiny",
            "chunk",
            "1,8",
            3,
            1,
            8,
        )
    args.presets = [p for p in args.presets.split(",") if p]
    args.heads = [h for h in args.heads.split(",") if h]
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    args.backends = [b for b in args.backends.split(",") if b]
    unknown = [b for b in args.backends if b not in BACKENDS]
    if unknown:
        ap.error(f"unknown backend(s) {unknown}: expected a subset of {list(BACKENDS)}")
    logging.basicConfig(level=logging.ERROR)
    for noisy in ("onnxscript", "onnx_ir", "rfm.export"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine()
    info["onnxruntime_threads"] = args.threads or "default (one per physical core)"
    info["spinning"] = {
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "onnxruntime_allow_spinning": args.spin,
    }
    peak = peak_matmul_flops()
    info["peak_matmul_gflops_fp32"] = peak / 1e9
    print(
        f"{info['cpu']}, {info['cores']} cores, torch {info['torch']} ({info['torch_threads']} threads), "
        f"onnxruntime {info['onnxruntime']}; peak fp32 matmul {peak / 1e9:.1f} GFLOP/s",
        flush=True,
    )
    peaks = [peak]
    rows = []
    for p in args.presets:
        for h in args.heads:
            rows += bench_policy(p, h, args, max(peaks))
            peaks.append(peak_matmul_flops())  # re-probed between configs: other load only lowers it
    if args.checkpoint:
        ckpt = RFMPolicy.from_pretrained(args.checkpoint)
        rows += bench_policy(Path(args.checkpoint).name, ckpt.net.head_type, args, max(peaks), policy=ckpt)
    native_rows = bench_native(args) if args.native_frames else None
    info["peak_matmul_gflops_fp32_probes"] = [round(v / 1e9, 1) for v in peaks]
    info["peak_matmul_gflops_fp32"] = max(peaks) / 1e9
    for r in rows:  # % of the best probe: the closest this shared machine came to its real ceiling
        if "pct_of_peak" in r:
            r["pct_of_peak"] = 100 * r["achieved_gflops"] * 1e9 / max(peaks)
    result = {
        "command": "python bench/latency.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": info,
        "image_size": args.image_size,
        "cameras": 2,
        "chunk_size": 16,
        "method": "runner.predict() p50/p99 over alternating rounds; text features cached; synthetic obs",
        "reference": "LeRobot ACT (51.6 M params, one 224 px camera): ~108 ms/chunk, PyTorch, this machine",
        "rows": rows,
        **({"native_frames": native_rows} if native_rows is not None else {}),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
