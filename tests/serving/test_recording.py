"""Recording what the fleet sees: `rfm serve --record DIR` writes a LeRobot v3.0 dataset, one episode per session,
that rfm's loader reads; a killed server keeps every finished episode."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import httpx
import msgpack
import numpy as np
import pytest
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from rfm.data.lerobot import LeRobotDataset
from serving.server import free_port
from tests.serving.helpers import msgpack_body, observation

pytestmark = pytest.mark.integration  # real servers, one killed

RFM = [sys.executable, "-c", "import sys; from rfm.cli.main import main; sys.exit(main())"]
MSGPACK = {"content-type": "application/msgpack"}


def _start(checkpoint, record_dir, *extra):
    port = free_port()
    cmd = [*RFM, "serve", "--checkpoint", str(checkpoint), "--port", str(port), "--max-batch", "4", "--threads", "1",
           "--record", str(record_dir), "--log-level", "warning", *extra]
    proc = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        assert proc.poll() is None, proc.stdout.read().decode()
        try:
            if httpx.get(url + "/readyz").status_code == 200:
                return proc, port, url
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "server not ready in 90 s"
        time.sleep(0.2)


def _act(url, rng, **extra):
    r = httpx.post(url + "/v1/act", content=msgpack_body(observation(rng, "open the drawer"), **extra), headers=MSGPACK)
    assert r.status_code == 200, r.text
    return r


def test_served_episodes_are_recorded_and_load(tiny_checkpoint, tmp_path):
    rng = np.random.default_rng(0)
    proc, port, url = _start(tiny_checkpoint, tmp_path / "rec")
    try:
        for t in range(3):  # robot A: ends its episode explicitly, with a success label
            _act(url, rng, robot_id="robot-a", episode_end=(t == 2), success=(t == 2))
        for _ in range(2):  # robot B: an operator correction on each step
            _act(url, rng, robot_id="robot-b", correction=[0.5, -0.5])
        r = httpx.post(url + "/v1/episodes/end", json={"robot_id": "robot-b", "success": False})
        assert r.status_code == 200 and r.json()["session"] == "robot-b"
        for again in ({"robot_id": "robot-b", "success": True}, {"robot_id": "robot-x", "success": True},
                      {"robot_id": "robot-a", "success": False}):  # ended already (a request's episode_end too);
            r = httpx.post(url + "/v1/episodes/end", json=again)  # never recorded (a typo)
            assert r.status_code == 404 and r.json()["error"] == "no_open_episode", r.text
            assert "the outcome was not recorded" in r.json()["detail"]
        bad = httpx.post(url + "/v1/act", content=msgpack_body(observation(rng), correction=[1.0]), headers=MSGPACK)
        assert bad.status_code == 422 and "correction has 1 values" in bad.text
        policy = WebsocketClientPolicy(host=f"ws://127.0.0.1:{port}/openpi")  # openpi: one episode per connection
        obs = observation(rng)
        for _ in range(2):
            policy.infer({"observation/image": obs["images"]["front"], "observation/wrist_image": obs["images"]["wrist"],
                          "observation/state": obs["state"], "prompt": "close the drawer"})
        policy._ws.close()
        _act(url, rng, robot_id="robot-c")  # still open at shutdown: flushed by the graceful stop
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    ds = LeRobotDataset(tmp_path / "rec")
    assert ds.num_episodes == 4 and ds.num_frames == 3 + 2 + 2 + 1
    sessions = [ds.episode_meta(e)["session"] for e in range(4)]
    assert sessions[:2] == ["robot-a", "robot-b"] and sessions[2].startswith("openpi-") and sessions[3] == "robot-c"
    a0, a1 = ds.episode_range(0)
    assert ds.extras["next.success"][a0:a1].reshape(-1).tolist() == [False, False, True]
    b0, b1 = ds.episode_range(1)
    np.testing.assert_allclose(ds.actions[b0:b1], [[0.5, -0.5]] * 2)
    assert ds.extras["is_correction"][b0:b1].all()
    assert ds.tasks[:2] == ["open the drawer", "close the drawer"]
    assert ds.get_frame(0)["images"]["front"].shape == (64, 64, 3)
    for e in ds.episodes:  # when each request came, by the server's clock, from the episode's first
        when = ds.extras["tick_time"][e.start:e.stop].reshape(-1)
        assert when[0] == 0.0 and np.all(np.diff(when) >= 0), when


def test_lossless_recording_keeps_every_pixel(tiny_checkpoint, tmp_path):
    rng = np.random.default_rng(1)
    proc, _, url = _start(tiny_checkpoint, tmp_path / "rec", "--record-images", "image")
    sent = observation(rng, "open the drawer")
    try:
        r = httpx.post(url + "/v1/act", content=msgpack_body(sent, robot_id="r", episode_end=True), headers=MSGPACK)
        assert r.status_code == 200, r.text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    ds = LeRobotDataset(tmp_path / "rec")
    assert ds.features[ds.camera_key("front")]["dtype"] == "image"
    for cam in ("front", "wrist"):
        np.testing.assert_array_equal(ds.get_frame(0)["images"][cam], sent["images"][cam])


def test_killed_server_keeps_finished_episodes(tiny_checkpoint, tmp_path):
    rng = np.random.default_rng(1)
    proc, _, url = _start(tiny_checkpoint, tmp_path / "rec")
    try:
        for ep in range(2):
            for t in range(2):
                _act(url, rng, robot_id="r", episode_end=(t == 1))
        _act(url, rng, robot_id="r")  # an unfinished third episode
        deadline = time.monotonic() + 30
        while _committed_episodes(tmp_path / "rec") < 2:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait(30)
    ds = LeRobotDataset(tmp_path / "rec")
    assert ds.num_episodes == 2 and ds.num_frames == 4


def _committed_episodes(path) -> int:
    try:
        return LeRobotDataset(path).num_episodes
    except Exception:  # noqa: BLE001 - not written yet
        return 0


@pytest.mark.parametrize("field,value,message", [("episode_end", "yes", "'episode_end' must be true or false"),
                                                 ("success", 3, "'success' must be true, false or null")])
def test_bad_labels_are_422(server, field, value, message):
    r = httpx.post(server.url + "/v1/act", content=msgpack_body(observation(), **{field: value}), headers=MSGPACK)
    assert r.status_code == 422 and message in r.text


def test_ticks_errors_name_the_tick_and_field_and_a_server_without_record_says_so(server, tiny_checkpoint, tmp_path):
    """POST /v1/ticks: a bad tick is a 422 naming its index and field, and nothing of the batch is recorded; a
    server started without --record answers 409."""
    from rfm.client.wire import encode_ticks
    from serving.config import ServerConfig
    from serving.server import ServerThread
    from tests.serving.helpers import load_tiny

    obs = observation()
    good = {**obs, "action": [0.1, 0.2]}
    body = encode_ticks([good, {**good, "state": [1.0]}], "s1")
    r = httpx.post(server.url + "/v1/ticks", content=body, headers=MSGPACK)
    assert r.status_code == 409 and "without --record" in r.json()["detail"]  # the shared fixture does not record
    cfg = ServerConfig(max_batch=2, warmup_batch_sizes=(1,), record_dir=str(tmp_path / "rec"))
    with ServerThread(load_tiny(tiny_checkpoint), cfg) as rec:
        r = httpx.post(rec.url + "/v1/ticks", content=body, headers=MSGPACK)
        assert r.status_code == 422 and r.json()["detail"].startswith("ticks[1]: state has 1 values")
        r = httpx.post(rec.url + "/v1/ticks", content=encode_ticks([{**good, "action": [0.1]}], "s1"),
                       headers=MSGPACK)
        assert r.status_code == 422 and "ticks[0]: action has 1 values, expected 2" in r.json()["detail"]
        bad_time = msgpack.unpackb(encode_ticks([good], "s1"))
        bad_time["ticks"][0]["time"] = "now"
        r = httpx.post(rec.url + "/v1/ticks", content=msgpack.packb(bad_time), headers=MSGPACK)
        assert r.status_code == 422 and r.json()["detail"].startswith("ticks[0]: 'time' must be a number"), r.text
        r = httpx.post(rec.url + "/v1/ticks", content=encode_ticks([good, good], "s1", episode_end=True),
                       headers=MSGPACK)
        assert r.status_code == 200 and r.json()["ticks"] == 2
    ds = LeRobotDataset(tmp_path / "rec")
    assert ds.num_episodes == 1 and ds.num_frames == 2  # only the good batch
    np.testing.assert_allclose(ds.extras["action_executed"], [[0.1, 0.2], [0.1, 0.2]], atol=1e-6)


def test_a_robot_recording_against_a_server_without_record_is_told_once(server, caplog):
    """A TickRecorder against a server started without --record: one warning saying so (not one per batch), the
    ticks counted as unrecorded, not lost, the server asked again only every RECHECK_S, and the robot unaffected."""
    import logging

    from rfm.client import RFMClient, TickRecorder
    from rfm.client.ticks import RECHECK_S

    obs = observation()
    with caplog.at_level(logging.WARNING, logger="rfm.client.ticks"), RFMClient(server.url) as client, \
            TickRecorder(client, "arm-1", batch_ticks=2) as rec:
        for _ in range(20):
            rec.add(obs, np.array([0.1, 0.2], np.float32))
        rec.end_episode(success=True)
    warnings = [r for r in caplog.records if "not recorded" in r.getMessage()]
    assert len(warnings) == 1 and "--record" in warnings[0].getMessage()
    assert rec.unrecorded == 20 and rec.lost == 0 and rec.errors == 0 and RECHECK_S >= 10


def test_a_robot_recording_against_a_server_older_than_tick_recording_is_told_once(tiny_checkpoint, tmp_path,
                                                                                     caplog):
    """A fleet is upgraded robot by robot: a new TickRecorder against a server with no POST /v1/ticks (404) was
    taken for lost ticks, cut an episode per batch (~1, ~2, ...) and warned each time. It is told once, as for a
    server that does not record, and the ticks count as unrecorded."""
    import logging

    from rfm.client import RFMClient, TickRecorder
    from serving.config import ServerConfig
    from serving.server import ServerThread
    from tests.serving.helpers import load_tiny

    older = ServerThread(load_tiny(tiny_checkpoint), ServerConfig(max_batch=2, warmup_batch_sizes=(1,),
                                                                 record_dir=str(tmp_path / "rec")))
    older.app.router.routes[:] = [r for r in older.app.router.routes if getattr(r, "path", "") != "/v1/ticks"]
    obs = observation()
    with older, caplog.at_level(logging.WARNING, logger="rfm.client.ticks"), RFMClient(older.url) as client, \
            TickRecorder(client, "arm-1", batch_ticks=2) as rec:
        for _ in range(10):
            rec.add(obs, np.array([0.1, 0.2], np.float32))
        rec.end_episode(success=True)
    warnings = [r.getMessage() for r in caplog.records if r.name == "rfm.client.ticks"]
    assert len(warnings) == 1 and "404" in warnings[0] and "upgrade it" in warnings[0]
    assert rec.unrecorded == 10 and rec.lost == 0 and rec.errors == 0


def test_a_robot_with_large_native_frames_records_every_tick_under_the_body_limit(tmp_path):
    """A field robot whose cameras send 240x320 frames, its ticks posted through the SDK's TickRecorder to a server
    with a 1 MB body limit (8 native ticks are 3.7 MB): with frames fitted on the robot (the default) and without,
    every tick is recorded, and the recorded pixels are the server's own resize of what the robot saw."""
    from rfm import RFMPolicy
    from rfm.client import RFMClient, TickRecorder
    from rfm.config import RobotInterface
    from rfm.imaging import fit_frame
    from serving.config import ServerConfig
    from serving.server import ServerThread
    from tests.serving.helpers import INTERFACE, load_tiny

    native = (240, 320)
    itf = RobotInterface(**{**INTERFACE, "native_sizes": {c: native for c in INTERFACE["cameras"]}})
    RFMPolicy.build("tiny", interface=itf).save_pretrained(tmp_path / "ck")
    cfg = ServerConfig(max_batch=2, warmup_batch_sizes=(1,), record_dir=str(tmp_path / "rec"), record_images="image",
                       max_body_bytes=2**20)
    rng = np.random.default_rng(3)
    seen: list[dict] = []
    with ServerThread(load_tiny(tmp_path / "ck"), cfg) as server, RFMClient(server.url) as client:
        for fit in (True, False):
            with TickRecorder(client, f"arm-fit-{fit}", fit_frames=fit) as rec:
                frame = {c: np.zeros((*native, 3), np.uint8) for c in INTERFACE["cameras"]}
                for t in range(20):
                    for img in frame.values():  # the camera driver reuses its buffers
                        img[...] = rng.integers(0, 256, img.shape, dtype=np.uint8)
                    seen.append({c: fit_frame(img, INTERFACE["image_size"]) for c, img in frame.items()})
                    rec.add({"images": frame, "state": [0.0, 0.0, float(t)], "instruction": "pick"}, [0.1, -0.1])
                rec.end_episode(success=True)
                assert rec.errors == 0 and rec.lost == 0 and rec.sent == 20, rec.last_error
    ds = LeRobotDataset(tmp_path / "rec")
    assert ds.num_episodes == 2 and ds.num_frames == 40
    np.testing.assert_allclose(ds.states[:, 2], np.tile(np.arange(20), 2))
    for i in (0, 7, 19, 20, 33, 39):
        for cam in INTERFACE["cameras"]:
            np.testing.assert_array_equal(ds.get_frame(i)["images"][cam], seen[i][cam])


