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


class SpatialSoftmax(nn.Module):
    """K heatmaps -> their expected (x, y) in [-1, 1]: coordinates a policy can read directly (Levine et al. 2016).

    A 1-2 px goal marker is nearly invisible to a grid of 16x16-px tokens, but one heatmap channel that fires on
    it puts its position straight into the features.
    """

    # int8 exports keep it float: 8-bit heatmap logits flatten a few-pixel peak over thousands of positions
    # (on the default: 2.4 -> 1.0 % action error of range with this and PointToken float; docs/EDGE.md)
    int8_float = True

    def __init__(self, channels: int, keypoints: int) -> None:
        super().__init__()
        self.heatmaps = nn.Conv2d(channels, keypoints, 1)
        # sharp from the start: over thousands of positions a temperature of 1 averages a few-pixel peak away, and
        # the gradient that would sharpen it is then too weak to act within a short fine-tune
        self.log_temperature = nn.Parameter(torch.tensor(math.log(0.1)))

    def forward(self, f: torch.Tensor, with_logits: bool = False):
        """(B, C, h, w) features -> (B, K, 2) expected (x, y), -1/+1 at the first/last feature's centre;
        with_logits: also the heatmaps' logits (B, K, h, w), for a loss on where they peak."""
        h, w = f.shape[-2:]
        logits = self.heatmaps(f).flatten(2) / self.log_temperature.exp()  # (B, K, h*w)
        p = torch.softmax(logits, dim=-1)
        ys = torch.linspace(-1.0, 1.0, h, device=f.device, dtype=p.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=f.device, dtype=p.dtype)
        grid = torch.stack([xs.repeat(h), ys.repeat_interleave(w)], dim=-1)  # (h*w, 2) as (x, y)
        return (p @ grid, logits.unflatten(-1, (h, w))) if with_logits else p @ grid

    @staticmethod
    def to_image(points: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """forward()'s (x, y) on an h x w map -> normalised image coordinates (edges at +-1), any stride."""
        size = points.new_tensor([w, h])
        return ((points + 1) / 2 * (size - 1) + 0.5) / size * 2 - 1


class ResNetGN(nn.Module):
    """Stem (stride 2) then one stride-2 stage per width: 128 px -> 4 stages -> 8x8 grid of tokens.

    With keypoints > 0, spatial-softmax keypoints of stride-2 features become one extra token: features where a
    goal marker of a few pixels is still a peak. keypoint_source "stem" reads the stem's (3 px of context: colour
    and edges); "block" reads them after the first residual block (11 px), enough to tell a small red sphere from
    the red arm beside it; "branch" reads them from two convolutions of their own on the stem's output (11 px too),
    so training the keypoints does not repurpose the channels the token grid is built from.
    """

    def __init__(self, widths: tuple[int, ...], blocks: int, keypoints: int = 0, keypoint_source: str = "stem") -> None:
        super().__init__()
        self.keypoint_source = keypoint_source
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 2, 1, bias=False),
                                  nn.GroupNorm(_groups(widths[0]), widths[0]), nn.ReLU())
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            for b in range(blocks):
                layers.append(BasicBlock(cin, w, 2 if (b == 0 and i > 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.out_channels = widths[-1]
        if keypoints > 0 and keypoint_source == "branch":  # own channels: the keypoint loss leaves the grid's alone
            self.keypoint_branch = nn.Sequential(
                nn.Conv2d(widths[0], widths[0], 3, 1, 1, bias=False), nn.GroupNorm(_groups(widths[0]), widths[0]),
                nn.ReLU(), nn.Conv2d(widths[0], widths[0], 3, 1, 1, bias=False),
                nn.GroupNorm(_groups(widths[0]), widths[0]), nn.ReLU())
        if keypoints > 0:
            self.keypoints = SpatialSoftmax(widths[0], keypoints)
            self.keypoint_proj = nn.Linear(2 * keypoints, self.out_channels)
        else:
            self.keypoints = None
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor, with_keypoints: bool = False):
        """x: (B, 3, H, W) float in [0, 1] -> tokens (B, h*w [+ 1], C); with_keypoints: also the keypoints' image
        coordinates (B, K, 2) and heatmap logits (B, K, h, w), for a loss that tells them where to look."""
        f = self.stem((x - self.mean) / self.std)
        if self.keypoint_source == "block":  # same stride-2 resolution, more context for the heatmaps
            f = self.layers[0](f)
            grid = self.layers[1:](f).flatten(2).transpose(1, 2)  # (B, h*w, C)
        else:
            grid = self.layers(f).flatten(2).transpose(1, 2)
            if self.keypoint_source == "branch" and self.keypoints is not None:
                f = self.keypoint_branch(f)
        if self.keypoints is None:
            if with_keypoints:
                raise ValueError("this vision encoder has no keypoints (model.vision_keypoints = 0)")
            return grid
        out = self.keypoints(f, with_logits=with_keypoints)  # (B, K, 2) [, (B, K, h, w)]
        points, logits = out if with_keypoints else (out, None)
        tokens = torch.cat([grid, self.keypoint_proj(points.flatten(1))[:, None]], dim=1)  # keypoints: 1 more token
        if not with_keypoints:  # the served/exported path: no heatmap outputs in the graph
            return tokens
        return tokens, SpatialSoftmax.to_image(points, *f.shape[-2:]), logits


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
        grid = math.isqrt(n - 1) if n > 1 else 0
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
    return ResNetGN(cfg.vision_widths, cfg.vision_blocks, cfg.vision_keypoints, cfg.vision_keypoint_source)
