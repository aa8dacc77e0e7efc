"""How a policy is written to and read from a checkpoint directory (Hugging Face save_pretrained style).

Layout: config.json (format, model config, robot interface, id/version), model.safetensors, stats.json, README.md.
Written atomically; loading never unpickles; every failure names the file and the problem. The policy is passed in
(this module does not import RFMPolicy): `RFMPolicy.save_pretrained` / `from_pretrained` call it, and rfm.checkpoint
offers the same as functions.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from rfm._version import __version__
from rfm.config import ConfigError, PolicyConfig
from rfm.constants import CHECKPOINT_FORMAT, CONFIG_FILE, MODEL_CARD_FILE, STATS_FILE, WEIGHTS_FILE
from rfm.files import (
    as_umask_allows,
    discard_temp_dir,
    recover_interrupted,
    replace_dir,
    temp_dir_for,
    writer_tag,
)


class CheckpointError(RuntimeError, ValueError):
    """A checkpoint is missing, corrupt, or does not match its config. The message names the file.

    Also a ValueError, so the CLI reports it like every other bad-input error: one line, exit code 2."""


def atomic_dir(target: Path):
    """Context manager yielding a temp dir next to `target` that replaces `target` only on success."""
    return _AtomicDir(target)


class _AtomicDir:
    def __init__(self, target: Path) -> None:
        self.target = Path(target)

    def __enter__(self) -> Path:
        self.tmp = temp_dir_for(self.target)  # also cleans up after a writer of target that was killed
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            discard_temp_dir(self.tmp)
            return
        for f in [self.tmp, *self.tmp.rglob("*")]:  # flush file contents before the rename makes them visible
            # mkdtemp makes the directory 0700 and some writers their files 0600: give what the umask allows, so a
            # server running as another user (a container mounting the checkpoint) can read it
            as_umask_allows(f)
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        replace_dir(self.tmp, self.target)


def _to_dtype(state: dict[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"weights_dtype={dtype!r}: expected float32, float16 or bfloat16")
    target = getattr(torch, dtype)
    return {k: (v.to(target) if v.is_floating_point() and k.split(".")[-1] not in ("offset", "scale") else v)
            .detach().cpu().contiguous() for k, v in state.items()}


def save_checkpoint(policy, path: str | Path, weights_dtype: str = "float32", card: str | None = None,
                    state_dict: dict | None = None, extra: Callable[[Path], None] | None = None) -> Path:
    """Write a policy to `path` atomically: a crash mid-save leaves the previous checkpoint intact.

    state_dict overrides the network's weights (e.g. EMA weights); extra(tmp_dir) writes more files (training state)
    into the same atomic directory.
    """
    path = Path(path)
    if path.exists() and not (path / CONFIG_FILE).is_file() and (not path.is_dir() or any(path.iterdir())):
        raise CheckpointError(f"{path}: exists and is not an rfm checkpoint (no {CONFIG_FILE}); saving would replace "
                              f"what is there: choose a new or empty directory")
    state = _to_dtype(state_dict if state_dict is not None else policy.net.state_dict(), weights_dtype)
    with atomic_dir(path) as tmp:
        if extra is not None:
            extra(tmp)
        weights = stable_safetensors(state, {"format": "pt", "rfm_format": CHECKPOINT_FORMAT})
        (tmp / WEIGHTS_FILE).write_bytes(weights)
        version = hashlib.sha256(weights).hexdigest()[:12]
        policy.meta.setdefault("model_id", path.name)
        policy.meta["model_version"] = version
        config = {
            "format": CHECKPOINT_FORMAT,
            "rfm_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "weights_dtype": weights_dtype,
            "text_dim": policy.text.dim,
            **policy.config.to_dict(),
            "meta": jsonable(policy.meta),
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        (tmp / STATS_FILE).write_text(json.dumps(jsonable(policy.stats), indent=2))
        (tmp / MODEL_CARD_FILE).write_text(card or model_card(policy.config, config, policy.num_parameters()))
    return path


def jsonable(obj):
    """Stats may hold numpy arrays/scalars: turn them into plain lists/floats for JSON."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return obj


