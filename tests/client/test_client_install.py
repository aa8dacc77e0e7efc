"""rfm with no extras (installed from this repository) is the robot side: the client SDK on numpy + httpx +
websockets + msgpack; the `edge` extra runs an export on a device without torch, and `edge,server` serves it there.

The integration tests install the project into a fresh virtualenv (no system site packages) and, from there,
get action chunks from a real server on the bundled default checkpoint, served from this (full) environment.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from rfm.client import RFMClient
from serving.config import ServerConfig
from serving.server import ServerThread, runner_loader
from tests.serving.helpers import wait_until_ready

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CHECKPOINT = ROOT / "checkpoints" / "default"
BASE_DEPENDENCIES = {"numpy", "httpx", "websockets", "msgpack", "pillow"}
# Never imported by `import rfm.client`, and never installed by `pip install rfm`.
HEAVY_MODULES = ("torch", "pyarrow", "fastapi", "uvicorn", "mujoco", "transformers", "onnxruntime")
RFM_SERVER_SIDE = ("serving", "rfm.runtime", "rfm.model")


def _name(requirement: str) -> str:
    """'uvicorn[standard]>=0.29 ; extra == "serve"' -> 'uvicorn'."""
    return re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_import_rfm_client_loads_no_heavy_module():
    """Here every extra is installed, so this is where importing the SDK could drag one in."""
    code = (f"import sys, rfm.client; print([m for m in {HEAVY_MODULES + RFM_SERVER_SIDE!r} "
            "if any(k == m or k.startswith(m + '.') for k in sys.modules)])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert r.stdout.strip() == "[]", f"import rfm.client imported {r.stdout.strip()}"


def test_dependencies_are_the_client_and_extras_hold_the_rest():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert {_name(r) for r in project["dependencies"]} == BASE_DEPENDENCIES
    extras = project["optional-dependencies"]
    assert {"serve", "train", "sim", "export", "all", "dev"} <= set(extras)

    def expand(extra: str) -> set[str]:  # an extra's requirement names, self-references ("rfm[a,b]") resolved
        names = set()
        for r in extras[extra]:
            ref = re.fullmatch(r"\s*rfm\[([^\]]+)\].*", r)
            names |= set().union(*(expand(e.strip()) for e in ref.group(1).split(","))) if ref else {_name(r)}
        return names

    # `all` is every part of rfm; `dev` (the tests') and `notebooks` (Jupyter, on top of all) are tools around it
    assert expand("all") == set().union(*(expand(e) for e in extras if e not in ("all", "dev", "notebooks")))
    assert expand("notebooks") - expand("all") == {"jupyterlab", "ipywidgets"}
    # torch, wherever an extra needs it, is the one pinned version that constraints.txt holds too
    assert {r for reqs in extras.values() for r in reqs if _name(r) == "torch"} == {"torch==2.13.0"}
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text().split()


# --- a fresh virtualenv with `pip install <repo>` -----------------------------------------------------------


def _source_copy(dest: Path) -> Path:
    """What a clean checkout holds (tracked and new files, not ignored ones), copied so that the build writes
    nothing (build/, *.egg-info) into this working tree and cannot package stale files of an old build/."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():  # a tracked file deleted in the working tree is not part of it
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def _clean_env() -> dict[str, str]:
    """No PYTHONPATH (it would put this checkout on sys.path) and no user site packages."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return {**env, "PYTHONNOUSERSITE": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def _run(args: list, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=_clean_env(), capture_output=True, text=True,
                          timeout=timeout, check=False)


def _fresh_install(root: Path, extras: str = "") -> Path:
    """The python of a fresh virtualenv under `root` holding `pip install <this repository>[extras]`."""
    r = _run([sys.executable, "-m", "venv", root / "venv"], root, 120)
    assert r.returncode == 0, r.stderr
    python = root / "venv" / "bin" / "python"
    # with build isolation: pip fetches the declared setuptools>=77 (the venv's own setuptools is older)
    r = _run([python, "-m", "pip", "install", "-q", f"{_source_copy(root / 'src')}{extras}"], root, 420)
    if r.returncode != 0:
        probe = _run([python, "-m", "pip", "download", "-q", "--no-deps", "-d", root / "probe", "msgpack"],
                     root, 120)
        if probe.returncode != 0:
            pytest.skip(f"package registry unreachable (pip download msgpack failed): {probe.stderr[-500:]}")
        pytest.fail(f"pip install <repo>{extras} failed (registry reachable):\n{r.stdout[-2000:]}{r.stderr[-3000:]}")
    return python


@pytest.fixture(scope="module")
def client_python(tmp_path_factory) -> Path:
    """The python of a fresh virtualenv holding `pip install rfm` (this repository, no extras)."""
    return _fresh_install(tmp_path_factory.mktemp("client-install"))


@pytest.fixture(scope="module")
def default_server():
    with ServerThread(runner_loader(DEFAULT_CHECKPOINT, device="cpu"),
                      ServerConfig(max_batch=4, warmup_batch_sizes=(1,))) as s:
        assert s.state.load_error is None, s.state.load_error
        yield s


@pytest.mark.integration
def test_plain_install_is_the_client_sdk_without_torch(client_python):
    code = textwrap.dedent(f"""
        import json, sys
        from importlib.metadata import distributions, requires
        import rfm.client
        from rfm.client import AsyncRFMClient, ChunkExecutor, RFMClient, RFMError
        from rfm.client.wire import decode_response, encode_observation
        print(json.dumps({{
            "rfm_file": rfm.client.__file__,
            "requires": [r for r in requires("rfm") if "extra ==" not in r],
            "installed": sorted(d.metadata["Name"].lower() for d in distributions()),
            "loaded": [m for m in {HEAVY_MODULES + RFM_SERVER_SIDE!r} if m in sys.modules],
        }}))
    """)
    r = _run([client_python, "-c", code], client_python.parent, 120)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert Path(info["rfm_file"]).is_relative_to(client_python.parents[1]), info["rfm_file"]  # venv, not ROOT
    assert {_name(x) for x in info["requires"]} == BASE_DEPENDENCIES
    assert not set(info["installed"]) & {m.replace("_", "-") for m in HEAVY_MODULES}, info["installed"]
    assert info["loaded"] == []


@pytest.mark.integration
def test_plain_install_rfm_command_lists_its_subcommands(client_python):
    """The console script comes with every install: building its parser must not need an extra's package."""
    r = _run([client_python.parent / "rfm", "--help"], client_python.parent, 60)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "serve" in r.stdout and "train" in r.stdout


