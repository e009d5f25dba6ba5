"""Prometheus metrics of one server process: requests, latency, batch sizes, queue depth, inference time, streams.

Each app has its own registry, so several apps in one process (tests) do not collide. With `--workers N`, each
process counts its own requests: scrape each worker, or run one worker per container.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
OTHER_ROUTE = "other"  # unknown paths share one label, so a scan of random URLs cannot grow the series without bound


class ServeMetrics:
    """The metric families, registered in a registry of their own."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "peopleseg_requests", "HTTP requests by route, method and status", ("route", "method", "status"),
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "peopleseg_request_seconds", "HTTP request latency by route", ("route",), buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.batch_size = Histogram(
            "peopleseg_batch_size", "images per forward pass", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.inference = Histogram(
            "peopleseg_batch_seconds", "time to segment one batch", buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.images = Counter("peopleseg_images", "images segmented", registry=self.registry)
        self.queue_depth = Gauge("peopleseg_queue_depth", "images being decoded or queued", registry=self.registry)
        self.rejected = Counter(
            "peopleseg_rejected", "requests refused before inference, by reason", ("reason",), registry=self.registry
        )
        self.streams = Gauge("peopleseg_stream_connections", "open /v1/stream WebSockets", registry=self.registry)
        self.stream_frames = Counter("peopleseg_stream_frames", "frames answered on /v1/stream", registry=self.registry)

    def watch_queue(self, depth: Callable[[], int]) -> None:
        """Read the queue depth at scrape time, so the gauge is never stale."""
        self.queue_depth.set_function(depth)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts and times every HTTP request (not WebSockets) under its route's path template."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics, routes: Callable[[], Iterable[str]]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes
        self._known: frozenset[str] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._known is None:
            self._known = frozenset(self.routes())
        route = scope["path"] if scope["path"] in self._known else OTHER_ROUTE
        status = 500  # what the client sees if the app fails before starting a response
        start = time.perf_counter()

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
