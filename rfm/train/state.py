"""Training state (optimizer, scheduler, raw and EMA weights, step, RNG) as safetensors + JSON: no pickle, even here."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

STATE_DIR = "training_state"


def save_training_state(dirpath: Path, net: torch.nn.Module, ema: torch.nn.Module | None,
                        optimizer: torch.optim.Optimizer, scheduler, step: int, extra: dict,
                        aids: torch.nn.Module | None = None) -> None:
    """Everything --resume needs; `aids`: the training aids' own parameters (never part of the saved policy)."""
    d = Path(dirpath) / STATE_DIR
    d.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()})
    if aids is not None:
        tensors.update({f"aids.{k}": v.detach().cpu().contiguous() for k, v in aids.state_dict().items()})
    opt = optimizer.state_dict()
    for pid, st in opt["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{pid}.{k}"] = v.detach().cpu().contiguous().reshape(v.shape)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():  # augmentation and noise drawn on the device
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    save_file(tensors, str(d / "state.safetensors"))
    meta = {
        "step": step,
        "param_groups": opt["param_groups"],
        "optim_scalars": {str(pid): {k: v for k, v in st.items() if not torch.is_tensor(v)}
                          for pid, st in opt["state"].items()},
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng_numpy": np.random.get_state()[1].tolist(),  # the generators' whole states, restored on resume
        "rng_numpy_pos": int(np.random.get_state()[2]),
        "rng_python": random.getstate()[1],
        **extra,
    }
    (d / "state.json").write_text(json.dumps(meta, default=float))


def load_training_state(dirpath: Path, net: torch.nn.Module, ema: torch.nn.Module | None,
                        optimizer: torch.optim.Optimizer, scheduler, aids: torch.nn.Module | None = None) -> dict:
    """Restore in place; returns the JSON metadata (step, ...)."""
    d = Path(dirpath) / STATE_DIR
    if not (d / "state.json").exists():
        raise FileNotFoundError(f"{d / 'state.json'}: missing, cannot resume (was the run saved with rfm train?)")
    tensors = load_file(str(d / "state.safetensors"))
    meta = json.loads((d / "state.json").read_text())
    net.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if ema is not None and any(k.startswith("ema.") for k in tensors):
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    if aids is not None and len(aids.state_dict()):
        aids.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("aids.")})
    state: dict = {}
    for pid, scalars in meta["optim_scalars"].items():
        state[int(pid)] = dict(scalars)
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    if scheduler is not None and meta.get("scheduler"):
        scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    if "rng_numpy_pos" in meta:  # saved by rfm since the position was kept too
        np.random.set_state(("MT19937", np.asarray(meta["rng_numpy"], np.uint32), meta["rng_numpy_pos"], 0, 0.0))
    if meta.get("rng_python"):
        random.setstate((3, tuple(meta["rng_python"]), None))
    return meta
