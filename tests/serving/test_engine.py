"""The serving engine: a checkpoint runs on ONNX Runtime from an export made once, cached by the weights' hash,
answering as PyTorch does; an export that misses parity is never served; `rfm serve` uses it by default."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

import rfm.export.engine
import rfm.export.exporter
from rfm.export.engine import (
    EngineError,
    cached_export,
    checkpoint_key,
    engine_loader,
    is_cached,
    load_engine,
)
from rfm.runtime.base import StagedRunner
from rfm.runtime.manifest import EXPORT_FILE
from serving.config import ServerConfig
from serving.server import ServerThread, free_port
from tests.cli_in_process import rfm as rfm_cli
from tests.serving.helpers import msgpack_body, observation, wait_until_ready

pytestmark = pytest.mark.integration  # exports a checkpoint; one test starts `rfm serve`

RFM = [sys.executable, "-c", "import sys; from rfm.cli.main import main; sys.exit(main())"]


@pytest.fixture(scope="module")
def engine_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="module")
def onnx_engine(tiny_checkpoint, engine_cache):
    return load_engine(tiny_checkpoint, "auto", device="cpu", threads=1, cache_dir=engine_cache, seed=0)


def test_auto_engine_is_onnx_runtime_with_the_actions_of_pytorch(onnx_engine, tiny_runner):
    assert onnx_engine.backend == "onnx" and onnx_engine.describe()["engine"] == "onnx"
    obs = [observation(np.random.default_rng(i)) for i in range(3)]
    noise = tiny_runner.sample_noise(3)
    np.testing.assert_allclose(onnx_engine.predict(obs, noise), tiny_runner.predict(obs, noise), atol=1e-4)


def test_openvino_engine_runs_the_ir_of_the_export_with_the_actions_of_pytorch(tiny_checkpoint, engine_cache,
                                                                               tiny_runner):
    ov = load_engine(tiny_checkpoint, "openvino", device="cpu", threads=1, cache_dir=engine_cache, seed=0)
    assert ov.backend == "openvino" and ov.describe()["engine"] == "openvino"
    assert (engine_cache / ov.engine_dir.split("/")[-1] / "policy.xml").is_file()
    obs = [observation(np.random.default_rng(i)) for i in range(3)]
    noise = tiny_runner.sample_noise(3)
    np.testing.assert_allclose(ov.predict(obs, noise), tiny_runner.predict(obs, noise), atol=1e-4)


def test_the_export_is_reused_and_keyed_by_the_checkpoint_files(onnx_engine, tiny_checkpoint, engine_cache,
                                                               monkeypatch, tmp_path):
    monkeypatch.setattr(rfm.export.exporter, "export_checkpoint", lambda *a, **k: pytest.fail("exported again"))
    again = load_engine(tiny_checkpoint, "onnx", device="cpu", cache_dir=engine_cache)
    assert again.engine_dir == onnx_engine.engine_dir
    changed = shutil.copytree(tiny_checkpoint, tmp_path / "changed")
    stats = (changed / "stats.json").read_text()
    (changed / "stats.json").write_text(stats + "\n")  # same numbers, other bytes: a new key
    assert checkpoint_key(changed) != checkpoint_key(tiny_checkpoint)


def test_an_export_that_misses_parity_is_not_served(onnx_engine, tiny_checkpoint, engine_cache, tmp_path, caplog):
    cache = shutil.copytree(engine_cache, tmp_path / "cache")
    manifest_path = cache / Path(onnx_engine.engine_dir).name / EXPORT_FILE  # the onnx engine's (not openvino's)
    manifest = json.loads(manifest_path.read_text())
    manifest["parity"]["goal"]["met"] = False
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(EngineError, match="misses its parity goal"):
        load_engine(tiny_checkpoint, "onnx", device="cpu", cache_dir=cache)
    with caplog.at_level(logging.WARNING, logger="rfm.export.engine"):
        runner = load_engine(tiny_checkpoint, "auto", device="cpu", cache_dir=cache)
    assert runner.backend == "torch" and "serving on PyTorch instead" in caplog.text


def test_a_failed_export_falls_back_to_pytorch_and_says_why(tiny_checkpoint, tmp_path, monkeypatch, caplog):
    def broken(*a, **k):
        raise RuntimeError("op FancyConv is not supported")

    monkeypatch.setattr(rfm.export.exporter, "export_checkpoint", broken)
    with pytest.raises(EngineError, match="FancyConv"):
        load_engine(tiny_checkpoint, "onnx", device="cpu", cache_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="rfm.export.engine"):
        runner = load_engine(tiny_checkpoint, "auto", device="cpu", cache_dir=tmp_path)
    assert runner.backend == "torch" and "FancyConv" in caplog.text
    assert not list(tmp_path.glob("*/export.json"))  # nothing half-written is left to be served later


def test_rfm_serve_runs_a_checkpoint_on_the_cached_onnx_engine_by_default(onnx_engine, tiny_checkpoint,
                                                                          engine_cache):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RFM_ENGINE"}  # the suite pins torch; use the default
    proc = subprocess.Popen([*RFM, "serve", "--checkpoint", str(tiny_checkpoint), "--port", str(port),
                             "--engine-cache", str(engine_cache), "--log-level", "warning"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(proc, url)
        models = httpx.get(url + "/v1/models").json()
        assert models["engine"] == "onnx" and models["engine_dir"] == onnx_engine.engine_dir
        r = httpx.post(url + "/v1/act", content=msgpack_body(observation()),
                       headers={"content-type": "application/msgpack", "accept": "application/json"})
        assert r.status_code == 200 and np.asarray(r.json()["actions"]).shape == (8, 2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def _post_act(url: str) -> np.ndarray:
    r = httpx.post(url + "/v1/act", content=msgpack_body(observation()),
                   headers={"content-type": "application/msgpack", "accept": "application/json"})
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["actions"])


def _deadline_minimum(url: str) -> float:
    body = httpx.get(url + "/openapi.json").json()["components"]["schemas"]["ActRequestBody"]
    return body["properties"]["deadline_ms"]["anyOf"][0]["minimum"]


def _model_info(url: str) -> str:
    return "\n".join(line for line in httpx.get(url + "/metrics").text.splitlines()
                     if line.startswith("rfm_model_info{"))


def _first_start_cache(onnx_engine, engine_cache, tmp_path) -> Path:
    """A cache without the checkpoint's export (a first start); its traced graphs stay, so nothing is traced."""
    cache = shutil.copytree(engine_cache, tmp_path / "cache")
    shutil.rmtree(cache / Path(onnx_engine.engine_dir).name)
    return cache


