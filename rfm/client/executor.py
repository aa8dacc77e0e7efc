"""ChunkExecutor: run action chunks at the control rate while the next chunk is computed in the background.

Each tick the robot calls `step(obs)` and executes the returned action. Chunk k was requested with the
observation of tick s_k, so its action j belongs to tick s_k + j. When the newest chunk has `prefetch_steps`
actions left, the next request goes out (in a thread) with the current observation; actions of a chunk that
arrives late are skipped up to the current tick. With `ensemble_decay` set, every chunk covering the tick votes
(ACT temporal ensembling: weights exp(-decay * i), i = 0 for the oldest chunk).

With a `recorder` (rfm.client.TickRecorder) every tick's observation and executed action are recorded on a side
channel, and the chunk requests themselves are marked not to be recorded: the recording holds what the robot did,
one frame per control tick, not one per request.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np


class ChunkExecutor:
    """Turns a blocking `act(obs) -> (H, D_a)` (e.g. RFMClient.act) into one action per control tick."""

    def __init__(self, act: Callable[[Mapping[str, Any]], np.ndarray] | Any, prefetch_steps: int | None = None,
                 ensemble_decay: float | None = None, max_chunks: int = 8, recorder: Any = None,
                 action_steps: int | None = None) -> None:
        """`act`: a callable or an object with `.act` (RFMClient). `prefetch_steps`: request the next chunk when
        this many actions of the newest chunk remain (default: half a chunk). `recorder`: a TickRecorder.
        `action_steps` K: blocking mode instead of prefetching: every K ticks the robot waits for a new chunk from
        the current observation (simulated robots, and robots that stop while the model thinks)."""
        if action_steps is not None and action_steps < 1:
            raise ValueError(f"action_steps={action_steps}: expected a positive number of actions per request")
        self._act = act.act if hasattr(act, "act") else act
        self.action_steps = action_steps
        self.prefetch_steps, self.ensemble_decay, self.max_chunks = prefetch_steps, ensemble_decay, max_chunks
        self.recorder = recorder
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rfm-chunk")
        self.reset()

    def reset(self) -> None:
        """Forget all chunks (new episode). A request in flight is discarded when it lands."""
        self.tick = 0
        self._chunks: list[tuple[int, np.ndarray]] = []  # (start tick, (H, D_a)), oldest first
        self._pending: tuple[int, Future] | None = None
        self.requests = 0
        self.waits = 0  # ticks that had to block for a chunk (the robot would stall)

    def _submit(self, obs: Mapping[str, Any]) -> None:
        snapshot = {k: (copy.deepcopy(v) if isinstance(v, dict) else v) for k, v in obs.items()}
        if self.recorder is not None:
            snapshot["record"] = False  # the ticks are recorded, not the requests
        self._pending = (self.tick, self._pool.submit(self._act, snapshot))
        self.requests += 1

    def _collect(self, block: bool) -> None:
        if self._pending is None or not (block or self._pending[1].done()):
            return
        start, fut = self._pending
        self._pending = None
        chunk = np.asarray(fut.result(), dtype=np.float32)  # re-raises the request's error here
        self._chunks.append((start, chunk))
        self._chunks = self._chunks[-self.max_chunks:]

    def _covering(self) -> list[tuple[int, np.ndarray]]:
        return [(s, c) for s, c in self._chunks if s <= self.tick < s + len(c)]

    def step(self, obs: Mapping[str, Any]) -> np.ndarray:
        """The action (D_a,) to execute at this tick, given the current observation."""
        if self.action_steps is not None:
            return self._step_blocking(obs)
        self._collect(block=False)
        if not self._covering():
            if self._pending is None:
                self._submit(obs)
            self.waits += 1
            self._collect(block=True)
            if not self._covering():  # the chunk arrived after its last action's tick: ask again, now
                self._submit(obs)
                self._collect(block=True)
        start, newest = self._chunks[-1]
        remaining = start + len(newest) - self.tick
        if self._pending is None and remaining <= (self.prefetch_steps or max(1, len(newest) // 2)):
            self._submit(obs)
        return self._finish(obs)

    def _step_blocking(self, obs: Mapping[str, Any]) -> np.ndarray:
        if not self._chunks or self.tick - self._chunks[-1][0] >= min(self.action_steps, len(self._chunks[-1][1])):
            self._submit(obs)
            self._collect(block=True)
        return self._finish(obs)

    def _finish(self, obs: Mapping[str, Any]) -> np.ndarray:
        action = self._action()
        if self.recorder is not None:
            cover = self._covering()
            self.recorder.add(obs, action, None if self.ensemble_decay is not None else cover[-1][1])
        self.tick += 1
        return action

    def executed(self, action: np.ndarray) -> None:
        """The robot executed `action` at the latest tick (e.g. after its own clipping): record that one."""
        if self.recorder is not None:
            self.recorder.executed(action)

    def correct(self, action: np.ndarray, executed: bool = False) -> None:
        """An operator or expert gave `action` for the latest tick: record it to learn from (`executed`: the robot
        executed it instead of the policy's)."""
        if self.recorder is None:
            raise RuntimeError("correct() needs a recorder (ChunkExecutor(..., recorder=TickRecorder(...)))")
        self.recorder.correct(action, executed)

    def _action(self) -> np.ndarray:
        cover = self._covering()
        if self.ensemble_decay is None:
            s, c = cover[-1]
            return c[self.tick - s].copy()
        w = np.exp(-self.ensemble_decay * np.arange(len(cover)))
        acts = np.stack([c[self.tick - s] for s, c in cover])
        return (w[:, None] * acts).sum(0) / w.sum()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ChunkExecutor:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