ROBOT_SCRIPT = """
import asyncio, json, sys
import numpy as np
from rfm.client import AsyncRFMClient, ChunkExecutor, RFMClient

url, obs_file = sys.argv[1:3]
with RFMClient(url, timeout=30) as client:
    client.wait_ready(30)
    m = client.models()
    h, w = m["image_size"]
    rng = np.random.default_rng(0)
    obs = {"images": {cam: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for cam in m["cameras"]},
           "state": rng.standard_normal(m["state_dim"]).astype(np.float32), "instruction": "open the drawer"}
    np.savez(obs_file, state=obs["state"], **{"image_" + cam: img for cam, img in obs["images"].items()})
    chunk = client.act(obs)  # (H, D_a) float32

    async def async_act():
        async with AsyncRFMClient(url, format="json") as c:
            return await c.act(obs)

    json_chunk = asyncio.run(async_act())
    with ChunkExecutor(client, prefetch_steps=4) as ex:
        steps = [ex.step(obs).shape for _ in range(3)]
print(json.dumps({"shape": chunk.shape, "dtype": str(chunk.dtype), "chunk": chunk.tolist(),
                  "json_chunk": json_chunk.tolist(), "steps": steps, "torch": "torch" in sys.modules}))
"""


@pytest.mark.integration
def test_plain_install_gets_chunks_from_a_real_server(client_python, default_server, tmp_path):
    (tmp_path / "robot.py").write_text(ROBOT_SCRIPT)
    r = _run([client_python, tmp_path / "robot.py", default_server.url, tmp_path / "obs.npz"], tmp_path, 120)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)

    interface = json.loads((DEFAULT_CHECKPOINT / "config.json").read_text())["interface"]
    expected = (interface["chunk_size"], len(interface["action_names"]))  # (16, 4) for checkpoints/default
    assert tuple(out["shape"]) == expected and out["dtype"] == "float32" and not out["torch"]
    assert [tuple(s) for s in out["steps"]] == [(expected[1],)] * 3  # ChunkExecutor: one action per tick
    chunk = np.asarray(out["chunk"], np.float32)
    assert np.isfinite(chunk).all()
    np.testing.assert_allclose(np.asarray(out["json_chunk"], np.float32), chunk, atol=1e-5)

    # the robot-side install gets what this environment's client gets for the same observation
    with np.load(tmp_path / "obs.npz") as f:
        obs = {"images": {k[len("image_"):]: f[k] for k in f.files if k.startswith("image_")},
               "state": f["state"], "instruction": "open the drawer"}
    with RFMClient(default_server.url) as here:
        np.testing.assert_allclose(here.act(obs), chunk, atol=1e-5)


EDGE_SCRIPT = """
import json, sys
from importlib.metadata import distributions
import numpy as np
from rfm.runtime import load_runner

export_dir, obs_file = sys.argv[1:3]
runner = load_runner(export_dir, backend="onnx")
with np.load(obs_file) as f:
    obs = {"images": {"corner": f["corner"], "topview": f["topview"]}, "state": f["state"],
           "instruction": "close the window"}
print(json.dumps({"chunk": runner.predict(obs).tolist(), "runner": type(runner).__name__,
                  "torch": "torch" in sys.modules,
                  "installed": sorted(d.metadata["Name"].lower() for d in distributions())}))
"""


