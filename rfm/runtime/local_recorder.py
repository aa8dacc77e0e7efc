"""LocalRecorder: a robot that runs its model itself (an export on its own CPU or NPU, no server) records what it
executed into a LeRobot v3.0 dataset on its own disk, the dataset `rfm serve --record` writes for a served fleet.

It takes the place of a TickRecorder in a ChunkExecutor: one frame per control tick, with the action executed, the
chunk it came from, an operator's correction, the tick's time and the outcome the robot reports. Frames are fitted
to the model's input and handed to the recorder's writing thread by a thread of its own, so step() only copies.
"""

from __future__ import annotations

import atexit
import logging
import math
import queue
import threading
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rfm.client.frames import snapshot
from rfm.runtime.observation import check_observation

log = logging.getLogger("rfm.runtime")

_END = object()  # queued by close(): the fitting thread stops after what came before it
CLOSED = "closed"  # ended_by of an episode the robot's program left open when it closed its recorder
WRITER_WAIT_S = 30.0  # how long a tick waits for room in the writer's queue before it is dropped


class LocalRecorder:
    """Record one robot's ticks, episode by episode, into `root` (created; an existing recording is appended to).

    `runner`: what the robot runs (rfm.runtime.load_runner of an export or checkpoint): its interface says the
    frames' size and the dataset's features, its model id and version go with each episode, and an empty
    instruction is stored as the one it ran. `real_time`: each tick's time is the robot's clock when add() came
    (or add()'s `t`); a simulated robot, which ticks as fast as its simulator, passes False. `max_backlog_mb`: ticks
    waiting to be fitted beyond this are dropped (counted in `lost`; the recorded episode ends there rather than
    bridge the hole), as is a tick whose observation the runner would refuse (a frame of another size, a state of
    another length: `last_error` says which, and it is logged). An episode is never ended for being idle: a robot
    paused for an hour goes on with the same episode. `use_videos`: MP4 per camera (PyAV), else PNG frames. Needs pyarrow and PyAV
    (`pip install "rfm[edge,record]"`), no torch."""

    def __init__(self, root: str | Path, runner: Any, session_id: str = "robot", real_time: bool = True,
                 use_videos: bool = True, vcodec: str | None = None, max_buffer_mb: float = 512.0,
                 max_backlog_mb: float = 256.0) -> None:
        from rfm.runtime.recorder import Recorder, check_recording_dir

        self.runner, self.session_id, self.real_time = runner, session_id, real_time
        self.interface = runner.interface
        # refused with a message naming the directory (another robot's cameras, not a dataset), before the lock
        # file would go into it
        check_recording_dir(root, self.interface, option="LocalRecorder")
        # no idle timeout: the server's ends the episode of a robot gone quiet; this robot only paused
        self.recorder = Recorder(root, self.interface, idle_timeout_s=math.inf, use_videos=use_videos,
                                 vcodec=vcodec, model=runner.recorded_name,
                                 max_buffer_mb=max_buffer_mb)
        self.max_backlog_bytes = int(max_backlog_mb * 2**20)
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._latest: dict | None = None  # the newest tick waits here: executed() and correct() may still change it
        self._index = 0  # the next tick's number in its episode
        self._skipped = False  # the latest tick was skipped: executed() and correct() have nothing to change
        self._backlog_bytes = 0
        self._closed = False
        self.lost = 0  # ticks dropped (backlog full) or refused (not an observation of this robot)
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="rfm-local-recorder", daemon=True)
        self._thread.start()
        _LIVE.add(self)  # a program that ends without close() still writes what it recorded

    # --- what the ChunkExecutor calls ----------------------------------------------------------------------------
    def add(self, obs: Mapping[str, Any], action: np.ndarray, chunk: np.ndarray | None = None,
            t: float | None = None) -> None:
        """This tick's observation and the action executed at it (and the chunk it came from). `t`: when the robot
        executed it, in seconds on a clock that only goes forward (default: now, with real_time). Never blocks."""
        if t is not None and not math.isfinite(t):
            raise ValueError(f"t={t!r}: a tick's time must be a finite number of seconds")
        # copies: a camera driver may reuse its buffers, and the record must hold what this tick saw
        tick = {"images": {cam: snapshot(img) for cam, img in obs["images"].items()},
                "state": np.asarray(obs.get("state", ()), np.float32).copy(),
                "instruction": obs.get("instruction", ""), "action": np.asarray(action, np.float32).copy(),
                "chunk": None if chunk is None else np.asarray(chunk, np.float32).copy(), "label": None,
                "time": float(t) if t is not None else time.monotonic() if self.real_time else None}
        tick["bytes"] = sum(img.nbytes for img in tick["images"].values())
        with self._lock:
            self._check_open()
            self._push_latest()
            tick["index"] = self._index
            self._index += 1
            self._skipped = False
            if self._backlog_bytes + tick["bytes"] > self.max_backlog_bytes:  # its number is skipped: a gap
                self._count_lost(f"recording is {self._backlog_bytes >> 20} MB behind the robot")
                self._latest = None
                return
            self._backlog_bytes += tick["bytes"]
            self._latest = tick

    def skip(self) -> None:
        """No action from a chunk at this tick (ChunkExecutor.step raised; the robot held): the recorded episode
        ends before it, so none bridges the tick; executed() and correct() for it do nothing."""
        with self._lock:
            self._push_latest()
            if self._index:  # held before the episode's first action: where the episode starts, not a gap
                self._index += 1
            self._skipped = True

    def executed(self, action: np.ndarray) -> None:
        """The robot executed `action` at the latest tick (e.g. after its own clipping): record that one."""
        with self._lock:
            tick = self._changeable("executed")
            if tick is not None:
                tick["action"] = np.asarray(action, np.float32).copy()

    def correct(self, action: np.ndarray, executed: bool = False) -> None:
        """Label the latest tick with the action to learn from (an operator's or expert's); `executed`: the robot
        also executed it instead of the policy's (a takeover)."""
        with self._lock:
            tick = self._changeable("correct")
            if tick is not None:
                tick["label"] = np.asarray(action, np.float32).copy()
                if executed:
                    tick["action"] = tick["label"]

    def end_episode(self, success: bool | None = None, wait: bool = True) -> None:
        """The episode is over, with the outcome the robot reports; with `wait`, until it is written (`rfm data info`
        shows it)."""
        with self._lock:
            self._check_open()
            if self._latest is not None:
                self._latest.update(end=True, success=success)
                self._push_latest()
            else:  # the last tick was skipped or dropped: end what was recorded before it
                self._queue.put({"end_only": True, "success": success})
            self._index, self._skipped = 0, False
        if wait:
            self.flush()

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until every tick added so far is recorded (or lost), and every episode ended so far is written. The
        latest tick goes too: an executed() or correct() after this does nothing."""
        with self._lock:
            self._push_latest()
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)
        self.recorder.sync(max(0.0, deadline - time.monotonic()))

    def close(self, timeout: float | None = None) -> None:
        """Record what is left and write the dataset: an episode not ended is written as the robot left it
        (`ended_by: closed`, its outcome unknown unless the robot reported one). The dataset is whole once this
        returns."""
        with self._lock:
            if self._closed:
                return
            self._push_latest()
            self._closed = True
        self._queue.put(_END)
        self._thread.join(timeout)
        # not the server's "shutdown", which says the robot went on with the episode after a restart: the robot's
        # own program stopped here, and its next run's first episode is another one
        self.recorder.end_episode(self.session_id, None, reason=CLOSED)
        self.recorder.close(timeout)

    def __enter__(self) -> LocalRecorder:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals ----------------------------------------------------------------------------------------------
    @property
    def episodes_written(self) -> int:
        return self.recorder.episodes_written

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"LocalRecorder({self.recorder.root}) is closed")

    def _changeable(self, call: str) -> dict | None:
        """The latest tick, which executed() and correct() change (the lock held); None where it was skipped, dropped
        or already handed on; RuntimeError before any add()."""
        if self._latest is None and not (self._skipped or self._index):
            raise RuntimeError(f"{call}() before any add(): no tick to change")
        return self._latest

    def _push_latest(self) -> None:
        """Hand the newest tick to the fitting thread (the lock held): final from now on."""
        if self._latest is not None:
            self._queue.put(self._latest)
            self._latest = None

    def _count_lost(self, why: str) -> None:
        self.lost += 1
        self.last_error = why
        if self.lost == 1 or self.lost % 1000 == 0:
            log.warning("%s: %s; %d ticks lost", self.recorder.root, why, self.lost)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _END:
                    return
                self._record(item)
            except Exception as e:  # noqa: BLE001 - the robot keeps running; the tick counts as lost
                self._count_lost(f"tick {item.get('index')} not recorded: {type(e).__name__}: {e}")
            finally:
                self._queue.task_done()

    def _record(self, tick: dict) -> None:
        if tick.get("end_only"):
            self.recorder.end_episode(self.session_id, tick["success"])
            return
        with self._lock:
            self._backlog_bytes -= tick["bytes"]
        obs = {"images": tick["images"], "state": tick["state"], "instruction": tick["instruction"]}
        # the frames the runner takes (native or input size; any size where it resizes), fitted as it fits them
        images, state, instruction = check_observation(obs, self.interface,
                                                       resize=getattr(self.runner, "resize_images", False))
        instruction = self.runner.instruction_for(instruction)
        waited = time.monotonic()  # the writer is behind (a slow disk): wait, the ticks queue here meanwhile (add()
        while not self.recorder.room(1) and time.monotonic() - waited < WRITER_WAIT_S:  # drops past max_backlog_mb)
            time.sleep(0.005)
        if not self.recorder.record_tick(self.session_id, images, state, instruction, tick["action"], tick["chunk"],
                                         tick["label"], tick.get("success"), bool(tick.get("end")), tick["index"],
                                         tick["time"]):
            self._count_lost(f"tick {tick['index']} not recorded: the writer has been behind for {WRITER_WAIT_S:g} s "
                             f"(a full disk?)")


_LIVE: weakref.WeakSet[LocalRecorder] = weakref.WeakSet()


@atexit.register
def _close_at_exit() -> None:
    """A robot program that ends (Ctrl-C, the end of its script) without close() writes what it recorded: the
    recorder's threads are daemons, which the interpreter would stop with the episodes in them."""
    for rec in list(_LIVE):
        rec.close()
