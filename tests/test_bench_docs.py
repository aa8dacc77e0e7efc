"""A benchmark that writes its table into docs/BENCHMARKS.md replaces its own subsection and nothing else: the
closed-loop load test once replaced the whole "Serving" section, capacity, overhead and soak tables included."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = """# Benchmarks

## Serving

intro

### Capacity

capacity table

### Closed-loop throughput

old numbers

## Inference latency

latency table
"""


def _serve_load():
    spec = importlib.util.spec_from_file_location("bench_serve_load", ROOT / "bench" / "serve_load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_serve_load_replaces_its_subsection_only(tmp_path):
    mod = _serve_load()
    page = tmp_path / "BENCHMARKS.md"
    page.write_text(PAGE)
    mod.write_docs(f"{mod.SUBSECTION}\n\nnew numbers\n", page)
    assert page.read_text() == PAGE.replace("old numbers", "new numbers")


def test_serve_load_appends_its_subsection_to_serving_when_missing(tmp_path):
    mod = _serve_load()
    page = tmp_path / "BENCHMARKS.md"
    page.write_text(PAGE.replace("### Closed-loop throughput\n\nold numbers\n\n", ""))
    mod.write_docs(f"{mod.SUBSECTION}\n\nnew numbers\n", page)
    text = page.read_text()
    assert "capacity table" in text and "latency table" in text
    assert text.index("capacity table") < text.index("new numbers") < text.index("## Inference latency")