def test_a_first_start_serves_on_pytorch_at_once_then_on_the_exported_engine(onnx_engine, tiny_checkpoint,
                                                                             engine_cache, tiny_runner, tmp_path,
                                                                             caplog):
    """Without a cached export the server is ready on PyTorch and answers while it exports; then ONNX Runtime
    serves, with no request failing across the switch; the next start finds the export and needs no PyTorch."""
    cache = _first_start_cache(onnx_engine, engine_cache, tmp_path)
    loader = engine_loader(tiny_checkpoint, "auto", device="cpu", threads=1, cache_dir=cache, seed=0)
    with caplog.at_level(logging.INFO, logger="rfm.serving"), \
            ServerThread(loader, ServerConfig(warmup_batch_sizes=(1, 2))) as s:
        first = httpx.get(s.url + "/v1/models").json()
        assert (first["engine"], first["server"]["engine_next"]) == ("torch", "onnx")  # and says what comes
        assert 'engine="torch"' in _model_info(s.url)
        assert _deadline_minimum(s.url) == httpx.get(s.url + "/v1/models").json()["server"]["min_deadline_ms"]
        expected = tiny_runner.predict(observation())  # the chunk head: no noise, the same chunk every time
        deadline, served = time.monotonic() + 120, 0
        while httpx.get(s.url + "/v1/models").json()["engine"] != "onnx":
            assert time.monotonic() < deadline, caplog.text
            # answered on PyTorch while the export traces the same model in another thread
            np.testing.assert_allclose(_post_act(s.url), expected, atol=1e-5)
            served += 1
        assert served >= 1
        np.testing.assert_allclose(_post_act(s.url), expected, atol=1e-4)  # ONNX Runtime, within the parity goal
        models = httpx.get(s.url + "/v1/models").json()
        assert models["engine_dir"] == str(cache / Path(onnx_engine.engine_dir).name)
        assert models["server"]["engine_next"] is None
        info = _model_info(s.url)  # one series, the engine serving now
        assert info.count("rfm_model_info{") == 1 and 'engine="onnx"' in info
        assert f'model_version="{models["model_version"]}"' in info
        # the switch recalibrates min_deadline_ms from the new engine's warm-up; the served document, cached
        # before, says what is enforced now (a batch-1 run of 100 ms: 500 ms)
        assert _deadline_minimum(s.url) == models["server"]["min_deadline_ms"]
        s.state.service.calibrate({1: 0.1})
        assert _deadline_minimum(s.url) == 500.0 == httpx.get(s.url + "/v1/models").json()["server"]["min_deadline_ms"]
    assert "until ONNX Runtime" in caplog.text and "now serving on onnx" in caplog.text
    assert not isinstance(loader(), StagedRunner)  # cached now: the next start is ONNX Runtime from the first request


