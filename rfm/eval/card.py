"""Evaluation results in a checkpoint's model card: one entry per execution mode, checked against the weights.

A checkpoint copied elsewhere (e.g. promoted to checkpoints/default) keeps the results measured on it, so a
30-minute evaluation need not be rerun just to fill in the card; the weights' digest says the numbers are its own.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from rfm.constants import EVAL_SEED_BASE, WEIGHTS_FILE


class CardError(ValueError):
    """Results that cannot be recorded in this checkpoint's card (other weights, or no way to tell)."""


def weights_digest(checkpoint: str | Path) -> str | None:
    """sha256 of a checkpoint directory's weights file; None where it has none (e.g. an ONNX export)."""
    path = Path(checkpoint) / WEIGHTS_FILE
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def card_key(results: dict) -> str:
    """The card entry's name, one per execution mode and seed block, so --action-steps 8 never overwrites the
    whole-chunk result, nor a second block of seeds (`rfm eval --seed`) the first. Offline results
    (`rfm eval --dataset`): one entry per dataset."""
    if results.get("kind") == "offline":
        return f"offline-{Path(results['dataset']).resolve().name}"
    steps = f"-steps{results['action_steps']}" if results.get("action_steps") and not results.get("ensemble") else ""
    snap = results.get("snap_instructions")
    snap = f"-snap{snap:g}" if snap is not None else ""
    first = min(results.get("seeds") or [EVAL_SEED_BASE])
    block = f"-seed{first}" if first != EVAL_SEED_BASE else ""
    return (f"metaworld{'-paraphrase' if results.get('paraphrase') else ''}{snap}"
            f"{'-ensemble' if results.get('ensemble') else ''}{steps}{block}")


def task_rates(results: dict) -> dict[str, float]:
    """{task: success rate} of an `rfm eval` results dict."""
    return {t: r["success_rate"] for t, r in results["tasks"].items()}


def card_entry(results: dict) -> dict:
    """What the card keeps of an `rfm eval` results dict: rates per task, not every rollout (offline: the errors
    per action dimension and chunk step, not the worst episodes)."""
    if results.get("kind") == "offline":
        keep = ("kind", "dataset", "episodes", "stride", "frames", "mae", "mean_mae", "mae_by_step", "nmae", "mean_nmae")
        return {k: _rounded(results[k]) for k in keep}
    return {"mean_success_rate": round(results["mean_success_rate"], 6),
            "tasks": task_rates(results),
            "episodes_per_task": max(r["episodes"] for r in results["tasks"].values()),
            "seed": min(results["seeds"]), "action_steps": results.get("action_steps"),
            "ensemble": bool(results.get("ensemble")), "snap_instructions": results.get("snap_instructions")}


def _rounded(v):
    """Floats (also inside lists and dicts) to 6 digits, as the card shows means."""
    if isinstance(v, float):
        return round(v, 6)
    if isinstance(v, dict):
        return {k: _rounded(x) for k, x in v.items()}
    return [_rounded(x) for x in v] if isinstance(v, list) else v


def check_same_weights(checkpoint: str | Path, results: dict, source: str = "results") -> None:
    """Raise CardError unless `results` were measured on this checkpoint's weights.

    Results carry `weights_sha256` since it was added; older ones are checked against the checkpoint directory
    they name, if it still exists.
    """
    mine = weights_digest(checkpoint)
    if mine is None:
        raise CardError(f"{checkpoint}: no {WEIGHTS_FILE} (only torch checkpoints have a card)")
    theirs = results.get("weights_sha256")
    if results.get("backend", "torch") != "torch":
        raise CardError(f"{source}: measured with the {results['backend']} backend, not on {checkpoint}'s torch "
                        f"weights; evaluate the checkpoint directory itself")
    if theirs is None and results.get("checkpoint"):
        theirs = weights_digest(results["checkpoint"])
    if theirs is None:
        raise CardError(f"{source}: no weights_sha256 and its checkpoint {results.get('checkpoint')!r} is gone, so "
                        f"it cannot be tied to {checkpoint}; re-run `rfm eval --update-card` on it")
    if theirs != mine:
        raise CardError(f"{source}: measured on other weights (sha256 {theirs[:12]}…) than {checkpoint} "
                        f"({mine[:12]}…)")


def record_in_card(checkpoint: str | Path, results: dict, source: str = "results") -> str:
    """Add (or replace) the results' entry in the checkpoint's config.json meta and README; returns its key."""
    from rfm.checkpoint import read_config, update_meta

    check_same_weights(checkpoint, results, source)
    evals = dict(read_config(checkpoint)[1].get("meta", {}).get("evaluation", {}))
    key = card_key(results)
    evals[key] = card_entry(results)
    update_meta(checkpoint, "evaluation", evals)
    return key
