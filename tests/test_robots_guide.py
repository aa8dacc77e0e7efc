"""docs/ROBOTS.md, run as written: a new robot (native 480 x 640 cameras, its own joints) from dataset to a served
checkpoint and a served int8 export, on the ALOHA-shaped fixture written by the real lerobot (3 cameras, 14
joints, 50 fps) and on a 1-camera dataset written here. The guide's bash blocks run unchanged with its variables
set, and so does its robot control loop (step 5, against a stand-in robot); the requests come from the rfm client
and the real openpi client, with native frames."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rfm.data.lerobot import LeRobotDataset
from rfm.data.recording import episode_outcome

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "ROBOTS.md"
ALOHA = ROOT.parent / "shared" / "fixtures" / "lerobot-v3.0" / "aloha-480x640"
if not ALOHA.exists():
    ALOHA = Path("/work/shared/fixtures/lerobot-v3.0/aloha-480x640")
BIN = Path(sys.executable).parent


def guide_blocks() -> dict[str, list[str]]:
    """{step heading: [bash block, ...]} of the guide's numbered steps."""
    steps, current = {}, None
    for part in re.split(r"(^## .*$)", GUIDE.read_text(), flags=re.MULTILINE):
        if part.startswith("## "):
            current = part[3:].strip()
        elif current:
            steps[current] = re.findall(r"```bash\n(.*?)```", part, flags=re.DOTALL)
    return steps


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(data: Path, run: Path, port: int) -> dict:
    env = {**os.environ, "DATA": str(data), "RUN": str(run), "STEPS": "3", "BATCH": "4", "PORT": str(port),
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RFM_CHECKPOINT", None)
    return env


def run_block(block: str, env: dict) -> str:
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", block], check=False, env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=400)
    assert out.returncode == 0, f"{block}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout + out.stderr


class Served:
    """The guide's `rfm serve` line, in the background until the block exits."""

    def __init__(self, block: str, env: dict, port: int) -> None:
        self.proc = subprocess.Popen(["bash", "-c", "exec " + block.strip()], env=env, cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.url = f"http://127.0.0.1:{port}"

    def __enter__(self) -> Served:  # noqa: PYI034
        import httpx

        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"rfm serve exited: {self.proc.stdout.read()[-3000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.__exit__()
        raise AssertionError("rfm serve did not become ready in 120 s")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def guide_python(step: str) -> str:
    """The Python block of one numbered step of the guide."""
    part = re.split(r"^## ", GUIDE.read_text(), flags=re.MULTILINE)
    body = next(p for p in part if p.startswith(step))
    return re.findall(r"```python\n(.*?)```", body, flags=re.DOTALL)[0]


class GuideRobot:
    """The `robot` of the guide's control loop: native frames at its cameras' sizes, and the actions it applied."""

    def __init__(self, itf: dict, ticks: int) -> None:
        self.itf, self.ticks, self.applied, self.held = itf, ticks, [], 0
        self.rng = np.random.default_rng(1)

    def running(self) -> bool:
        return len(self.applied) < self.ticks

    def observation(self) -> dict:
        return native_obs(self.itf, self.rng)

    def apply(self, action: np.ndarray) -> None:
        assert action.shape == (len(self.itf["action_names"]),)
        self.applied.append(np.asarray(action, np.float32))
        time.sleep(1.0 / self.itf["control_hz"])

    def hold(self) -> None:  # no action for this tick (the guide's real-time settings on a busy machine)
        self.held += 1
        time.sleep(1.0 / self.itf["control_hz"])


def native_obs(itf: dict, rng: np.random.Generator) -> dict:
    """An observation at the cameras' native sizes, as a robot sends it."""
    return {"images": {c: rng.integers(0, 256, (*itf["native_sizes"][c], 3), dtype=np.uint8) for c in itf["cameras"]},
            "state": rng.standard_normal(len(itf["state_names"])).astype(np.float32).tolist(),
            "instruction": "transfer the cube from the left arm to the right arm"}


def request_both_ways(url: str, itf: dict) -> np.ndarray:
    """A chunk from the rfm client and from the real openpi client, both sent native frames."""
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    from rfm.client import RFMClient

    obs = native_obs(itf, np.random.default_rng(0))
    with RFMClient(url) as client:
        res = client.infer(obs)
    actions = np.asarray(res["actions"], np.float32)
    shape = (itf["chunk_size"], len(itf["action_names"]))
    assert actions.shape == shape and np.isfinite(actions).all()
    policy = WebsocketClientPolicy(host=url.replace("http", "ws") + "/openpi")
    openpi_obs = {f"observation/{c}": img for c, img in obs["images"].items()}
    openpi_obs.update({"observation/state": np.asarray(obs["state"], np.float32), "prompt": obs["instruction"]})
    out = policy.infer(openpi_obs)
    assert out["actions"].shape == shape
    np.testing.assert_allclose(out["actions"], actions, atol=1e-4)  # same frames, same fitting, same chunk
    return res


def one_camera_dataset(root: Path) -> Path:
    """A 1-camera arm at 240 x 320, 6 joints in degrees, 30 fps: 3 episodes of 20 frames."""
    from rfm.data.lerobot import LeRobotDatasetWriter

    rng = np.random.default_rng(0)
    names = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]
    w = LeRobotDatasetWriter(root, fps=30, robot_type="so100", cameras={"front": (240, 320)}, state_names=names,
                             action_names=names, use_videos=True)
    for _ in range(3):
        q = rng.uniform(-90, 90, 6)
        for _ in range(20):
            target = q + rng.normal(0, 2, 6)
            w.add_frame(images={"front": rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)},
                        state=q.astype(np.float32), action=target.astype(np.float32), task="pick up the bolt")
            q = target
        w.save_episode()
    return w.finalize()


