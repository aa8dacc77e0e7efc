"""Image augmentation for small datasets: random shift (DrQ-style pad + crop) and colour jitter, on whole batches."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_shift(images: torch.Tensor, pad: int, with_offsets: bool = False):
    """images (B, N, 3, H, W) float -> same shape, each image shifted by up to `pad` pixels (edges replicated).

    with_offsets: also (B, N, 2), how far the content moved in normalised image coordinates (x, y; edges at
    +-1), so targets given in image coordinates can move with it.
    """
    B, N, C, H, W = images.shape
    if pad <= 0:
        return (images, images.new_zeros(B, N, 2)) if with_offsets else images
    x = F.pad(images.reshape(B * N, C, H, W), (pad,) * 4, mode="replicate")
    # integer shifts via grid_sample on a normalised grid (one kernel for the whole batch)
    eps = 1.0 / (H + 2 * pad)
    ar = torch.linspace(-1.0 + eps, 1.0 - eps, H + 2 * pad, device=images.device)[:H]
    ar_w = torch.linspace(-1.0 + eps, 1.0 - eps, W + 2 * pad, device=images.device)[:W]
    grid = torch.stack(torch.meshgrid(ar, ar_w, indexing="ij")[::-1], dim=-1)[None].repeat(B * N, 1, 1, 1)
    pixels = torch.randint(0, 2 * pad + 1, (B * N, 1, 1, 2), device=images.device).float()  # (x, y) crop corner
    shift = pixels * torch.tensor([2.0 / (W + 2 * pad), 2.0 / (H + 2 * pad)], device=images.device)
    out = F.grid_sample(x, grid + shift, padding_mode="zeros", align_corners=False).reshape(B, N, C, H, W)
    if not with_offsets:
        return out
    # output pixel i shows padded pixel i + s, i.e. original pixel i + s - pad: content moves by pad - s
    moved = (pad - pixels.view(B, N, 2)) * torch.tensor([2.0 / W, 2.0 / H], device=images.device)
    return out, moved


def color_jitter(images: torch.Tensor, strength: float) -> torch.Tensor:
    """Random per-image brightness and contrast in [1 - s, 1 + s]; images (B, N, 3, H, W) float in [0, 255]."""
    if strength <= 0:
        return images
    B, N = images.shape[:2]
    shape = (B, N, 1, 1, 1)
    bright = 1 + (torch.rand(shape, device=images.device) * 2 - 1) * strength
    contrast = 1 + (torch.rand(shape, device=images.device) * 2 - 1) * strength
    mean = images.mean(dim=(2, 3, 4), keepdim=True)
    return ((images - mean) * contrast + mean * bright).clamp(0, 255)


def state_noise(state: torch.Tensor, scale: torch.Tensor, sigma: float) -> torch.Tensor:
    """state (B, D) + Gaussian noise of sigma x the dataset std per dimension.

    Against copycat shortcuts: when every demo starts from the same pose, how far the arm has moved tells the
    policy where the goal is, and it learns to read that instead of the camera; closed loop, its own first
    motion then "tells" it a wrong goal. Noise on the state makes the image the reliable source.
    """
    if sigma <= 0:
        return state
    return state + torch.randn_like(state) * scale.to(state.device) * sigma


def augment(images: torch.Tensor, shift_pad: int, jitter: float, with_offsets: bool = False):
    """uint8 (B, N, 3, H, W) -> augmented float in [0, 255] (the network accepts both); with_offsets: also the
    shift of each image (random_shift)."""
    x = random_shift(images.float(), shift_pad, with_offsets)
    if with_offsets:
        return color_jitter(x[0], jitter), x[1]
    return color_jitter(x, jitter)
