"""How close each held-out paraphrase is to its task's training sentence and to the nearest training variant.

Instruction augmentation must not make the paraphrase test trivial: this prints, per MT10 paraphrase, the cosine
(mean-pooled frozen text-encoder features) to the training instruction and to the closest built-in variant.
Usage: python research/probes/instruction_similarity.py  -> table + research/probes/results/instruction_similarity.json
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rfm.model.text import TextEncoder
from rfm.sim.instructions import INSTRUCTIONS, TRAINING_VARIANTS
from rfm.sim.metaworld import expand_tasks


def embed(encoder: TextEncoder, texts: list[str]) -> np.ndarray:
    feats, mask = encoder.encode(texts)
    v = (feats * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def main() -> None:
    encoder = TextEncoder()
    rows = []
    for task in expand_tasks("mt10"):
        train, paraphrases, variants = INSTRUCTIONS[task][0], INSTRUCTIONS[task][1:], TRAINING_VARIANTS[task]
        p, t, v = embed(encoder, paraphrases), embed(encoder, [train]), embed(encoder, variants)
        for i, text in enumerate(paraphrases):
            sims = v @ p[i]
            rows.append({"task": task, "paraphrase": text, "to_training": round(float(t[0] @ p[i]), 3),
                         "to_nearest_variant": round(float(sims.max()), 3), "nearest_variant": variants[int(sims.argmax())]})
    print(f"{'task':<25}{'paraphrase':<44}{'training':>9}{'variant':>9}")
    for r in rows:
        print(f"{r['task']:<25}{r['paraphrase']:<44}{r['to_training']:>9.2f}{r['to_nearest_variant']:>9.2f}")
    summary = {k: {"mean": round(float(np.mean([r[k] for r in rows])), 3), "max": max(r[k] for r in rows)}
               for k in ("to_training", "to_nearest_variant")}
    print(f"mean / max: training {summary['to_training']}, nearest variant {summary['to_nearest_variant']}")
    out = Path(__file__).parent / "results" / "instruction_similarity.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
