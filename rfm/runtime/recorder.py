"""Recorder: write what a served fleet did into a LeRobot v3.0 dataset.

Two sources: robots that report the ticks they executed (`record_tick`, from POST /v1/ticks: one frame per control
tick, the action executed or the correction given, the chunk it came from) and, for clients that do not, each
request (`record`: one frame per request, labelled with the chunk's first action; right only for a robot that asks
for a chunk every tick). One episode per robot session (split by an explicit `episode_end`, a reset, or an idle timeout). Recording never
blocks inference: `record()` only enqueues; a background thread buffers per session and writes finished episodes
through the incremental writer, so each finished episode is durable on its own and an unclean stop loses at most
the unfinished ones and what is still queued. Outcome labels (success) and operator corrections are stored as extra columns, and each
episode's meta/episodes row says its session, its outcome and what ended it (`ended_by`: the robot, or the server
cutting it on an idle timeout, a gap of dropped ticks, a new instruction, a length cap or its own stop), so a
fine-tune can pick episodes by how they went (rfm.data.recording). A dataset has one fps and LeRobot requires
`timestamp` = index / fps, so when each tick really came (the robot's clock; the request's arrival) is its own
column, `tick_time`: a stalled control loop shows as late ticks instead of a perfect rate.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rfm.config import RobotInterface
from rfm.constants import (
    ACTION_CHUNK,
    ACTION_EXECUTED,
    CORRECTED,
    ENDED_BY,
    FIRST_TICK,
    LATE_TICK_PERIODS,
    MODEL,
    OBS_STATE,
    OUTCOME,
    SESSION,
    SUCCESS,
    TICK_TIME,
    image_key,
)
from rfm.files import DirectoryLock, LockHeld, process_user
from rfm.runtime.frame_spill import SPILL_DIR, FrameSpill, clear_spill

if TYPE_CHECKING:
    from rfm.data.writer import LeRobotDatasetWriter

log = logging.getLogger("rfm.recorder")



@dataclass
class _Frame:
    images: dict[str, np.ndarray] | None  # {cam: (H, W, 3) uint8}; None once moved to its session's spill file
    state: np.ndarray  # (D_s,)
    action: np.ndarray  # (D_a,) the action to learn from: the correction where one was given, else the executed one
    chunk: np.ndarray  # (H * D_a,) the predicted chunk (zeros when the tick did not come from one)
    instruction: str
    success: bool
    corrected: bool
    executed: np.ndarray | None = None  # (D_a,) the action the robot executed
    tick: int | None = None  # the robot's index of this tick in its episode (ticks reported with one)
    time: float | None = None  # seconds on the robot's clock at this tick, or the server's when it got the request


@dataclass
class _Session:
    frames: list[_Frame] = field(default_factory=list)
    last_seen: float = field(default_factory=time.monotonic)
    reported: bool | None = None  # the outcome the robot reported: True once any success, False if only failures
    mem_bytes: int = 0  # frame bytes held in memory (those not in `spill`)
    spill: FrameSpill | None = None  # where its frames go once the recorder is past its memory budget

    def report(self, success: bool | None) -> None:
        if success is not None:
            self.reported = bool(success) or bool(self.reported)

    @property
    def outcome(self) -> str:
        return {True: "success", False: "failure", None: "unknown"}[self.reported]


class Recorder:
    """Thread-safe, non-blocking episode recorder for the server (or any robot loop)."""

    def __init__(self, root: str | Path, interface: RobotInterface, max_queue: int = 4096,
                 idle_timeout_s: float = 30.0, max_episode_frames: int = 10_000, use_videos: bool = True,
                 vcodec: str | None = None, model: str | None = None, max_buffer_mb: float = 1024.0) -> None:
        """`model`: the served model (`model_id@model_version`), stored with each episode: a recording that goes on
        across a model update says which model produced what. `max_buffer_mb`: open episodes are held in memory
        until they end; past this many MB of frames in all, the frames of the session holding the most move to a
        file in the recording (rfm.runtime.frame_spill) until its episode ends; where the disk refuses them, that
        episode is written now (ended_by "length"). Items queued for the writing thread are bounded to a quarter of
        the budget (at least 64, at most `max_queue`). An episode is written when it reaches `max_episode_frames`, or
        half the budget in frames (saving one copies it in memory): past that, the robot's episode goes on in the next
        one (ended_by "length"; the first part takes the outcome of the rest, rfm.data.recording.robot_outcomes)."""
        self.root, self.interface, self.model = Path(root), interface, model
        self.idle_timeout_s = idle_timeout_s
        frame_bytes = 3 * interface.image_size[0] * interface.image_size[1] * len(interface.cameras)
        self.max_episode_frames = max(1, min(max_episode_frames, int(max_buffer_mb * 2**20) // 2 // frame_bytes))
        self._lock = lock_recording(self.root)  # before anything is read or tidied: another server may be writing
        clear_spill(self.root)  # open episodes of a server that died with them
        try:
            self.writer = self._open_writer(use_videos, vcodec)
        except BaseException:
            self._lock.release()
            raise
        # items waiting to be written hold their frames too: at most a quarter of the budget of them (~1,800
        # ticks of a 3-camera robot at 128 x 128; 4096 of them were 600 MB outside the budget)
        self.max_items = min(max_queue, max(64, int(max_buffer_mb * 2**20) // 4 // max(1, frame_bytes)))
        self._queue: queue.Queue = queue.Queue()  # bounded to max_items frames by _put; an episode end always fits
        self._queued_frames = 0  # items in the queue that hold frames (ends hold none and do not count)
        self._put_lock = threading.Lock()
        self._epochs: dict[str, int] = {}  # sessions that lost an item: their frames go to episode SESSION~N
        self._split: dict[str, str] = {}  # session -> the key of its episode before the hole, still to be ended
        self._hole_seen: dict[str, float] = {}  # sessions in _epochs -> when they last put; forgotten when idle
        self._holes_checked = time.monotonic()
        self._told_rate = False  # warned of an episode recorded from requests slower than the control rate
        self._last_put: dict[str, float] = {}  # session -> when it last put a frame; gone once its episode ended
        self._sessions: dict[str, _Session] = {}
        self.dropped = self.episodes_written = self.episodes_lost = 0
        self.max_buffer_bytes, self._buffered = int(max_buffer_mb * 2**20), 0  # frame bytes held in open sessions
        self._spills = 0  # spill files made (their names)
        self._unwritten: list[tuple[str, _Session, str]] = []  # episodes ended while the disk was full, in order
        self._idle_checked = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rfm-recorder", daemon=True)
        self._thread.start()

    def _open_writer(self, use_videos: bool, vcodec: str | None) -> LeRobotDatasetWriter:
        """The recording to append to, or a new one (also in place of one that never saved an episode)."""
        from rfm.data.lerobot import LeRobotDatasetWriter

        interface, empty = self.interface, empty_recording(self.root)
        if (self.root / "meta" / "info.json").exists() and not empty:
            writer = LeRobotDatasetWriter.append(self.root, vcodec=vcodec)
            _check_compatible(self.root, interface, writer.cameras, writer.info["features"], writer.state_names,
                              writer.action_names)
            if writer.use_videos != use_videos:  # a dataset stores its frames one way
                log.warning("%s stores its frames as %s: new episodes are too (not as %s); a new --record "
                            "directory stores them the other way", self.root, "video" if writer.use_videos else
                            "PNG images", "video" if use_videos else "PNG images")
            if ACTION_EXECUTED not in writer.info["features"]:
                log.warning("%s was started by an older rfm, without the %s column: new episodes are written "
                            "without it too, so where an operator corrected a tick the action the robot executed is "
                            "not kept (only the correction). A new --record directory keeps it; rfm train takes "
                            "both together", self.root, ACTION_EXECUTED)
            return writer
        h, w = interface.image_size
        extra = {SUCCESS: {"dtype": "bool", "shape": [1], "names": None},
                 CORRECTED: {"dtype": "bool", "shape": [1], "names": None},
                 ACTION_CHUNK: {"dtype": "float32", "shape": [interface.chunk_size * interface.action_dim],
                                "names": None},
                 ACTION_EXECUTED: {"dtype": "float32", "shape": [interface.action_dim],
                                   "names": interface.action_names},
                 TICK_TIME: {"dtype": "float32", "shape": [1], "names": None}}
        # frames are recorded as the model saw them (its input size); the robot's own geometry (its cameras'
        # native sizes, the aspect policy, their calibration) goes with them, so a model trained on the
        # recording serves the robot's frames as this one does
        return LeRobotDatasetWriter(self.root, fps=max(1, round(interface.control_hz)),
                                    robot_type=interface.robot_type, overwrite=empty,
                                    cameras={c: (h, w) for c in interface.cameras},
                                    state_names=interface.state_names,
                                    action_names=interface.action_names, use_videos=use_videos,
                                    vcodec=vcodec, incremental=True, extra_features=extra,
                                    calibration=_recorded_calibration(interface),
                                    ee_position=interface.ee_position,
                                    native_sizes={c: interface.native_size(c) for c in interface.cameras},
                                    aspect=interface.aspect)

    # --- producer side (request handlers): never blocks -----------------------------------------------------
    def record(self, session: str, images: np.ndarray, state: np.ndarray, instruction: str, actions: np.ndarray,
               success: bool | None = None, correction: np.ndarray | None = None, episode_end: bool = False,
               arrived: float | None = None) -> bool:
        """Enqueue one served step. images (N_cam, 3, H, W) uint8 as validated; actions (H, D_a); `arrived`: when
        the request came (seconds, any clock that only goes forward), so a robot's late requests show.

        Returns False (and counts a drop) when the recorder is behind; inference is never slowed down.
        """
        return self._put(("frame", session, images, state, instruction, actions, success, correction, episode_end,
                          arrived), episode_end)

    def record_tick(self, session: str, images: np.ndarray, state: np.ndarray, instruction: str, action: np.ndarray,
                    chunk: np.ndarray | None = None, label: np.ndarray | None = None, success: bool | None = None,
                    episode_end: bool = False, index: int | None = None, time: float | None = None) -> bool:
        """Enqueue one control tick the robot executed: images (N_cam, 3, H, W) uint8, the executed action (D_a,),
        the chunk it came from (H * D_a,) and an optional label (D_a,) to learn from instead; `index`: the tick's
        number in the robot's episode (a jump ends the recorded episode: ticks are missing); `time`: seconds on the
        robot's clock when it executed the tick (late ticks show in the recording). Never blocks."""
        return self._put(("tick", session, images, state, instruction, action, chunk, label, success, episode_end,
                          index, time), episode_end)

    def end_episode(self, session: str, success: bool | None = None, reason: str = "robot") -> None:
        """Close the session's current episode (robot reset or task done); `reason` goes into its `ended_by`."""
        self._put(("end", session, success, reason))

    def sync(self, timeout: float | None = None) -> bool:
        """Wait until everything enqueued before this call is handled (an ended episode written); False on timeout.
        For a robot's own loop (rfm.runtime.LocalRecorder), which may read its recording next."""
        if self._stop.is_set():
            return True
        done = threading.Event()
        self._queue.put(("sync", done))
        return done.wait(timeout)

    def has_open(self, session: str) -> bool:
        """Whether `session` has a recorded episode that an end would close: it sent a frame and neither ended its
        episode since nor went quiet past the idle timeout (which ends it on the server)."""
        with self._put_lock:
            seen = self._last_put.get(session)
            return seen is not None and time.monotonic() - seen <= self.idle_timeout_s

    def room(self, n: int) -> bool:
        """Whether n more items fit in the queue now (the consumer only makes more room): a batch of ticks is taken
        whole or refused whole, so a robot's retry never records a tick twice."""
        if self._unwritten:  # the disk is full: robots hold their ticks (503) until the episodes waiting are written
            return False
        return self._queued_frames + n <= self.max_items

    def _put(self, item: tuple, ends: bool = False) -> bool:
        """Enqueue without waiting; False (and a counted drop) when the recorder is behind.

        A drop leaves a hole in its session's episode, so the session moves on to a new episode (key SESSION~N):
        its next item that fits is preceded by an end for the episode before the hole, and no recorded episode has
        a frame followed by one that did not come next."""
        kind, sid = item[0], item[1]
        with self._put_lock:
            now = time.monotonic()
            self._forget_idle_holes(now)
            if kind == "end" or ends:  # (a frame that ends its episode leaves none open)
                self._last_put.pop(sid, None)
            else:
                self._last_put[sid] = now
            epoch = self._epochs.get(sid, 0)
            key = sid if epoch == 0 else f"{sid}~{epoch}"
            # an end holds no frames: never dropped; a frame is while episodes wait for disk space (a robot that
            # cannot hold its frames, as ticks are held, must not grow the server's memory until it is killed)
            if kind == "end" or (self._queued_frames < self.max_items and not self._unwritten):
                if sid in self._split:
                    self._queue.put_nowait(("end", self._split[sid], None, "gap"))
                    del self._split[sid]
                self._queue.put_nowait((kind, key, *item[2:]))
                self._queued_frames += kind != "end"
                if kind == "end":  # every part of the episode is ended: the next one starts afresh
                    self._epochs.pop(sid, None)
                    self._hole_seen.pop(sid, None)
                elif sid in self._epochs:
                    self._hole_seen[sid] = now
                return True
            self.dropped += 1
            if sid not in self._split:
                self._split[sid] = key
                self._epochs[sid] = epoch + 1
            self._hole_seen[sid] = now
            return False

    def _forget_idle_holes(self, now: float) -> None:
        """Forget the sessions that lost an item and then went quiet (a robot gone, an openpi connection closed):
        kept, they grew with every session that ever lost a frame. By then their episodes have ended on the idle
        timeout; a part before a hole still to be ended is ended first, so the session's key is free again."""
        if now - self._holes_checked < self.idle_timeout_s:
            return
        self._holes_checked = now
        for sid, seen in list(self._last_put.items()):
            if now - seen > self.idle_timeout_s:
                del self._last_put[sid]
        for sid, seen in list(self._hole_seen.items()):
            if now - seen > 2 * self.idle_timeout_s:
                if sid in self._split:
                    self._queue.put_nowait(("end", self._split.pop(sid), None, "gap"))
                self._epochs.pop(sid, None)
                del self._hole_seen[sid]

    def close(self, timeout: float | None = None) -> None:
        """Write everything still queued, flush every open session as an episode, stop the thread.

        Waits for the backlog by default (a slower shutdown beats losing recorded data)."""
        if self._stop.is_set():
            return
        self._queue.put(("close",))
        self._thread.join(timeout)
        self._stop.set()
        if not self._thread.is_alive():  # still writing after `timeout`: the directory stays this process's
            self._lock.release()
        log.info("recorder closed: %d episodes written, %d lost to write errors, %d steps dropped (queue full), %s "
                 "still queued", self.episodes_written, self.episodes_lost, self.dropped, self._queue.qsize())

    @property
    def backlog(self) -> int:
        """Queued items not yet written (exposed so servers can report it)."""
        return self._queue.qsize()

    # --- consumer thread -------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=1.0)
            except queue.Empty:
                self._flush_idle()
                continue
            if item[0] == "sync":
                item[1].set()
                continue
            if item[0] in ("frame", "tick"):
                with self._put_lock:
                    self._queued_frames -= 1
            if time.monotonic() - self._idle_checked > 1.0:  # a busy queue must not keep abandoned sessions open
                self._flush_idle()
            try:
                if item[0] == "close":
                    for sid in list(self._sessions):
                        self._write(sid, "shutdown")
                    self._write_unwritten(final=True)
                    return
                if item[0] == "end":
                    _, sid, success, reason = item
                    sess = self._sessions.get(sid)
                    if success is not None and sess is not None and sess.frames:
                        sess.frames[-1].success = bool(success)
                        sess.report(success)
                    self._write(sid, reason)
                    continue
                if item[0] == "tick":
                    self._add_tick(*item[1:])
                    continue
                self._add(*item[1:])
            except Exception:  # a bad item must not kill recording for the rest of the fleet
                log.exception("recorder: failed to handle an item; continuing")

    def _frames(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """(N_cam, 3, H, W) as validated -> {camera: (H, W, 3)}, as the writer takes them."""
        return {c: np.ascontiguousarray(np.asarray(images[i]).transpose(1, 2, 0))
                for i, c in enumerate(self.interface.cameras)}

    def _add(self, sid, images, state, instruction, actions, success, correction, episode_end, arrived) -> None:
        itf = self.interface
        cams = self._frames(images)
        actions = np.asarray(actions, np.float32).reshape(itf.chunk_size, itf.action_dim)
        learn = actions[0] if correction is None else np.asarray(correction, np.float32).reshape(itf.action_dim)
        self._append(sid, _Frame(cams, np.asarray(state, np.float32), learn, actions.reshape(-1), instruction,
                                 bool(success), correction is not None, actions[0], time=arrived), episode_end,
                     success)

    def _add_tick(self, sid, images, state, instruction, action, chunk, label, success, episode_end, index,
                  when) -> None:
        itf = self.interface
        sess = self._sessions.get(sid)
        last = sess.frames[-1].tick if sess is not None and sess.frames else None
        if index is not None and last is not None and index != last + 1:
            self._write(sid, "gap")  # the robot's ticks in between never arrived: no episode holds a hole
        cams = self._frames(images)
        executed = np.asarray(action, np.float32).reshape(itf.action_dim)
        learn = executed if label is None else np.asarray(label, np.float32).reshape(itf.action_dim)
        chunk = (np.zeros(itf.chunk_size * itf.action_dim, np.float32) if chunk is None
                 else np.asarray(chunk, np.float32).reshape(-1))
        self._append(sid, _Frame(cams, np.asarray(state, np.float32), learn, chunk, instruction, bool(success),
                                 label is not None, executed, index, when), episode_end, success)

    def _append(self, sid: str, frame: _Frame, episode_end: bool, success: bool | None) -> None:
        sess = self._sessions.setdefault(sid, _Session())
        if sess.frames and sess.frames[-1].instruction != frame.instruction:
            self._write(sid, "instruction")  # a new instruction starts a new episode
            sess = self._sessions.setdefault(sid, _Session())
        sess.frames.append(frame)
        if sess.spill is not None:
            try:
                sess.spill.append(frame.images)
                frame.images = None
            except OSError:  # kept in memory: the budget check below writes the episode if need be
                pass
        sess.mem_bytes += _frame_bytes(frame)
        self._buffered += _frame_bytes(frame)
        sess.report(success)
        sess.last_seen = time.monotonic()
        if episode_end:
            self._write(sid, "robot")
        elif len(sess.frames) >= self.max_episode_frames:
            self._write(sid, "length")
        if self._buffered > self.max_buffer_bytes and self._sessions:  # memory is bounded: the heaviest open episode goes to disk
            self._spill(max(self._sessions, key=lambda k: self._sessions[k].mem_bytes))

    def _spill(self, sid: str) -> None:
        """Move session `sid`'s frames (and its later ones) to a file; where the disk refuses, write it now."""
        sess = self._sessions[sid]
        try:
            if sess.spill is None:
                self._spills += 1
                sess.spill = FrameSpill(self.root / SPILL_DIR / f"{self._spills}.frames",
                                        {c: (*self.interface.image_size, 3) for c in self.interface.cameras})
                log.info("recorder: %d MB of open episodes, over its %d MB: session %r's frames go to %s until its "
                         "episode ends", self._buffered >> 20, self.max_buffer_bytes >> 20, sid, sess.spill.path)
            for f in sess.frames:
                if f.images is not None:
                    n = _frame_bytes(f)
                    sess.spill.append(f.images)
                    f.images = None
                    sess.mem_bytes -= n
                    self._buffered -= n
        except OSError as e:
            log.warning("recorder: %d MB of open episodes, over its %d MB, and no room on disk for them (%s): "
                        "writing session %r's episode (%d frames) now", self._buffered >> 20,
                        self.max_buffer_bytes >> 20, e, sid, len(sess.frames))
            self._write(sid, "length")

    def _flush_idle(self) -> None:
        self._write_unwritten()
        now = self._idle_checked = time.monotonic()
        for sid, sess in list(self._sessions.items()):
            if now - sess.last_seen > self.idle_timeout_s:
                self._write(sid, "idle")

    def _write(self, sid: str, reason: str) -> None:
        sess = self._sessions.pop(sid, None)
        if sess is None or not sess.frames:
            return
        if self._unwritten:  # episodes are written in the order they ended
            self._unwritten.append((sid, sess, reason))
            return
        self._buffered -= sess.mem_bytes
        if self._try_save(sid, sess, reason):
            return
        self._buffered += sess.mem_bytes
        self._unwritten.append((sid, sess, reason))
        log.warning("recorder: the disk of %s is full: episodes that end are kept (in memory) and written once "
                    "there is room, and robots' ticks are refused (503) meanwhile; free space there", self.root)

    def _try_save(self, sid: str, sess: _Session, reason: str, final: bool = False) -> bool:
        """Write one episode; False only where the disk is full and it can wait (not `final`). Any other failure
        (an encoder's) loses this episode alone, counted, and the ones after it are written."""
        try:
            self._save(sid, sess, reason)
        except Exception as e:
            self.writer.discard_episode()  # else its frames would open the next episode
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT) and not final:
                return False
            self.episodes_lost += 1
            log.exception("recorder: episode of session %r (%d frames) could not be written; recording goes on",
                          sid, len(sess.frames))
        if sess.spill is not None:
            sess.spill.remove()
        return True

    def _write_unwritten(self, final: bool = False) -> None:
        """Write the episodes that waited for disk space, oldest first, while there is room (all: `final`)."""
        while self._unwritten:
            sid, sess, reason = self._unwritten[0]
            if not self._try_save(sid, sess, reason, final):
                return
            self._unwritten.pop(0)
            self._buffered -= sess.mem_bytes
            if not self._unwritten:
                log.info("recorder: the disk has room again; the episodes that waited are written")

    def _save(self, sid: str, sess: _Session, reason: str) -> None:
        spilled = iter(sess.spill.frames() if sess.spill is not None else ())  # in order, as they were moved
        for f in sess.frames:
            self.writer.add_frame(images=f.images if f.images is not None else next(spilled), state=f.state,
                                  action=f.action, task=f.instruction or "unknown")
        extra = {SUCCESS: np.array([f.success for f in sess.frames]),
                 CORRECTED: np.array([f.corrected for f in sess.frames]),
                 ACTION_CHUNK: np.stack([f.chunk for f in sess.frames])}
        if ACTION_EXECUTED in self.writer.info["features"]:  # recordings started before this column lack it
            extra[ACTION_EXECUTED] = np.stack([f.executed for f in sess.frames])
        times = _tick_times(sess.frames)
        if TICK_TIME in self.writer.info["features"]:
            extra[TICK_TIME] = times
        self._check_request_rate(sid, sess, times)
        first = -1 if sess.frames[0].tick is None else int(sess.frames[0].tick)  # > 0: it starts mid-episode
        self.writer.save_episode(extra=extra, meta={SESSION: str(sid), OUTCOME: sess.outcome, ENDED_BY: reason,
                                                    FIRST_TICK: first, MODEL: self.model or "unknown"})
        self.episodes_written += 1

    def _check_request_rate(self, sid: str, sess: _Session, times: np.ndarray) -> None:
        """Warn (once per recorder) when an episode recorded from requests came at a fraction of the control rate:
        a robot that executes several actions per request (openpi's action chunk broker) is stored one frame per
        request, its episode replayed that many times too fast, with each chunk's first action as the label."""
        if self._told_rate or sess.frames[0].tick is not None or len(times) < 8 or times[0] < 0:
            return
        periods = float(np.median(np.diff(times))) * self.writer.fps
        if periods > LATE_TICK_PERIODS:
            self._told_rate = True
            log.warning("recorder: session %r asked for a chunk every %.1f control periods (median, at %g Hz): its "
                        "episode holds one frame per request, %.1fx faster than the robot ran, each labelled with its "
                        "chunk's first action; a robot that executes several actions per request should report its "
                        "ticks (POST /v1/ticks: the SDK's ChunkExecutor does), or ask every tick",
                        sid, periods, self.writer.fps, periods)

    @property
    def waiting_for_disk(self) -> int:
        """Episodes that ended while the disk was full and wait to be written."""
        return len(self._unwritten)

    @property
    def open_sessions(self) -> int:
        return len(self._sessions)