def test_a_tick_over_the_body_limit_is_reported_and_the_robot_goes_on(tiny_checkpoint, tmp_path):
    """One tick larger than the server's body limit cannot be split: it is counted as lost with a message that
    names the limit's flag, and the recorder keeps posting the ticks that fit."""
    from rfm.client import RFMClient, TickRecorder
    from serving.config import ServerConfig
    from serving.server import ServerThread
    from tests.serving.helpers import load_tiny

    cfg = ServerConfig(max_batch=2, warmup_batch_sizes=(1,), record_dir=str(tmp_path / "rec"), max_body_bytes=20_000)
    obs = observation()  # two 64x64 frames: 24.6 kB of pixels per tick
    small = {**obs, "images": {c: b"\xff\xd8not-a-real-jpeg" for c in obs["images"]}}
    with ServerThread(load_tiny(tiny_checkpoint), cfg) as server, RFMClient(server.url) as client, \
            TickRecorder(client, "s1", batch_ticks=1) as rec:
        rec.add(obs, [0.1, 0.2])
        rec.end_episode()
        assert rec.lost == 1 and rec.sent == 0
        assert "one tick is 24" in rec.last_error and "over the server's body limit (rfm serve --max-body-mb)" in \
            rec.last_error
        rec.add(small, [0.1, 0.2])  # small enough; rejected (422) for its undecodable image, not for its size
        rec.end_episode()
        assert rec.lost == 2 and rec.errors == 2 and rec.sent == 0
        assert "422" in rec.last_error and "ticks[0]" in rec.last_error


