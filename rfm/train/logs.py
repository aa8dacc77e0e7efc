"""Training logs: CSV (always), TensorBoard (when installed), and a loss-curve PNG at the end."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import ClassVar


class TrainLogger:
    """Append metrics per step to logs/train.csv and TensorBoard; plot logs/loss.png on close."""

    BASE: ClassVar[list[str]] = ["step", "loss", "val_loss", "val_mae", "lr", "grad_norm", "samples_per_s", "elapsed_s"]

    def __init__(self, logdir: Path, enabled: bool = True, resume: bool = False, extra: list[str] = ()) -> None:
        """extra: more columns after loss, e.g. the training aids' `<name>_loss`."""
        self.logdir, self.enabled = Path(logdir), enabled
        self.FIELDS = [*self.BASE[:2], *extra, *self.BASE[2:]]
        self.tb = None
        if not enabled:
            return
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.logdir / "train.csv"
        new = not (resume and self.csv_path.exists())
        self._f = open(self.csv_path, "w" if new else "a", newline="")  # noqa: SIM115 - open for the whole run
        self._w = csv.DictWriter(self._f, fieldnames=self.FIELDS)
        if new:
            self._w.writeheader()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.logdir / "tensorboard"))
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


def plot_loss(csv_path: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    steps = [int(r["step"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(steps, [float(r["loss"]) for r in rows], label="train loss")
    val = [(int(r["step"]), float(r["val_loss"])) for r in rows if r.get("val_loss") not in (None, "")]
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
