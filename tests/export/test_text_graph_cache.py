"""The traced text encoder is exported once per encoder and reused: a hit copies the cached graph, a miss exports
and caches it, an unwritable cache only costs the export."""

from __future__ import annotations

import torch

from rfm.export.text_graph_cache import cached_text_graph, text_graph_key


def test_second_export_of_the_same_encoder_is_a_copy(tmp_path):
    calls = []

    def export(out):
        calls.append(out)
        out.write_bytes(b"graph-bytes")

    cache = tmp_path / "cache"
    assert not cached_text_graph(tmp_path / "a.onnx", "k" * 64, cache, export)
    assert cached_text_graph(tmp_path / "b.onnx", "k" * 64, cache, export)
    assert len(calls) == 1 and (tmp_path / "b.onnx").read_bytes() == b"graph-bytes"
    assert not cached_text_graph(tmp_path / "c.onnx", "j" * 64, cache, export)  # another encoder: exported
    assert len(calls) == 2
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == [
        f"text-encoder-{c * 24}.onnx" for c in "jk"]  # two entries, no temp files left


def test_unwritable_cache_still_exports(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")

    def export(out):
        out.write_bytes(b"g")

    assert not cached_text_graph(tmp_path / "a.onnx", "k" * 64, blocker / "cache", export)
    assert (tmp_path / "a.onnx").read_bytes() == b"g"
    assert not cached_text_graph(tmp_path / "b.onnx", "k" * 64, None, export)  # caching off


def test_key_follows_the_weights_and_the_settings():
    torch.manual_seed(0)
    m = torch.nn.Linear(3, 2)
    k = text_graph_key(m, 24, 18, "dynamo")
    assert k == text_graph_key(m, 24, 18, "dynamo")
    assert k != text_graph_key(m, 32, 18, "dynamo") and k != text_graph_key(m, 24, 19, "dynamo")
    with torch.no_grad():
        m.weight[0, 0] += 1e-3
    assert k != text_graph_key(m, 24, 18, "dynamo")
