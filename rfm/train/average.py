"""Weight averaging ("model soup") of checkpoints fine-tuned from one another: one policy whose parameters are the
weighted mean of theirs.

Fine-tunes that started from the same weights stay in one loss basin, so their average often keeps what each learned
(a DAgger fine-tune averaged with its init can keep the fine-tune's new skill and part of what the init did better).
Parameters are averaged; buffers (normalisation statistics, fixed tables) must agree and are copied, since
averaging two normalisations would match neither model's training data.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from rfm.checkpoint import load_checkpoint, read_config

BUFFER_RTOL = 1e-5  # normalisation saved in fp16 by one checkpoint and fp32 by another still counts as the same


def parse_weights(text: str | None, n: int) -> list[float]:
    """`"0.7,0.3"` -> [0.7, 0.3] normalised to sum 1; None -> equal weights. Errors say what was wrong."""
    if text is None:
        return [1.0 / n] * n
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError as e:
        raise ValueError(f"--weights {text!r}: expected comma-separated numbers ({e})") from e
    if len(values) != n:
        raise ValueError(f"--weights {text!r}: {len(values)} values for {n} checkpoints")
    if any(v < 0 for v in values) or sum(values) <= 0:
        raise ValueError(f"--weights {text!r}: weights must be >= 0 with a positive sum")
    total = sum(values)
    return [v / total for v in values]


def _check_same_architecture(paths: list[Path]) -> None:
    """Raise naming the first checkpoint and field whose model/robot config differs from the first checkpoint's."""
    ref = _comparable(read_config(paths[0])[0])
    for path in paths[1:]:
        other = _comparable(read_config(path)[0])
        for section in ("model", "interface"):
            for key in sorted(set(ref[section]) | set(other[section])):
                if not _same_value(ref[section].get(key), other[section].get(key)):
                    raise ValueError(f"{path}/config.json: {section}.{key}={other[section].get(key)!r} but "
                                     f"{paths[0]} has {ref[section].get(key)!r}; only checkpoints of one "
                                     "architecture and robot can be averaged")


def _comparable(config) -> dict:
    """The config as a dict, each camera's native size spelled out (absent means the model's image size)."""
    d = config.to_dict()
    itf = config.interface
    d["interface"]["native_sizes"] = {cam: list(itf.native_size(cam)) for cam in itf.cameras}
    return d


def _same_value(a, b) -> bool:
    """Config values equal, numbers to float32 precision (a calibration written as 1.707107 by one checkpoint and as
    1.7071069478988647 by another is the same camera)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_value(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)
    return a == b


def average_checkpoints(paths: list[str | Path], weights: list[float] | None = None):
    """RFMPolicy whose parameters are sum_i weights[i] * parameters of paths[i] (weights default to equal).

    Averaging happens in float32 whatever the checkpoints' dtypes. The result's meta names its sources under
    `lineage` (model id, version, weight and their own lineage), keeps the first source's `data` and `training`
    sections, and drops `evaluation`, which belonged to the sources.
    """
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise ValueError(f"averaging needs at least two checkpoints, got {len(paths)}")
    weights = weights if weights is not None else [1.0 / len(paths)] * len(paths)
    if len(weights) != len(paths):
        raise ValueError(f"{len(weights)} weights for {len(paths)} checkpoints")
    _check_same_architecture(paths)
    policies = [load_checkpoint(p) for p in paths]
    base = policies[0]
    buffer_names = {name for name, _ in base.net.named_buffers()}
    states = [p.net.state_dict() for p in policies]
    averaged = {}
    for name, ref in states[0].items():
        if name in buffer_names or not ref.is_floating_point():
            for path, state in zip(paths[1:], states[1:]):
                if not torch.allclose(state[name].float(), ref.float(), rtol=BUFFER_RTOL, atol=1e-7):
                    raise ValueError(f"{path}/model.safetensors: buffer {name!r} differs from {paths[0]}'s (for "
                                     "normalisation buffers: the checkpoints were trained with different dataset "
                                     "stats; fine-tune with --keep-init-stats to average them)")
            averaged[name] = ref.clone()
            continue
        total = sum(w * state[name].float() for w, state in zip(weights, states))
        averaged[name] = total.to(ref.dtype)
    base.net.load_state_dict(averaged)
    sources = [{"model_id": p.meta.get("model_id", path.name), "model_version": p.meta.get("model_version"),
                "path": str(path), "weight": round(w, 6), "lineage": p.meta.get("lineage", [])}
               for p, path, w in zip(policies, paths, weights)]
    meta = {k: v for k, v in base.meta.items() if k not in ("evaluation", "model_id", "model_version", "lineage")}
    meta["lineage"] = [{"average_of": sources}]
    base.meta = meta
    return base