@pytest.fixture(scope="module")
def edge_python(tmp_path_factory) -> Path:
    """The python of a fresh virtualenv holding `pip install "rfm[edge]"` (this repository)."""
    return _fresh_install(tmp_path_factory.mktemp("edge-install"), "[edge]")


@pytest.fixture(scope="module")
def default_export(tmp_path_factory) -> Path:
    from rfm.export.exporter import ExportConfig, export_checkpoint

    out = tmp_path_factory.mktemp("default-export") / "export"
    export_checkpoint(DEFAULT_CHECKPOINT, out, ExportConfig(exporter="torchscript", parity_samples=2))
    return out


def _edge_observation() -> dict:
    rng = np.random.default_rng(0)
    return {"images": {c: rng.integers(0, 256, (128, 128, 3), dtype=np.uint8) for c in ("corner", "topview")},
            "state": np.array([0.0, 0.6, 0.2, 1.0], np.float32), "instruction": "close the window"}


@pytest.mark.integration
def test_edge_install_runs_an_export_without_torch(edge_python, default_export, tmp_path):
    """`pip install "rfm[edge]"` on a device: an export of the default runs there, torch neither installed nor
    imported, and gives the checkpoint's actions (an instruction it was not trained on goes through the
    export's text encoder graph)."""
    from rfm.runtime import load_runner

    obs = _edge_observation()
    np.savez(tmp_path / "obs.npz", state=obs["state"], **obs["images"])
    (tmp_path / "device.py").write_text(EDGE_SCRIPT)
    r = _run([edge_python, tmp_path / "device.py", default_export, tmp_path / "obs.npz"], tmp_path, 120)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["runner"] == "OnnxRunner" and not out["torch"] and "torch" not in out["installed"]
    assert {"onnxruntime", "tokenizers", "pillow"} <= set(out["installed"])
    assert not {"fastapi", "uvicorn"} & set(out["installed"])  # the server is rfm[server]'s
    np.testing.assert_allclose(np.asarray(out["chunk"], np.float32), load_runner(DEFAULT_CHECKPOINT).predict(obs),
                               atol=1e-4)


RECORD_SCRIPT = """
import json, sys
import numpy as np
from rfm.client import ChunkExecutor
from rfm.runtime import ActionLimits, LocalRecorder, load_runner

export_dir, obs_file, out = sys.argv[1:4]
runner = load_runner(export_dir, backend="onnx")  # docs/EDGE.md's loop
limits = ActionLimits.for_model(export_dir)
with np.load(obs_file) as f:
    obs = {"images": {"corner": f["corner"], "topview": f["topview"]}, "state": f["state"],
           "instruction": "close the window"}
executed = []
with LocalRecorder(out, runner, session_id="cell-3") as rec, \\
        ChunkExecutor(runner, limits=limits, recorder=rec) as executor:
    for tick in range(12):
        executed.append(executor.step(obs, t=0.0125 * tick).tolist())
    executor.end_episode(success=True)
print(json.dumps({"executed": executed, "torch": "torch" in sys.modules}))
"""


@pytest.mark.integration
def test_edge_install_records_what_the_robot_ran_without_torch(edge_python, default_export, tmp_path):
    """`pip install "rfm[edge,record]"`: a robot running the export itself records its ticks into the LeRobot dataset
    a recording server writes (one frame per tick, the action it executed), no torch installed or imported."""
    from rfm.constants import ACTION_EXECUTED
    from rfm.data.lerobot import LeRobotDataset

    root = edge_python.parents[2]
    r = _run([edge_python, "-m", "pip", "install", "-q", f"{root / 'src'}[edge,record]"], root, 420)
    assert r.returncode == 0, r.stderr[-3000:]
    obs = _edge_observation()
    np.savez(tmp_path / "obs.npz", state=obs["state"], **obs["images"])
    (tmp_path / "robot.py").write_text(RECORD_SCRIPT)
    r = _run([edge_python, tmp_path / "robot.py", default_export, tmp_path / "obs.npz", tmp_path / "field"], tmp_path,
             180)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert not out["torch"]
    ds = LeRobotDataset(tmp_path / "field")
    assert ds.num_episodes == 1 and ds.num_frames == 12 and ds.episode_meta(0)["session"] == "cell-3"
    np.testing.assert_allclose(ds.extras[ACTION_EXECUTED], np.asarray(out["executed"]), atol=1e-6)
    assert ds.get_frame(11)["images"]["corner"].shape == (128, 128, 3)


