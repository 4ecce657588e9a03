"""Prometheus metrics, kept in a registry of the app's own so that two apps never collide.

With several workers (``app.workers``) every worker writes its figures to files in
``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode) and a scrape, whichever
worker answers it, reads them all: counters and histograms add up, the live gauges are the
sum over the workers (``alexnet_model_ready`` one sample per worker, labelled ``pid``). A
gauge read from a live figure (queue depth, images admitted, ...) is written to its file by
each worker every ``LIVE_REFRESH_S``, and by the answering worker at the scrape.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from app.engine import batch_buckets

if TYPE_CHECKING:
    from app.engine import ModelInfo
    from app.registry import ModelRegistry
    from app.service import Timed

# From half a millisecond (a queue hop) to the 30 s request timeout.
SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# How old another worker's live gauges may be at a scrape (several workers only).
LIVE_REFRESH_S = 0.5


class Metrics:
    """Every metric the service exports; ``render()`` is the ``/metrics`` body."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, max_batch_size: int) -> None:
        self.multiprocess = "PROMETHEUS_MULTIPROC_DIR" in os.environ  # set by app.workers for its workers
        self._live: list[tuple[Gauge, Callable[[], float]]] = []  # multiprocess: written by publish_live
        self.registry = CollectorRegistry()
        seconds, registry = SECONDS_BUCKETS, self.registry
        self.requests = Counter(
            "alexnet_http_requests", "HTTP requests answered.", ["method", "route", "status"], registry=registry
        )
        self.latency = Histogram(
            "alexnet_http_request_duration_seconds",
            "Time from a request's arrival to the end of its response.",
            ["method", "route"],
            buckets=seconds,
            registry=registry,
        )
        self.in_flight = Gauge(
            "alexnet_http_requests_in_flight",
            "HTTP requests being answered.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.queue_wait = Histogram(
            "alexnet_queue_wait_seconds",
            "Time an image waited for its batch.",
            ["model"],
            buckets=seconds,
            registry=registry,
        )
        self.preprocess = Histogram(
            "alexnet_preprocess_seconds",
            "Time to decode, resize and crop one request's image (or split its preprocessed array).",
            ["model"],
            buckets=seconds,
            registry=registry,
        )
        self.inference = Histogram(
            "alexnet_inference_seconds", "Time the model took per batch.", ["model"], buckets=seconds, registry=registry
        )
        self.batch_size = Histogram(
            "alexnet_batch_size",
            "Images per batch the model ran.",
            ["model"],
            buckets=batch_buckets(max_batch_size),
            registry=registry,
        )
        self.queue_depth = Gauge(
            "alexnet_queue_depth",
            "Images waiting for a batch.",
            ["model"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.admitted = Gauge(
            "alexnet_images_admitted",
            "Images taken on and not yet answered (uploading, decoding, waiting or in a batch); "
            "new requests get 429 at max_queue.",
            ["model"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.preparing = Gauge(
            "alexnet_images_preparing",
            "Images being decoded or waiting for a decode thread.",
            ["model"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.images_in_flight = Gauge(
            "alexnet_images_in_flight",
            "Images in the batch the model runs now.",
            ["model"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.ready = Gauge(
            "alexnet_model_ready",
            "1 when the model takes work, else 0.",
            ["model"],
            registry=registry,
            multiprocess_mode="liveall",
        )
        # A gauge, not an Info (multiprocess mode has no Info): the same alexnet_model_info samples.
        self.model_info = Gauge(
            "alexnet_model_info",
            "The served model.",
            ["model", "arch", "device", "dtype", "classes"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.degraded = Gauge(
            "alexnet_model_degraded",
            "1 while the model runs slower than it was asked to, by reason (disk_full, not_writable, no_compiler, "
            "compile_failed: torch.compile is off); /models says why in words and what it costs.",
            ["model", "reason"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self._models: ModelRegistry | None = None
        self._described: dict[str, tuple[str, ...]] = {}  # model → its alexnet_model_info labels
        self.device_memory = Gauge(
            "alexnet_cuda_memory_allocated_bytes",
            "CUDA memory held by tensors (only for models on CUDA).",
            ["device"],
            registry=registry,
            multiprocess_mode="livesum",
        )

    def track(self, models: ModelRegistry) -> None:
        """Publish each model's description and read its live figures at every scrape."""
        self._models = models
        for service in models:
            info, name, batcher = service.info, service.info.name, service.batcher
            self._describe(info)
            self._live_gauge(self.queue_depth.labels(name), lambda b=batcher: b.queue_depth)
            self._live_gauge(self.admitted.labels(name), lambda s=service: s.admission.admitted)
            self._live_gauge(self.preparing.labels(name), lambda s=service: s.preparing)
            self._live_gauge(self.images_in_flight.labels(name), lambda b=batcher: b.in_flight)
            self._live_gauge(self.ready.labels(name), lambda s=service: float(s.ready))
            if service.device_memory_bytes() is not None:
                self._live_gauge(self.device_memory.labels(info.device), lambda s=service: s.device_memory_bytes() or 0)
        if self._live:
            threading.Thread(target=self._keep_publishing, name="metrics", daemon=True).start()

    def _live_gauge(self, gauge: Gauge, read: Callable[[], float]) -> None:
        """``gauge`` reads ``read()`` at every scrape; with several workers, it is written every LIVE_REFRESH_S."""
        if self.multiprocess:
            self._live.append((gauge, read))
        else:
            gauge.set_function(read)

    def _keep_publishing(self) -> None:
        while True:
            self.publish_live()
            time.sleep(LIVE_REFRESH_S)

    def publish_live(self) -> None:
        """Write the live gauges now (several workers) and each model's description as warm-up left
        it (it may have given up compiling): at readiness, so that no scrape after it can still read
        a worker's warming-up figures."""
        for service in self._models or ():
            self._describe(service.info)
        for gauge, read in self._live:
            gauge.set(read())

    def _describe(self, info: ModelInfo) -> None:
        """``alexnet_model_info`` for the model as it runs now, and ``alexnet_model_degraded`` when it is."""
        labels = (info.name, info.arch, info.device, info.dtype, str(len(info.labels)))
        if (old := self._described.get(info.name)) not in (None, labels):
            self.model_info.labels(*old).set(0)  # several workers: a removed sample stays in its file, as 0
            self.model_info.remove(*old)
        self.model_info.labels(*labels).set(1)
        self._described[info.name] = labels
        if info.degraded is not None:
            self.degraded.labels(info.name, info.degraded.reason).set(1)

    def observe_batch(self, model: str, size: int, seconds: float) -> None:
        """One batch the model ran (the batcher's hook)."""
        self.batch_size.labels(model).observe(size)
        self.inference.labels(model).observe(seconds)

    def observe_request(
        self, method: str, route: str, status: int, seconds: float, model: str | None, answers: list[Timed]
    ) -> None:
        """One answered HTTP request and the per-image stages it went through."""
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)
        if model is not None and answers:
            queue_wait, preprocess = self.queue_wait.labels(model), self.preprocess.labels(model)
            for answer in answers:
                queue_wait.observe(answer.queue)
                preprocess.observe(answer.preprocess)

    def render(self) -> bytes:
        """The text exposition format of every metric (of every worker, with several)."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        self.publish_live()
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry)