def read_json(path: Path) -> dict:
    if not path.exists():
        raise CheckpointError(f"{path}: missing (a checkpoint directory needs {CONFIG_FILE}, {WEIGHTS_FILE}, "
                              f"{STATS_FILE})")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_config(path: str | Path) -> tuple[PolicyConfig, dict]:
    """(PolicyConfig, raw config dict) of a checkpoint directory, validated."""
    path = Path(path)
    if not path.is_dir() and not recover_interrupted(path):  # a save killed between its two renames: put it back
        raise CheckpointError(f"{path}: checkpoint directory not found")
    if not (path / CONFIG_FILE).exists():  # the two directories users most often pass by mistake say what they are
        if (path / "export.json").is_file():
            raise CheckpointError(f"{path}: an `rfm export` directory (export.json), not a checkpoint: run it on "
                                  f"ONNX Runtime (load_runner(path), --backend onnx), or pass the checkpoint it was "
                                  f"exported from (export.json `checkpoint`)")
        if (path / "meta" / "info.json").is_file():
            raise CheckpointError(f"{path}: a LeRobot dataset (meta/info.json), not a checkpoint")
    raw = read_json(path / CONFIG_FILE)
    if raw.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path / CONFIG_FILE}: format={raw.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
    try:
        return PolicyConfig.from_dict(raw), raw
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{path / CONFIG_FILE}: {e}") from e


def check_checkpoint(path: str | Path) -> tuple[PolicyConfig, dict, dict, Path]:
    """(PolicyConfig, raw config.json, stats.json, weights file) of a checkpoint directory, without loading the
    weights: config and stats are read and checked, the weights file must exist. Errors name the file."""
    path = Path(path)
    config, raw = read_config(path)
    stats = read_json(path / STATS_FILE)
    weights = path / WEIGHTS_FILE
    if not weights.exists():
        raise CheckpointError(f"{weights}: missing")
    check_safetensors(weights)
    return config, raw, stats, weights


def stable_safetensors(state: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """The safetensors bytes of `state`, the same for the same tensors in every process: safetensors writes its
    metadata keys in a per-process order (a hash map), so the file, its sha256 and the model version derived from
    it differed between two saves of identical weights. The header is rewritten with the keys sorted, padded to
    its original length (the tensor offsets stay valid)."""
    data = save(state, metadata=metadata)
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", None)
    ordered = ({"__metadata__": dict(sorted(meta.items()))} if meta is not None else {}) | header
    text = json.dumps(ordered, separators=(",", ":")).encode()
    if len(text) > n:  # never longer in practice (same keys, compact): keep the library's own header then
        return data
    return data[:8] + text + b" " * (n - len(text)) + data[8 + n:]


def check_safetensors(path: Path) -> None:
    """Header and size of a safetensors file, without reading the tensors: a truncated or corrupt file is a
    CheckpointError naming it before anything starts (a server, an export), not when the weights are loaded."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n > size - 8:
                raise ValueError(f"header of {n} bytes in a file of {size}")
            header = json.loads(f.read(n))
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        if 8 + n + max(ends, default=0) != size:
            raise ValueError(f"the tensors need {8 + n + max(ends, default=0)} bytes, the file has {size}")
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({e})") from None


def read_checkpoint(path: str | Path) -> tuple[PolicyConfig, dict, dict, dict[str, torch.Tensor]]:
    """(PolicyConfig, raw config.json, stats.json, weights) of a checkpoint directory, each file checked."""
    config, raw, stats, weights = check_checkpoint(path)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights}: corrupt or truncated safetensors file ({e})") from e
    return config, raw, stats, state


LEGACY_TRAINING_ONLY = ("env_norm.", "env_query", "env_attn.", "env_out.")


def load_into(policy, path: str | Path, raw: dict, stats: dict, state: dict[str, torch.Tensor]) -> None:
    """Check a checkpoint's text_dim and weights against a freshly built `policy` (an RFMPolicy), then load them."""
    path = Path(path)
    weights = path / WEIGHTS_FILE
    if raw.get("text_dim") not in (None, policy.text.dim):
        raise CheckpointError(f"{path / CONFIG_FILE}: text_dim={raw['text_dim']} but text encoder "
                              f"{policy.model_config.text_encoder!r} gives {policy.text.dim}")
    expected = policy.net.state_dict()
    # checkpoints from before training aids left the policy carry a training-only environment-state head: not the policy's
    state = {k: v for k, v in state.items() if not k.startswith(LEGACY_TRAINING_ONLY)}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{weights}: weights do not match {CONFIG_FILE}: missing {missing[:5]}"
                              f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                              f"{' ...' if len(unexpected) > 5 else ''}")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{weights}: tensor {k!r} has shape {tuple(state[k].shape)}, "
                                  f"{CONFIG_FILE} implies {tuple(v.shape)}")
    policy.net.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    policy.stats = {k: v for k, v in stats.items()}  # buffers already hold the normalisation; keep stats for cards
    policy.meta.setdefault("model_id", path.name)