def test_the_recording_codec_follows_the_flag_else_the_dataset(tmp_path):
    """--record-vcodec picks the codec; without it a new recording is h264 (appending to an existing dataset keeps
    the dataset's codec: tests/data/test_incremental.py)."""
    from rfm import RFMPolicy
    from rfm.config import ConfigError, RobotInterface
    from serving.config import ServerConfig
    from serving.server import ServerThread
    from tests.serving.helpers import INTERFACE, load_tiny

    RFMPolicy.build("tiny", interface=RobotInterface(**INTERFACE)).save_pretrained(tmp_path / "ck")
    runner = load_tiny(tmp_path / "ck")

    def encoder(vcodec: str | None, root: str) -> str:
        cfg = ServerConfig(max_batch=2, warmup_batch_sizes=(1,), record_dir=str(tmp_path / root), record_vcodec=vcodec)
        with ServerThread(runner, cfg) as server:
            return server.state.service.recorder.writer.encoder

    assert encoder(None, "new") == "libx264"
    assert encoder("av1", "av1") == "libsvtav1"
    with pytest.raises(ConfigError, match="record_vcodec='vp9'"):
        ServerConfig(record_vcodec="vp9")


class _Flaky:
    """An httpx transport in front of the real one whose POSTs fail with a connection error while `down` > 0 (one
    less each): the robot's network dropping out."""

    def __init__(self) -> None:
        self.real, self.down = httpx.HTTPTransport(), 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and self.down > 0:
            self.down -= 1
            raise httpx.ConnectError("network unreachable", request=request)
        return self.real.handle_request(request)

    def close(self) -> None:
        self.real.close()


def test_tick_recording_rides_out_an_outage_and_never_records_a_hole(tiny_checkpoint, tmp_path):
    """A short outage is retried and loses nothing; a long one loses its ticks, and the server ends the recorded
    episode where the tick numbers jump (ended_by gap) instead of appending the ticks after it: every recorded
    episode is contiguous in time, and the part before the gap counts with the robot's outcome."""
    from rfm.client import RFMClient, TickRecorder
    from rfm.data.recording import robot_outcomes
    from serving.config import ServerConfig
    from serving.server import ServerThread
    from tests.serving.helpers import load_tiny

    cfg = ServerConfig(max_batch=2, warmup_batch_sizes=(1,), record_dir=str(tmp_path / "rec"), record_images="image")
    obs = observation()
    flaky = _Flaky()

    def tick(rec, t):
        rec.add({**obs, "state": [0.0, 0.0, float(t)]}, [0.1, 0.2])

    server = ServerThread(load_tiny(tiny_checkpoint), cfg).start()
    with RFMClient(server.url) as client:
        with TickRecorder(client, "arm", batch_ticks=4, retry_s=5.0) as rec:
            rec._http = httpx.Client(base_url=server.url, transport=flaky)
            flaky.down = 3  # three failed posts, then the network is back: retried, nothing lost
            for t in range(10):
                tick(rec, t)
            rec.end_episode(success=True)
            assert rec.lost == 0 and rec.errors == 0 and rec.sent == 10, rec.last_error
        with TickRecorder(client, "cell", batch_ticks=4, retry_s=0.3) as rec:
            rec._http = httpx.Client(base_url=server.url, transport=flaky)
            for t in range(5):  # ticks 0-3 posted; 4 waits for its successor (it may still be corrected)
                tick(rec, t)
            rec.flush()
            flaky.down = 1000  # down for longer than retry_s: ticks 4-7 are given up on
            for t in range(5, 9):
                tick(rec, t)
            rec.flush()
            assert rec.lost == 4 and rec.errors == 1 and "retried for 0.3 s" in rec.last_error
            flaky.down = 0
            for t in range(9, 16):
                tick(rec, t)
            rec.end_episode(success=True)
            assert rec.sent == 4 + 8
    server.stop()
    ds = LeRobotDataset(tmp_path / "rec")
    runs = sorted((ds.states[e.start:e.start + e.length, 2].tolist(), e.meta["ended_by"]) for e in ds.episodes)
    assert runs == sorted([(list(range(4)), "gap"), (list(range(8, 16)), "robot"), (list(range(10)), "robot")])
    assert set(robot_outcomes(ds).values()) == {"success"}


def test_a_dropped_tick_s_executed_action_and_correction_do_not_land_on_the_tick_before(tiny_checkpoint, tmp_path):
    """A tick dropped for a full backlog is not recorded; what the robot says it executed at it, or an operator's
    correction of it, changed the tick before it (still held, since it may be corrected)."""
    from rfm.client import RFMClient, TickRecorder
    from rfm.constants import ACTION_EXECUTED, CORRECTED
    from serving.config import ServerConfig
    from serving.server import ServerThread
    from tests.serving.helpers import load_tiny

    cfg = ServerConfig(max_batch=2, warmup_batch_sizes=(1,), record_dir=str(tmp_path / "rec"), record_images="image")
    with ServerThread(load_tiny(tiny_checkpoint), cfg) as server, RFMClient(server.url) as client, \
            TickRecorder(client, "arm", batch_ticks=64, max_backlog_mb=0.01) as rec:  # one 24 kB tick fills it
        rec.add(observation(), [0.1, 0.2])
        rec.add(observation(), [0.3, 0.4])  # dropped
        rec.executed([0.9, 0.9])
        rec.correct([-0.5, -0.5], executed=True)
        rec.end_episode(success=True)
        assert rec.lost == 1
    ds = LeRobotDataset(tmp_path / "rec")
    assert ds.num_frames == 1 and not ds.extras[CORRECTED].any()
    np.testing.assert_allclose(ds.extras[ACTION_EXECUTED], [[0.1, 0.2]], atol=1e-6)


