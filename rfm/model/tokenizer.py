"""Instruction tokens from a `tokenizer.json`, padded and truncated to the model's max_tokens: one implementation
for the torch text encoder (rfm.model.text) and the export runners (rfm.runtime.export_runner), so both feed the
encoder the same tokens. No torch here: the export runners run on devices without it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rfm.install import pip_install

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


class FastTokenizer:
    """`tokenizers` on a Hugging Face tokenizer.json. The pad token is `pad_token` when given (an export's
    export.json), else the directory's tokenizer_config.json's, else [PAD]."""

    def __init__(self, directory: Path, max_tokens: int, pad_token: str | None = None, pad_type_id: int = 0) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as e:
            raise ModuleNotFoundError(f"instructions are tokenised with the tokenizers package, which is not "
                                      f"installed ({e}): {pip_install('edge')}", name="tokenizers") from None

        self.directory = Path(directory)
        if pad_token is None:
            config_file = self.directory / "tokenizer_config.json"
            config = json.loads(config_file.read_text()) if config_file.exists() else {}
            pad = config.get("pad_token") or "[PAD]"
            pad_token = pad["content"] if isinstance(pad, dict) else str(pad)
        self.pad_token = pad_token
        self.tokenizer = Tokenizer.from_file(str(self.directory / "tokenizer.json"))
        pad_id = self.tokenizer.token_to_id(pad_token)
        if pad_id is None:
            raise ValueError(f"{self.directory / 'tokenizer.json'}: has no pad token {pad_token!r}")
        self.pad_id = int(pad_id)
        self.tokenizer.enable_truncation(max_length=max_tokens)
        self.tokenizer.enable_padding(length=max_tokens, pad_id=self.pad_id, pad_token=pad_token,
                                      pad_type_id=pad_type_id)

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        """input_ids / attention_mask / token_type_ids (B, max_tokens) int64."""
        enc = self.tokenizer.encode_batch(list(texts))
        return {"input_ids": np.array([e.ids for e in enc], np.int64),
                "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
                "token_type_ids": np.array([e.type_ids for e in enc], np.int64)}

    def save(self, out: Path) -> dict:
        """Copy the tokenizer files into `out` (an export): {files, pad_token, pad_id}. tokenizer.json is written
        with this tokenizer's padding and truncation to max_tokens, so any runtime's `Tokenizer.from_file` feeds the
        export's text graph as is (the sentence encoder's own file pads to 128 tokens, which the graph refuses)."""
        import shutil

        files = [f for f in TOKENIZER_FILES if (self.directory / f).exists()]
        for f in files:
            if f == "tokenizer.json":
                self.tokenizer.save(str(Path(out) / f))
            else:
                shutil.copyfile(self.directory / f, Path(out) / f)
        return {"files": files, "pad_token": self.pad_token, "pad_id": self.pad_id}
