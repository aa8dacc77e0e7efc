"""ONNX graphs traced once and reused: the policy graph per weights, the text encoder per sentence encoder.

Tracing with the dynamo exporter costs 10-20 s a graph. Exporting one checkpoint at fp32, fp16 and int8 (or for
ONNX Runtime and OpenVINO) traces the same fp32 policy graph each time, and every fine-tune of a base shares its
frozen sentence encoder. The cache lives beside the serving engines ($RFM_CACHE_DIR, else ~/.cache/rfm/engines),
keyed by the module's tensors and everything else that decides the traced graph: its configuration, the example
inputs' shapes, the opset, the exporter, the torch/rfm versions and the source of the code that defines the forward.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import torch
from filelock import FileLock

from rfm._version import __version__
from rfm.export.cache_contents import touch

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def _forward_source_digest() -> str:
    """sha256 of the code a traced policy graph comes from (rfm/model and rfm/export/graph.py): a changed forward
    in a development checkout never reuses a graph traced from the old one."""
    here = Path(__file__).resolve().parent  # rfm/export; read as files, not imported (no import cycle)
    files = sorted((here.parent / "model").glob("*.py")) + [here / "graph.py"]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def graph_key(module: torch.nn.Module, *settings: object) -> str:
    """sha256 over the module's tensors (parameters and buffers) and `settings` (anything else that decides the
    graph), with the torch and rfm versions."""
    h = hashlib.sha256("|".join(map(str, (type(module).__name__, *settings, torch.__version__, __version__))).encode())
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def text_graph_key(model: torch.nn.Module, max_tokens: int, opset: int, exporter: str) -> str:
    return graph_key(model, max_tokens, opset, exporter)


def policy_graph_key(graph: torch.nn.Module, config_json: str, args: tuple, opset: int, exporter: str) -> str:
    """The policy graph's key: its weights, the policy's configuration, the example inputs' shapes and dtypes, and
    the source of the forward it traces."""
    shapes = [(tuple(a.shape), str(a.dtype)) for a in args]
    return graph_key(graph, config_json, shapes, opset, exporter, _forward_source_digest())


def cached_graph(path: Path, name: str, key: str, cache_dir: Path | None, export: Callable[[Path], None]) -> bool:
    """Write the graph to `path`, copied from the cache entry `{name}-{key}` or exported (and cached); True on a hit.

    A cache that cannot be written (read-only home) only costs the export; a crash mid-write leaves no entry.
    """
    if cache_dir is None:
        export(path)
        return False
    entry = cache_dir / f"{name}-{key[:24]}.onnx"
    lock = FileLock(cache_dir / f".{entry.name}.lock")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire()  # concurrent exports of the same graph trace it once
    except OSError as e:
        log.warning("graph cache %s is not writable (%s): exporting without it", cache_dir, e)
        export(path)
        return False
    try:
        if entry.is_file():
            _place(entry, Path(path), cache_dir)
            touch(entry)  # its last use, which `rfm cache prune` goes by
            return True
        export(path)
        tmp = cache_dir / f".{entry.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            _place(Path(path), tmp, cache_dir)
            os.replace(tmp, entry)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            log.warning("could not cache the %s graph in %s: %s", name, cache_dir, e)
        return False
    finally:
        lock.release()


def _place(src: Path, dst: Path, cache_dir: Path) -> None:
    """Copy `src` to `dst`; a hard link where `dst` is in the cache too (a serving engine): every engine of every
    fine-tune of one base holds the same 90 MB text encoder, once on disk. Nothing rewrites a graph in place (files
    are replaced whole), so a shared one cannot change under an engine; an export elsewhere gets its own copy."""
    try:
        if dst.resolve().is_relative_to(cache_dir.resolve()):
            os.link(src, dst)
            return
    except OSError:  # another filesystem, or one without hard links
        pass
    shutil.copyfile(src, dst)


def remove_graphs(cache_dir: Path) -> None:
    """Delete the traced graphs cached in `cache_dir` that no engine there shares (and their locks). A cache made to
    ship (an image's) needs only the engines: the graphs only speed up further exports, and are the size of the
    engines; one an engine links to costs no space, and the next model prepared into the cache reuses it."""
    for name in ("policy", "text-encoder"):
        for f in cache_dir.glob(f"{name}-*.onnx"):
            if f.stat().st_nlink == 1:
                f.unlink()
                Path(cache_dir / f".{f.name}.lock").unlink(missing_ok=True)