@pytest.fixture(scope="module")
def steps() -> dict[str, list[str]]:
    steps = guide_blocks()
    assert {"2. Look at it", "3. Fine-tune from the default", "4. Evaluate offline", "5. Serve",
            "6. Export for the edge, and serve the export", "7. Improve from the field"} <= set(steps)
    return steps


@pytest.mark.parametrize("robot", ["aloha-3cam-480x640", "arm-1cam-240x320"])
def test_the_guide_walks_a_new_robot_from_data_to_a_served_int8_export(steps, tmp_path, robot):
    """Steps 2-6 for the ALOHA fixture; steps 2-5, a frame of the wrong size and step 7 for the 1-camera arm."""
    port = _free_port()
    data = ALOHA if robot.startswith("aloha") else one_camera_dataset(tmp_path / "data")
    run = tmp_path / robot
    env = _env(data, run, port)
    assert "frames" in run_block(steps["2. Look at it"][0], env)
    log = run_block(steps["3. Fine-tune from the default"][0], env)
    assert "dropped triangulated points" in log  # the default's Sawyer geometry does not follow a new robot
    cfg = json.loads((run / "checkpoint" / "config.json").read_text())
    itf = cfg["interface"]
    native = {"cam_high": [480, 640]} if robot.startswith("aloha") else {"front": [240, 320]}
    assert itf["image_size"] == [128, 128] and native.items() <= itf["native_sizes"].items()
    assert cfg["model"]["vision_points"] == 0 and itf["calibration"] is None
    assert "Dropped from the init checkpoint" in (run / "checkpoint" / "README.md").read_text()
    run_block(steps["4. Evaluate offline"][0], env)
    offline = json.loads((run / "offline.json").read_text())
    assert set(offline["mae"]) == set(itf["action_names"]) and (run / "offline.png").stat().st_size > 1000
    with Served(steps["5. Serve"][0], env, port) as srv:
        robot_loop = GuideRobot(itf, ticks=24)
        exec(guide_python("5. Serve"), {"PORT": port, "robot": robot_loop})  # noqa: S102 - the guide's loop, as written
        res = request_both_ways(srv.url, itf)
        assert not res["clipped"]
        if robot.startswith("arm"):  # a frame of another size: a 422 naming the field, and the server keeps serving
            wrong_size_is_a_clear_error(srv.url, itf)
    # the recording holds what the robot did: its episode first (ended by the loop), one frame per control tick with
    # the action the robot executed; then the requests the clients above sent without a TickRecorder
    field = LeRobotDataset(run / "field")
    loop = [e for e in field.episodes if field.episode_meta(e.index)["session"] == "cell-1@arm-3"]
    assert sum(e.length for e in loop) == len(robot_loop.applied) == 24  # a held tick (busy CI) splits, adds none
    np.testing.assert_allclose(np.concatenate([field.actions[e.start:e.stop] for e in loop]),
                               np.stack(robot_loop.applied), atol=1e-6)
    assert (episode_outcome(field, loop[-1]), field.episode_meta(loop[-1].index)["ended_by"]) == ("success", "robot")
    assert all(field.episode_meta(e.index)["ended_by"] == "gap" for e in loop[:-1])
    if robot.startswith("arm"):  # step 6 is the same commands for any robot: the ALOHA walk runs it (25 s each)
        # step 7: the demos and the recording's successful episode; the requests recorded without an outcome are not
        log = run_block(steps["7. Improve from the field"][0], env)
        assert re.search(r"learning from 24 frames in \d episodes \(success,corrected\)", log), log[-2000:]
        kept = json.loads(Path(f"{run}-v2/checkpoint/config.json").read_text())["meta"]["data"]["recorded"]
        assert kept[0]["recording"]["outcomes"]["success"] == 1 and kept[0]["frames"] == 24
        return
    export_block, serve_export = steps["6. Export for the edge, and serve the export"][0].strip().splitlines()
    run_block(export_block, env)
    stats_file = run / "int8" / "stats.json"  # the export carries the training stats its limits come from
    assert json.loads(stats_file.read_text()) == json.loads((run / "checkpoint" / "stats.json").read_text())
    # those are what the served export clips with: pinch the action range to [0, 0] and every request is clipped
    stats = json.loads(stats_file.read_text())
    stats["action"]["min"] = stats["action"]["max"] = [0.0] * len(itf["action_names"])
    stats_file.write_text(json.dumps(stats))
    with Served(serve_export, env, port) as srv:
        res = request_both_ways(srv.url, itf)
        assert res["clipped"] and set(res["clipped_dims"]) <= set(itf["action_names"]) and res["clipped_dims"]
        assert np.abs(np.asarray(res["actions"])).max() == 0.0


def wrong_size_is_a_clear_error(url: str, itf: dict) -> None:
    from rfm.client import RFMClient, RFMError

    bad = native_obs(itf, np.random.default_rng(1))
    cam = itf["cameras"][0]
    bad["images"][cam] = np.zeros((480, 640, 3), np.uint8)
    with RFMClient(url) as client:
        with pytest.raises(RFMError, match=f"interface.native_sizes.{cam}") as e:
            client.infer(bad)
        assert e.value.status == 422
        assert client.act(native_obs(itf, np.random.default_rng(2))).shape == (itf["chunk_size"],
                                                                                len(itf["action_names"]))
