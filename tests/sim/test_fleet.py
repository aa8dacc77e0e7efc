"""A simulated fleet acting through a real server with recording on: the flywheel's collection step."""

from __future__ import annotations

import numpy as np
import pytest

from rfm import RFMPolicy
from rfm.config import RobotInterface
from rfm.data.lerobot import LeRobotDataset
from rfm.runtime import load_runner
from rfm.sim.fleet import drive_fleet
from rfm.sim.metaworld import ACTION_NAMES, CONTROL_HZ, STATE_NAMES
from serving.config import ServerConfig
from serving.server import ServerThread

pytestmark = pytest.mark.integration  # MuJoCo robots against a real server


def _recording_server(tmp_path) -> ServerThread:
    """A real server on loopback for an untrained tiny Meta-World policy, recording into tmp_path/rec."""
    itf = RobotInterface(cameras=["corner2"], image_size=(32, 32), state_names=STATE_NAMES, action_names=ACTION_NAMES,
                         chunk_size=4, control_hz=CONTROL_HZ)
    RFMPolicy.build("tiny", interface=itf).save_pretrained(tmp_path / "ck")
    cfg = ServerConfig(max_batch=2, warmup_batch_sizes=(1,), record_dir=str(tmp_path / "rec"))
    return ServerThread(load_runner(tmp_path / "ck", device="cpu"), cfg)


@pytest.mark.parametrize("transport", ["http", "ws"])
def test_fleet_records_dagger_episodes(tmp_path, transport):
    with _recording_server(tmp_path) as server:
        res = drive_fleet(server.url, ["reach-v3"], episodes=2, robots=2, dagger=True, max_steps=5, transport=transport)
    assert res["episodes"] == 2 and res["steps"] == 10 and 0.0 <= res["mean_success_rate"] <= 1.0
    ds = LeRobotDataset(tmp_path / "rec")
    assert ds.num_episodes == 2 and ds.num_frames == 10
    assert ds.extras["is_correction"].all() and ds.tasks == ["reach the red target"]
    assert np.abs(ds.actions).max() <= 1.0  # expert actions, clipped to the action space


def test_takeover_lets_the_expert_drive_when_the_policy_strays(tmp_path):
    from rfm.sim.fleet import Takeover

    with _recording_server(tmp_path) as server:
        # an untrained policy always strays by more than 1e-6: the expert drives every step, 3 at a time
        res = drive_fleet(server.url, ["reach-v3"], episodes=1, robots=1, dagger=True, max_steps=150,
                          takeover=Takeover(error=1e-6, steps=3))
        with pytest.raises(ValueError, match="takeover needs dagger=True"):
            drive_fleet(server.url, ["reach-v3"], episodes=1, dagger=False, takeover=Takeover(error=0.5))
    task = res["tasks"]["reach-v3"]
    assert task["success_rate"] == 1.0, "the scripted expert reaches the target when it drives"
    assert res["expert_steps"] == res["steps"] and task["expert_share"] == 1.0
    assert task["takeovers"] == -(-res["steps"] // 3) and res["takeover"] == {"error": 1e-6, "steps": 3}
    assert LeRobotDataset(tmp_path / "rec").num_frames == res["steps"]
    with pytest.raises(ValueError, match="error=0: must be > 0"):
        Takeover(error=0)


@pytest.mark.parametrize("where", ["server", "device"])
def test_a_robot_executing_8_actions_per_request_records_every_tick_it_executed(tmp_path, where):
    """A simulated robot runs the SDK's ChunkExecutor (8 actions per request) and records its ticks: through a real
    recording server (a TickRecorder), or running the model itself (a LocalRecorder on its disk). The recorded
    episode has one frame per tick run, its actions are the executed ones tick by tick, and replaying them open loop
    from the episode's seed reproduces the recorded states."""
    from contextlib import ExitStack

    from rfm.client import ChunkExecutor, RFMClient, TickRecorder
    from rfm.runtime import LocalRecorder
    from rfm.sim.metaworld import MetaWorldEnv

    itf = RobotInterface(cameras=["corner2"], image_size=(32, 32), state_names=STATE_NAMES, action_names=ACTION_NAMES,
                         chunk_size=16, control_hz=CONTROL_HZ)
    RFMPolicy.build("tiny", interface=itf).save_pretrained(tmp_path / "ck")
    seed, ticks = 1_000_007, 30
    executed, states = [], []
    env = MetaWorldEnv("reach-v3", ["corner2"], 32, max_steps=ticks)
    runner = load_runner(tmp_path / "ck", device="cpu")
    with ExitStack() as stack:
        if where == "server":
            cfg = ServerConfig(max_batch=2, warmup_batch_sizes=(1,), record_dir=str(tmp_path / "rec"))
            server = stack.enter_context(ServerThread(runner, cfg))
            policy = stack.enter_context(RFMClient(server.url))
            recorder = stack.enter_context(TickRecorder(policy, "robot-1"))
        else:
            policy, recorder = runner, stack.enter_context(LocalRecorder(tmp_path / "rec", runner))
        executor = stack.enter_context(ChunkExecutor(policy, action_steps=8, recorder=recorder))
        obs = env.reset(seed)
        while True:
            states.append(np.asarray(obs["state"], np.float32))
            action = np.clip(executor.step(obs), -1.0, 1.0)
            executor.executed(action)  # what the robot really ran, after its own clipping
            executed.append(action)
            obs, _, done, _ = env.step(action)
            if done:
                break
        recorder.end_episode(success=False)
        assert getattr(recorder, "errors", 0) == recorder.lost == 0 and executor.requests == -(-len(executed) // 8)
    ds = LeRobotDataset(tmp_path / "rec")
    assert ds.num_episodes == 1 and ds.num_frames == len(executed) == ticks  # one frame per control tick
    assert ds.fps == round(CONTROL_HZ)
    np.testing.assert_allclose(ds.actions, np.stack(executed), atol=1e-6)
    np.testing.assert_allclose(ds.extras["action_executed"], np.stack(executed), atol=1e-6)
    np.testing.assert_allclose(ds.states, np.stack(states), atol=1e-6)
    assert not ds.extras["is_correction"].any()
    chunks = ds.extras["action_chunk"].reshape(ticks, 16, 4)  # each tick's action came from its chunk, 8 per chunk
    for t in range(ticks):
        np.testing.assert_allclose(np.clip(chunks[t, t % 8], -1, 1), executed[t], atol=1e-6)
    # the recording replays: the recorded actions, open loop from the seed, give the recorded states
    obs, replayed = env.reset(seed), []
    for a in ds.actions:
        replayed.append(np.asarray(obs["state"], np.float32))
        obs, *_ = env.step(a)
    np.testing.assert_allclose(np.stack(replayed), ds.states, atol=1e-5)
    env.close()
