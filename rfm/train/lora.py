"""Optional LoRA (peft) on a pretrained Hugging Face vision backbone; saved checkpoints hold merged plain weights."""

from __future__ import annotations

import copy

from torch import nn


def apply_lora(net: nn.Module, rank: int, alpha: int | None = None, dropout: float = 0.05) -> list[str]:
    """Wrap net.vision.model (an HF PreTrainedModel) with LoRA adapters on its attention/MLP linears."""
    from peft import LoraConfig, get_peft_model

    if getattr(net.config.model, "vision_backbone", None) != "hf":
        raise ValueError("train.lora_rank > 0 needs a pretrained backbone: set model vision_backbone='hf' and "
                         "vision_path=<local HF model dir>; the from-scratch ResNet is trained fully")
    targets = sorted({name.split(".")[-1] for name, m in net.vision.model.named_modules()
                      if isinstance(m, nn.Linear) and name.split(".")[-1] in
                      ("query", "key", "value", "q_proj", "k_proj", "v_proj", "out_proj", "dense", "fc1", "fc2")})
    if not targets:
        raise ValueError("found no attention/MLP linear layers to put LoRA adapters on in the vision backbone")
    cfg = LoraConfig(r=rank, lora_alpha=alpha or 2 * rank, lora_dropout=dropout, target_modules=targets)
    net.vision.model = get_peft_model(net.vision.model, cfg)
    return targets


def plain_state_dict(net: nn.Module) -> dict:
    """state_dict with any LoRA adapters merged into their base weights (the checkpoint format has no adapters)."""
    model = getattr(getattr(net, "vision", None), "model", None)
    if model is None or not hasattr(model, "merge_and_unload"):
        return net.state_dict()
    merged = copy.deepcopy(net)
    merged.vision.model = merged.vision.model.merge_and_unload()
    return merged.state_dict()
