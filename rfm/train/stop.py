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
    """DataLoader worker_init_fn: a stop signal meant for the run does not end its loaders under the step being
    finished. Ctrl-C reaches a terminal's whole process group and is ignored here. SIGTERM comes to every process of
    the run from a launcher (torchrun signals each rank's group), a scheduler (SLURM signals every process of the job)
    or `pkill -f`; a worker ends on it only when the training process itself sends it, which is how the DataLoader
    and multiprocessing stop their workers. A worker whose parent is gone exits by itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):  # macOS, Windows: at least leave the run's process group
        if hasattr(os, "setpgid"):
            os.setpgid(0, 0)
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the handler a forked worker may inherit from the run
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # this thread and every thread it starts later
    threading.Thread(target=_end_on_sigterm_from, args=(os.getppid(),), name="sigterm-from-parent",
                     daemon=True).start()


def _end_on_sigterm_from(parent: int) -> None:
    """Take each SIGTERM sent to this worker; the training process's own ends the worker as SIGTERM would."""
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # this thread only: delivered here, and
            os.kill(os.getpid(), signal.SIGTERM)  # the default action ends the process
            return