def test_ticks_the_recorder_has_no_room_for_are_refused_whole_and_sent_again(tiny_checkpoint, tmp_path):
    """A recorder that has fallen behind answers 503 + Retry-After for the whole batch (nothing of it queued), and
    the TickRecorder sends it again: every tick recorded once."""
    from rfm.client import RFMClient, TickRecorder
    from rfm.client.wire import encode_ticks
    from serving.config import ServerConfig
    from serving.server import ServerThread
    from tests.serving.helpers import load_tiny

    cfg = ServerConfig(max_batch=2, warmup_batch_sizes=(1,), record_dir=str(tmp_path / "rec"), record_images="image")
    obs = observation()
    with ServerThread(load_tiny(tiny_checkpoint), cfg) as server:
        recorder = server.state.service.recorder
        refusals = {"left": 2}

        def room(n):
            refusals["left"] -= 1
            return refusals["left"] < 0

        recorder.room = room
        body = encode_ticks([{**obs, "action": [0.1, 0.2]}], "x")
        r = httpx.post(server.url + "/v1/ticks", content=body, headers=MSGPACK)
        assert r.status_code == 503 and r.json()["error"] == "recorder_busy" and r.headers["retry-after"] == "1"
        with RFMClient(server.url) as client, TickRecorder(client, "arm", batch_ticks=8, retry_s=10.0) as rec:
            for t in range(6):
                rec.add({**obs, "state": [0.0, 0.0, float(t)]}, [0.1, 0.2])
            rec.end_episode(success=True)
            assert rec.sent == 6 and rec.lost == 0 and rec.errors == 0, rec.last_error
    ds = LeRobotDataset(tmp_path / "rec")
    assert [ds.states[e.start:e.start + e.length, 2].tolist() for e in ds.episodes] == [[0, 1, 2, 3, 4, 5]]


def test_a_recording_says_how_each_episode_went_and_a_fine_tune_keeps_what_to_learn_from(tiny_checkpoint, tmp_path):
    """Each recorded episode carries its outcome and what ended it; `rfm data info` counts them, and
    `recorded_episodes=success,corrected` trains on the successful episodes and the ticks an operator corrected."""
    from rfm.client import RFMClient, TickRecorder
    from rfm.config import ConfigError
    from rfm.data.recording import episode_outcome
    from rfm.train.config import TrainConfig
    from rfm.train.data import build_training_data
    from serving.config import ServerConfig
    from serving.server import ServerThread
    from tests.cli_in_process import rfm
    from tests.serving.helpers import load_tiny

    cfg = ServerConfig(max_batch=2, warmup_batch_sizes=(1,), record_dir=str(tmp_path / "rec"), record_images="image")
    obs = observation()
    runner = load_tiny(tiny_checkpoint)
    server = ServerThread(runner, cfg).start()
    with RFMClient(server.url) as client:
        for session, ticks, success in (("good", 6, True), ("bad", 5, False), ("helped", 7, None), ("cut", 4, "open")):
            with TickRecorder(client, session, batch_ticks=3) as rec:
                for t in range(ticks):
                    rec.add({**obs, "state": [0.0, 0.0, float(t)]}, [0.1, 0.2])
                    if session == "helped" and t in (3, 4):
                        rec.correct(np.array([0.5, 0.5], np.float32))  # an operator's label for this tick
                if success != "open":
                    rec.end_episode(success=success)
    server.stop()  # "cut" was never ended: the server's stop closes it
    ds = LeRobotDataset(tmp_path / "rec")
    went = {e.meta["session"]: (episode_outcome(ds, e), e.meta["ended_by"], e.length) for e in ds.episodes}
    assert went == {"good": ("success", "robot", 6), "bad": ("failure", "robot", 5),
                    "helped": ("unknown", "robot", 7), "cut": ("unknown", "shutdown", 4)}

    info = rfm("data", "info", str(tmp_path / "rec"))
    assert info.returncode == 0, info.stderr
    assert ("episodes by outcome: 1 success, 1 failure, 2 unknown; 2 corrected frames in 1 episodes; 4 sessions; "
            f"ended by robot 3, shutdown 1; by model: {runner.model_id}@{runner.model_version} (1 success, 1 failure, "
            f"2 unknown)") in info.stdout

    data = build_training_data([str(tmp_path / "rec")], chunk_size=4, image_size=None, cameras=None, val_episodes=0,
                               recorded=("success", "corrected"))
    assert len(data.train_set) == 6 + 2 and data.info["recorded"][0]["episodes"] == 2
    kept = sorted(float(ds.states[g, 2]) for part in data.train_set.datasets for g in part.frames)
    assert kept == [0.0, 1.0, 2.0, 3.0, 3.0, 4.0, 4.0, 5.0]  # "good" whole, ticks 3 and 4 of "helped"
    everything = build_training_data([str(tmp_path / "rec")], chunk_size=4, image_size=None, cameras=None,
                                     val_episodes=0)
    assert len(everything.train_set) == ds.num_frames == 22
    with pytest.raises(ConfigError, match="train.recorded_episodes='succes': expected all, or a comma list of"):
        TrainConfig(dataset=str(tmp_path / "rec"), out=str(tmp_path / "out"), recorded_episodes="succes")


def test_a_tick_the_server_would_refuse_is_lost_alone(tiny_checkpoint, tmp_path):
    """The server refuses a batch of ticks whole when one is malformed (a sensor's NaN, a state of another length):
    the recorder leaves such a tick out instead, counted lost, and the server ends the recorded episode where the
    tick numbers jump, so the good ticks of its batch are recorded, no episode has a hole, and both parts count
    with the robot's outcome."""
    from rfm.client import RFMClient, TickRecorder
    from rfm.data.recording import robot_outcomes
    from serving.config import ServerConfig
    from serving.server import ServerThread
    from tests.serving.helpers import load_tiny

    cfg = ServerConfig(max_batch=2, warmup_batch_sizes=(1,), record_dir=str(tmp_path / "rec"), record_images="image")
    obs = observation()
    server = ServerThread(load_tiny(tiny_checkpoint), cfg).start()
    with RFMClient(server.url) as client, TickRecorder(client, "arm", batch_ticks=16) as rec:
        for t in range(10):
            state = [0.0, 0.0, float(t)]
            if t == 4:
                state = [float("nan"), 0.0, 4.0]  # a sensor dropout
            if t == 5:
                state = [0.0, 5.0]  # a driver bug
            rec.add({**obs, "state": state}, [0.1, 0.2])
        rec.end_episode(success=True)
        assert rec.lost == 2 and rec.sent == 8 and rec.errors == 0 and "state has 2 values" in rec.last_error
    server.stop()
    ds = LeRobotDataset(tmp_path / "rec")
    runs = [(e.meta["session"], ds.states[e.start:e.stop, 2].tolist(), e.meta["ended_by"]) for e in ds.episodes]
    assert runs == [("arm", [0.0, 1.0, 2.0, 3.0], "gap"), ("arm", [6.0, 7.0, 8.0, 9.0], "robot")]
    assert robot_outcomes(ds) == {0: "success", 1: "success"}


