"""OnnxRunner: same interface and same observation errors as TorchRunner, no torch import, cached text."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from rfm import RFMPolicy
from rfm.checkpoint import update_meta
from rfm.config import RobotInterface
from rfm.runtime import ObservationError, TorchRunner, load_runner
from rfm.runtime.onnx_runner import OnnxRunner, resolve_providers
from tests.conftest import random_obs

ITF = RobotInterface(
    cameras=["front", "wrist"],
    image_size=(64, 64),
    state_names=["x", "y", "z"],
    action_names=["vx", "vy"],
    chunk_size=8,
)
EXECUTION = {"action_steps": 4, "by_instruction": {"open the door": 2}, "source": "test"}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> tuple:
    from rfm.export import ExportConfig, export_checkpoint

    root = tmp_path_factory.mktemp("onnx-runner")
    ckpt = RFMPolicy.build("tiny", interface=ITF, head="flow").save_pretrained(root / "tiny-flow")
    update_meta(ckpt, "execution", EXECUTION)  # as `rfm adapt --select-episodes` records it
    # The TorchScript exporter here (the default dynamo path is covered in tests/export): fast, and it checks
    # that the fallback path yields a working export too.
    export_checkpoint(ckpt, root / "export", ExportConfig(exporter="torchscript", parity_samples=2))
    return ckpt, root / "export"


@pytest.fixture(scope="module")
def runners(dirs) -> tuple[TorchRunner, OnnxRunner]:
    ckpt, export = dirs
    return TorchRunner.from_checkpoint(ckpt, device="cpu"), load_runner(export, backend="onnx", seed=0)


def test_load_runner_gives_an_onnx_runner_with_the_same_description(runners):
    torch_runner, onnx_runner = runners
    assert isinstance(onnx_runner, OnnxRunner)
    d, ref = onnx_runner.describe(), torch_runner.describe()
    for key in (
        "cameras",
        "image_size",
        "state_names",
        "action_names",
        "chunk_size",
        "model_id",
        "model_version",
        "head",
        "execution",
    ):
        assert d[key] == ref[key], key
    assert d["execution"] == EXECUTION  # the recommended mode travels from the card through the export
    assert d["backend"] == "onnx" and d["precision"] == "fp32" and d["providers"] == ["CPUExecutionProvider"]


def test_predictions_match_torch_runner(runners, rng):
    torch_runner, onnx_runner = runners
    obs = [random_obs(ITF, rng, t) for t in ("pick", "place")]
    noise = rng.standard_normal((2, 8, 2)).astype(np.float32)
    np.testing.assert_allclose(
        onnx_runner.predict(obs, noise=noise), torch_runner.predict(obs, noise=noise), atol=1e-4
    )
    single = onnx_runner.predict(obs[0], noise=noise[0])
    assert single.shape == (8, 2)
    onnx_runner.warmup((1, 2))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda o: o["images"].pop("wrist"),
        lambda o: o["images"].update(wirst=o["images"].pop("wrist")),
        lambda o: o["images"].update(front=np.zeros((64, 64, 3), np.float32)),
        lambda o: o["images"].update(front=np.zeros((32, 64, 3), np.uint8)),
        lambda o: o.update(state=[1.0, 2.0]),
        lambda o: o.update(state=[1.0, float("nan"), 0.0]),
        lambda o: o.update(instruction=5),
    ],
)
def test_bad_observations_give_the_same_error_as_torch(runners, rng, mutate):
    torch_runner, onnx_runner = runners
    messages = []
    for runner in (torch_runner, onnx_runner):
        obs = random_obs(ITF, np.random.default_rng(0))
        mutate(obs)
        with pytest.raises(ObservationError) as info:
            runner.predict(obs)
        messages.append(str(info.value))
    assert messages[0] == messages[1]


def test_text_cache_counts_hits(runners):
    _, onnx_runner = runners
    enc = onnx_runner.text
    enc.encode(["cache me"])
    hits = enc.hits
    feats, mask = onnx_runner.encode_text(["cache me", "cache me"])
    assert enc.hits == hits + 1 and feats.shape == (2, 24, 384) and mask.dtype == bool
    np.testing.assert_array_equal(feats[0], feats[1])


@pytest.mark.integration
def test_runs_without_torch(dirs):
    code = (
        "import sys, numpy as np; from rfm.runtime.loader import load_runner; "
        f"r = load_runner({str(dirs[1])!r}, backend='onnx'); out = r.predict(r.dummy_observation('push')); "
        "assert out.shape == (8, 2), out.shape; assert 'torch' not in sys.modules, 'torch was imported'"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr


def test_a_device_without_onnxruntime_or_tokenizers_is_told_what_to_install(dirs, monkeypatch):
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
        with pytest.raises(ModuleNotFoundError, match=r"onnxruntime package.*pip install '\S+\[edge\]'"):
            OnnxRunner.from_dir(dirs[1])
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(ModuleNotFoundError, match=r"tokenizers package.*pip install '\S+\[edge\]'"):
        OnnxRunner.from_dir(dirs[1])


def test_unknown_provider_and_missing_dir_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="execution provider 'openvinoo' is not available"):
        resolve_providers(["openvinoo"])
    assert resolve_providers(None) == ["CPUExecutionProvider"]
    with pytest.raises(FileNotFoundError, match="export.json: missing"):
        OnnxRunner.from_dir(tmp_path)


def test_an_export_that_missed_its_parity_goal_says_so_when_loaded(dirs, tmp_path):
    """The parity measured at export time travels into describe() (so GET /v1/models shows it); an export that
    missed its goal is loaded with a warning naming the file and the numbers, since its actions may differ."""
    import json
    import logging
    import shutil

    _, export = dirs
    good = load_runner(export, backend="onnx").describe()["parity"]
    assert good["met"] is True and good["value"] <= good["limit"]
    bad = tmp_path / "bad"
    shutil.copytree(export, bad)
    m = json.loads((bad / "export.json").read_text())
    m["parity"][good["metric"]] = 4.8
    m["parity"]["goal"] = {**m["parity"]["goal"], "met": False}
    (bad / "export.json").write_text(json.dumps(m))
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # on the logger itself: another test's logging config cannot hide it
    logger = logging.getLogger("rfm.runtime")
    logger.addHandler(handler)
    disabled, logger.disabled = logger.disabled, False
    level = logger.level
    logger.setLevel(logging.WARNING)  # whatever level an earlier test left on the root logger
    try:
        d = load_runner(bad, backend="onnx").describe()
    finally:
        logger.removeHandler(handler)
        logger.disabled = disabled
        logger.setLevel(level)
    assert d["parity"] == {"metric": good["metric"], "value": 4.8, "limit": good["limit"], "met": False}
    assert any("missed its parity goal" in r.getMessage() and "bad/export.json" in r.getMessage() for r in records)


@pytest.mark.parametrize("damage, message", [
    ("policy", r"policy\.onnx: the policy graph cannot be loaded \(InvalidProtobuf"),
    ("text", r"text_encoder\.onnx: the text encoder graph cannot be loaded"),
    ("tokenizer", r"tokenizer\.json: the tokenizer cannot be loaded"),
    ("manifest", r"export\.json: field 'interface' is missing or not an object"),
])
def test_a_corrupt_file_of_an_export_is_named_in_one_error(dirs, tmp_path, damage, message):
    """A file of the right size but corrupt (a bad copy, an edit) is a ValueError naming it, not the runtime's
    own exception: the CLI and the server report it in one line."""
    import json
    import shutil

    bad = shutil.copytree(dirs[1], tmp_path / "bad")
    if damage == "manifest":
        m = json.loads((bad / "export.json").read_text())
        del m["interface"]
        (bad / "export.json").write_text(json.dumps(m))
    else:
        name = {"policy": "policy.onnx", "text": "text_encoder.onnx", "tokenizer": "tokenizer.json"}[damage]
        size = (bad / name).stat().st_size
        (bad / name).write_bytes(bytes(range(256)) * (size // 256) + b"\0" * (size % 256))  # same size: not caught early
    with pytest.raises(ValueError, match=message):
        load_runner(bad, backend="onnx")


def test_load_runner_runs_a_directory_on_what_it_is_for(dirs):
    """A checkpoint on PyTorch, an export on ONNX Runtime, with no backend named (rfm eval does the same)."""
    from rfm.runtime.loader import resolve_backend

    ckpt, export = dirs
    assert isinstance(load_runner(export), OnnxRunner) and isinstance(load_runner(ckpt), TorchRunner)
    assert resolve_backend(export) == "onnx" and resolve_backend(ckpt) == "torch"
    assert resolve_backend(export, "torch") == "torch"  # asked for: as asked (and its error says what it is)
