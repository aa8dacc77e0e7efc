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

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
