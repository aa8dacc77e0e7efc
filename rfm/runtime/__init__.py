"""Inference runtimes: one Runner per backend, one numpy pre/post-processing path."""

from rfm.runtime.base import Runner
from rfm.runtime.limits import ActionLimits
from rfm.runtime.observation import Batch, ObservationError, make_batch

__all__ = ["ActionLimits", "Batch", "LocalRecorder", "ObservationError", "Runner", "TorchRunner", "load_runner",
           "make_batch"]


def __getattr__(name: str):
    if name == "TorchRunner":
        from rfm.runtime.torch_runner import TorchRunner

        return TorchRunner
    if name == "LocalRecorder":  # pyarrow and PyAV (rfm[record]), imported only where a robot records
        from rfm.runtime.local_recorder import LocalRecorder

        return LocalRecorder
    if name == "load_runner":
        from rfm.runtime.loader import load_runner

        return load_runner
    raise AttributeError(name)
