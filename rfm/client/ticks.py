"""TickRecorder: stream what the robot executed, one entry per control tick, to a recording server (POST /v1/ticks).

A robot that executes action chunks asks for a new chunk every few ticks, so the requests a server sees are not
what the robot did: recording them gives episodes compressed in time whose labels are the first action of each
chunk. The robot's control loop knows every tick, so it reports them on a side channel: `add()` only appends to
a queue, and a background thread posts batches, so neither inference nor the control loop ever waits for
recording. The server writes one frame per tick at the robot's control rate: the observation of that tick, the
action executed (or the correction given for it), and the chunk it came from.

The server records frames at the model's input size, so the posting thread fits each camera's native frame to it
first (rfm.client.frames): a 480x640 frame travels as 128x128. Batches are split to fit the server's body limit,
and the backlog is bounded in bytes.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import sys
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Mapping
from typing import Any

import httpx
import numpy as np

from rfm.client.frames import FrameFitter, snapshot
from rfm.client.wire import RETRY_STATUS, encode_ticks

log = logging.getLogger("rfm.client.ticks")
YIELD_NICE = 10  # the recorder's threads: behind the control loop (nice 0), not starved (19)
RECHECK_S = 30.0  # a server that said it is not recording is asked again after this long


NOT_RECORDING_HINT = "start it with rfm serve --record DIR"


class NotRecording(RuntimeError):
    """The server does not record ticks: 409, started without --record; 404, it has no POST /v1/ticks (an rfm
    server older than tick recording). `hint` says what to do."""

    def __init__(self, message: str, hint: str = NOT_RECORDING_HINT) -> None:
        super().__init__(message)
        self.hint = hint


class TickRecorder:
    """Per-tick recording of one robot session, posted in batches from a background thread.

    `client`: an RFMClient (its URL, API key and format are reused). Call `add()` once per tick with what was
    executed, `correct(action)` to label the latest tick with an operator's or expert's action, and
    `end_episode(success)` when the episode ends; `close()` flushes everything.
    `fit_frames`: send native frames at the model's input size (what the server records); `max_backlog_mb`: ticks
    waiting to be posted beyond this are dropped (counted in `lost`) rather than growing without bound while the
    server is unreachable. `retry_s`: how long a batch is retried through connection errors and 429/502/503/504
    before its ticks count as lost. `real_time`: the robot's measured rate is checked against the model's control
    rate (a warning, once) and each tick's time is recorded; a simulated robot, which ticks as fast as its simulator,
    passes False (its ticks carry no time unless `add()` is given one: the wall clock says nothing of a simulation's).
    `optional`: record where the server records, and say nothing where it does not (a ChunkExecutor's own recorder).
    While the server says it does not record, add() copies nothing and counts the tick in `unrecorded`.

    A tick the server would refuse (a state or action of another length than GET /v1/models says, a missing camera,
    a NaN) is left out and counted in `lost`, rather than making the server refuse its whole batch.
    Each tick carries its number in the episode, and each batch the recorder's `stream` id and episode number, so a
    batch sent again after a lost answer (a read timeout, a cut connection) is recorded once, and a tick the robot
    did not execute from a chunk (`skip()`: step() raised and the robot held) ends the recorded episode there.
    A recorded episode never has a hole: where ticks are lost (dropped, refused, or a batch that failed for good) the
    ticks after them go on under the same session, and the server, seeing the tick numbers jump, ends the recorded
    episode there (`ended_by: gap`); the part before the gap counts with the outcome the robot reports at the end.
    """

    def __init__(self, client: Any, session_id: str, robot_id: str | None = None, batch_ticks: int = 8,
                 fit_frames: bool = True, max_backlog_mb: float = 512.0, retry_s: float = 30.0,
                 real_time: bool = True, optional: bool = False) -> None:
        self.session_id, self.robot_id, self.batch_ticks = session_id, robot_id, max(1, batch_ticks)
        self.format, self.headers = client.format, dict(client.headers)
        self.fit_frames, self.max_backlog_bytes = fit_frames, int(max_backlog_mb * 2**20)
        self.retry_s, self.real_time, self.optional = retry_s, real_time, optional
        self.stream = uuid.uuid4().hex[:16]  # this recorder's ticks, told apart from a restarted robot's
        self._episode = 0  # episodes ended so far (end_episode)
        self._index = 0  # the next tick's number in its episode
        self._skipped = False  # the latest tick was skipped: executed() and correct() have nothing to label
        self._intervals: deque[float] = deque(maxlen=256)  # seconds between the latest add()s: the robot's rate
        self._last_add: float | None = None
        self._rate_warned = not real_time  # a simulated robot ticks as fast as its simulator: nothing to warn of
        self._down = False  # the last batch was given up on: try the next ones once each until one goes through
        self._http = httpx.Client(base_url=client.url, timeout=client.timeout)
        self._ticks: list[dict] = []  # the newest tick waits here: correct() may still label it
        self._outbox: list[tuple[list[dict], bool, bool | None, int]] = []  # (ticks, end, success, episode)
        self._backlog_bytes = 0  # image bytes of the ticks not yet posted
        self._cond = threading.Condition()
        self._closed = False
        self._busy = False  # a batch is being posted
        self._fitter: FrameFitter | None = None  # from GET /v1/models, asked once by the posting thread
        self._max_body: int | None = None  # the server's body limit, from its description or a 413
        self._served: dict | None = None  # GET /v1/models: what a tick must hold for the server to take it
        self._refused_now = 0  # ticks of the batch being posted that were not sent: the server would refuse them
        self.sent = self.errors = self.lost = 0
        self.unrecorded = 0  # ticks not sent because the server is not recording (no --record)
        self._not_recording_at: float | None = None  # when the server last said so
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="rfm-ticks", daemon=True)
        self._thread.start()
        _LIVE.add(self)  # what is queued at the process's exit is posted then
        # fits the frames of ticks waiting to be posted as soon as the model's input size is known: a server
        # restart is ridden out with 128 x 128 frames in the backlog, not 480 x 640 ones (3.7 s of a 3-camera
        # 50 Hz robot in 512 MB, instead of 73 s)
        self._fit_thread = threading.Thread(target=self._fit_backlog, name="rfm-ticks-fit", daemon=True)
        self._fit_thread.start()

    def add(self, obs: Mapping[str, Any], action: np.ndarray, chunk: np.ndarray | None = None,
            t: float | None = None) -> None:
        """This tick's observation and the action executed at it (and the chunk it came from). `t`: when the robot
        executed it, in seconds on a clock that only goes forward (a sensor's timestamp; default time.monotonic()
        now), recorded so a tick that came late shows. Never blocks."""
        if t is not None and not math.isfinite(t):
            raise ValueError(f"t={t!r}: a tick's time must be a finite number of seconds")
        if self._not_recording():  # nothing to copy: the tick is counted, and its number skipped (a gap)
            with self._cond:
                self.unrecorded += 1
                self._index, self._skipped = self._index + 1, True
            return
        # copies: a camera driver may reuse its buffers, and the record must hold what this tick saw
        images = {cam: snapshot(img) for cam, img in obs["images"].items()}
        tick = {"images": images, "state": np.asarray(obs["state"], np.float32).copy(),
                "instruction": obs.get("instruction", ""), "action": np.asarray(action, np.float32).copy(),
                "chunk": None if chunk is None else np.asarray(chunk, np.float32).copy()}
        with self._cond:
            now = time.monotonic()
            if self._last_add is not None and self._index:
                self._intervals.append(now - self._last_add)
            self._last_add = now
            tick["index"] = self._index
            tick["time"] = float(t) if t is not None else now if self.real_time else None  # a simulator's: none
            self._index += 1
            self._skipped = False
            if self._backlog_bytes > self.max_backlog_bytes:  # dropped: its number is skipped, the server sees a gap
                self._skipped = True  # executed() and correct() for it must not land on the tick before
                self.lost += 1
                if self.lost == 1 or self.lost % 1000 == 0:
                    log.warning("tick recording is %d MB behind (server unreachable or slow?): %d ticks dropped",
                                self._backlog_bytes >> 20, self.lost)
                return
            tick["_bytes"] = _image_bytes(tick)  # what it holds now; less once fitted
            self._backlog_bytes += tick["_bytes"]
            self._ticks.append(tick)
            self._cond.notify_all()
            if len(self._ticks) > self.batch_ticks:  # all but the newest are final
                self._outbox.append((self._ticks[:-1], False, None, self._episode))
                self._ticks = self._ticks[-1:]
                self._cond.notify_all()

    def skip(self) -> None:
        """This tick is not recorded: the robot had no action from a chunk (ChunkExecutor.step raised) and held or
        did something of its own. The recorded episode ends before it and the next tick starts another, so none
        has a hole; executed() and correct() for this tick do nothing."""
        with self._cond:
            if self._index:  # held before the episode's first action: where the episode starts, not a gap
                self._index += 1
            self._skipped = True

    def correct(self, action: np.ndarray, executed: bool = False) -> None:
        """Label the latest tick with the action to learn from (an operator's or expert's); `executed`: the robot
        also executed it instead of the policy's (a takeover)."""
        with self._cond:
            if self._skipped:
                return  # the latest tick was skipped: not recorded, nothing to label
            if not self._ticks:
                raise RuntimeError("correct() before any add(): nothing to label")
            self._ticks[-1]["label"] = np.asarray(action, np.float32).copy()
            if executed:
                self._ticks[-1]["action"] = self._ticks[-1]["label"]

    def executed(self, action: np.ndarray) -> None:
        """The robot executed `action` at the latest tick (e.g. after clipping it): record that one."""
        with self._cond:
            if self._skipped:
                return  # the latest tick was skipped (no action from a chunk): not recorded
            if not self._ticks:
                raise RuntimeError("executed() before any add(): no tick to update")
            self._ticks[-1]["action"] = np.asarray(action, np.float32).copy()

    def end_episode(self, success: bool | None = None, wait: bool = True) -> None:
        """Send the remaining ticks and close the episode on the server; with `wait`, until the server has them."""
        with self._cond:
            self._outbox.append((self._ticks, True, success, self._episode))
            self._ticks = []
            self._episode += 1
            self._index = 0
            self._skipped = False
            self._cond.notify_all()
        if wait:
            self.flush()

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until every queued batch was posted (or failed)."""
        with self._cond:
            self._cond.wait_for(lambda: not self._outbox and not self._busy, timeout)

    def _run(self) -> None:
        yield_to_control_loop()
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._outbox or self._closed)
                if not self._outbox:
                    self._http.close()
                    return
                ticks, end, success, episode = self._outbox[0]
                self._busy = True
            sent_before = self.sent
            try:
                if self._not_recording():
                    self.unrecorded += len(ticks)  # asked again now and then, not with every batch
                else:
                    fitted = self._fitted(ticks)
                    if self._says_not_recording():  # no body posted only to hear 409
                        raise NotRecording("the server does not record (GET /v1/models: server.recording is false)")
                    self._post_valid(fitted, end, success, episode)
                    self._check_rate()
                    self._not_recording_at = None
            except NotRecording as e:
                if self._not_recording_at is None and not (self.optional and e.hint == NOT_RECORDING_HINT):
                    log.warning("%s: ticks are not recorded (%s); asked again every %g s", e, e.hint, RECHECK_S)
                self._not_recording_at = time.monotonic()
                self.unrecorded += len(ticks) - (self.sent - sent_before)
                self.last_error = str(e)
            except Exception as e:  # noqa: BLE001 - recording must not take the robot down; counted and logged
                self.errors += 1
                self.last_error = str(e)
                lost = len(ticks) - (self.sent - sent_before) - self._refused_now
                self.lost += lost
                log.warning("tick recording failed (%d ticks lost: the server ends the recorded episode before "
                            "them): %s", lost, e)
            with self._cond:
                self._outbox.pop(0)
                self._backlog_bytes -= sum(t["_bytes"] for t in ticks)
                self._busy = False
                self._cond.notify_all()

    def _not_recording(self) -> bool:
        """The server said lately that it does not record (asked again every RECHECK_S)."""
        said = self._not_recording_at
        return said is not None and time.monotonic() - said < RECHECK_S

    @property
    def tick_hz(self) -> float | None:
        """The robot's control rate, measured from the latest add()s (None before a few ticks)."""
        with self._cond:
            gaps = sorted(self._intervals)
        return 1.0 / gaps[len(gaps) // 2] if len(gaps) >= 16 and gaps[len(gaps) // 2] > 0 else None

    def _check_rate(self) -> None:
        """Warn once when the robot ticks at another rate than the model's: the recording's frames are stamped at
        the model's control rate (a dataset has one fps), and the model's chunks step at it."""
        hz, model_hz = self.tick_hz, (self._served or {}).get("control_hz")
        if self._rate_warned or hz is None or not model_hz or len(self._intervals) < 64:
            return
        if abs(hz / float(model_hz) - 1.0) > 0.25:
            self._rate_warned = True
            log.warning("the robot ticks at %.1f Hz, the model's control rate is %g Hz: its chunks' actions are %.1f ms "
                        "apart and the recording stamps frames at %g Hz; run the control loop at %g Hz",
                        hz, model_hz, 1000.0 / float(model_hz), model_hz, model_hz)

    def _post_valid(self, ticks: list[dict], end: bool, success: bool | None, episode: int) -> None:
        """Post the ticks the server can take; a tick it would refuse (a state or action of another length, a
        missing camera, a non-finite value: the server refuses a batch whole) is left out and counted lost, and
        the server ends the recorded episode where the tick numbers jump, so the rest are recorded."""
        self._refused_now = 0
        valid = []
        for t in ticks:
            problem = self._problem(t)
            if problem is None:
                valid.append(t)
                continue
            self._refused_now += 1
            self.lost += 1
            self.last_error = problem
            if self.lost == 1 or self.lost % 1000 == 0:
                log.warning("tick not recorded (%s); %d ticks lost so far", problem, self.lost)
        if valid or end:
            self._post(valid, end, success, self.session_id, episode)

    def _problem(self, tick: dict) -> str | None:
        """Why the server would refuse this tick, checked against its description (None: it will take it)."""
        itf = self._served
        if not itf:
            return None
        for key, names in (("state", itf.get("state_names")), ("action", itf.get("action_names"))):
            values = np.asarray(tick[key])
            if names is not None and values.size != len(names):
                return f"{key} has {values.size} values, the model has {len(names)}"
            if not np.all(np.isfinite(values)):
                return f"{key} holds NaN or infinite values"
        cams = itf.get("cameras")
        if cams is not None and set(tick["images"]) != set(cams):
            return f"cameras {sorted(tick['images'])}, the model's are {sorted(cams)}"
        return None

    def _post(self, ticks: list[dict], end: bool, success: bool | None, session: str, episode: int) -> None:
        """POST the ticks, in halves while the body is over the server's limit (known, or learnt from a 413).
        A batch whose frames alone exceed a known limit is split before it is encoded: encoding 22 MB of native
        frames held the GIL for 42 ms, and the control loop with it."""
        if self._max_body is not None and len(ticks) > 1 and \
                sum(_image_bytes(t) for t in ticks) * (4 / 3 if self.format == "json" else 1) > self._max_body:
            self._post_halves(ticks, end, success, session, episode)
            return
        if "time" not in ((self._served or {}).get("server") or {}).get("tick_fields", ()):
            ticks = [{k: v for k, v in t.items() if k != "time"} for t in ticks]  # an older server refuses it
        body = encode_ticks(ticks, session, self.format, self.robot_id, end, success, self.stream, episode)
        if self._max_body is not None and len(body) > self._max_body and len(ticks) > 1:
            self._post_halves(ticks, end, success, session, episode)
            return
        resp = self._send(body)
        if resp.status_code == 413 and len(ticks) > 1:
            self._max_body = len(body) - 1
            self._post_halves(ticks, end, success, session, episode)
            return
        if resp.status_code == 413:
            raise RuntimeError(f"POST /v1/ticks: one tick is {len(body)} bytes, over the server's body limit "
                               f"(rfm serve --max-body-mb): {resp.text[:200]}")
        if resp.status_code == 409:
            raise NotRecording(f"POST /v1/ticks: {resp.status_code} {resp.text[:200]}")
        if resp.status_code == 404:  # a server of a fleet not yet upgraded: no episode is cut, nothing counts lost
            raise NotRecording(f"POST /v1/ticks: {resp.status_code} {resp.text[:200]}",
                               "the server has no tick recording: an rfm server older than it, which records "
                               "requests instead; upgrade it to record what the robot executed")
        if resp.status_code != 200:
            raise RuntimeError(f"POST /v1/ticks: {resp.status_code} {resp.text[:300]}")
        self.sent += len(ticks)

    def _post_halves(self, ticks: list[dict], end: bool, success: bool | None, session: str, episode: int) -> None:
        half = len(ticks) // 2
        self._post(ticks[:half], False, None, session, episode)
        self._post(ticks[half:], end, success, session, episode)

    def _send(self, body: bytes) -> httpx.Response:
        """POST /v1/ticks, again through connection errors and 429/502/503/504 (after Retry-After when given,
        else backing off) for up to retry_s; then RuntimeError."""
        # after a batch was given up on, one try each until the server answers again: a queue of batches for a
        # server that is gone must not take retry_s each to drain (close() waits for it)
        deadline, wait = time.monotonic() + (0.0 if self._down else self.retry_s), 0.25
        while True:
            try:
                resp = self._http.post("/v1/ticks", content=body, headers=self.headers)
                if resp.status_code not in RETRY_STATUS:
                    self._down = False
                    return resp
                problem, after = f"{resp.status_code} {resp.text[:200]}", resp.headers.get("retry-after")
            except httpx.TransportError as e:
                problem, after = f"{type(e).__name__}: {e}", None
            try:
                delay = float(after) if after is not None else wait
            except ValueError:
                delay = wait
            if time.monotonic() + delay > deadline:
                tried = "not retried: it was not answering" if self._down else f"retried for {self.retry_s:g} s"
                self._down = True
                raise RuntimeError(f"POST /v1/ticks: {problem} ({tried})")
            time.sleep(delay)
            wait = min(2 * wait, 5.0)

    def _fitted(self, ticks: list[dict]) -> list[dict]:
        """The ticks with native-size frames fitted to the model's input size (rfm.client.frames), as the server
        would; the server's description is asked once, and gives its body limit too."""
        fitter = self._fitter
        if fitter is None:
            served = self._describe()  # None: not up; these ticks go as they are, and the next batch asks again
            limit = (served or {}).get("server", {}).get("max_body_bytes")
            self._max_body = limit if isinstance(limit, int) else self._max_body
            fitter = FrameFitter(served if served and self.fit_frames else {})
            if served is not None:
                self._fitter = fitter
                with self._cond:  # the backlog's frames can be fitted from now on
                    self._cond.notify_all()
        if not fitter.active:
            return ticks
        return [t if t.get("_fitted") else {**t, "images": fitter.images(t["images"])} for t in ticks]

    def _describe(self) -> dict | None:
        """GET /v1/models, kept in _served; None when the server does not answer it."""
        try:
            resp = self._http.get("/v1/models", headers=self.headers)
            served = resp.json() if resp.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            served = None
        self._served = served or self._served
        return served

    def _says_not_recording(self) -> bool:
        """Whether the server's description says it records nothing; asked again where it said so before (its
        restart may have added --record)."""
        if self._served is not None and self._not_recording_at is not None:
            self._describe()
        return ((self._served or {}).get("server") or {}).get("recording") is False

    def _fit_backlog(self) -> None:
        """Fit the frames of the ticks queued to be posted (not the batch being posted), one at a time as they come,
        once the server has said its model's input size: the backlog holds them at that size, and the posting
        thread has no batch of them to fit at once (24 resizes that held up the control loop's tick)."""
        yield_to_control_loop()
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or self._next_unfitted() is not None)
                tick = self._next_unfitted()
                if tick is None:
                    return
                fitter, images = self._fitter, tick["images"]
            try:
                fitted = fitter.images(images)
            except Exception:  # noqa: BLE001 - left native: the posting thread fits it, or the server says why not
                fitted = None
            with self._cond:
                tick["_fit_tried"] = True
                if fitted is not None and not self._is_posting(tick):  # (being posted: the poster fits its own)
                    tick["images"], tick["_fitted"] = fitted, True
                    now = _image_bytes(tick)
                    self._backlog_bytes -= tick["_bytes"] - now
                    tick["_bytes"] = now

    def _next_unfitted(self) -> dict | None:
        """A queued tick whose frames can be fitted now (under the lock); None if none."""
        if self._fitter is None or not self._fitter.active:
            return None
        for i, (ticks, *_) in enumerate(self._outbox):
            if i == 0 and self._busy:
                continue  # being posted: the posting thread fits it
            for t in ticks:
                if not t.get("_fit_tried"):
                    return t
        for t in self._ticks:
            if not t.get("_fit_tried"):
                return t
        return None

    def _is_posting(self, tick: dict) -> bool:
        return bool(self._busy and self._outbox and any(t is tick for t in self._outbox[0][0]))

    def close(self, wait: bool = True, timeout: float | None = None) -> None:
        """Post what is left (as an unfinished episode the server closes on idle) and stop the threads; `wait`: until
        they are done (at most `timeout` s; False: they finish in the background)."""
        with self._cond:
            if self._ticks:
                self._outbox.append((self._ticks, False, None, self._episode))
                self._ticks = []
            self._closed = True
            self._cond.notify_all()
        if wait:
            self._thread.join(timeout)
            self._fit_thread.join(timeout)

    def __enter__(self) -> TickRecorder:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_LIVE: weakref.WeakSet[TickRecorder] = weakref.WeakSet()
EXIT_WAIT_S = 5.0  # at the process's exit, how long the ticks still queued may take to post


@atexit.register
def _post_at_exit() -> None:
    """A robot program that ends (Ctrl-C, the end of its script) without close() posts the ticks still queued: its
    recorder's threads are daemons, which the interpreter would stop with them. A server that does not answer gets
    one try each (a SIGKILL loses them, as it loses anything not yet sent)."""
    deadline = time.monotonic() + EXIT_WAIT_S
    for rec in list(_LIVE):
        rec._down = True  # one try per batch: no 30 s of retries on the way out
        rec.close(timeout=max(0.0, deadline - time.monotonic()))


def yield_to_control_loop() -> None:
    """Run the calling thread (recording, which a backlog lets wait) at a lower priority than the robot's control
    loop, where the OS can (Linux: per-thread nice). Resizing each tick's frames here took 0.25 of the robot's core
    and pushed the loop's p99 jitter from 0.5 to 4.2 ms at 50 Hz; the GIL is not the cause, the scheduler is."""
    if not sys.platform.startswith("linux"):  # elsewhere a thread id is not a pid: setpriority would miss
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), YIELD_NICE)
    except OSError:  # not allowed (a sandbox)
        pass


def _image_bytes(tick: Mapping[str, Any]) -> int:
    return sum(len(img) if isinstance(img, (bytes, str)) else img.nbytes for img in tick["images"].values())