def test_an_engine_that_cannot_be_built_leaves_the_server_on_pytorch(onnx_engine, tiny_checkpoint, engine_cache,
                                                                     tmp_path, monkeypatch, caplog):
    def broken(*a, **k):
        raise RuntimeError("op FancyConv is not supported")

    monkeypatch.setattr(rfm.export.exporter, "export_checkpoint", broken)
    cache = _first_start_cache(onnx_engine, engine_cache, tmp_path)
    loader = engine_loader(tiny_checkpoint, "auto", device="cpu", threads=1, cache_dir=cache)
    with caplog.at_level(logging.INFO, logger="rfm.serving"), \
            ServerThread(loader, ServerConfig(warmup_batch_sizes=(1,))) as s:
        deadline = time.monotonic() + 60
        while "staying on torch" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.1)
        models = httpx.get(s.url + "/v1/models").json()
        assert "FancyConv" in caplog.text and (models["engine"], models["server"]["engine_next"]) == ("torch", None)
        assert _post_act(s.url).shape == (8, 2)


def test_a_cache_that_cannot_be_written_still_serves_the_exports_it_holds(onnx_engine, tiny_checkpoint,
                                                                          engine_cache, tmp_path):
    """A shipped cache on a read-only volume: its export loads; only a checkpoint it lacks needs a writable one.
    (The test runs as root, to whom permissions do not apply: a directory where the lock file would go makes
    the write fail for anyone.)"""
    cache = shutil.copytree(engine_cache, tmp_path / "shipped")
    name = Path(onnx_engine.engine_dir).name
    for lock in cache.glob(".*.lock"):
        lock.unlink()
    (cache / f".{name}.lock").mkdir()
    runner = load_engine(tiny_checkpoint, "onnx", device="cpu", cache_dir=cache)
    assert runner.engine == "onnx" and Path(runner.engine_dir) == cache / name
    shutil.rmtree(cache / name)  # now the export must be made, and cannot be written there
    with pytest.raises(EngineError, match="is not writable"):
        load_engine(tiny_checkpoint, "onnx", device="cpu", cache_dir=cache)


