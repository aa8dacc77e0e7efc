"""text_encoder.onnx, exported once per sentence encoder and reused by every export of a checkpoint built on it.

The sentence encoder is frozen, so every fine-tune of a base shares it; tracing it costs about 9 s of a 20 s
export. The cache lives beside the serving engines ($RFM_CACHE_DIR, else ~/.cache/rfm/engines), keyed by the
encoder's weights, its token length, the opset, the exporter and the torch/rfm versions.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import torch

from rfm._version import __version__

log = logging.getLogger(__name__)


def text_graph_key(model: torch.nn.Module, max_tokens: int, opset: int, exporter: str) -> str:
    """sha256 over the encoder's tensors and everything else that decides the traced graph."""
    h = hashlib.sha256(f"{type(model).__name__}|{max_tokens}|{opset}|{exporter}|{torch.__version__}|{__version__}"
                       .encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cached_text_graph(path: Path, key: str, cache_dir: Path | None, export: Callable[[Path], None]) -> bool:
    """Write the text graph to `path`, copied from the cache or exported (and cached); True on a cache hit.

    A cache that cannot be written (read-only home) only costs the export; a crash mid-write leaves no entry.
    """
    if cache_dir is None:
        export(path)
        return False
    entry = cache_dir / f"text-encoder-{key[:24]}.onnx"
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        lock = (cache_dir / f".{entry.name}.lock").open("w")
    except OSError as e:
        log.warning("text encoder cache %s is not writable (%s): exporting without it", cache_dir, e)
        export(path)
        return False
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent exports of the same encoder trace it once
        if entry.is_file():
            shutil.copyfile(entry, path)
            return True
        export(path)
        tmp = cache_dir / f".{entry.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, entry)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            log.warning("could not cache the text encoder graph in %s: %s", cache_dir, e)
        return False