@pytest.mark.integration
def test_edge_and_server_install_serves_an_export_without_torch(edge_python, default_export):
    """`pip install "rfm[edge,server]"`: a device (or a cell's edge box) serves its export to robots over HTTP and
    WebSocket with `rfm serve`, no torch installed, answering with the checkpoint's actions."""

    root = edge_python.parents[2]  # the fresh install's directory, holding the source copy it installed
    r = _run([edge_python, "-m", "pip", "install", "-q", f"{root / 'src'}[edge,server]"], root, 420)
    assert r.returncode == 0, r.stderr[-3000:]
    r = _run([edge_python, "-c", "import importlib.util as u; print(u.find_spec('torch') is None)"], root, 60)
    assert r.stdout.strip() == "True", r.stdout + r.stderr
    _serves_the_export(edge_python, root, default_export)


def _serves_the_export(python: Path, cwd: Path, export: Path) -> None:
    """`rfm serve` of the install beside `python` serves `export` with the checkpoint's actions, over HTTP (a body
    read under the server's time limit) and over a WebSocket."""
    from rfm.runtime import load_runner
    from serving.server import free_port

    port = free_port()
    proc = subprocess.Popen([str(python.parent / "rfm"), "serve", "--checkpoint", str(export),
                             "--port", str(port), "--threads", "1", "--log-level", "warning"], cwd=cwd,
                            env=_clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(proc, url)
        obs = _edge_observation()
        with RFMClient(url, transport="ws") as robot, RFMClient(url) as http:
            assert robot.models()["backend"] == "onnx"
            chunks = [robot.act(obs), http.act(obs)]
    finally:
        proc.terminate()
        proc.wait(30)
    for chunk in chunks:
        np.testing.assert_allclose(chunk, load_runner(DEFAULT_CHECKPOINT).predict(obs), atol=1e-4)


def _interpreter(version: str) -> str | None:
    """A Python `version` (e.g. "3.12") on this machine: on PATH, or under pyenv."""
    found = shutil.which(f"python{version}")
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    for candidate in ([found] if found else []) + sorted(str(p) for p in pyenv.glob(f"{version}.*/bin/python")):
        r = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                           capture_output=True, text=True, check=False, env=_clean_env())
        if r.returncode == 0 and r.stdout.strip() == version:
            return candidate
    return None


@pytest.mark.compat
@pytest.mark.parametrize("version", ["3.10", "3.12", "3.13"])
def test_robot_side_installs_work_on_every_supported_python(version, default_server, default_export, tmp_path):
    """A robot runs the Python its OS has (ROS 2 Humble: 3.10, Jazzy: 3.12): `pip install rfm` gets chunks from a
    real server (sync, async and through the ChunkExecutor), and `rfm[edge]` runs an export, on each supported
    version found here."""
    from rfm.runtime import load_runner

    python = _interpreter(version)
    if python is None:
        pytest.skip(f"no Python {version} on this machine")
    r = _run([python, "-m", "venv", tmp_path / "venv"], tmp_path, 120)
    assert r.returncode == 0, r.stderr
    venv_python = tmp_path / "venv" / "bin" / "python"
    r = _run([venv_python, "-m", "pip", "install", "-q", f"{_source_copy(tmp_path / 'src')}[edge]"], tmp_path, 420)
    assert r.returncode == 0, r.stderr[-3000:]
    (tmp_path / "robot.py").write_text(ROBOT_SCRIPT)
    r = _run([venv_python, tmp_path / "robot.py", default_server.url, tmp_path / "robot_obs.npz"], tmp_path, 120)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert tuple(out["shape"]) == (16, 4) and [tuple(s) for s in out["steps"]] == [(4,)] * 3
    np.testing.assert_allclose(np.asarray(out["json_chunk"]), np.asarray(out["chunk"]), atol=1e-5)
    obs = _edge_observation()
    np.savez(tmp_path / "obs.npz", state=obs["state"], **obs["images"])
    (tmp_path / "device.py").write_text(EDGE_SCRIPT)
    r = _run([venv_python, tmp_path / "device.py", default_export, tmp_path / "obs.npz"], tmp_path, 120)
    assert r.returncode == 0, r.stderr[-3000:]
    np.testing.assert_allclose(np.asarray(json.loads(r.stdout)["chunk"], np.float32),
                               load_runner(DEFAULT_CHECKPOINT).predict(obs), atol=1e-4)
    # a device on this Python serving its export (a Jetson on JetPack 6 runs 3.10): asyncio.timeout, new in 3.11,
    # made every HTTP request a 500 there
    r = _run([venv_python, "-m", "pip", "install", "-q", f"{tmp_path / 'src'}[edge,server]"], tmp_path, 420)
    assert r.returncode == 0, r.stderr[-3000:]
    _serves_the_export(venv_python, tmp_path, default_export)
