"""Pydantic models that document the HTTP API in OpenAPI (/docs). Bodies are parsed by serving.codec; the request
bodies of /v1/act and /v1/ticks are documented from the served model's interface (serving.openapi)."""

from __future__ import annotations

from pydantic import BaseModel, Field


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
    401: "missing or invalid API key", 408: "the body did not arrive within 60 s", 409: "recording endpoint on a server started without --record",
    413: "body over the size limit", 415: "unsupported Content-Type",
    422: "observation does not match the model", 500: "inference failed for this request's batch",
    503: "not ready, overloaded (see Retry-After) or shutting down", 504: "deadline exceeded"}.items()}
EPISODE_END_RESPONSES = {**ERROR_RESPONSES, 404: {"model": ErrorBody, "description": "no recorded episode is open for "
                                                   "the session (never recorded, already ended, or idle too long)"}}


class EpisodeEndResponseBody(BaseModel):
    session: str = Field(description="the session whose episode was closed")
    recording: bool


class TicksResponseBody(BaseModel):
    session: str = Field(description="the recorded episode stream the ticks went to")
    ticks: int = Field(description="ticks queued for recording")
    episode_end: bool
