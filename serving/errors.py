"""One mapping from every failure to (HTTP status, short error code, client-safe message). Never a traceback."""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass, field

from rfm.runtime.observation import ObservationError
from serving.admission import DeadlineTooShort, WouldMissDeadline
from serving.auth import AuthError
from serving.batcher import BatchFailed, DeadlineExceeded, QueueFull, ShuttingDown
from serving.codec import PayloadError

log = logging.getLogger("rfm.serving")


class NotReady(Exception):
    """The model is still loading or warming up (503)."""


class PayloadTooLarge(Exception):
    """The body or message is over the configured limit (413)."""


@dataclass
class ApiError(Exception):
    """An error ready to send: status, code, message, extra headers."""

    status: int
    code: str
    message: str
    headers: dict = field(default_factory=dict)

    def body(self, request_id: str | None = None) -> dict:
        out = {"error": self.code, "detail": self.message}
        if request_id:
            out["request_id"] = request_id
        return out


def to_api_error(exc: BaseException, retry_after_s: int = 1) -> ApiError:
    """Classify any exception; unknown ones become a generic 500 (their details go to the server log only)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, PayloadError):
        return ApiError(exc.status, "unsupported_media_type" if exc.status == 415 else "invalid_payload", str(exc))
    if isinstance(exc, ObservationError):
        return ApiError(422, "invalid_observation", str(exc))
    if isinstance(exc, AuthError):
        return ApiError(401, "unauthorized", str(exc), {"WWW-Authenticate": "Bearer"})
    if isinstance(exc, PayloadTooLarge):
        return ApiError(413, "payload_too_large", str(exc))
    if isinstance(exc, DeadlineTooShort):
        return ApiError(422, "deadline_too_short", str(exc))
    if isinstance(exc, WouldMissDeadline):  # Retry-After: whole seconds (RFC 9110), at least 1
        return ApiError(503, "overloaded", str(exc), {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))})
    if isinstance(exc, (QueueFull, ShuttingDown, NotReady)):
        code = {QueueFull: "overloaded", ShuttingDown: "shutting_down", NotReady: "not_ready"}[type(exc)]
        return ApiError(503, code, str(exc), {"Retry-After": str(retry_after_s)})
    if isinstance(exc, (DeadlineExceeded, asyncio.TimeoutError, TimeoutError)):
        return ApiError(504, "deadline_exceeded", str(exc) or "the request did not finish before its deadline")
    if isinstance(exc, BatchFailed):
        return ApiError(500, "inference_failed", str(exc))
    log.error("unexpected error: %s", exc, exc_info=exc)
    return ApiError(500, "internal_error", "internal server error")