def model_card(policy_config: PolicyConfig, config: dict, num_parameters: int) -> str:
    """Markdown model card: what the model is, its interface, and whatever training/eval info config.json's meta
    holds."""
    itf, m, meta = policy_config.interface, policy_config.model, config.get("meta") or {}
    lines = [
        f"# {meta.get('model_id', 'rfm policy')}",
        "",
        "An rfm robot behaviour policy (camera frames + instruction + state -> action chunk).",
        "",
        "| field | value |", "|---|---|",
        f"| preset | {m.preset} |", f"| head | {m.head} |",
        f"| parameters (trainable) | {num_parameters:,} |",
        f"| text encoder (frozen, not in this file) | {m.text_encoder} |",
        f"| cameras | {', '.join(itf.cameras)}, fitted ({itf.aspect}) to {itf.image_size[0]}x{itf.image_size[1]} |",
        f"| native frames | {_sizes(itf)} |",
        f"| calibrated cameras | {', '.join(sorted(itf.calibration or {})) or 'none'} |",
        f"| end effector | {', '.join(itf.ee_position or []) or 'none'} |",
        f"| state | {itf.state_dim}: {', '.join(itf.state_names)} |",
        f"| action | {itf.action_dim}: {', '.join(itf.action_names)} |",
        f"| chunk size | {itf.chunk_size} at {itf.control_hz} Hz |",
        f"| actions per request | {_execution(meta.get('execution'), itf.chunk_size)} |",
        f"| robot type | {itf.robot_type} |",
        f"| version | {meta.get('model_version', '?')} |",
        f"| weights dtype | {config.get('weights_dtype')} |",
    ]
    dropped = meta.get("training", {}).get("init_dropped")
    if dropped:
        lines += ["", "## Dropped from the init checkpoint", ""] + [f"- {d}" for d in dropped]
    for section in ("data", "training", "lineage", "evaluation"):
        if section in meta:
            lines += ["", f"## {section.capitalize()}", "", "```json", json.dumps(meta[section], indent=2), "```"]
    lines += ["", "## Use", "", "```python", "from rfm.runtime import TorchRunner",
              "runner = TorchRunner.from_checkpoint('<this directory>')",
              "chunk = runner.predict({'images': {...}, 'state': [...], 'instruction': '...'})", "```", ""]
    return "\n".join(lines)


def _execution(execution: dict | None, chunk_size: int) -> str:
    """The card's execution mode in words (rfm.runtime.execution)."""
    if not execution:
        return f"not recommended (the SDK runs {max(1, chunk_size // 2)}, half a chunk)"
    by = execution.get("by_instruction") or {}
    return f"{execution.get('action_steps')}" + (" (" + "; ".join(f"{k} for '{i}'" for i, k in by.items()) + ")"
                                                  if by else "") + (f", {execution['source']}"
                                                                    if execution.get("source") else "")


def _sizes(itf) -> str:
    sizes = {c: itf.native_size(c) for c in itf.cameras}
    return ", ".join(f"{c} {h}x{w}" for c, (h, w) in sizes.items())


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{writer_tag()}")
    tmp.write_text(text)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
