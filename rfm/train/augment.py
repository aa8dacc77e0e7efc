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


def position_dims(state_names: list[str]) -> list[int]:
    """Indices of the state's world-frame position, three adjacent dims named x, y, z or <name>_x, _y, _z (e.g.
    hand_x, hand_y, hand_z): the dims `scene_shift` moves with the triangulated points. A clear error if none."""
    for i, name in enumerate(state_names):
        stem = name[:-1]
        if (name == "x" or name.endswith("_x")) and [stem + "y", stem + "z"] == list(state_names[i + 1:i + 3]):
            return [i, i + 1, i + 2]
    raise ValueError(f"scene shift needs the robot state's world position as three adjacent dims named x, y, z or "
                     f"<name>_x, _y, _z (e.g. hand_x, hand_y, hand_z); interface.state_names is {list(state_names)}")


def scene_shift(state: torch.Tensor, dims: list[int], metres: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Moves the robot's position (state[:, dims]) by a random offset per sample, uniform in +-metres per axis, and
    returns the offset (B, 3) for the triangulated points to move by too.

    A translation-invariance prior for small data: with ten demos, ten goal positions are too few to tell "move
    toward the goal" from "the goal's x predicts its height"; shifting the hand and the points together keeps every
    offset between them (what a reach or push depends on) and makes absolute positions unreliable. Measured (0.1 m,
    10 demos per MT10 task): reach's first action follows the goal's height far closer, but closed loop the mean
    fell 72.4 -> 69.4% (pick-place and peg need absolute positions); docs/RESULTS.md, session 19. Off by default.
    """
    if metres <= 0:
        return state, None
    delta = (torch.rand(state.shape[0], 3, device=state.device) * 2 - 1) * metres
    state = state.clone()
    state[:, dims] += delta.to(state.dtype)
    return state, delta


def augment(images: torch.Tensor, shift_pad: int, jitter: float, with_offsets: bool = False):
    """uint8 (B, N, 3, H, W) -> augmented float in [0, 255] (the network accepts both); with_offsets: also the
    shift of each image (random_shift)."""
    x = random_shift(images.float(), shift_pad, with_offsets)
    if with_offsets:
        return color_jitter(x[0], jitter), x[1]
    return color_jitter(x, jitter)