def _recorded_calibration(interface: RobotInterface) -> dict | None:
    """The calibration a recording keeps: the robot's own, as its interface declares it, beside the native sizes
    and aspect recorded with it; a camera whose frames arrive at the model's size gets its model-input projection
    (the same geometry, needing no native size)."""
    if not interface.calibration:
        return None
    proj = interface.projections()
    out = {}
    for i, cam in enumerate(interface.cameras):
        if cam not in interface.calibration:
            continue
        same = tuple(interface.native_size(cam)) == tuple(interface.image_size)
        out[cam] = {"projection": proj[i].tolist()} if same and proj is not None else interface.calibration[cam]
    return out or None


def _tick_times(frames: list[_Frame]) -> np.ndarray:
    """Each frame's seconds from the episode's first (float64 until then: a robot's clock may read 1.7e9); -1 for
    all of an episode whose robot did not say when it ticked, or that mixes requests (the server's clock) with
    ticks (the robot's)."""
    if any(f.time is None for f in frames) or len({f.tick is None for f in frames}) > 1:
        return np.full(len(frames), -1.0, np.float32)
    times = np.array([f.time for f in frames], np.float64)
    return (times - times[0]).astype(np.float32)


def _frame_bytes(frame: _Frame) -> int:
    return 0 if frame.images is None else sum(img.nbytes for img in frame.images.values())


