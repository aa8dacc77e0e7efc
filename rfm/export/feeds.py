"""Observations -> policy.onnx feed dicts, through the same validation path the runners use."""

from __future__ import annotations

import numpy as np

from rfm.runtime.observation import make_batch, no_committed


def observation_arrays(policy, observations: list[dict], seed: int = 0) -> dict[str, np.ndarray]:
    """All observations as one feed: images (N, N_cam, 3, H, W) uint8, state (N, D_s) f32, text (N, L, D_text)
    f32, text_mask (N, L) f32, plus noise (N, H, D_a) f32 for the flow head (seeded: reproducible parity), and for
    a model with prefix_max > 0 prefix (N, prefix_max, D_a) f32 / prefix_len (N,) int64 from each observation's
    committed actions ("committed_actions"; zeros and 0 where it has none).
    Images of another size are resized (dataset frames may be stored larger than the model input)."""
    itf = policy.interface
    pmax = policy.model_config.prefix_max
    batch = make_batch(observations, itf, resize=True, prefix_max=pmax)
    text, mask = policy.text.encode(batch.instructions)
    feed = {
        "images": batch.images,
        "state": batch.state.astype(np.float32),
        "text": text.astype(np.float32),
        "text_mask": mask.astype(np.float32),
    }
    if policy.model_config.head == "flow":
        rng = np.random.default_rng(seed)
        feed["noise"] = rng.standard_normal((len(batch), itf.chunk_size, itf.action_dim)).astype(np.float32)
    if pmax:
        feed["prefix"], feed["prefix_len"] = ((batch.prefix, batch.prefix_len) if batch.prefix is not None
                                              else no_committed(len(batch), pmax, itf.action_dim))
    return feed


def split_feed(feed: dict[str, np.ndarray], batch_size: int) -> list[dict[str, np.ndarray]]:
    """Cut one feed of N samples into consecutive feeds of at most batch_size samples."""
    n = len(next(iter(feed.values())))
    return [{k: v[i : i + batch_size] for k, v in feed.items()} for i in range(0, n, batch_size)]
