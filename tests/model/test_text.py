"""The instruction encoder: the packaged MiniLM runs without transformers and gives transformers' features exactly;
another encoder directory still runs through transformers."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from rfm.model.bert import BertEncoder, is_bert_dir
from rfm.model.text import HFEncoder, TextEncoder, resolve_text_encoder

TEXTS = ["pick up the red block", "", "Open the DRAWER!", "café über naïve ünïcödé",
         "push the puck to the goal, then push it back again and keep going until truncation cuts this one off"]


def _transformers_features(path, texts: list[str], max_tokens: int) -> tuple[dict, np.ndarray]:
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)(
        texts, padding="max_length", truncation=True, max_length=max_tokens, return_tensors="np")
    model = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
    with torch.no_grad():
        hidden = model(**{k: torch.from_numpy(v.astype(np.int64)) for k, v in tok.items()}).last_hidden_state
    return tok, hidden.masked_fill(~torch.from_numpy(tok["attention_mask"]).bool()[..., None], 0.0).numpy()


def test_the_packaged_encoder_gives_the_tokens_and_features_of_transformers():
    enc = TextEncoder(max_tokens=24)
    path = resolve_text_encoder(enc.name)
    assert isinstance(enc.model, BertEncoder) and is_bert_dir(path)
    ref_tok, ref = _transformers_features(path, TEXTS, 24)
    tok = enc.tokenize(TEXTS)
    for k in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(tok[k], ref_tok[k])
    assert tok["attention_mask"][-1].all()  # the long one is cut at 24 tokens, [SEP] included
    features, mask = enc.encode(TEXTS)
    np.testing.assert_allclose(features, ref, atol=1e-5)
    assert features.shape == (len(TEXTS), 24, enc.dim) and (mask == tok["attention_mask"].astype(bool)).all()


def test_loading_a_policy_does_not_import_transformers():
    """`rfm serve`, `rfm eval`, `rfm train` and `rfm export` start without transformers' ~2 s of imports."""
    code = ("import sys; from rfm.runtime import load_runner; load_runner('checkpoints/default', device='cpu')"
            ".predict_batch; from rfm.train import loop; print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"


def test_an_encoder_the_fast_path_does_not_read_runs_through_transformers(tmp_path):
    """A user's encoder directory that rfm.model.bert does not cover (here the MiniLM files with relative position
    embeddings, which it does not implement) loads through transformers, tokenizer files and all."""
    import json
    import shutil

    src = resolve_text_encoder("all-MiniLM-L6-v2")
    enc_dir, out = tmp_path / "encoder", tmp_path / "export"
    enc_dir.mkdir()
    out.mkdir()
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
              "special_tokens_map.json"):
        shutil.copyfile(src / f, enc_dir / f)
    cfg = json.loads((enc_dir / "config.json").read_text())
    cfg["position_embedding_type"] = "relative_key"
    (enc_dir / "config.json").write_text(json.dumps(cfg))
    assert not is_bert_dir(enc_dir)
    enc = TextEncoder(str(enc_dir), max_tokens=16)
    assert isinstance(enc.model, HFEncoder)
    features, mask = enc.encode(["open the drawer"])
    assert features.shape == (1, 16, 384) and np.isfinite(features).all() and mask[0, :5].all()
    saved = enc.save_tokenizer(out)
    assert "tokenizer.json" in saved["files"] and (saved["pad_token"], saved["pad_id"]) == ("[PAD]", 0)


@pytest.mark.parametrize("bad", ["missing", "no-config"])
def test_a_directory_that_is_not_an_encoder_is_a_clear_error(tmp_path, bad):
    path = tmp_path / "enc"
    if bad == "no-config":
        path.mkdir()
    with pytest.raises(FileNotFoundError, match="local Hugging Face model directory with config.json"):
        TextEncoder(str(path))