class _AnswerLost(_Flaky):
    """The server gets the POST and records it, but its answer never reaches the robot (a read timeout, a
    connection cut on the way back) while `lose` > 0."""

    def __init__(self) -> None:
        super().__init__()
        self.lose = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        resp = self.real.handle_request(request)
        if request.method == "POST" and self.lose > 0:
            self.lose -= 1
            resp.read()
            raise httpx.ReadTimeout("timed out", request=request)
        return resp


def test_a_batch_sent_again_after_its_answer_was_lost_is_recorded_once(tiny_checkpoint, tmp_path):
    """The robot cannot tell a batch the server never got from one whose answer was lost, so it sends it again:
    those ticks were recorded twice (a stalled server: 247 frames for 239 ticks). Ticks carry their recorder's
    stream, episode and index, and the server records each once, the episode end included."""
    from rfm.client import RFMClient, TickRecorder
    from serving.config import ServerConfig
    from serving.server import ServerThread
    from tests.serving.helpers import load_tiny

    cfg = ServerConfig(max_batch=2, warmup_batch_sizes=(1,), record_dir=str(tmp_path / "rec"), record_images="image")
    obs = observation()
    lossy = _AnswerLost()
    with ServerThread(load_tiny(tiny_checkpoint), cfg) as server, RFMClient(server.url) as client:
        with TickRecorder(client, "arm", batch_ticks=4, retry_s=5.0) as rec:
            rec._http = httpx.Client(base_url=server.url, transport=lossy)
            for episode in range(2):
                lossy.lose = 2  # the first batch's answer, and its retry's, are lost
                for t in range(10):
                    rec.add({**obs, "state": [float(episode), 0.0, float(t)]}, [0.1, 0.2])
                lossy.lose = 1 if episode == 1 else 0  # the second episode's end: its answer lost too
                rec.end_episode(success=True)
            assert rec.lost == 0 and rec.errors == 0, rec.last_error
        with TickRecorder(client, "arm", batch_ticks=4) as again:  # the robot restarted: a new stream, recorded
            again.add({**obs, "state": [2.0, 0.0, 0.0]}, [0.1, 0.2])
            again.end_episode(success=False)
    ds = LeRobotDataset(tmp_path / "rec")
    runs = [ds.states[e.start:e.start + e.length][:, [0, 2]].tolist() for e in ds.episodes]
    assert runs == [[[0, t] for t in range(10)], [[1, t] for t in range(10)], [[2, 0]]]
    assert [ds.episode_meta(e.index)["outcome"] for e in ds.episodes] == ["success", "success", "failure"]
    assert {ds.episode_meta(e.index)["first_tick"] for e in ds.episodes} == {0}


def test_a_tick_without_an_action_ends_the_recorded_episode_and_one_started_late_says_so(tiny_checkpoint, tmp_path):
    """A step() that raised (no chunk: the robot held) was left out of the recording, which then joined the ticks
    on either side as if they were consecutive; an executed() reported for it overwrote the tick before. Now the
    episode ends there (ended_by gap) and the next one records its first tick's index (first_tick)."""
    from rfm.client import ChunkExecutor, RFMClient, TickRecorder
    from serving.config import ServerConfig
    from serving.server import ServerThread
    from tests.serving.helpers import load_tiny

    cfg = ServerConfig(max_batch=2, warmup_batch_sizes=(1,), record_dir=str(tmp_path / "rec"), record_images="image")
    obs = observation()
    with ServerThread(load_tiny(tiny_checkpoint), cfg) as server, RFMClient(server.url) as client:
        rec = TickRecorder(client, "arm", batch_ticks=4)
        ex = ChunkExecutor(client, action_steps=2, recorder=rec)
        real_act = ex._act
        for t in range(8):
            ex._act = real_act if t != 4 else (lambda body: (_ for _ in ()).throw(ConnectionError("down")))
            try:
                ex.step({**obs, "state": [0.0, 0.0, float(t)]})
            except ConnectionError:
                ex.executed([9.0, 9.0])  # what the robot did instead (held): not a tick from a chunk
                continue
        ex.end_episode(success=True)
        ex.close()
        rec.close()
        first = TickRecorder(client, "first", batch_ticks=4)
        first.skip()  # the episode's first step() raised: nothing to label, and no error (it raised RuntimeError)
        first.executed(np.array([1.0, 1.0]))
        first.close()
        later = TickRecorder(client, "late", batch_ticks=4)  # a server killed mid-episode: the rest comes to a new one
        body = encode_ticks_from(later, obs, first=30, n=3)
        assert httpx.post(server.url + "/v1/ticks", content=body, headers=MSGPACK).status_code == 200
        later.close()
    ds = LeRobotDataset(tmp_path / "rec")
    eps = {ds.episode_meta(e.index)["session"] + str(ds.episode_meta(e.index)["first_tick"]): e for e in ds.episodes}
    assert ds.states[eps["arm0"].start:eps["arm0"].stop, 2].tolist() == [0, 1, 2, 3]
    assert ds.states[eps["arm5"].start:eps["arm5"].stop, 2].tolist() == [5, 6, 7]
    assert ds.episode_meta(eps["arm0"].index)["ended_by"] == "gap"
    assert not np.any(ds.actions == 9.0)  # the hold reported for the skipped tick is not recorded on another
    assert ds.episode_meta(eps["late30"].index)["first_tick"] == 30


def encode_ticks_from(rec, obs, first: int, n: int) -> bytes:
    """A batch of n ticks numbered from `first`, as a robot sends after its server was killed mid-episode."""
    from rfm.client.wire import encode_ticks

    ticks = [{**obs, "action": [0.1, 0.2], "index": first + i} for i in range(n)]
    return encode_ticks(ticks, "late", "msgpack", None, True, True, rec.stream, 0)


def test_robots_sharing_a_session_id_are_recorded_apart(tiny_checkpoint, tmp_path):
    """Two robots sent with one session id (a copied "cell-1") were recorded into one episode, ticks interleaved."""
    from rfm.client import RFMClient, TickRecorder
    from serving.config import ServerConfig
    from serving.server import ServerThread
    from tests.serving.helpers import load_tiny

    cfg = ServerConfig(max_batch=2, warmup_batch_sizes=(1,), record_dir=str(tmp_path / "rec"), record_images="image")
    obs = observation()
    with ServerThread(load_tiny(tiny_checkpoint), cfg) as server, RFMClient(server.url) as client:
        recs = [TickRecorder(client, "cell-1", robot_id=f"arm-{i}", batch_ticks=2) for i in range(2)]
        for t in range(6):
            for i, rec in enumerate(recs):
                rec.add({**obs, "state": [float(i), 0.0, float(t)]}, [0.1, 0.2])
        for rec in recs:
            rec.end_episode(success=True)
            rec.close()
    ds = LeRobotDataset(tmp_path / "rec")
    by_session = {ds.episode_meta(e.index)["session"]: ds.states[e.start:e.stop, 0].tolist() for e in ds.episodes}
    assert by_session == {"cell-1@arm-0": [0.0] * 6, "cell-1@arm-1": [1.0] * 6}


