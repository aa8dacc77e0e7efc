"""The transport-independent core: validate one observation, queue it for a batch, clip, audit, time it."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from rfm.runtime import Runner
from rfm.runtime.limits import ActionLimits
from rfm.runtime.observation import (
    ObservationError,
    check_camera_names,
    check_committed,
    check_observation,
    check_state,
)
from rfm.runtime.recorder import Recorder
from serving.admission import BATCH_GAIN, BatchCostModel, DeadlineTooShort, batch_gain, min_deadline_ms
from serving.audit import AuditLog
from serving.batcher import Batcher, BatchFailed
from serving.codec import TICK_FIELDS, ActRequest, EpisodeEnd, TicksRequest, encode_actions
from serving.config import ServerConfig
from serving.errors import ApiError
from serving.memory import HeapTrimmer
from serving.metrics import Metrics
from serving.tick_ledger import TickLedger

log = logging.getLogger("rfm.serving")


@dataclass
class ActResult:
    """One answered request."""

    actions: np.ndarray  # (H, D_a) float32, after clipping
    request_id: str
    batch_size: int
    timings: dict  # queue_ms, inference_ms, total_ms
    clipped_dims: list[str] = field(default_factory=list)

    def to_wire(self, service: InferenceService, fmt: str) -> dict:
        """The /v1/act response body (JSON or msgpack flavour)."""
        return {"actions": encode_actions(self.actions, fmt), "action_names": service.interface.action_names,
                "model_id": service.runner.model_id, "model_version": service.runner.model_version,
                "request_id": self.request_id, "timings": self.timings, "batch_size": self.batch_size,
                "clipped": bool(self.clipped_dims), "clipped_dims": self.clipped_dims}


class InferenceService:
    """Holds the warm runner, the batcher, limits and audit log; `act` is what every transport calls."""

    def __init__(self, runner: Runner, config: ServerConfig, metrics: Metrics, limits: ActionLimits | None = None,
                 audit: AuditLog | None = None, recorder: Recorder | None = None) -> None:
        self.runner, self.config, self.metrics = runner, config, metrics
        self.recorder = recorder
        self._told_anonymous = False  # warned that requests naming no robot are recorded into one stream
        self.interface = runner.interface
        self.limits, self.audit = limits, audit
        self.trimmer = HeapTrimmer()
        self.engine_next: str | None = None  # the engine a first start is building to move onto (serving.state)
        self.min_deadline_ms = 10.0  # set from the warm-up by calibrate (serving.admission.min_deadline_ms)
        self.batch_gain: tuple[float, int] | None = None  # (per-request speed-up, batch size) measured by calibrate
        self.tick_ledger = TickLedger()  # which ticks of each robot are recorded: a batch sent again is not twice
        # one batch of a session at a time, from the ledger's look to its note (the frames are checked in a thread
        # meanwhile): striped, so memory stays bounded however many sessions come and go
        self._tick_locks = [asyncio.Lock() for _ in range(64)]
        self._shared_sessions = 0  # second robots found sending ticks under a session id another robot uses
        self.batcher = Batcher(runner.predict_batch, config.max_batch, config.max_wait_ms, config.queue_size,
                               on_batch=metrics.observe_batch, on_idle=self.trimmer.maybe_trim,
                               prefix_max=runner.prefix_max, action_dim=runner.interface.action_dim)

    def calibrate(self, costs: dict[int, float]) -> None:
        """Start the admission model from the served runner's warm-up: `costs`, seconds per batch size, and
        min_deadline_ms (--min-deadline-ms, else from batch 1); and, with --batching auto, whether to batch on it."""
        cost = BatchCostModel()
        for b, seconds in costs.items():
            cost.observe(b, seconds)
        self.batcher.cost = cost
        self.min_deadline_ms = self.config.min_deadline_ms or min_deadline_ms(costs.get(1))
        self.batch_gain = batch_gain(costs)
        mode = self.config.batching
        batches = self.config.max_batch > 1 and mode != "off" and (
            mode == "on" or self.batch_gain is None or self.batch_gain[0] >= BATCH_GAIN)
        self.batcher.solo = not batches
        if mode == "auto" and self.batch_gain is not None:
            gain, size = self.batch_gain
            log.info("batching %s on %s: a batch of %d serves its requests %.2fx as fast as one at a time (measured at "
                     "warm-up; --batching auto batches from %.1fx, --batching on forces it)", "on" if batches else "off",
                     self.runner.runs_on, size, gain, BATCH_GAIN)

    def switch_runner(self, runner: Runner, costs: dict[int, float]) -> None:
        """Serve on `runner` (warm, the same model on another engine) from the next batch on; `costs`, its warm-up
        seconds per batch size, restart the admission model. A batch running now finishes on the old runner."""
        if runner.interface != self.interface or runner.prefix_max != self.runner.prefix_max:
            raise ValueError(f"{runner.runs_on} runner's interface differs from the one served")
        self.batcher.predict = runner.predict_batch
        self.calibrate(costs)
        self.runner = runner
        self.engine_next = None

    def instruction_required(self) -> bool:
        """Whether a request must carry an instruction (the model was trained on several and no default is set):
        the runner's own rule (Runner.instruction_for) refuses an empty one."""
        try:
            self.runner.instruction_for("")
        except ObservationError:
            return True
        return False

    def default_instruction(self) -> str | None:
        """What a request without an instruction runs: --default-instruction, else the model's only instruction."""
        return None if self.instruction_required() else self.runner.instruction_for("") or None

    def describe(self) -> dict:
        d = self.runner.describe()
        gain = self.batch_gain
        d["server"] = {"max_batch": self.config.max_batch, "max_wait_ms": self.config.max_wait_ms,
                       "batching": {"mode": self.config.batching, "batches": not self.batcher.solo,
                                    "gain": None if gain is None else round(gain[0], 3),
                                    "gain_batch_size": None if gain is None else gain[1]},
                       "queue_size": self.config.queue_size, "timeout_ms": self.config.timeout_ms,
                       "resize_images": self.config.resize_images, "recording": self.recorder is not None,
                       "default_instruction": self.default_instruction(),
                       "min_deadline_ms": self.min_deadline_ms, "max_body_bytes": self.config.max_body_bytes,
                       "action_limits": self.limits.to_dict() if self.limits else None,
                       "tick_fields": sorted(TICK_FIELDS),  # what a POST /v1/ticks tick may hold: newer SDKs ask
                       "engine_next": self.engine_next}
        return d

    async def act(self, req: ActRequest, client_id: str | None, endpoint: str, t0: float,
                  connection: str | None = None, address: str | None = None) -> ActResult:
        """Validate -> batch -> clip -> audit. `t0` is time.perf_counter() when the request arrived; `connection`
        names the WebSocket it came on, the recorded stream of a request that names no session or robot;
        `address` is the sender's (a trusted proxy's X-Forwarded-For), for the audit log."""
        images, state, instruction = check_observation(req.observation, self.interface, self.config.resize_images)
        instruction = self.runner.instruction_for(instruction)
        committed = check_committed(req.observation, self.interface, self.runner.prefix_max)  # (P, D_a) | None
        if req.correction is not None and req.correction.shape != (self.interface.action_dim,):  # before queueing
            raise ObservationError(f"correction has {req.correction.size} values, the model has "
                                   f"{self.interface.action_dim} action dims ({', '.join(self.interface.action_names)})")
        if req.deadline_ms is not None and req.deadline_ms < self.min_deadline_ms:
            raise DeadlineTooShort(f"deadline_ms={req.deadline_ms:g} is below this server's min_deadline_ms="
                                   f"{self.min_deadline_ms:g} (by default 5x one inference of the model on an idle server; "
                                   f"--min-deadline-ms sets it)")
        request_id = req.request_id or uuid.uuid4().hex
        budget_ms = self.config.timeout_ms if req.deadline_ms is None else min(req.deadline_ms, self.config.timeout_ms)
        t_submit = time.perf_counter()
        remaining = budget_ms / 1000.0 - (t_submit - t0)
        fut = self.batcher.submit(images, state, instruction, max(remaining, 0.0), committed)
        self.metrics.queue_depth.set(self.batcher.depth())
        res = await asyncio.wait_for(fut, timeout=max(remaining, 1e-3))
        self.metrics.queue_depth.set(self.batcher.depth())
        actions = res.actions
        if not np.all(np.isfinite(actions)):
            raise BatchFailed("the model produced non-finite actions")
        clipped: list[str] = []
        if self.limits is not None:
            actions, clipped = self.limits.clip(actions)
            if clipped:
                self.metrics.clipped.inc()
        timings = {"decode_ms": round(1000 * (t_submit - t0), 3), "queue_ms": round(res.queue_ms, 3),
                   "inference_ms": round(res.inference_ms, 3),
                   "total_ms": round(1000 * (time.perf_counter() - t0), 3)}
        if self.audit is not None:
            self.audit.write({"request_id": request_id, "endpoint": endpoint, "status": 200,
                              "model_id": self.runner.model_id,
                              "model_version": self.runner.model_version, "client_id": client_id,
                              "address": address,
                              "robot_id": req.robot_id, "session_id": req.session_id, "instruction": instruction,
                              "instruction_run": self.instruction_run(instruction), "actions": actions,
                              "batch_size": res.batch_size, "timings": timings,
                              "committed_actions": 0 if committed is None else len(committed),
                              "clipped_dims": clipped})
        if self.recorder is not None and req.record:  # enqueue only: recording never slows the answer down
            if not (req.session_id or req.robot_id or connection or self._told_anonymous):
                self._told_anonymous = True  # (HTTP: nothing tells one robot's requests from another's)
                log.warning("recording %s requests that name no robot_id or session_id into one episode stream "
                            "(%s): the requests of several such robots are interleaved in it; give each robot a "
                            "robot_id (RFMClient(url, robot_id=...))", endpoint, client_id or "default")
            self.recorder.record(self.session_key(req, client_id, connection), images, state, instruction, actions,
                                 success=req.success, correction=req.correction, episode_end=req.episode_end,
                                 arrived=t0)
        return ActResult(actions, request_id, res.batch_size, timings, clipped)

    def _recorder(self) -> Recorder:
        if self.recorder is None:
            raise ApiError(409, "not_recording", "this server was started without --record")
        return self.recorder

    def end_episode(self, req: EpisodeEnd, client_id: str | None) -> str:
        """Close a robot session's recorded episode (POST /v1/episodes/end); returns the session key."""
        key = self.session_key(req, client_id)
        recorder = self._recorder()
        if not recorder.has_open(key):  # a mistyped id would lose the outcome without a word
            raise ApiError(404, "no_open_episode",
                           f"no recorded episode is open for session {key[:64]!r}: none was recorded under that id, "
                           f"or its episode already ended (episode_end, {recorder.idle_timeout_s:g} s without a "
                           f"request, or a server restart); the outcome was not recorded")
        recorder.end_episode(key, success=req.success)
        return key

    async def record_ticks(self, req: TicksRequest, client_id: str | None) -> tuple[str, int]:
        """Validate a batch of executed ticks and enqueue them for the recorder (one frame per tick); returns the
        session key and the number of ticks recorded (a batch sent again: those it did not have)."""
        recorder = self._recorder()
        key = self.session_key(req, client_id)
        for i, t in enumerate(req.ticks):  # what costs nothing is checked before the ledger: a batch that breaks the
            self._check_tick_values(t, f"ticks[{i}]: ")  # contract is refused even when its ticks were recorded
        async with self._tick_locks[hash(key) % len(self._tick_locks)]:
            key, second = self.tick_ledger.route(key, req)
            if second:
                self._shared_sessions += 1
                if self._shared_sessions == 1 or self._shared_sessions % 100 == 0:
                    log.warning("two robots send ticks as session %r at once (their recorders' streams differ): one "
                                "is recorded apart from now on, as %r (%d such so far); give each robot its own "
                                "robot_id (RFMClient(url, robot_id=...)) or session_id", key.rsplit("~", 1)[0], key,
                                self._shared_sessions)
            return key, await self._record_ticks(recorder, key, req)

    async def _record_ticks(self, recorder: Recorder, key: str, req: TicksRequest) -> int:
        """record_ticks for one session, its lock held: the ledger's look, the frames' check, the record, the note."""
        itf = self.interface
        fresh = self.tick_ledger.fresh(key, req)
        if fresh is None:
            return 0  # sent again: recorded already
        left_open = self.tick_ledger.left_open(key, req)

        def check() -> list[tuple]:  # fitting frames costs CPU: off the event loop
            out = []
            for i, t in fresh:
                where = f"ticks[{i}]: "
                images, state, instruction = check_observation(t.observation, itf, self.config.resize_images, where)
                out.append((images, state, self.runner.instruction_for(instruction, where), t))
            return out

        checked = await asyncio.to_thread(check)
        # whole or not at all: the robot's retry must not record a tick twice
        if not recorder.room(len(checked)):  # (an episode end holds no frames: it always fits)
            why = (f"the recording's disk is full ({recorder.waiting_for_disk} episodes wait for room)"
                   if recorder.waiting_for_disk else
                   f"the recorder is {recorder.backlog} items behind and has no room for {len(checked)} ticks")
            raise ApiError(503, "recorder_busy", f"{why}; nothing of this batch was recorded, send it again",
                           {"Retry-After": str(self.config.retry_after_s)})
        if left_open is not None:  # not a gap in this episode (its outcome is not the next one's): ended apart
            recorder.end_episode(key, reason=left_open)
        for k, (images, state, instruction, t) in enumerate(checked):
            last = k == len(checked) - 1
            recorder.record_tick(key, images, state, instruction, t.action, t.chunk, t.label,
                                 success=req.success if last else None, episode_end=req.episode_end and last,
                                 index=t.index, time=t.time)
        if req.episode_end and not checked:
            recorder.end_episode(key, success=req.success)
        self.tick_ledger.note(key, req, [t for *_, t in checked])
        return len(checked)

    def _check_tick_values(self, t, where: str) -> None:
        """A tick's camera names, state, instruction, action, label and chunk (not its frames): ObservationError
        naming the field."""
        itf = self.interface
        obs = t.observation
        if isinstance(obs, dict) and "images" in obs:
            check_camera_names(obs["images"], itf, where)
        if isinstance(obs, dict) and "state" in obs:
            check_state(obs["state"], itf, where)
        instruction = obs.get("instruction", "") if isinstance(obs, dict) else ""
        if isinstance(instruction, str):
            self.runner.instruction_for(instruction, where)
        for name, arr, n in (("action", t.action, itf.action_dim), ("label", t.label, itf.action_dim),
                             ("chunk", t.chunk, itf.chunk_size * itf.action_dim)):
            if arr is not None and arr.size != n:
                raise ObservationError(f"{where}{name} has {arr.size} values, expected {n}")

    def instruction_run(self, instruction: str) -> str:
        """The instruction the model ran: the trained one it was snapped to (--snap-instructions), else as sent."""
        snapper = self.runner.snapper
        return snapper([instruction])[0] if snapper is not None else instruction

    @staticmethod
    def session_key(req: ActRequest | TicksRequest | EpisodeEnd, client_id: str | None,
                    connection: str | None = None) -> str:
        """Which recorded episode stream a request belongs to: session, else robot, else its WebSocket, else client.
        A session id given with a robot id is that robot's: two robots sent with one session id (a copied example's
        "cell-1") were recorded into one episode, their ticks interleaved; so were two robots that sent no ids on
        their own WebSockets."""
        if req.session_id and req.robot_id:
            return f"{req.session_id}@{req.robot_id}"
        return req.session_id or req.robot_id or connection or client_id or "default"

    def close(self) -> None:
        self.batcher.close(self.config.shutdown_drain_s)
        if self.recorder is not None:
            self.recorder.close()  # flush open sessions as episodes