def test_an_engine_cache_this_process_may_not_enter_is_skipped_not_raised(tmp_path):
    """rfm's image, built as root, left $XDG_CACHE_HOME mode 0700 (ONNX Runtime's files): stat() of the cache
    under it raised PermissionError, so the server, running as uid 10001, failed to load any model."""
    from rfm.export.cache_contents import scan
    from rfm.export.cache_dir import searchable
    from tests.unprivileged import run_unprivileged

    home = tmp_path / "cache-home"
    (home / "rfm" / "engines").mkdir(parents=True)
    home.chmod(0o000)  # (root enters it anyway: hence the other user)
    try:
        assert run_unprivileged(searchable, home / "rfm" / "engines") == {"value": "False"}
        assert run_unprivileged(scan, home / "rfm" / "engines") == {"value": "[]"}
    finally:
        home.chmod(0o755)
    assert searchable(home / "rfm" / "engines")


def _export_only(cache: Path, engine_dir: str) -> Path:
    """A cache holding just the export named like `engine_dir`, as `rfm serve --prepare` leaves one to ship."""
    name = Path(engine_dir).name
    shutil.copytree(Path(engine_dir), cache / name)
    return cache


def test_a_shipped_cache_serves_these_weights_under_any_directory_name(onnx_engine, tiny_checkpoint, tmp_path,
                                                                        monkeypatch, caplog):
    """$RFM_ENGINE_PATH: exports made ahead of time (an image's) are found by the weights' hash, with an empty
    writable cache, for a checkpoint mounted under another name; the first start is then not staged."""
    shipped = _export_only(tmp_path / "shipped", onnx_engine.engine_dir)
    monkeypatch.setenv("RFM_ENGINE_PATH", f"{tmp_path / 'missing'}{os.pathsep}{shipped}")
    monkeypatch.setattr(rfm.export.exporter, "export_checkpoint", lambda *a, **k: pytest.fail("exported again"))
    mounted = shutil.copytree(tiny_checkpoint, tmp_path / "models" / "robot-7")
    with caplog.at_level(logging.WARNING, logger="rfm.export.cache_dir"):
        runner = engine_loader(mounted, "auto", device="cpu", threads=1, cache_dir=tmp_path / "writable")()
    assert f"{tmp_path / 'missing'}, which is not a directory" in caplog.text  # a mistyped entry is named
    assert not isinstance(runner, StagedRunner)
    assert runner.engine == "onnx" and Path(runner.engine_dir) == shipped / Path(onnx_engine.engine_dir).name
    assert not (tmp_path / "writable").exists()  # nothing exported, nothing written
    other = shutil.copytree(tiny_checkpoint, tmp_path / "other")
    (other / "stats.json").write_text((other / "stats.json").read_text() + "\n")  # other bytes: another key
    assert not is_cached(other, cache_dir=tmp_path / "writable")


def test_an_openvino_export_is_not_taken_for_the_onnx_engine(onnx_engine, tiny_checkpoint, engine_cache, tmp_path,
                                                             monkeypatch):
    """`x-openvino-fp32-<hash>` ends like a CPU export of checkpoint `x-openvino`: the manifest's target decides."""
    ov = load_engine(tiny_checkpoint, "openvino", device="cpu", threads=1, cache_dir=engine_cache)
    shipped = _export_only(tmp_path / "shipped", ov.engine_dir)
    monkeypatch.setenv("RFM_ENGINE_PATH", str(shipped))
    mounted = shutil.copytree(tiny_checkpoint, tmp_path / "renamed")
    assert is_cached(mounted, target="openvino", cache_dir=tmp_path / "writable")
    assert not is_cached(mounted, cache_dir=tmp_path / "writable")


def test_rfm_serve_prepare_makes_the_engine_to_ship_and_serves_nothing(onnx_engine, tiny_checkpoint, engine_cache,
                                                                       tmp_path):
    cache = _first_start_cache(onnx_engine, engine_cache, tmp_path)  # its traced graphs make the export quick
    port = free_port()
    r = rfm_cli("serve", "--checkpoint", str(tiny_checkpoint), "--engine", "onnx", "--engine-cache", str(cache),
            "--prepare", "--threads", "1", "--port", str(port), "--log-level", "warning")
    assert r.returncode == 0, r.stderr
    said = json.loads(r.stdout.strip().splitlines()[-1])
    assert said["engine"] == "onnx" and Path(said["engine_dir"]).parent == cache
    assert (Path(said["engine_dir"]) / EXPORT_FILE).is_file()
    # the traced graphs are not shipped, only engines: a graph left is one file with an engine's (a hard link)
    assert all(f.stat().st_nlink > 1 for f in cache.glob("*.onnx"))
    with pytest.raises(httpx.ConnectError):  # it did not stay to serve
        httpx.get(f"http://127.0.0.1:{port}/healthz")