def test_robots_that_send_no_ids_on_their_own_websockets_are_recorded_apart(tiny_checkpoint, tmp_path, caplog):
    """RFMClient(transport="ws") sends no robot or session id unless given one: two such robots were recorded into
    one episode ("default"), their frames interleaved. Each WebSocket is now its own episode, ended when it closes.
    Over HTTP nothing tells such robots apart: the server says so, once."""
    from rfm.client import RFMClient
    from serving.config import ServerConfig
    from serving.server import ServerThread
    from tests.serving.helpers import load_tiny

    cfg = ServerConfig(max_batch=2, warmup_batch_sizes=(1,), record_dir=str(tmp_path / "rec"), record_images="image")
    obs = observation()
    with ServerThread(load_tiny(tiny_checkpoint), cfg) as server:
        robots = [RFMClient(server.url, transport="ws") for _ in range(2)]
        for t in range(4):
            for i, robot in enumerate(robots):
                robot.act({**obs, "state": [float(i), 0.0, float(t)]})
        for robot in robots:
            robot.close()
        deadline = time.monotonic() + 10  # the episodes end as the sockets close, before the server stops
        while time.monotonic() < deadline and not (tmp_path / "rec" / "meta" / "episodes").is_dir():
            time.sleep(0.05)
        with caplog.at_level(logging.WARNING, logger="rfm.serving"), RFMClient(server.url) as http:
            for _ in range(2):
                http.act(obs)
    assert caplog.text.count("name no robot_id or session_id into one episode stream (default)") == 1
    ds = LeRobotDataset(tmp_path / "rec")
    ended = {ds.episode_meta(e.index)["session"]: ds.episode_meta(e.index)["ended_by"] for e in ds.episodes}
    assert ended.pop("default") == "shutdown" and len(ended) == 2 and set(ended.values()) == {"disconnect"}
    episodes = {ds.episode_meta(e.index)["session"]: ds.states[e.start:e.stop].tolist() for e in ds.episodes}
    assert all(k.startswith("ws-") for k in ended) and episodes.pop("default") == [list(map(float, obs["state"]))] * 2
    assert sorted(episodes.values()) == [[[float(i), 0.0, float(t)] for t in range(4)] for i in range(2)]


def test_a_robot_ticking_at_another_rate_than_the_models_is_told(tiny_checkpoint, tmp_path, caplog):
    """A 40 Hz robot recorded for an 80 Hz model came out at 80 fps (38 s of robot time as 15 s) without a word:
    a dataset has one rate, the model's. The recorder measures the robot's and warns once."""
    from rfm.client import RFMClient, TickRecorder
    from serving.config import ServerConfig
    from serving.server import ServerThread
    from tests.serving.helpers import load_tiny

    runner = load_tiny(tiny_checkpoint)
    cfg = ServerConfig(max_batch=2, warmup_batch_sizes=(1,), record_dir=str(tmp_path / "rec"), record_images="image")
    obs = observation()
    with ServerThread(runner, cfg) as server, RFMClient(server.url) as client, \
            caplog.at_level("WARNING", logger="rfm.client.ticks"), TickRecorder(client, "arm", batch_ticks=8) as rec:
        for _ in range(80):  # as fast as it can: far above the model's rate
            rec.add(obs, [0.1, 0.2])
            time.sleep(0.002)
        rec.end_episode(success=True)
        assert rec.tick_hz > 2 * runner.interface.control_hz
    said = [r.message for r in caplog.records if "the model's control rate" in r.message]
    assert len(said) == 1 and f"{runner.interface.control_hz:g} Hz" in said[0]


def test_a_stale_episode_end_does_not_end_the_next_episode(tiny_checkpoint, tmp_path):
    """An episode end that arrives again late (its answer was lost, the network held it) must not close the
    episode the robot has started since."""
    from rfm.client.wire import encode_ticks
    from serving.config import ServerConfig
    from serving.server import ServerThread
    from tests.serving.helpers import load_tiny

    cfg = ServerConfig(max_batch=2, warmup_batch_sizes=(1,), record_dir=str(tmp_path / "rec"), record_images="image")
    obs = observation()

    def post(episode, indices, end):
        ticks = [{**obs, "state": [float(episode), 0.0, float(i)], "action": [0.1, 0.2], "index": i} for i in indices]
        body = encode_ticks(ticks, "arm", "msgpack", None, end, True if end else None, "s1", episode)
        assert httpx.post(url + "/v1/ticks", content=body, headers=MSGPACK).status_code == 200

    with ServerThread(load_tiny(tiny_checkpoint), cfg) as server:
        url = server.url
        post(0, [0, 1], end=False)
        post(0, [], end=True)
        post(1, [0, 1], end=False)
        post(0, [], end=True)  # the first end again, late
        post(1, [2, 3], end=True)
    ds = LeRobotDataset(tmp_path / "rec")
    assert [ds.states[e.start:e.stop, 2].tolist() for e in ds.episodes] == [[0, 1], [0, 1, 2, 3]]


def test_a_batch_sent_again_that_breaks_the_contract_is_refused_not_taken_for_the_recorded_one(tiny_checkpoint,
                                                                                                tmp_path):
    """The tick ledger drops a batch whose ticks were recorded before it is checked (fitting its frames again would
    be wasted): schemathesis found a batch with a 3-value label (the model has 2 actions) answered 200 because its
    stream, episode and indices matched one recorded. Values that cost nothing to check are checked first."""
    from rfm.client.wire import encode_ticks
    from serving.config import ServerConfig
    from serving.server import ServerThread
    from tests.serving.helpers import load_tiny

    cfg = ServerConfig(max_batch=2, warmup_batch_sizes=(1,), record_dir=str(tmp_path / "rec"), record_images="image")
    obs = observation()
    with ServerThread(load_tiny(tiny_checkpoint), cfg) as server:
        def post(**extra):
            ticks = [{**obs, "action": [0.1, 0.2], "index": i, **extra} for i in range(2)]
            return httpx.post(server.url + "/v1/ticks", content=encode_ticks(ticks, "arm", "msgpack", None, False,
                                                                              None, "stream-1", 0),
                              headers={"content-type": "application/msgpack"})

        assert post().json()["ticks"] == 2
        assert post().json()["ticks"] == 0  # the same batch again: recorded once
        bad = post(label=[1.0, 2.0, 3.0])
        assert bad.status_code == 422 and "ticks[0]: label has 3 values, expected 2" in bad.text
        bad = post(images={**obs["images"], "side": obs["images"]["front"]})
        assert bad.status_code == 422 and "ticks[0]: unknown camera 'side'" in bad.text


