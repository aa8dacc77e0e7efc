"""ChunkExecutor: one action per control tick from action chunks: the executor robots, `rfm eval` and `rfm fleet` run.

Each tick the robot calls `step(obs)` and executes the returned action. Chunk k was requested with the observation
of tick s_k, so its action j belongs to tick s_k + j. Two ways to schedule requests:

- prefetch (default, real robots): when the newest chunk has `prefetch_steps` actions left, the next request goes
  out in a thread with the current observation, and the robot keeps executing; a chunk that arrives late is
  entered at the current tick (its stale actions are skipped). Unset, it follows the model: a checkpoint that
  recommends K actions per request (its card's `execution`, e.g. from `rfm adapt --select-episodes`; served on
  GET /v1/models) asks when H - K remain, for the instruction at hand; else when half a chunk remains. A
  prefetch that fails for a reason that may pass (the server refused it with 503 under load, timed out, restarted,
  the connection dropped) does not stop the robot while it has actions left: the failure is counted (`failures`,
  `last_error`) and it asks again with the current observation. `step()` raises only when the robot has
  no action for the tick (its chunk ran out and the request for the next one failed, or did not land within
  `max_wait_s`: TimeoutError), or at once for an error that asking again cannot mend (a 4xx such as 422: the
  observation does not fit the model).
- `action_steps=K` (simulation, and robots that stop while the model thinks): every K ticks a chunk is requested
  from the current observation and the call returns when it is there. `delay_ticks=D` simulates inference
  latency in that mode: the chunk becomes usable D ticks after the observation it was computed from, and until
  then the robot keeps executing the previous chunk (naive asynchronous execution), so simulation measures what a
  robot with that latency would do. The first chunk of an episode is waited for. A robot in real time wanting K
  actions per request uses prefetch_steps=H-K instead: this mode makes every K-th step() wait for a whole request.

With `continuation=True` (delay-aware continuation; the model needs prefix_max > 0) each request carries the
actions the robot will execute from its tick until the answer is usable (`committed_actions`: the newest chunk's,
for `delay_ticks` ticks, or in the prefetch schedule for as many ticks as the measured round trip takes), and the
model returns a chunk that starts with them and continues them, so the switch to the new chunk is not a jump.

With `ensemble_decay` every usable chunk covering the tick votes (ACT temporal ensembling: weights
exp(-decay * i), i = 0 for the oldest). With a `recorder` (rfm.client.TickRecorder; a robot running its model
itself: rfm.runtime.LocalRecorder, to a dataset on its disk) every tick's observation and
executed action are recorded on a side channel and the chunk requests are marked not to be recorded: the
recording holds what the robot did, one frame per control tick. An executor of an RFMClient has a recorder of its
own by default (`recorder="auto"`), which records only where the server does (`rfm serve --record`): a server that
recorded the requests of a robot asking every few ticks stored a corrupt episode (40 ticks as 5 frames, each
labelled with its chunk's first action), so an executor's requests are never recorded as such.
"""

from __future__ import annotations

import copy
import logging
import math
import time
import weakref
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np

log = logging.getLogger(__name__)


