"""The engine a checkpoint is served on: PyTorch, or ONNX Runtime on an export made once and cached by weights hash.

On a CPU, ONNX Runtime runs the same graph in about half of PyTorch eager's time at batch 1 (docs/BENCHMARKS.md),
with actions equal to within 1e-3 (the parity check every export runs; 2e-5 on the default). `rfm serve` therefore
exports a checkpoint on its first start and keeps the export in a cache directory, keyed by the checkpoint's files and the rfm version, so a
restart or a second replica loads it in a second. On that first start it serves on PyTorch meanwhile and moves to
the export once it is made (StagedRunner, serving.state). An export whose parity check fails is never served.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from rfm.constants import ENGINES
from rfm.export.cache_contents import touch
from rfm.export.cache_dir import cache_root, checkpoint_key, searchable, shipped_roots
from rfm.install import pip_install
from rfm.runtime.base import Runner, StagedRunner
from rfm.runtime.manifest import EXPORT_FILE, parity_summary, read_manifest

log = logging.getLogger(__name__)

EXPORTER_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx", "torch._dynamo", "torch.export")  # chatty at INFO


class EngineError(ValueError):
    """The requested engine cannot serve this checkpoint (missing package, failed export or parity). A ValueError,
    so the CLI and the server report it in one line, like every other error that says what is wrong."""


def precision_of(engine: str) -> str:
    return "int8" if engine.endswith("-int8") else "fp32"


def cached_export(checkpoint: str | Path, precision: str = "fp32", cache_dir: str | Path | None = None,
                  calib_dataset: str | None = None, target: str = "cpu") -> Path:
    """The export directory for `checkpoint` at `precision`, exported now if the cache has none.

    A file lock makes concurrent servers (replicas starting together) export once; the export directory is written
    atomically, so a crash mid-export leaves no half-written cache entry. Raises EngineError when the export's
    parity check against PyTorch misses its goal.
    """
    checkpoint = Path(checkpoint)
    tail = _entry_tail(checkpoint, precision, target, calib_dataset)
    root = cache_root(cache_dir)
    out = root / f"{checkpoint.resolve().name}{tail}"
    # An export is written atomically: one that is there is complete, and reading it needs no lock, so a cache
    # shipped on a read-only volume (an image, $RFM_ENGINE_PATH) serves without being writable.
    found = _find_export(checkpoint, tail, target, cache_dir)
    if found is not None:
        out = found
    else:
        lock = FileLock(root / f".{out.name}.lock")  # the OS's lock: released however its holder ends
        try:
            root.mkdir(parents=True, exist_ok=True)
            lock.acquire()  # a second replica waits here, then finds the export
        except OSError as e:
            raise EngineError(f"engine cache {root} is not writable ({e}); pass --engine-cache DIR") from None
        try:
            if not (out / EXPORT_FILE).is_file():
                _export(checkpoint, out, precision, calib_dataset, target, root)
        finally:
            lock.release()
    touch(out)  # its last use, which `rfm cache prune` goes by
    parity = parity_summary(read_manifest(out).get("parity")) or {}
    if not parity.get("met", False):
        raise EngineError(f"{out}: the {precision} export misses its parity goal against PyTorch "
                          f"({parity.get('metric')} = {parity.get('value', '?')}, limit {parity.get('limit')})")
    return out


def _entry_tail(checkpoint: Path, precision: str, target: str, calib_dataset: str | None = None) -> str:
    """What names an export in a cache after the checkpoint directory's name: its kind and the weights' hash, and
    for int8 the dataset it was calibrated on (an export calibrated on synthetic frames is another engine)."""
    kind = precision if target == "cpu" else f"{target}-{precision}"
    calib = ""
    if precision == "int8" and calib_dataset:
        calib = "-cal" + hashlib.sha256(str(Path(calib_dataset).resolve()).encode()).hexdigest()[:8]
    return f"-{kind}-{checkpoint_key(checkpoint)[:16]}{calib}"


def _find_export(checkpoint: Path, tail: str, target: str, cache_dir: str | Path | None) -> Path | None:
    """The finished export named `tail` (_entry_tail) for `target` in the cache, else in a shipped cache
    ($RFM_ENGINE_PATH), else None. It is found by the weights' hash, so an export of other weights never is, and the
    same weights under another directory name (a checkpoint mounted elsewhere) are."""
    for root in [cache_root(cache_dir), *shipped_roots()]:
        if searchable(root):
            for entry in [root / f"{checkpoint.resolve().name}{tail}", *sorted(root.glob(f"*{tail}"))]:
                # the manifest's target, since "x-openvino-fp32-<hash>" also ends like a CPU export's name
                if (entry / EXPORT_FILE).is_file() and read_manifest(entry).get("target", "cpu") == target:
                    return entry
    return None


def is_cached(checkpoint: str | Path, precision: str = "fp32", cache_dir: str | Path | None = None,
              target: str = "cpu") -> bool:
    """Whether the cache or a shipped cache already holds the export cached_export would make (a start that
    exports nothing)."""
    checkpoint = Path(checkpoint)
    return _find_export(checkpoint, _entry_tail(checkpoint, precision, target), target, cache_dir) is not None


def _export(checkpoint: Path, out: Path, precision: str, calib_dataset: str | None, target: str = "cpu",
            cache_dir: Path | None = None) -> None:
    try:
        from rfm.export.exporter import ExportConfig, export_checkpoint
    except ImportError as e:
        raise EngineError(f"exporting to ONNX needs onnx and onnxscript ({e.name} is missing): "
                          f"{pip_install('serve')}") from None
    log.info("exporting %s to ONNX (%s) for serving; cached in %s", checkpoint, precision, out)
    for noisy in EXPORTER_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        # no per-block int8 report at serve time: it costs ~25 s and a missed goal refuses the engine anyway
        export_checkpoint(checkpoint, out, ExportConfig(precision=precision, calib_dataset=calib_dataset,
                                                        target=target, int8_report="off",
                                                        cache_dir=str(cache_dir) if cache_dir else None))
    except Exception as e:  # e.g. an op the exporter cannot express: the caller may fall back to PyTorch
        raise EngineError(f"exporting {checkpoint} to ONNX failed ({type(e).__name__}: {str(e)[:300]})") from e


def load_engine(checkpoint: str | Path, engine: str = "auto", device: str = "auto", threads: int | None = None,
                cache_dir: str | Path | None = None, calib_dataset: str | None = None, staged: bool = False,
                **runner_kw) -> Runner | StagedRunner:
    """A Runner for a checkpoint directory on `engine`.

    auto: ONNX Runtime fp32 on a CPU device, falling back to PyTorch (with a warning) when the export cannot be
    made; PyTorch on CUDA. torch | onnx | onnx-int8: exactly that engine, or an error saying why not.
    staged (the server's start): auto with no cached export gives a StagedRunner, PyTorch now and ONNX Runtime
    once exported, so a first start serves in seconds instead of after the export.
    """
    from rfm.runtime.torch_runner import pick_device

    if engine not in ENGINES:
        raise EngineError(f"engine={engine!r}: expected one of {ENGINES}")
    dev = pick_device(device).type
    if engine == "auto":
        engine = "onnx" if dev == "cpu" else "torch"
        if engine == "onnx" and staged and not is_cached(checkpoint, "fp32", cache_dir):
            first = load_engine(checkpoint, "torch", device, threads, cache_dir, **runner_kw)
            return StagedRunner(first, lambda: _onnx_runner(checkpoint, "fp32", threads, cache_dir, calib_dataset,
                                                            runner_kw),
                                f"ONNX Runtime (exporting {checkpoint} once; cached in {cache_root(cache_dir)})")
        if engine == "onnx":
            try:
                return _onnx_runner(checkpoint, "fp32", threads, cache_dir, calib_dataset, runner_kw)
            except EngineError as e:
                log.warning("serving on PyTorch instead of ONNX Runtime: %s", e)
                engine = "torch"
    if engine == "torch":
        from rfm.runtime.torch_runner import TorchRunner

        runner = TorchRunner.from_checkpoint(checkpoint, device=device, **runner_kw)
        runner.engine = "torch"
        return runner
    if dev != "cpu":
        raise EngineError(f"--engine {engine} runs on the CPU; device {dev} serves with --engine torch")
    if engine.startswith("openvino"):
        return _openvino_runner(checkpoint, precision_of(engine), threads, cache_dir, calib_dataset, runner_kw)
    return _onnx_runner(checkpoint, precision_of(engine), threads, cache_dir, calib_dataset, runner_kw)


def _onnx_runner(checkpoint, precision: str, threads: int | None, cache_dir, calib_dataset,
                 runner_kw: dict) -> Runner:
    from rfm.runtime.onnx_runner import OnnxRunner

    out = cached_export(checkpoint, precision, cache_dir, calib_dataset)
    runner = OnnxRunner.from_dir(out, intra_op_threads=threads, allow_spinning=False, **runner_kw)
    runner.engine = f"onnx-{precision}" if precision != "fp32" else "onnx"
    runner.engine_dir = str(out)
    return runner


def _openvino_runner(checkpoint, precision: str, threads: int | None, cache_dir, calib_dataset,
                     runner_kw: dict) -> Runner:
    from rfm.runtime.openvino_runner import OpenVinoRunner, import_openvino

    try:
        import_openvino()  # before a 20 s export
    except ModuleNotFoundError as e:
        raise EngineError(str(e)) from None
    out = cached_export(checkpoint, precision, cache_dir, calib_dataset, target="openvino")
    runner = OpenVinoRunner.from_dir(out, intra_op_threads=threads, **runner_kw)
    runner.engine = f"openvino-{precision}" if precision != "fp32" else "openvino"
    runner.engine_dir = str(out)
    return runner


def engine_loader(checkpoint: str | Path, engine: str = "auto", staged: bool = True,
                  **kw) -> Callable[[], Runner | StagedRunner]:
    """A callable loading the runner (the server calls it in its start-up thread: /readyz says loading meanwhile);
    a first start on the auto engine serves PyTorch while it exports (StagedRunner), unless `staged` is False."""
    return lambda: load_engine(checkpoint, engine, staged=staged, **kw)