def test_an_episode_whose_end_was_lost_is_not_given_the_next_ones_outcome(tiny_checkpoint, tmp_path):
    """The ticks jump back to 0 when the robot starts its next episode, or restarts: the server took that for a gap
    in the episode, and the next episode's outcome became the unfinished one's. It now ends it apart: ended_by
    next_episode (its end was lost) or restart (a new stream), with its own outcome."""
    from rfm.client.wire import encode_ticks
    from rfm.data.recording import robot_outcomes
    from serving.config import ServerConfig
    from serving.server import ServerThread
    from tests.serving.helpers import load_tiny

    cfg = ServerConfig(max_batch=2, warmup_batch_sizes=(1,), record_dir=str(tmp_path / "rec"), record_images="image")
    obs = observation()
    with ServerThread(load_tiny(tiny_checkpoint), cfg) as server:
        def post(stream, episode, n, end=False, success=None):
            ticks = [{**obs, "action": [0.1, 0.2], "index": i} for i in range(n)]
            body = encode_ticks(ticks, "arm", "msgpack", None, end, success, stream, episode)
            r = httpx.post(server.url + "/v1/ticks", content=body, headers={"content-type": "application/msgpack"})
            assert r.status_code == 200, r.text

        post("s1", 0, 3)  # its end (a failure) never arrived
        post("s1", 1, 2, end=True, success=True)
        post("s1", 2, 4)  # the robot restarts mid-episode: a new recorder, a new stream
        post("s2", 0, 2, end=True, success=True)
    ds = LeRobotDataset(tmp_path / "rec")
    assert [(e.length, e.meta["ended_by"]) for e in ds.episodes] == [(3, "next_episode"), (2, "robot"),
                                                                     (4, "restart"), (2, "robot")]
    assert robot_outcomes(ds) == {0: "unknown", 1: "success", 2: "unknown", 3: "success"}


def test_a_robot_with_large_frames_rides_out_an_outage_with_its_backlog_fitted(tmp_path):
    """A TickRecorder held its backlog as native frames: 512 MB was 3.7 s of a 3-camera 480x640 robot at 50 Hz,
    so a server restart lost ticks. Once the server has said its input size, queued ticks are fitted to it while
    they wait: here a backlog of 6 MB (13 native ticks of 240x320) holds 40 ticks through the outage."""
    import time

    from rfm import RFMPolicy
    from rfm.client import RFMClient, TickRecorder
    from rfm.config import RobotInterface
    from serving.config import ServerConfig
    from serving.server import ServerThread
    from tests.serving.helpers import INTERFACE, load_tiny

    native = (240, 320)
    itf = RobotInterface(**{**INTERFACE, "native_sizes": {c: native for c in INTERFACE["cameras"]}})
    RFMPolicy.build("tiny", interface=itf).save_pretrained(tmp_path / "ck")
    cfg = ServerConfig(max_batch=2, warmup_batch_sizes=(1,), record_dir=str(tmp_path / "rec"), record_images="image")
    frame = {c: np.full((*native, 3), 90, np.uint8) for c in INTERFACE["cameras"]}
    flaky = _Flaky()
    with ServerThread(load_tiny(tmp_path / "ck"), cfg) as server, RFMClient(server.url) as client, \
            TickRecorder(client, "arm", batch_ticks=4, max_backlog_mb=6.0, retry_s=30.0) as rec:
        rec._http = httpx.Client(base_url=server.url, transport=flaky)
        for t in range(5):  # the server answers: its input size is known
            rec.add({"images": frame, "state": [0.0, 0.0, float(t)], "instruction": "pick"}, [0.1, -0.1])
        rec.flush()
        flaky.down = 10**6  # the server restarts
        for t in range(5, 45):
            rec.add({"images": frame, "state": [0.0, 0.0, float(t)], "instruction": "pick"}, [0.1, -0.1])
            time.sleep(0.01)  # a robot ticks; its backlog is fitted meanwhile
        assert rec.lost == 0, f"{rec.lost} ticks dropped with the backlog at native size (27 before)"
        flaky.down = 0  # back
        rec.end_episode(success=True)
        assert rec.lost == 0 and rec.errors == 0 and rec.sent == 45, rec.last_error
    ds = LeRobotDataset(tmp_path / "rec")
    assert ds.num_frames == 45 and ds.states[:, 2].tolist() == list(range(45))


def test_a_recording_keeps_when_each_tick_came_so_a_stalled_loop_shows(tiny_checkpoint, tmp_path, capsys):
    """A recording's timestamps are index / fps (LeRobot requires it), so a control loop that stalled was stored as
    a perfect rate. The robot's own tick times go into tick_time, and rfm data info counts the late ticks."""
    from rfm.cli.main import main
    from rfm.client import RFMClient, TickRecorder
    from rfm.data.recording import summary
    from serving.config import ServerConfig
    from serving.server import ServerThread
    from tests.serving.helpers import load_tiny

    runner = load_tiny(tiny_checkpoint)
    period = 1.0 / runner.interface.control_hz
    times = 5000.0 + period * np.arange(30)  # a robot's clock: any origin
    times[12:] += 0.2  # the loop stalled for 200 ms before tick 12
    times[20:] += 2.5 * period  # and missed two ticks before tick 20
    times[28:] -= 0.6 * period  # and caught up in a burst at tick 28
    cfg = ServerConfig(max_batch=2, warmup_batch_sizes=(1,), record_dir=str(tmp_path / "rec"), record_images="image")
    obs = observation()
    with ServerThread(runner, cfg) as server, RFMClient(server.url) as client:
        with TickRecorder(client, "arm", batch_ticks=8, real_time=False) as rec:
            for t in times:
                rec.add(obs, [0.1, 0.2], t=float(t))
            rec.end_episode(success=True)
            for _ in range(5):  # a simulated robot's: the wall clock says nothing of it
                rec.add(obs, [0.1, 0.2])
            rec.end_episode(success=True)
            assert rec.sent == 35 and rec.lost == 0
        with TickRecorder(client, "arm", batch_ticks=8) as rec:
            for _ in range(5):  # a real robot's own clock, when add() is not told
                rec.add(obs, [0.1, 0.2])
                time.sleep(0.002)
            rec.end_episode(success=True)
    ds = LeRobotDataset(tmp_path / "rec")
    when = ds.extras["tick_time"].reshape(-1)
    np.testing.assert_allclose(when[:30], times - times[0], atol=1e-4)
    assert ds.timestamps[29] == pytest.approx(29 * period, abs=1e-4)  # LeRobot's column keeps the nominal rate
    assert np.all(when[30:35] == -1.0)
    assert when[35] == 0.0 and np.all(np.diff(when[35:40]) > 0.001)
    timing = summary(ds)["timing"]
    assert timing["late_ticks"] == 2 and timing["episodes_with_late_ticks"] == [0]
    assert timing["timed_episodes"] == 2 and timing["untimed_episodes"] == 1
    assert timing["early_ticks"] == 1 + 4  # the burst; and the real-time robot's 5 ticks, far above the model's rate
    assert timing["longest_interval_ms"] == pytest.approx(1000 * np.diff(times).max(), abs=0.1)
    assert main(["data", "info", str(tmp_path / "rec")]) == 0
    assert "timing: 2 late ticks (more than 1.5 control periods after the one before) in episodes 0" in \
        capsys.readouterr().out
    from rfm.train.data import build_training_data

    notes = build_training_data([str(tmp_path / "rec")], 4, None, None, 0).notes  # rfm train says it too
    assert any("2 recorded ticks came late" in n and "in episode(s) 0:" in n and
               f"--exclude-episodes {tmp_path / 'rec'}:0 leaves them out" in n for n in notes), notes
    assert not build_training_data([str(tmp_path / "rec")], 4, None, None, 0, exclude=[[0]]).notes  # left out
    from rfm.data.recording import late_ticks

    assert late_ticks(ds, 0).tolist() == [12, 20] and late_ticks(ds, 1) is None and late_ticks(ds, 2).size == 0
    assert main(["data", "view", str(tmp_path / "rec"), "--episode", "0", "--out", str(tmp_path / "ep0.png")]) == 0


