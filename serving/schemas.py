"""Pydantic models that document the HTTP API in OpenAPI (/docs). Bodies are parsed by serving.codec."""

from __future__ import annotations

from pydantic import BaseModel, Field


class RawArray(BaseModel):
    """Raw pixels or numbers: in JSON `data` is base64; in msgpack it is bytes."""

    data: str = Field(description="base64 of the raw array bytes (msgpack: bin)")
    shape: list[int] = Field(description="e.g. [H, W, 3] for an image")
    dtype: str = Field("uint8", description="numpy dtype name: uint8 for images, float32 for state")


ImageValue = str | RawArray | list


class ActRequestBody(BaseModel):
    """One observation of one robot."""

    images: dict[str, ImageValue] = Field(description="camera name -> base64 JPEG/PNG, raw array, or nested list "
                                                      "(H, W, 3) of 0-255 integers")
    state: list[float] | RawArray = Field(description="robot state, D_s numbers")
    instruction: str = Field("", description="language instruction", max_length=4096)
    request_id: str | None = Field(None, description="echoed back; generated when absent", max_length=128)
    robot_id: str | None = Field(None, description="for the audit log", max_length=128)
    session_id: str | None = Field(None, description="for the audit log and the recorder (one episode per session)",
                                   max_length=128)
    episode_end: bool = Field(False, description="recorder: this step ends the robot's current episode")
    success: bool | None = Field(None, description="recorder: outcome label (task succeeded)")
    correction: list[float] | None = Field(None, description="recorder: operator/expert action (D_a numbers) "
                                                             "recorded instead of the model's, DAgger-style")
    record: bool = Field(True, description="recorder: false when the robot reports its executed ticks on "
                                           "POST /v1/ticks instead")
    deadline_ms: float | None = Field(None, gt=0, le=600_000, description=(
        "answer within this many ms of arrival (capped by the server's --timeout-ms); a request the server cannot "
        "answer in time is refused at once with 503 + Retry-After"))


class Timings(BaseModel):
    decode_ms: float = Field(description="arrival to queued: body read, decoding, validation")
    queue_ms: float = Field(description="time waiting for a batch")
    inference_ms: float = Field(description="runner time of the whole batch")
    total_ms: float = Field(description="server time from arrival to response")


class ActResponseBody(BaseModel):
    """An action chunk. In msgpack responses `actions` is {data: float32 bytes, shape: [H, D_a], dtype}."""

    actions: list[list[float]] = Field(description="H x D_a actions in robot units")
    action_names: list[str]
    model_id: str
    model_version: str
    request_id: str
    timings: Timings
    batch_size: int = Field(description="requests in the batch this one ran in")
    clipped: bool = Field(description="true when any action was clipped to the safety limits")
    clipped_dims: list[str] = Field(description="names of the action dimensions that were clipped")


class ErrorBody(BaseModel):
    error: str = Field(description="short code, e.g. invalid_observation, overloaded, unauthorized")
    detail: str = Field(description="what was expected and what arrived")
    request_id: str | None = None


ERROR_RESPONSES = {code: {"model": ErrorBody, "description": desc} for code, desc in {
    401: "missing or invalid API key", 413: "body over the size limit", 415: "unsupported Content-Type",
    422: "observation does not match the model", 500: "inference failed for this request's batch",
    503: "not ready, overloaded (see Retry-After) or shutting down", 504: "deadline exceeded"}.items()}


class EpisodeEndBody(BaseModel):
    """Close a robot session's recorded episode (servers started with --record)."""

    session_id: str | None = Field(None, max_length=128, description="the session to close (else robot_id)")
    robot_id: str | None = Field(None, max_length=128)
    success: bool | None = Field(None, description="outcome label for the episode")