def test_an_int8_engine_calibrates_on_the_robots_dataset_and_is_cached_apart(onnx_engine, tiny_checkpoint,
                                                                            engine_cache, tmp_path):
    """--calib-dataset calibrates int8 on the robot's frames; the engine is cached under its calibration, so one
    made on synthetic frames (which can miss parity) is never taken for it."""
    from rfm.data.lerobot import LeRobotDatasetWriter
    from tests.serving.helpers import INTERFACE

    rng = np.random.default_rng(0)
    h, w = INTERFACE["image_size"]
    writer = LeRobotDatasetWriter(tmp_path / "data", fps=10, robot_type="test", use_videos=False,
                                  cameras={c: (h, w) for c in INTERFACE["cameras"]},
                                  state_names=INTERFACE["state_names"], action_names=INTERFACE["action_names"])
    for _ in range(12):
        writer.add_frame(images={c: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for c in INTERFACE["cameras"]},
                         state=rng.standard_normal(3).astype(np.float32),
                         action=rng.standard_normal(2).astype(np.float32), task="pick up the cube")
    writer.save_episode()
    data = writer.finalize()
    cache = _first_start_cache(onnx_engine, engine_cache, tmp_path)
    r = rfm_cli("serve", "--checkpoint", str(tiny_checkpoint), "--engine", "onnx-int8", "--calib-dataset", str(data),
                "--engine-cache", str(cache), "--prepare", "--threads", "1", "--log-level", "error")
    assert r.returncode == 0, r.stderr
    made = Path(json.loads(r.stdout.strip().splitlines()[-1])["engine_dir"])
    assert "-int8-" in made.name and "-cal" in made.name
    assert json.loads((made / EXPORT_FILE).read_text())["calibration"].startswith("dataset: ")
    r = rfm_cli("serve", "--checkpoint", str(tiny_checkpoint), "--engine", "onnx", "--calib-dataset", str(data),
                "--prepare")
    assert r.returncode == 2 and "--calib-dataset calibrates an int8 engine" in r.stderr


