"""Wall time of exporting one checkpoint at every precision, with the traced-graph cache and without it.

    python bench/export_time.py [--checkpoint checkpoints/default] [--precisions fp32,fp16,int8] [--exporter dynamo]

A user exporting one checkpoint for several runtimes runs `rfm export` once per precision. Each export starts from
the fp32 policy graph; with the cache (rfm.export.graph_cache, the default) it is traced by the first export and
copied by the rest. Both columns run here in one process after an untimed warm-up export, the uncached one first
(`cache_dir=""`), then the cached one into an empty cache directory, so the first cached export pays the trace
and fills the cache. Synthetic calibration, no text encoder graph: the policy graph is what is measured. Writes
bench/results/export_time.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench._serve_common import machine_info
from rfm.export import ExportConfig, export_checkpoint
from rfm.export.engine import EXPORTER_LOGGERS

RESULTS = ROOT / "bench" / "results" / "export_time.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "default"))
    ap.add_argument("--precisions", default="fp32,fp16,int8")
    ap.add_argument("--exporter", default="dynamo", choices=["dynamo", "torchscript"])
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    for noisy in EXPORTER_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.ERROR)
    precisions = args.precisions.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # untimed: the first trace in a process also pays torch.export's and onnxscript's one-time setup
        export_checkpoint(args.checkpoint, Path(tmp) / "warm-up", ExportConfig(
            text_encoder=False, instructions=["push the puck"], cache_dir="", exporter=args.exporter, parity_samples=2))
        for mode, cache in (("uncached", ""), ("cached", str(Path(tmp) / "cache"))):
            for p in precisions:
                cfg = ExportConfig(precision=p, text_encoder=False, instructions=["push the puck"], cache_dir=cache,
                                   exporter=args.exporter, int8_report="off", parity_samples=8)
                t = time.perf_counter()
                m = export_checkpoint(args.checkpoint, Path(tmp) / f"{mode}-{p}", cfg)
                rows.append({"mode": mode, "precision": p, "seconds": round(time.perf_counter() - t, 2),
                             "parity_met": m["parity"]["goal"]["met"]})
                print(f"{mode:<9} {p:<5} {rows[-1]['seconds']:7.1f} s", flush=True)
    total = {mode: round(sum(r["seconds"] for r in rows if r["mode"] == mode), 1) for mode in ("uncached", "cached")}
    print("\n| precision | without the cache | with the cache (empty at the start) |\n|---|---:|---:|")
    for p in precisions:
        s = {r["mode"]: r["seconds"] for r in rows if r["precision"] == p}
        print(f"| {p} | {s['uncached']:.1f} s | {s['cached']:.1f} s |")
    print(f"| all {len(precisions)} | {total['uncached']:.1f} s | {total['cached']:.1f} s |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"checkpoint": args.checkpoint, "exporter": args.exporter, "rows": rows,
                                          "total_s": total, "machine": machine_info()}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
