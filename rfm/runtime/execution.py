"""The execution mode a checkpoint recommends: how many actions of each chunk a robot runs before it asks again.

Recorded in the checkpoint's meta (`execution`) by `rfm adapt --select-episodes` (each task's mode chosen on
validation episodes) or by hand (`rfm card CKPT --action-steps K`), carried into exports and served on
GET /v1/models, so the SDK's ChunkExecutor runs a model the way it was validated without the robot being told:
    {"action_steps": K, "by_instruction": {instruction: K, ...}, "source": "..."}
`action_steps` is the default, `by_instruction` overrides it for the instructions it names (a multi-task model).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def check_action_steps(value: Any, chunk_size: int | None = None, where: str = "action_steps") -> int:
    """A number of actions per request: a whole number in [1, chunk_size]; ValueError naming `where`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (chunk_size and value > chunk_size):
        upto = f" and at most the chunk size {chunk_size}" if chunk_size else ""
        raise ValueError(f"{where}={value!r}: expected a whole number of actions per request, >= 1{upto}")
    return value


def check_execution(execution: Any, chunk_size: int | None = None, where: str = "execution") -> dict | None:
    """The recorded execution mode in its normal form (None: the checkpoint recommends none); ValueError naming
    the field when it is malformed."""
    if execution is None:
        return None
    if not isinstance(execution, Mapping):  # a malformed field, reported like the others
        got = type(execution).__name__
        raise ValueError(f"{where} must be an object with 'action_steps', got {got}")  # noqa: TRY004
    by = execution.get("by_instruction") or {}
    if not isinstance(by, Mapping) or not all(isinstance(k, str) for k in by):
        raise ValueError(f"{where}.by_instruction must map instructions to actions per request")
    steps = check_action_steps(execution.get("action_steps"), chunk_size, f"{where}.action_steps")
    return {"action_steps": steps,
            "by_instruction": {k: check_action_steps(v, chunk_size, f"{where}.by_instruction[{k!r}]")
                               for k, v in by.items()},
            **{k: v for k, v in execution.items() if k not in ("action_steps", "by_instruction")}}


def delay_note(action_steps: int | None, delay: int, chunk_size: int) -> str | None:
    """What a simulated inference delay does to a robot executing `action_steps` actions per request of
    `chunk_size`-action chunks, when that is not what one would guess; None when the delay is simulated as asked.
    Whole chunks: each chunk is asked for when the last runs out, the robot (and the simulated world) waits for it,
    so a delay changes nothing. K + D past the chunk: the robot waits K + D - H ticks for every chunk."""
    if not delay:
        return None
    if action_steps is None:
        return (f"--delay {delay} with whole chunks: each chunk is asked for when the last runs out, and the robot "
                f"(and the simulated world) waits for it, so the delay changes nothing; give --action-steps K "
                f"(K + D <= {chunk_size}) to measure it")
    if action_steps + delay > chunk_size:
        return (f"--action-steps {action_steps} + --delay {delay} > the chunk's {chunk_size} actions: the robot waits "
                f"{action_steps + delay - chunk_size} ticks for each chunk (and commits no actions then); "
                f"--action-steps {max(chunk_size - delay, 1)} keeps it moving")
    return None
