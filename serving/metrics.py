"""Prometheus metrics of one server: requests by endpoint and status, latency, queue depth, batch sizes."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """Own registry per app, so several servers in one process (tests) do not collide."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("rfm_requests", "Requests answered, by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("rfm_request_latency_seconds", "Server-side latency per request", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("rfm_queue_depth", "Requests waiting for a batch", registry=r)
        self.batch_size = Histogram("rfm_batch_size", "Requests per inference batch", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.inference = Histogram("rfm_inference_seconds", "Runner time per batch", buckets=LATENCY_BUCKETS,
                                   registry=r)
        self.clipped = Counter("rfm_actions_clipped", "Responses whose actions were clipped to the limits",
                               registry=r)
        self.ws_connections = Gauge("rfm_websocket_connections", "Open WebSocket connections", ["endpoint"],
                                    registry=r)
        self.ready = Gauge("rfm_ready", "1 once the model is loaded and warm", registry=r)
        self.recorder_backlog = Gauge("rfm_recorder_backlog", "Recorded steps waiting to be written (--record)",
                                      registry=r)
        self.recorder_dropped = Gauge("rfm_recorder_dropped_steps", "Steps the recorder dropped (its queue was "
                                      "full): never the answer, only the recording", registry=r)
        self.recorder_episodes = Gauge("rfm_recorder_episodes_written", "Episodes the recorder wrote", registry=r)
        self.recorder_lost = Gauge("rfm_recorder_episodes_lost", "Episodes the recorder could not write (disk full, "
                                   "encoder failure; see the server log)", registry=r)
        self.recorder_sessions = Gauge("rfm_recorder_open_sessions", "Robot sessions with an episode being recorded",
                                       registry=r)
        self.recorder_waiting = Gauge("rfm_recorder_episodes_waiting_for_disk", "Episodes that ended while the "
                                      "recording's disk was full, kept until there is room (ticks are refused "
                                      "meanwhile)", registry=r)
        self.model_info = Gauge("rfm_model_info", "The model this replica serves and the engine it runs on (always 1)",
                                ["model_id", "model_version", "engine"], registry=r)

    def serving(self, model_id: str, model_version: str, engine: str) -> None:
        """The served model and engine, one series at a time: a fleet sees which replicas run which version, and
        when a first start has moved onto its exported engine."""
        self.model_info.clear()
        self.model_info.labels(model_id, model_version, engine).set(1)

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference.observe(seconds)

    def observe_recorder(self, recorder) -> None:
        """Read the recorder's backlog, drops and episodes (at scrape time: nothing on the hot path)."""
        self.recorder_backlog.set(recorder.backlog)
        self.recorder_dropped.set(recorder.dropped)
        self.recorder_episodes.set(recorder.episodes_written)
        self.recorder_lost.set(recorder.episodes_lost)
        self.recorder_sessions.set(recorder.open_sessions)
        self.recorder_waiting.set(recorder.waiting_for_disk)

    def render(self) -> bytes:
        return generate_latest(self.registry)
