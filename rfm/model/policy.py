"""RFMPolicy: the network, its frozen language encoder, and its normalisation stats, as one loadable unit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from rfm.config import ModelConfig, PolicyConfig, RobotInterface
from rfm.constants import ACTION, OBS_ENV_STATE, OBS_STATE
from rfm.model.network import PolicyNet
from rfm.model.serialization import load_into, read_checkpoint, save_checkpoint
from rfm.model.text import TextEncoder

_TEXT_ENCODERS: dict[tuple[str, int], TextEncoder] = {}


def shared_text_encoder(name: str, max_tokens: int) -> TextEncoder:
    """One frozen text encoder per (name, max_tokens) per process: policies and runners share it and its cache.

    Built without drawing from the global RNG (its layers are initialised, then overwritten by the packaged weights),
    so a seeded training run initialises the same weights whether or not an encoder was built before it."""
    key = (name, max_tokens)
    if key not in _TEXT_ENCODERS:
        with torch.random.fork_rng(devices=[]):
            _TEXT_ENCODERS[key] = TextEncoder(name, max_tokens)
    return _TEXT_ENCODERS[key]


def _array(x: Any) -> np.ndarray | torch.Tensor:
    """A tensor or array as it is; a list (of lists) as an array, so its shape can be checked."""
    return x if isinstance(x, (np.ndarray, torch.Tensor)) else np.asarray(x)


class RFMPolicy:
    """Build, run, save and load a behaviour policy.

    `net` (a torch Module) holds every trainable weight and the state/action normalisation;
    `text` is the frozen sentence encoder (shared, not saved: it is a packaged pretrained model).
    """

    def __init__(self, config: PolicyConfig, stats: dict | None = None, text: TextEncoder | None = None,
                 meta: dict | None = None) -> None:
        self.config = config
        self.text = text or shared_text_encoder(config.model.text_encoder, config.model.text_max_tokens)
        self.net = PolicyNet(config, self.text.dim)
        self.stats: dict = {}
        self.meta: dict = dict(meta or {})  # model id/version, training and eval info for the model card
        if stats:
            self.set_stats(stats)

    @classmethod
    def build(cls, preset: str = "small", interface: RobotInterface | None = None, stats: dict | None = None,
              **model_overrides: Any) -> RFMPolicy:
        """A freshly initialised policy from a preset name (see rfm.config.PRESETS)."""
        from rfm.config import preset as make_preset
        from rfm.config import preset_image_size

        model = make_preset(preset, **model_overrides)  # an unknown preset fails first, naming it
        interface = interface or RobotInterface(image_size=preset_image_size(preset))  # the size it is built for
        return cls(PolicyConfig(model=model, interface=interface), stats=stats)

    @property
    def interface(self) -> RobotInterface:
        return self.config.interface

    @property
    def model_config(self) -> ModelConfig:
        return self.config.model

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device: str | torch.device) -> RFMPolicy:
        self.net.to(device)
        return self

    def set_stats(self, stats: dict) -> None:
        """Normalise state and actions with dataset stats ({feature: {mean, std, min, max, q01, q99}})."""
        mode = self.config.model.norm_mode
        keys = (OBS_STATE, ACTION, OBS_ENV_STATE) if self.net.point_token is not None else (OBS_STATE, ACTION)
        self.stats = {k: {s: np.asarray(v).tolist() for s, v in stats[k].items()} for k in keys if k in stats}
        if self.interface.state_dim > 0:
            self.net.state_norm.set_stats(self.stats.get(OBS_STATE), mode, f"stats[{OBS_STATE!r}]")
        self.net.action_norm.set_stats(self.stats.get(ACTION), mode, f"stats[{ACTION!r}]")
        if self.net.point_token is not None:  # without environment-state stats the points keep their frame
            self.net.point_token.set_stats(self.stats.get(OBS_ENV_STATE))

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.net.parameters() if p.requires_grad or not trainable_only)

    def encode_text(self, instructions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (B, L, D_text), mask (B, L)) on the policy's device, from the LRU cache when seen before."""
        return self.text.encode_torch(list(instructions), self.device)

    @torch.inference_mode()
    def predict(self, images: np.ndarray | torch.Tensor, state: np.ndarray | torch.Tensor,
                instructions: list[str], noise: np.ndarray | torch.Tensor | None = None,
                prefix: np.ndarray | torch.Tensor | None = None,
                prefix_len: np.ndarray | torch.Tensor | None = None) -> np.ndarray:
        """images (B, N_cam, 3, H, W) uint8, state (B, D_s) -> actions (B, H, D_a) float32 in robot units.
        prefix (B, P, D_a) / prefix_len (B,): committed actions the chunk continues (models with prefix_max > 0)."""
        images, state = _array(images), _array(state)
        noise = None if noise is None else _array(noise)
        self._check_inputs(images, state, instructions, noise)
        self.net.eval()
        dev = self.device
        img = torch.as_tensor(images, device=dev)
        st = torch.as_tensor(state, dtype=torch.float32, device=dev)
        txt, mask = self.encode_text(instructions)
        nz = None if noise is None else torch.as_tensor(noise, dtype=torch.float32, device=dev)
        pre = None if prefix is None else torch.as_tensor(prefix, dtype=torch.float32, device=dev)
        plen = None if prefix_len is None else torch.as_tensor(prefix_len, dtype=torch.long, device=dev)
        return self.net(img, st, txt, mask, nz, pre, plen).float().cpu().numpy()

    def _check_inputs(self, images: Any, state: Any, instructions: Any, noise: Any = None) -> None:
        """ValueError saying what predict expected and what came: a float (0-1) image or an (H, W, 3) layout would
        otherwise give wrong actions or a tensor-size error from deep inside the network, and a NaN state NaN
        actions."""
        itf = self.interface
        want = (len(itf.cameras), 3, *itf.image_size)
        shape, dtype = tuple(images.shape), str(images.dtype).removeprefix("torch.")
        if len(shape) != 5 or shape[1:] != want or dtype != "uint8":
            raise ValueError(f"images: expected (B, {', '.join(map(str, want))}) uint8 (cameras {itf.cameras}, "
                             f"channels first, 0-255), got {shape} {dtype}")
        b = shape[0]
        if tuple(state.shape) != (b, itf.state_dim):
            raise ValueError(f"state: expected ({b}, {itf.state_dim}) ({', '.join(itf.state_names)}), got "
                             f"{tuple(state.shape)}")
        if isinstance(instructions, str) or len(instructions) != b:
            got = "a string" if isinstance(instructions, str) else f"{len(instructions)}"
            raise ValueError(f"instructions: expected a list of {b} strings (one per batch row), got {got}")
        if not bool(torch.isfinite(torch.as_tensor(state, dtype=torch.float32)).all()):
            raise ValueError(f"state: NaN or infinite values ({', '.join(itf.state_names)}); the model would answer NaN")
        want_noise = (b, itf.chunk_size, itf.action_dim)
        if noise is not None and tuple(noise.shape) != want_noise:
            raise ValueError(f"noise: expected {want_noise} (batch, chunk_size, action_dim), got {tuple(noise.shape)}")

    def save_pretrained(self, path: str | Path, weights_dtype: str = "float32", card: str | None = None,
                        **kw: Any) -> Path:
        """Write config.json, model.safetensors, stats.json and README.md atomically to `path`."""
        return save_checkpoint(self, path, weights_dtype=weights_dtype, card=card, **kw)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> RFMPolicy:
        """Load a checkpoint directory; errors name the file and what is wrong. Never unpickles."""
        config, raw, stats, state = read_checkpoint(path)
        policy = cls(config, meta=raw.get("meta", {}))
        load_into(policy, path, raw, stats, state)
        return policy.to(device)
