"""Stopping a training run cleanly: SIGTERM (a scheduler's preemption, `docker stop`, `kill`) or Ctrl-C finishes
the step in progress, saves a checkpoint that `--resume` continues, and ends the run; a second signal stops at once.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType


class TrainingStopped(Exception):
    """Raised by `train` after it saved the checkpoint of the step a stop signal arrived in."""

    def __init__(self, signum: int, step: int, checkpoint: str) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} after step {step}; checkpoint saved to {checkpoint} "
                         f"(rfm train ... --resume continues the run)")


class StopSignals:
    """`with StopSignals() as stop:` ... `if stop.signum: save and stop`. Handlers are installed only in the main
    thread, and SIGINT only where it is not ignored (a shell's background job keeps ignoring it)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, object] = {}

    def __enter__(self) -> StopSignals:  # noqa: PYI034
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
            print(f"\n{signal.Signals(signum).name}: finishing this step and saving a checkpoint (again to stop now)",
                  flush=True)
            return
        self._restore()  # a second signal: the process's own behaviour, at once
        signal.raise_signal(signum)

    def _restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}

    def __exit__(self, *exc: object) -> None:
        self._restore()


def shield_worker_from_stop_signals(_worker_id: int) -> None:
    """DataLoader worker_init_fn: the worker gets a process group of its own, so Ctrl-C in a terminal and the SIGTERM
    a launcher sends to the run's process group (torchrun, accelerate launch) reach the training process only, and
    the workers keep loading while it finishes the step and saves. The DataLoader still stops its workers itself,
    and a worker whose parent is gone exits."""
    if hasattr(os, "setpgid"):  # POSIX only
        os.setpgid(0, 0)
