"""Training logs: CSV (always), TensorBoard (when installed), and a loss-curve PNG at the end."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import ClassVar


class TrainLogger:
    """Append metrics per step to logs/train.csv and TensorBoard; plot logs/loss.png on close."""

    BASE: ClassVar[list[str]] = ["step", "loss", "val_loss", "val_mae", "lr", "grad_norm", "samples_per_s", "elapsed_s"]

    def __init__(self, logdir: Path, enabled: bool = True, resume_step: int = 0, extra: list[str] = ()) -> None:
        """resume_step: the step a resumed run continues from; what the stopped run logged after it (since its last
        checkpoint) is dropped, since those steps are trained again. extra: more columns after loss, e.g. the
        training aids' `<name>_loss`."""
        self.logdir, self.enabled = Path(logdir), enabled
        self.FIELDS = [*self.BASE[:2], *extra, *self.BASE[2:]]
        self.tb = None
        if not enabled:
            return
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.logdir / "train.csv"
        kept = _rows_until(self.csv_path, resume_step) if resume_step else []
        self._f = open(self.csv_path, "w", newline="")  # noqa: SIM115 - open for the whole run
        self._w = csv.DictWriter(self._f, fieldnames=self.FIELDS, extrasaction="ignore")
        self._w.writeheader()
        self._w.writerows(kept)
        self._f.flush()
        try:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard hides the stopped run's events from that step on
            self.tb = SummaryWriter(str(self.logdir / "tensorboard"),
                                    purge_step=resume_step + 1 if resume_step else None)
        except ImportError:  # tensorboard is optional at run time
            self.tb = None

    def log(self, step: int, **metrics: float) -> None:
        if not self.enabled:
            return
        self._w.writerow({"step": step, **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()
                                           if k in self.FIELDS}})
        self._f.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                if v is not None and not math.isnan(v):
                    self.tb.add_scalar(f"train/{k}", v, step)

    def close(self) -> Path | None:
        if not self.enabled:
            return None
        self._f.close()
        if self.tb is not None:
            self.tb.close()
        return plot_loss(self.csv_path, self.logdir / "loss.png")


def _rows_until(csv_path: Path, step: int) -> list[dict]:
    """The rows of an earlier run's log up to `step`; rows that do not parse (a line cut short by a crash) are left
    out."""
    if not csv_path.exists():
        return []
    with open(csv_path, newline="") as f:
        return [r for r in csv.DictReader(f) if (s := _number(r.get("step"))) is not None and s <= step]


def _number(text: str | None) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def plot_loss(csv_path: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path, newline="") as f:
        rows = [(_number(r.get("step")), _number(r.get("loss")), _number(r.get("val_loss"))) for r in csv.DictReader(f)]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    train = [(s, v) for s, v, _ in rows if s is not None and v is not None]
    if train:
        ax.plot(*zip(*train), label="train loss")
    val = [(s, v) for s, _, v in rows if s is not None and v is not None]
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