def half_chunk(length: int) -> int:
    """The SDK's default stride: the next chunk is asked for when this many actions of the newest one remain, so a
    robot executes about half of each chunk (at least one action)."""
    return max(1, length // 2)


def _model_says(act: Any, key: str) -> Any:
    """A field of the served model's description (prefix_max, execution, ...): a Runner's attribute (bound predict
    or runner), an RFMClient's GET /v1/models entry, else None."""
    owner = getattr(act, "__self__", act)
    if hasattr(owner, "prefix_max"):  # a Runner
        return getattr(owner, key, None)
    if hasattr(owner, "models"):
        return owner.models().get(key)
    return None


def recommended_steps(execution: Mapping[str, Any] | None, instruction: str | None) -> int | None:
    """Actions per request a model recommends for `instruction`: its own entry, else the model's default."""
    if not execution:
        return None
    return (execution.get("by_instruction") or {}).get(instruction or "", execution.get("action_steps"))


_UNASKED = object()


def passing(error: BaseException) -> bool:
    """Whether asking again may succeed: a server error or refusal (5xx: 503 under load or while it starts, 504 past
    the deadline; 408, 429), a dropped or refused connection, a timeout. Not a 4xx saying the request is wrong."""
    status = getattr(error, "status", None)  # RFMError
    if isinstance(status, int):
        return status >= 500 or status in (408, 429)
    return isinstance(error, (ConnectionError, TimeoutError, httpx.TransportError))


def _own_recorder(client: Any) -> Any:
    """The TickRecorder of an executor given none: under the client's session_id (with its robot_id), else its
    robot_id, else an id of its own; quiet where the server does not record."""
    import uuid

    from rfm.client.ticks import TickRecorder

    session = client.session_id or client.robot_id or f"robot-{uuid.uuid4().hex[:8]}"
    return TickRecorder(client, session, client.robot_id if client.session_id else None, optional=True)


class ChunkExecutor:
    """Turns a blocking `act(obs) -> (H, D_a)` (e.g. RFMClient.act, Runner.predict) into one action per tick."""

    def __init__(self, act: Callable[[Mapping[str, Any]], np.ndarray] | Any, prefetch_steps: int | None = None,
                 ensemble_decay: float | None = None, recorder: Any = "auto", action_steps: int | None = None,
                 delay_ticks: int = 0, continuation: bool = False, prefix_max: int | None = None,
                 max_wait_s: float | None = None, limits: Any = None) -> None:
        """`act`: an RFMClient, a Runner (its predict), or a callable observation -> chunk. `prefetch_steps`: request the next chunk when
        this many actions of the newest chunk remain (default: the chunk less the model's recommended actions per
        request, else half a chunk). `action_steps`, `delay_ticks`: the blocking schedule and its simulated
        latency (module docstring). `recorder`: a TickRecorder or LocalRecorder; "auto": one of its own for an
        RFMClient (its robot_id and session_id), recording where the server records; None: nothing of this robot is
        recorded. `continuation`: send committed actions, at most `prefix_max` (default: the model's, from a
        Runner's or an RFMClient's model description). `max_wait_s`: the longest step() waits for a chunk when
        the robot has no action (prefetch schedule), then TimeoutError; the request stays in flight and the next
        step() waits for it again (None: as long as the request takes). `limits`: an ActionLimits
        (rfm.runtime.ActionLimits.for_model) every chunk is clipped to as it arrives, for a robot running its model
        itself (a server clips its answers already); `clipped` counts the chunks it changed."""
        if max_wait_s is not None and max_wait_s < 0:
            raise ValueError(f"max_wait_s={max_wait_s}: expected seconds >= 0, or None to wait for the request")
        if action_steps is not None and action_steps < 1:
            raise ValueError(f"action_steps={action_steps}: expected a positive number of actions per request")
        if delay_ticks < 0 or (delay_ticks and action_steps is None):
            raise ValueError(f"delay_ticks={delay_ticks}: a simulated delay needs action_steps (it is >= 0)")
        if continuation and ensemble_decay is not None:
            raise ValueError("continuation and ensemble_decay are two ways to switch chunks: pick one")
        if not callable(act) and not hasattr(act, "act") and not hasattr(act, "predict"):
            raise TypeError(f"act={type(act).__name__}: expected an RFMClient, a Runner, or a callable "
                            f"observation -> (H, D_a) chunk")
        # an RFMClient's act, a Runner's predict (a robot running its model itself), or the callable given
        self._act = act.act if hasattr(act, "act") else act.predict if not callable(act) else act
        self._owner = act
        client = getattr(act, "__self__", act)
        self._remote = hasattr(client, "models") and hasattr(client, "url")  # an RFMClient: the server records
        self._check = None if self._remote else getattr(client, "check_observation", None)  # a Runner's
        self._owns_recorder = isinstance(recorder, str) and self._remote
        if isinstance(recorder, str):
            if recorder != "auto":
                raise ValueError(f"recorder={recorder!r}: expected a TickRecorder, a LocalRecorder, 'auto' or None")
            recorder = _own_recorder(client) if self._remote else None
            if recorder is not None:  # an executor dropped without close() stops its recorder's threads
                weakref.finalize(self, recorder.close, False)
        self._execution: Any = _UNASKED  # the model's recommended mode, asked for at the first prefetch decision
        self.prefetch_steps, self.ensemble_decay, self.recorder = prefetch_steps, ensemble_decay, recorder
        self.max_wait_s = max_wait_s
        self.limits = limits
        self.action_steps, self.delay_ticks = action_steps, delay_ticks
        self.continuation = continuation
        if prefix_max is None and continuation:
            prefix_max = int(_model_says(act, "prefix_max") or 0)
        self.prefix_max = prefix_max if continuation else 0
        if continuation and self.prefix_max < 1:
            raise ValueError("continuation needs a model trained for delay-aware continuation (model.prefix_max > 0; "
                             "fine-tune with --model prefix_max=8); this one takes no committed actions")
        self.latency_s: float | None = None  # round trip of a prefetched request (moving average)
        self._told_lead = False  # warned that the round trip outgrew the prefetch lead
        self.tick_s: float | None = None  # control period, measured between step() calls (moving average)
        self._last_step: float | None = None
        self._waits_then = 0  # waits when the last step began
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rfm-chunk")
        self.reset()

    def reset(self) -> None:
        """Forget all chunks (new episode). A request in flight is discarded when it lands."""
        self.tick = 0
        self._chunks: list[tuple[int, int, np.ndarray]] = []  # (start tick, usable from tick, (H, D_a)), oldest first
        self._pending: tuple[int, Future] | None = None
        self._next_request = 0
        self.source: int | None = None
        self.requests = 0
        self.waits = 0  # ticks that had to block for a chunk (the robot would stall)
        self.failures = 0  # prefetches that failed while the robot still had actions (asked again the next tick)
        self.clipped = 0  # chunks `limits` changed
        self.last_error: BaseException | None = None
        self._last_step = None

    # --- requests -------------------------------------------------------------------------------------------
    def _request(self, obs: Mapping[str, Any], snapshot: bool, ahead: int = 0) -> dict:
        """The request body's observation; a snapshot (copied) when another thread sends it while the robot moves on.
        With continuation, the actions committed for the next `ahead` ticks go with it."""
        if self._check is not None:  # a model run here (a Runner): a bad frame raises on its own tick, not the next
            self._check(obs)
        # a driver may reuse its frame and state buffers at the next tick, while the request thread still encodes
        body = {k: (copy.deepcopy(v) if snapshot and isinstance(v, (dict, list, np.ndarray)) else v)
                for k, v in obs.items()}
        if self.recorder is not None or self._remote:
            body["record"] = False  # the ticks are recorded (or nothing is), never the requests
        committed = self.committed(ahead) if self.continuation else None
        if committed is not None:
            body["committed_actions"] = committed
        self.requests += 1
        return body

    def committed(self, ahead: int) -> np.ndarray | None:
        """The actions the newest usable chunk has for this tick and the next `ahead` - 1 (at most prefix_max, up
        to its end): what the robot executes before an answer to a request sent now is usable."""
        cover = self._covering()
        n = min(ahead, self.prefix_max)
        if not cover or n < 1:
            return None
        start, _, chunk = cover[-1]
        return chunk[self.tick - start:self.tick - start + n].copy()

    def expected_delay(self) -> int:
        """Control ticks a prefetched request takes to come back (measured), plus one for the tick it lands in."""
        if self.latency_s is None or not self.tick_s:
            return self.prefix_max
        return math.ceil(self.latency_s / self.tick_s) + 1

    def _timed_act(self, body: dict) -> Any:
        t0 = time.perf_counter()
        out = self._act(body)
        dt = time.perf_counter() - t0
        self.latency_s = dt if self.latency_s is None else 0.8 * self.latency_s + 0.2 * dt
        return out

    def _submit(self, obs: Mapping[str, Any]) -> None:
        body = self._request(obs, snapshot=True, ahead=self.expected_delay())
        self._pending = (self.tick, self._pool.submit(self._timed_act, body))

    def _collect(self, block: bool) -> None:
        """Take the answer of the request in flight, if it is there (block: wait for it, at most max_wait_s). Its
        error is raised when blocking (the robot has no action without it) or when asking again cannot mend it; a
        passing one is counted and the request is made again."""
        if self._pending is None or not (block or self._pending[1].done()):
            return
        start, fut = self._pending
        try:
            chunk = fut.result(timeout=self.max_wait_s if block else None)
        except Exception as e:
            if not fut.done():  # our wait ran out, not the request: it stays in flight for the next step()
                raise TimeoutError(f"no action chunk within max_wait_s={self.max_wait_s:g} s (the request is still "
                                   f"in flight; the next step() waits for it again)") from None
            self._pending = None
            if block or not passing(e):
                raise
            self.failures += 1
            self.last_error = e
            log.warning("chunk request failed (%s); the robot has actions left, asking again", e)
            return
        self._pending = None
        self._add_chunk(start, chunk)

    def _add_chunk(self, start: int, chunk: Any, delay: int = 0) -> None:
        """A chunk computed from the observation of tick `start`, usable `delay` ticks later (the first of an
        episode is waited for); chunks that can no longer cover a tick are dropped."""
        usable = start + delay if self._chunks else start
        chunk = np.asarray(chunk, dtype=np.float32)
        if self.limits is not None:  # what the robot executes and what its recorder keeps: the clipped chunk
            chunk, dims = self.limits.clip(chunk)
            self.clipped += bool(dims)
        if self.action_steps is not None and self.action_steps > len(chunk):
            raise ValueError(f"action_steps={self.action_steps} is more than the model's chunk of {len(chunk)} actions: "
                             f"the robot would run out of actions before it asks again")
        self._chunks = [c for c in self._chunks if c[0] + len(c[2]) > self.tick] + [(start, usable, chunk)]

    def _covering(self) -> list[tuple[int, int, np.ndarray]]:
        return [c for c in self._chunks if c[0] <= self.tick < c[0] + len(c[2]) and c[1] <= self.tick]

    # --- one tick -------------------------------------------------------------------------------------------
    def step(self, obs: Mapping[str, Any], t: float | None = None) -> np.ndarray:
        """The action (D_a,) to execute at this tick, given the current observation. `t`: the tick's time for the
        recording (seconds on a clock that only goes forward, e.g. the camera's timestamp); default: now."""
        now = time.perf_counter()
        if self._last_step is not None and self.waits == self._waits_then:  # (a tick that stalled is not the rate)
            dt = now - self._last_step
            self.tick_s = dt if self.tick_s is None else 0.9 * self.tick_s + 0.1 * dt
        self._last_step, self._waits_then = now, self.waits
        try:
            if self.action_steps is not None:
                self._schedule_blocking(obs)
            else:
                self._schedule_prefetch(obs)
        except BaseException:
            if self.recorder is not None:  # no action from a chunk at this tick: the recording must not bridge it
                self.recorder.skip()
            raise
        cover = self._covering()
        action = self._action(cover)
        self.source = cover[-1][0]  # the start tick of the newest chunk this action came from (a switch: it changed)
        if self.recorder is not None:
            chunk = None if self.ensemble_decay is not None else cover[-1][2]
            self.recorder.add(obs, action, chunk, **({} if t is None else {"t": t}))  # (a robot's own may take none)
        if self.action_steps is None:  # after the tick is recorded: the request thread's encoding would delay it
            self._prefetch_if_due(obs)
        self.tick += 1
        return action

    def _schedule_blocking(self, obs: Mapping[str, Any]) -> None:
        if self.tick >= self._next_request:  # the robot waits: asked here, in this thread
            body = self._request(obs, snapshot=False, ahead=self.delay_ticks)
            self._add_chunk(self.tick, self._act(body), self.delay_ticks)
            self._next_request = self.tick + self.action_steps
        if not self._covering():  # the previous chunk ran out before the new one became usable: wait for it
            self.waits += 1
            start, _, chunk = self._chunks[-1]
            self._chunks[-1] = (start, self.tick, chunk)

    def _schedule_prefetch(self, obs: Mapping[str, Any]) -> None:
        self._collect(block=False)
        if not self._covering():
            if self._pending is None:
                self._submit(obs)
            self.waits += 1
            self._collect(block=True)
            if not self._covering():  # the chunk arrived after its last action's tick: ask again, now
                self._submit(obs)
                self._collect(block=True)

    def _prefetch_if_due(self, obs: Mapping[str, Any]) -> None:
        start, _, newest = self._chunks[-1]
        remaining = start + len(newest) - self.tick
        if self._pending is None and remaining <= self._prefetch_at(len(newest), obs):
            self._submit(obs)

    def _prefetch_at(self, length: int, obs: Mapping[str, Any]) -> int:
        """Actions left in the newest chunk when the next is asked for: prefetch_steps, else the chunk less the
        model's recommended actions per request for this instruction, else half the chunk; but never fewer than
        the ticks the measured round trip takes, so the robot does not run out of actions on every chunk (a robot
        at 80 Hz with a 150 ms round trip stalled 4 ticks a chunk asking 8 ahead)."""
        if self.prefetch_steps:
            lead = self.prefetch_steps
        else:
            if self._execution is _UNASKED:
                self._execution = _model_says(self._owner, "execution")
            k = recommended_steps(self._execution, obs.get("instruction"))
            lead = max(1, length - k) if k else half_chunk(length)
        if self.latency_s is None or not self.tick_s:
            return lead
        # ticks until an answer sent now is used, with a quarter more for the round trip's jitter
        need = min(length - 1, math.ceil(1.25 * self.latency_s / self.tick_s))
        if need > lead and not self._told_lead and self.requests >= 4:  # (the first carries the connection's setup)
            self._told_lead = True
            log.warning("a chunk takes %.0f ms to come back, %d ticks at the robot's %.0f Hz: asking for the next "
                        "one %d actions ahead, not %d, so the robot does not run out (fewer of each chunk's actions "
                        "are executed)", 1000 * self.latency_s, need, 1 / self.tick_s, need, lead)
        return max(lead, need)

    def _action(self, cover: list[tuple[int, int, np.ndarray]]) -> np.ndarray:
        if self.ensemble_decay is None:
            s, _, c = cover[-1]
            return c[self.tick - s].copy()
        w = np.exp(-self.ensemble_decay * np.arange(len(cover)))
        acts = np.stack([c[self.tick - s] for s, _, c in cover])
        return (w[:, None] * acts).sum(0) / w.sum()

    # --- what the robot did -----------------------------------------------------------------------------------
    def executed(self, action: np.ndarray) -> None:
        """The robot executed `action` at the latest tick (e.g. after its own clipping): record that one. After a
        step() that raised, the tick is not recorded (its episode ends there) and this does nothing."""
        if self.recorder is not None:
            self.recorder.executed(action)

    def correct(self, action: np.ndarray, executed: bool = False) -> None:
        """An operator or expert gave `action` for the latest tick: record it to learn from (`executed`: the robot
        executed it instead of the policy's)."""
        if self.recorder is None:
            raise RuntimeError("correct() needs a recorder: an executor of an RFMClient has one unless made with "
                               "recorder=None; else pass recorder=TickRecorder(...) or LocalRecorder(...)")
        self.recorder.correct(action, executed)

    def end_episode(self, success: bool | None = None, wait: bool = True) -> None:
        """The episode is over: with a recorder, its ticks are posted and the episode closed on the server with its
        outcome (`wait`: until the server has them, for a TickRecorder passed in; the executor's own posts them in
        the background); then reset(), so the next episode starts from a chunk asked for its own first observation
        instead of the rest of this one's (the counters restart too)."""
        if self.recorder is not None:  # (its own recorder does not hold the robot up while a server is unreachable)
            self.recorder.end_episode(success=success, wait=wait and not self._owns_recorder)
        self.reset()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._owns_recorder and self.recorder is not None:
            self.recorder.close()  # what is left goes as an unfinished episode, which the server closes when idle

    def __enter__(self) -> ChunkExecutor:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