def test_a_robot_recording_against_a_server_that_takes_no_tick_time_sends_none(tiny_checkpoint, tmp_path,
                                                                                  monkeypatch):
    """A server of a fleet not yet upgraded refuses a tick field it does not know (422, the whole batch): the SDK
    sends a tick's time only to servers that list it in GET /v1/models."""
    import serving.codec
    import serving.service
    from rfm.client import RFMClient, TickRecorder
    from serving.config import ServerConfig
    from serving.server import ServerThread
    from tests.serving.helpers import load_tiny

    older = frozenset(serving.codec.TICK_FIELDS - {"time"})
    monkeypatch.setattr(serving.codec, "TICK_FIELDS", older)
    monkeypatch.setattr(serving.service, "TICK_FIELDS", older)
    cfg = ServerConfig(max_batch=2, warmup_batch_sizes=(1,), record_dir=str(tmp_path / "rec"), record_images="image")
    obs = observation()
    with ServerThread(load_tiny(tiny_checkpoint), cfg) as server, RFMClient(server.url) as client, \
            TickRecorder(client, "arm", batch_ticks=4, real_time=False) as rec:
        for _ in range(10):
            rec.add(obs, [0.1, 0.2])
        rec.end_episode(success=True)
        assert rec.sent == 10 and rec.lost == 0 and rec.errors == 0, rec.last_error
    ds = LeRobotDataset(tmp_path / "rec")
    assert ds.num_frames == 10 and np.all(ds.extras["tick_time"] == -1.0)  # untimed, not made up


def test_a_robot_with_nothing_but_a_client_records_what_it_executed(tiny_checkpoint, tmp_path, caplog):
    """`ChunkExecutor(client)`, the README's robot line, asks for a chunk every few ticks: a recording server stored
    its requests, 40 ticks as 5 frames, each labelled with its chunk's first action. The executor records its ticks
    itself where the server records, and says nothing where it does not."""
    from rfm.client import ChunkExecutor, RFMClient
    from rfm.data.recording import summary
    from serving.config import ServerConfig
    from serving.server import ServerThread
    from tests.serving.helpers import load_tiny

    runner = load_tiny(tiny_checkpoint)
    obs = observation()
    cfg = ServerConfig(max_batch=2, warmup_batch_sizes=(1,), record_dir=str(tmp_path / "rec"), record_images="image")
    executed = []
    with ServerThread(runner, cfg) as server, RFMClient(server.url, robot_id="arm-7") as client, \
            ChunkExecutor(client) as ex:
        for t in range(40):
            executed.append(ex.step({**obs, "state": np.full(3, t, np.float32)}))
        assert ex.requests < 20  # chunks, not a request a tick
        ex.end_episode(success=True)
    ds = LeRobotDataset(tmp_path / "rec")
    assert ds.num_episodes == 1 and ds.num_frames == 40 and ds.episode_meta(0)["session"] == "arm-7"
    np.testing.assert_array_equal(ds.states[:, 0], np.arange(40))
    np.testing.assert_allclose(ds.extras["action_executed"], np.stack(executed), atol=1e-6)
    assert summary(ds)["outcomes"]["success"] == 1
    plain = ServerConfig(max_batch=2, warmup_batch_sizes=(1,))
    with ServerThread(runner, plain) as server, RFMClient(server.url) as client, \
            caplog.at_level("WARNING", logger="rfm.client.ticks"), ChunkExecutor(client) as ex:
        for _ in range(30):
            ex.step(obs)
    assert ex.recorder.unrecorded == 30 and ex.recorder.lost == 0 and ex.recorder.sent == 0  # closed with ex
    assert "server.recording is false" in ex.recorder.last_error  # told by its description: no body posted
    assert not [r for r in caplog.records if "not recorded" in r.message]


def test_two_robots_sending_ticks_under_one_session_id_are_recorded_apart(tiny_checkpoint, tmp_path, caplog):
    """Two robots given one session_id (a copied example's) and no robot_id posted their ticks under one session:
    each new stream ended the other's episode as a restart (2 x 150 ticks came out as 62 episodes), and batches
    racing in the server mixed the robots in one episode. Once a displaced stream posts again, it is recorded apart
    as SESSION~STREAM, and the server says so."""
    from rfm.client import RFMClient, TickRecorder
    from serving.config import ServerConfig
    from serving.server import ServerThread
    from tests.serving.helpers import load_tiny

    cfg = ServerConfig(max_batch=2, warmup_batch_sizes=(1,), record_dir=str(tmp_path / "rec"), record_images="image")
    obs = observation()
    with ServerThread(load_tiny(tiny_checkpoint), cfg) as server, RFMClient(server.url) as client, \
            caplog.at_level("WARNING", logger="rfm.serving"), \
            TickRecorder(client, "cell-1", batch_ticks=2, real_time=False) as a, \
            TickRecorder(client, "cell-1", batch_ticks=2, real_time=False) as b:
        for t in range(60):
            for robot, rec in enumerate((a, b)):
                rec.add({**obs, "state": np.array([robot, t, 0], np.float32)}, [0.1, 0.2])
        a.end_episode(success=True, wait=False)
        b.end_episode(success=False)
        a.flush()
        assert a.sent == b.sent == 60
    ds = LeRobotDataset(tmp_path / "rec")
    sessions = {ds.episode_meta(e.index)["session"] for e in ds.episodes}
    assert sessions in ({"cell-1", f"cell-1~{a.stream[:8]}"}, {"cell-1", f"cell-1~{b.stream[:8]}"}), sessions
    ticks: dict[int, list[int]] = {0: [], 1: []}
    for e in ds.episodes:  # no episode mixes the robots or skips a tick; each robot's ticks are recorded once
        states = ds.states[e.start:e.stop]
        robot = int(states[0, 0])
        assert set(states[:, 0].tolist()) == {robot} and np.all(np.diff(states[:, 1]) == 1), states[:, :2]
        ticks[robot] += states[:, 1].astype(int).tolist()
    assert sorted(ticks[0]) == sorted(ticks[1]) == list(range(60))
    assert len(ds.episodes) <= 4  # one cut at most, where the second robot's ticks began
    said = [r.message for r in caplog.records if "two robots send ticks as session 'cell-1'" in r.message]
    assert len(said) == 1, said