def test_rfm_serve_prepare_on_an_export_that_cannot_be_made_is_one_line(tiny_checkpoint, tmp_path, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("op FancyConv is not supported")

    monkeypatch.setattr(rfm.export.exporter, "export_checkpoint", broken)
    r = rfm_cli("serve", "--checkpoint", str(tiny_checkpoint), "--engine", "onnx", "--engine-cache", str(tmp_path),
            "--prepare", "--threads", "1", "--log-level", "error")
    assert r.returncode != 0 and "FancyConv" in r.stderr and "Traceback" not in r.stderr


def test_replicas_starting_together_export_once(onnx_engine, tiny_checkpoint, tmp_path, monkeypatch):
    """The cache's lock: two servers asking for the same missing export at once make it once; both serve it."""
    calls = []

    def slow_export(checkpoint, out, *a, **k):
        calls.append(out)
        time.sleep(0.5)  # long enough for the other to arrive while this one holds the lock
        shutil.copytree(onnx_engine.engine_dir, out)

    monkeypatch.setattr(rfm.export.engine, "_export", slow_export)
    with ThreadPoolExecutor(2) as pool:
        dirs = list(pool.map(lambda _: cached_export(tiny_checkpoint, cache_dir=tmp_path), range(2)))
    assert len(calls) == 1 and dirs[0] == dirs[1] == calls[0]


def test_serving_and_training_import_without_posix_only_modules():
    """Windows has no fcntl, resource, termios, pwd or grp: the server, the engine cache and training must import
    without them (the caches' locks come from filelock, which has a Windows lock)."""
    code = ("import sys\nfor m in ('fcntl', 'resource', 'termios', 'pwd', 'grp'): sys.modules[m] = None\n"
            "import rfm.cli.main, rfm.cli.serve, serving.app, rfm.export.engine, rfm.export.graph_cache, "
            "rfm.train.loop, rfm.runtime.torch_runner, rfm.client")
    r = subprocess.run([sys.executable, "-W", "ignore", "-c", code], check=False, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr


def _engine_copy(src: Path, cache: Path, name: str, checkpoint: Path, age_days: float = 0.0) -> Path:
    """Another engine in `cache`: the export `src` under `name`, recorded as made from `checkpoint`."""
    dst = shutil.copytree(src, cache / name)
    manifest = json.loads((dst / EXPORT_FILE).read_text())
    (dst / EXPORT_FILE).write_text(json.dumps({**manifest, "checkpoint": str(checkpoint)}))
    then = time.time() - age_days * 86400
    os.utime(dst, (then, then))
    return dst


def test_rfm_cache_lists_and_prunes_by_last_use_gone_checkpoints_and_size(onnx_engine, tiny_checkpoint,
                                                                         engine_cache, tmp_path):
    """Every checkpoint a server starts on adds an engine and nothing removed one: a workstation's cache held
    970 MB after a few days. `rfm cache prune` deletes by last use, by checkpoint, by size; never an export being
    made, and always what a killed export left."""
    from filelock import FileLock

    from rfm.files import writer_tag

    cache = tmp_path / "cache"
    cache.mkdir()
    served = Path(onnx_engine.engine_dir)
    current = _engine_copy(served, cache, served.name, tiny_checkpoint.resolve())
    old = _engine_copy(served, cache, f"gone-fp32-{'1' * 16}", tmp_path / "deleted-run", age_days=40)
    changed_ckpt = shutil.copytree(tiny_checkpoint, tmp_path / "retrained")
    (changed_ckpt / "stats.json").write_text((changed_ckpt / "stats.json").read_text() + "\n")
    changed = _engine_copy(served, cache, f"retrained-fp32-{checkpoint_key(tiny_checkpoint)[:16]}", changed_ckpt)
    dead = writer_tag().replace(str(os.getpid()), "4194303", 1)  # a writer on this host that is gone
    leftover = cache / f".x-fp32-{'2' * 16}.tmp-{dead}-abc"
    leftover.mkdir()
    (leftover / "policy.onnx").write_bytes(b"half an export")

    listed = rfm_cli("cache", "list", "--engine-cache", str(cache), "--json")
    assert listed.returncode == 0, listed.stderr
    status = {Path(e["path"]).name: (e["kind"], e["status"]) for e in json.loads(listed.stdout)["entries"]}
    assert status == {current.name: ("engine", "current"), old.name: ("engine", "missing"),
                      changed.name: ("engine", "changed"), leftover.name: ("unfinished", "")}
    table = rfm_cli("cache", "list", "--engine-cache", str(cache)).stdout
    assert f"{old.name}  {tmp_path / 'deleted-run'} (missing)" in table and "4 entries" in table

    said = rfm_cli("cache", "prune", "--engine-cache", str(cache))
    assert said.returncode == 2 and "--unused-days N, --max-gb G and/or --stale" in said.stderr
    dry = rfm_cli("cache", "prune", "--engine-cache", str(cache), "--unused-days", "30", "--dry-run")
    assert f"would delete engine {old.name}" in dry.stdout and old.is_dir() and leftover.is_dir()
    rfm_cli("cache", "prune", "--engine-cache", str(cache), "--unused-days", "30")
    assert not old.exists() and not leftover.exists() and current.is_dir() and changed.is_dir()
    rfm_cli("cache", "prune", "--engine-cache", str(cache), "--stale")
    assert not changed.exists() and current.is_dir()
    with FileLock(cache / f".{current.name}.lock"):  # an export of it running: it stays whatever the size
        said = rfm_cli("cache", "prune", "--engine-cache", str(cache), "--max-gb", "0").stdout
        assert current.is_dir() and f"kept engine {current.name}: an export of it is running" in said
    pruned = rfm_cli("cache", "prune", "--engine-cache", str(cache), "--max-gb", "0", "--json")
    assert [Path(e["path"]).name for e in json.loads(pruned.stdout)["removed"]] == [current.name]
    assert [p for p in cache.iterdir() if not p.name.endswith(".lock")] == []  # (empty lock files stay)


def test_rfm_serve_keeps_the_engine_cache_within_its_bound_least_recently_used_first(onnx_engine, tiny_checkpoint,
                                                                                   engine_cache, tmp_path):
    """At start `rfm serve` deletes the least recently used engines past --engine-cache-max-gb, never the one it is
    about to serve; a server loading an engine marks it used."""
    import argparse

    from rfm.cli.serve import _bound_engine_cache

    cache = tmp_path / "cache"
    cache.mkdir()
    served = Path(onnx_engine.engine_dir)
    mine = _engine_copy(served, cache, served.name, tiny_checkpoint.resolve(), age_days=90)
    cached_export(tiny_checkpoint, cache_dir=cache)  # a server loads it: used now
    assert time.time() - mine.stat().st_mtime < 60
    os.utime(mine, (0, 0))  # and long ago again: the bound still keeps it
    _engine_copy(served, cache, f"a-fp32-{'3' * 16}", tmp_path / "a", age_days=20)
    newer = _engine_copy(served, cache, f"b-fp32-{'4' * 16}", tmp_path / "b", age_days=10)
    size = sum(f.stat().st_size for f in newer.rglob("*") if f.is_file())
    _bound_engine_cache(argparse.Namespace(engine_cache=str(cache), engine_cache_max_gb=2.5 * size / 1e9),
                        tiny_checkpoint)
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == sorted([mine.name, newer.name])


def test_pruning_to_a_size_takes_an_engine_with_the_graphs_only_it_links_and_an_unreadable_one_is_stale(
        onnx_engine, tmp_path):
    """An engine's graphs are hard links to the cached traced graphs: deleting the engine alone freed nothing, so a
    size bound deleted every engine and kept the graphs. And an export.json another rfm wrote (or a damaged one)
    stopped the bound, and `rfm serve`, with an error."""
    from rfm.export.cache_contents import disk_usage, prune, scan

    cache = tmp_path / "cache"
    cache.mkdir()
    served = Path(onnx_engine.engine_dir)
    a = _engine_copy(served, cache, f"a-fp32-{'5' * 16}", tmp_path / "a", age_days=20)
    b = _engine_copy(served, cache, f"b-fp32-{'6' * 16}", tmp_path / "b", age_days=10)
    for engine, key in ((a, "1"), (b, "2")):
        graph = cache / f"policy-{key * 24}.onnx"
        os.link(engine / "policy.onnx", graph)  # as rfm.export.graph_cache places them
        os.utime(graph, (0, 0))  # traced long ago: older than the engine that links it
    one = disk_usage([e for e in scan(cache) if e.path == b or e.path.name == f"policy-{'2' * 24}.onnx"])
    removed = prune(cache, max_bytes=one)
    assert sorted(e.path.name for e in removed) == sorted([a.name, f"policy-{'1' * 24}.onnx"])
    assert disk_usage(scan(cache)) == one and b.is_dir()

    broken = _engine_copy(served, cache, f"c-fp32-{'7' * 16}", tmp_path / "c", age_days=1)
    (broken / EXPORT_FILE).write_text('{"format": "rfm-export-v9", ')  # cut short, or another rfm's
    listed = {Path(e["path"]).name: e["status"] for e in json.loads(
        rfm_cli("cache", "list", "--engine-cache", str(cache), "--json").stdout)["entries"]}
    assert listed[broken.name] == "unreadable"
    assert broken.name in [e.path.name for e in prune(cache, stale=True)] and not broken.exists()
