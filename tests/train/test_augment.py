"""Training augmentations: image shift/jitter keep shapes and ranges; state noise follows the dataset's scale; the
scene shift moves only the robot's position, by the offset it returns."""

from __future__ import annotations

import torch

from rfm.train.augment import augment, random_shift, state_noise


def test_random_shift_moves_content_by_at_most_pad_pixels():
    img = torch.zeros(1, 1, 3, 32, 32)
    img[..., 16, 16] = 255.0
    out = random_shift(img, pad=3)
    ys, xs = torch.nonzero(out[0, 0, 0] > 128, as_tuple=True)
    assert len(ys) == 1 and abs(int(ys[0]) - 16) <= 3 and abs(int(xs[0]) - 16) <= 3


def test_augment_keeps_shape_and_pixel_range():
    imgs = torch.randint(0, 256, (4, 2, 3, 24, 24), dtype=torch.uint8)
    out = augment(imgs, shift_pad=2, jitter=0.3)
    assert out.shape == imgs.shape and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 255.0


def test_state_noise_scales_per_dimension_and_is_off_at_zero():
    torch.manual_seed(0)
    state = torch.zeros(20_000, 3)
    scale = torch.tensor([1.0, 0.1, 0.0])  # a constant dimension (std 0) stays exact
    assert state_noise(state, scale, 0.0) is state
    noisy = state_noise(state, scale, 0.5)
    std = noisy.std(0)
    assert abs(float(std[0]) - 0.5) < 0.02 and abs(float(std[1]) - 0.05) < 0.002 and float(std[2]) == 0.0
