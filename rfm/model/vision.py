"""Camera encoders: each turns (B, 3, H, W) float images into a grid of feature tokens (B, T, C)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rfm.config import ModelConfig
from rfm.constants import IMAGENET_MEAN, IMAGENET_STD


def _groups(channels: int) -> int:
    return math.gcd(channels, 8)


class BasicBlock(nn.Module):
    """ResNet basic block with GroupNorm (batch-size independent, good for small batches and small data)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(_groups(cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.GroupNorm(_groups(cout), cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(y)) + self.skip(x))


class ResNetGN(nn.Module):
    """Stem (stride 2) then one stride-2 stage per width: 128 px -> 4 stages -> 4x4... grid of tokens."""

    def __init__(self, widths: tuple[int, ...], blocks: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 2, 1, bias=False),
                                  nn.GroupNorm(_groups(widths[0]), widths[0]), nn.ReLU())
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            for b in range(blocks):
                layers.append(BasicBlock(cin, w, 2 if (b == 0 and i > 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.out_channels = widths[-1]
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, 3, H, W) float in [0, 1] -> (B, h*w, C)
        f = self.layers(self.stem((x - self.mean) / self.std))  # (B, C, h, w)
        return f.flatten(2).transpose(1, 2)


class HFVisionEncoder(nn.Module):
    """A Hugging Face vision model (ViT/DINOv2/SigLIP-style or conv) from a local directory or a config dict."""

    def __init__(self, path: str | None, hf_config: dict | None) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel

        if hf_config is not None:
            cfg = AutoConfig.for_model(**hf_config)
            self.model = AutoModel.from_config(cfg)
        else:
            self.model = AutoModel.from_pretrained(path, local_files_only=True)
        cfg = self.model.config
        self.hf_config = cfg.to_dict()
        size = getattr(cfg, "image_size", 224)
        self.input_size = (size, size) if isinstance(size, int) else tuple(size)
        mean, std = _processor_stats(path)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))  # saved: checkpoints need no processor
        with torch.no_grad():
            probe = self._features(torch.zeros(1, 3, *self.input_size))
        self.out_channels = probe.shape[-1]

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=x)
        h = out.last_hidden_state
        if h.dim() == 4:  # conv backbone: (B, C, h, w)
            return h.flatten(2).transpose(1, 2)
        n = h.shape[1]
        grid = int(math.isqrt(n - 1)) if n > 1 else 0
        if grid * grid == n - 1:  # ViT with a CLS token: keep the patch grid
            h = h[:, 1:]
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False)
        return self._features((x - self.mean) / self.std)


def _processor_stats(path: str | None) -> tuple[list[float], list[float]]:
    if path is not None:
        pp = Path(path) / "preprocessor_config.json"
        if pp.exists():
            d = json.loads(pp.read_text())
            if "image_mean" in d and "image_std" in d:
                return list(d["image_mean"]), list(d["image_std"])
    return list(IMAGENET_MEAN), list(IMAGENET_STD)


def build_vision(cfg: ModelConfig) -> nn.Module:
    if cfg.vision_backbone == "hf":
        return HFVisionEncoder(cfg.vision_path if cfg.vision_hf_config is None else None, cfg.vision_hf_config)
    return ResNetGN(cfg.vision_widths, cfg.vision_blocks)
