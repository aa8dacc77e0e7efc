"""Traced graphs are exported once and reused: a hit copies the cached graph (links it, for an engine in the cache),
a miss exports and caches it, an unwritable cache only costs the export; the key follows the weights, the
configuration and the settings."""

from __future__ import annotations

import time

import torch

from rfm.export.graph_cache import cached_graph, policy_graph_key, text_graph_key


def test_second_export_of_the_same_encoder_is_a_copy(tmp_path):
    calls = []

    def export(out):
        calls.append(out)
        out.write_bytes(b"graph-bytes")

    cache = tmp_path / "cache"
    assert not cached_graph(tmp_path / "a.onnx", "text-encoder", "k" * 64, cache, export)
    assert cached_graph(tmp_path / "b.onnx", "text-encoder", "k" * 64, cache, export)
    assert len(calls) == 1 and (tmp_path / "b.onnx").read_bytes() == b"graph-bytes"
    assert not cached_graph(tmp_path / "c.onnx", "text-encoder", "j" * 64, cache, export)  # another encoder: exported
    assert len(calls) == 2
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == [
        f"text-encoder-{c * 24}.onnx" for c in "jk"]  # two entries, no temp files left


def test_engines_in_the_cache_share_one_file_of_a_graph_and_exports_elsewhere_get_their_own(tmp_path):
    """Every engine of every fine-tune of one base holds the same 90 MB text encoder: in the cache it is one file
    (hard links); an export written elsewhere (rfm export --out) is a copy the cache's files never change under."""
    def export(out):
        out.write_bytes(b"graph-bytes")

    cache = tmp_path / "cache"
    for engine in ("default-fp32-1", "default-fp32-2"):
        (cache / engine).mkdir(parents=True)
        cached_graph(cache / engine / "text_encoder.onnx", "text-encoder", "k" * 64, cache, export)
    entry = cache / f"text-encoder-{'k' * 24}.onnx"
    inodes = {p.stat().st_ino for p in (entry, *cache.glob("default-fp32-*/text_encoder.onnx"))}
    assert len(inodes) == 1 and entry.stat().st_nlink == 3
    (tmp_path / "out").mkdir()
    cached_graph(tmp_path / "out" / "text_encoder.onnx", "text-encoder", "k" * 64, cache, export)
    assert (tmp_path / "out" / "text_encoder.onnx").stat().st_nlink == 1 and entry.stat().st_nlink == 3


def test_unwritable_cache_still_exports(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")

    def export(out):
        out.write_bytes(b"g")

    assert not cached_graph(tmp_path / "a.onnx", "policy", "k" * 64, blocker / "cache", export)
    assert (tmp_path / "a.onnx").read_bytes() == b"g"
    assert not cached_graph(tmp_path / "b.onnx", "policy", "k" * 64, None, export)  # caching off


def test_key_follows_the_weights_and_the_settings():
    torch.manual_seed(0)
    m = torch.nn.Linear(3, 2)
    k = text_graph_key(m, 24, 18, "dynamo")
    assert k == text_graph_key(m, 24, 18, "dynamo")
    assert k != text_graph_key(m, 32, 18, "dynamo") and k != text_graph_key(m, 24, 19, "dynamo")
    with torch.no_grad():
        m.weight[0, 0] += 1e-3
    assert k != text_graph_key(m, 24, 18, "dynamo")


def test_policy_key_follows_weights_configuration_and_input_shapes():
    torch.manual_seed(0)
    m = torch.nn.Linear(3, 2)
    x = (torch.zeros(1, 3),)
    k = policy_graph_key(m, '{"chunk": 16}', x, 18, "dynamo")
    assert k == policy_graph_key(m, '{"chunk": 16}', x, 18, "dynamo")
    assert k != policy_graph_key(m, '{"chunk": 8}', x, 18, "dynamo")
    assert k != policy_graph_key(m, '{"chunk": 16}', (torch.zeros(1, 4),), 18, "dynamo")
    assert k != policy_graph_key(m, '{"chunk": 16}', x, 18, "torchscript")
    m.register_buffer("mean", torch.zeros(2))  # normalisation statistics are buffers: part of the key
    assert k != policy_graph_key(m, '{"chunk": 16}', x, 18, "dynamo")


def test_a_second_export_of_a_checkpoint_reuses_its_graph_and_keeps_parity(tmp_path):
    """fp32 then fp16 of one checkpoint trace the policy graph once; other weights trace their own."""
    from rfm.export.exporter import ExportConfig, export_checkpoint
    from rfm.export.graph import traced_with
    from rfm.model.policy import RFMPolicy
    from tests.export.test_export import ITF, STATS

    torch.manual_seed(0)
    ckpt = RFMPolicy.build("tiny", interface=ITF, stats=STATS).save_pretrained(tmp_path / "ckpt")
    cache = tmp_path / "cache"
    cfg = {"parity_samples": 2, "text_encoder": False, "instructions": ["push"], "cache_dir": str(cache),
           "exporter": "torchscript"}
    a = export_checkpoint(ckpt, tmp_path / "fp32", ExportConfig(precision="fp32", **cfg))
    entries = sorted(cache.glob("policy-*.onnx"))
    assert len(entries) == 1 and a["exporter"] == "torchscript" == traced_with(tmp_path / "fp32" / "policy.onnx")
    before = (entries[0].stat().st_ino, entries[0].read_bytes())
    b = export_checkpoint(ckpt, tmp_path / "fp16", ExportConfig(precision="fp16", **cfg))
    assert b["exporter"] == "torchscript" and b["parity"]["goal"]["met"]
    assert sorted(cache.glob("policy-*.onnx")) == entries and (entries[0].stat().st_ino, entries[0].read_bytes()) == before
    assert time.time() - entries[0].stat().st_mtime < 60  # reused: marked used (rfm cache prune goes by it)
    torch.manual_seed(1)
    other = RFMPolicy.build("tiny", interface=ITF, stats=STATS).save_pretrained(tmp_path / "other")
    c = export_checkpoint(other, tmp_path / "other-fp32", ExportConfig(precision="fp32", **cfg))
    assert c["parity"]["goal"]["met"] and len(list(cache.glob("policy-*.onnx"))) == 2
