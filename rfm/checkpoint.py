"""Checkpoint directories as functions: load a policy, save one, read its config, record results in its card.

The file format and its checks live in rfm.model.serialization (which RFMPolicy.save_pretrained / from_pretrained
use); this module sits above RFMPolicy, so it can build one.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rfm.config import PolicyConfig
from rfm.constants import CONFIG_FILE, MODEL_CARD_FILE
from rfm.model.policy import RFMPolicy
from rfm.model.serialization import (
    CheckpointError,
    atomic_dir,
    atomic_write_text,
    check_checkpoint,
    jsonable,
    model_card,
    read_config,
    save_checkpoint,
)

__all__ = ["CheckpointError", "atomic_dir", "load_checkpoint", "model_card", "read_config", "save_checkpoint",
           "update_meta"]


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> RFMPolicy:
    """RFMPolicy from a checkpoint directory, with weights and stats checked against the config."""
    return RFMPolicy.from_pretrained(path, device=device)


def update_meta(path: str | Path, section: str, value: dict) -> None:
    """Record e.g. evaluation results in a checkpoint's config.json meta and model card, each file replaced atomically.

    Weights, stats and any other files (such as training_state/) are left untouched, and not loaded: the card's
    parameter count comes from the architecture (config.json), so no text encoder is loaded.
    """
    path = Path(path)
    config, raw, _, _ = check_checkpoint(path)
    raw.setdefault("meta", {})[section] = jsonable(value)
    count = parameter_count(config, raw["text_dim"]) if raw.get("text_dim") else load_checkpoint(path).num_parameters()
    atomic_write_text(path / CONFIG_FILE, json.dumps(raw, indent=2))
    atomic_write_text(path / MODEL_CARD_FILE, model_card(config, raw, count))


def parameter_count(config: PolicyConfig, text_dim: int) -> int:
    """RFMPolicy.num_parameters() of this architecture, counted on a freshly built network (no weights loaded, no
    text encoder; the meta device would pull in torch's compiler stack, seconds for a card)."""
    from rfm.model.network import PolicyNet

    with torch.no_grad():
        return sum(p.numel() for p in PolicyNet(config, text_dim).parameters())