RECORD_LOCK = ".rfm-record.lock"  # in the recording: held by the server writing it


def lock_recording(root: Path) -> DirectoryLock:
    """This process's lock on recording into `root` (created if need be); FileExistsError naming the server that
    holds it. Two servers appending to one dataset each numbered their files from what they read at start-up,
    overwrote each other's episodes and mixed their videos."""
    root.mkdir(parents=True, exist_ok=True)
    lock = DirectoryLock(root / RECORD_LOCK)
    try:
        lock.acquire()
    except LockHeld as e:
        raise FileExistsError(f"{root}: another rfm serve is recording into it, or a robot's LocalRecorder "
                              f"({e.holder}); give each its own directory (server replicas: one each, e.g. --record "
                              f"/data/field/$HOSTNAME; rfm train takes them together)") from None
    return lock


def empty_recording(root: str | Path) -> bool:
    """A recording that never saved an episode: meta/info.json with no episodes (written when a recording starts;
    a server stopped before its first episode leaves it), and nothing but a dataset's folders. It is started
    afresh: the dataset readers refuse it (no tasks), and a restarted server must not."""
    import json

    root = Path(root)
    try:
        info = json.loads((root / "meta" / "info.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(info, dict) or info.get("total_episodes") != 0 or any((root / "meta" / "episodes").glob("**/*")):
        return False
    return all(p.name in ("meta", "data", "videos", "images", RECORD_LOCK, SPILL_DIR) for p in root.iterdir())


def check_recording_dir(root: str | Path, interface: RobotInterface, option: str = "--record") -> None:
    """Before a server starts (or a LocalRecorder): ValueError naming the directory when `--record root` cannot hold
    this model's recording (an existing dataset of other cameras, sizes or dims, or a directory that is not a
    dataset). Reads only: appending, which tidies the dataset, waits for the server's start-up. `option`: what the
    messages call the directory's setting."""
    from rfm.data.reader import LeRobotDataset

    root = Path(root)
    _check_writable(root, option)
    if (root / RECORD_LOCK).is_file():  # refused now, before the model loads, if another server records here (a
        lock_recording(root).release()  # directory without the file has no server: checking leaves nothing in it)
    if (root / "meta" / "info.json").is_file() and not empty_recording(root):
        ds = LeRobotDataset(root)  # a malformed dataset: an error naming the file
        cameras = {c: tuple(ds.image_shape(c)[:2]) for c in ds.cameras}
        state_names = ds.state_names if OBS_STATE in ds.features else []
        _check_compatible(root, interface, cameras, ds.features, state_names, ds.action_names)
    elif root.exists() and (not root.is_dir() or any(p.name != RECORD_LOCK for p in root.iterdir())) \
            and not empty_recording(root):
        raise ValueError(f"{root}: exists and is not a LeRobot dataset; record into a new directory, or into a "
                         f"dataset recorded from this model")


def _check_writable(root: Path, option: str = "--record") -> None:
    """ValueError naming the directory when this process could not create or write `root`: a volume mounted into
    a container is often owned by another user than the server's."""
    for p in [root, *root.parents]:
        try:
            if not p.exists():
                continue
        except PermissionError:  # a directory above may not be entered: found further up
            continue
        if p.is_dir() and not os.access(p, os.W_OK | os.X_OK):
            raise ValueError(f"{option} {root}: this process ({process_user()}) may not write into {p}; give it the "
                             f"directory (a volume mounted into rfm's image: chown it to uid 10001)")
        return


def _check_compatible(root: Path, itf: RobotInterface, cameras: dict, features: dict, state_names: list,
                      action_names: list) -> None:
    """An existing dataset a recording appends to must be this model's robot: cameras, sizes and dims."""
    if sorted(cameras) != sorted(itf.cameras) or any(tuple(s) != tuple(itf.image_size) for s in cameras.values()):
        raise ValueError(f"{root}: recorded cameras {cameras} do not match the model's "
                         f"{itf.cameras} at {itf.image_size}; record into a new directory")
    native = {c: tuple(features[image_key(c)].get("native_size", cameras[c])) for c in itf.cameras}
    served = {c: tuple(itf.native_size(c)) for c in itf.cameras}
    if native != served:
        raise ValueError(f"{root}: recorded from cameras of native sizes {native}, the model serves "
                         f"{served}; record into a new directory")
    if len(action_names) != itf.action_dim or len(state_names) != itf.state_dim:
        raise ValueError(f"{root}: dataset state/action dims ({len(state_names)}, {len(action_names)}) "
                         f"do not match the model's ({itf.state_dim}, {itf.action_dim})")
