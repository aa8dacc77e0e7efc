"""Shared fixtures: small interfaces and tiny policies built on the fly (no downloads, real components)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
# Under xdist each worker already has a core: one OpenMP thread here and in every process a test starts (CLI runs,
# servers, notebook kernels). Two workers each spinning two OpenMP threads on two cores slowed two concurrent
# training tests twenty-fold (both past the 600 s timeout).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
# `rfm serve` started by tests runs checkpoints on PyTorch: the default engine (ONNX Runtime on a cached export) costs an
# export per fresh checkpoint; tests/serving/test_engine.py covers it.
os.environ.setdefault("RFM_ENGINE", "torch")
# Exports reuse the traced text encoder from the engine cache: one per test session, never the user's ~/.cache. The
# process that made it removes it on exit (each run left ~250 MB in /tmp; hundreds of runs filled the disk CI shares).
if not os.environ.get("RFM_CACHE_DIR"):
    import atexit
    import shutil
    import tempfile

    os.environ["RFM_CACHE_DIR"] = tempfile.mkdtemp(prefix="rfm-test-cache-")
    atexit.register(shutil.rmtree, os.environ["RFM_CACHE_DIR"], ignore_errors=True)

import numpy as np
import pytest
import torch

from rfm.config import RobotInterface

# one torch thread per xdist worker (the workers already use the cores), else up to two
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))

# The longest files run first, so neither worker is left with a minute of work after the other has finished:
# `--dist loadfile --no-loadscope-reorder` (the Makefile) hands out files in this order; xdist's own order (most
# tests first) ran the 100 s guide walk last. Only the order changes; a file missing from the list keeps its place.
LONGEST_FIRST = ("test_robots_guide.py", "notebooks/test_notebooks.py", "eval/test_eval.py", "eval/test_adapt.py",
                 "serving/test_schemathesis.py", "model/test_prefix.py", "model/test_policy.py", "test_pipeline.py",
                 "sim/test_metaworld.py", "test_small_data_cycles.py", "export/test_export.py")


def pytest_collection_modifyitems(items: list) -> None:
    def rank(item) -> int:
        path = item.nodeid.split("::")[0].removeprefix("tests/")
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: each file keeps its own order


@pytest.fixture(scope="session")
def small_interface() -> RobotInterface:
    """Two 64 px cameras, 3-d state, 2-d action, chunk of 8: fast and still exercises every path."""
    return RobotInterface(cameras=["front", "wrist"], image_size=(64, 64), state_names=["x", "y", "z"],
                          action_names=["vx", "vy"], chunk_size=8, control_hz=10.0, robot_type="test")


def random_obs(interface: RobotInterface, rng: np.random.Generator, instruction: str = "pick up the cube") -> dict:
    h, w = interface.image_size
    return {"images": {c: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for c in interface.cameras},
            "state": rng.standard_normal(interface.state_dim).astype(np.float32), "instruction": instruction}


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
