"""Prometheus metrics of the daemon, served by the web app's ``/metrics`` route.

Everything lives on the daemon's own :class:`CollectorRegistry`, never the library's global
one, so that two daemons in one process (the tests) never collide and nothing a library
registers globally leaks into the page.

Metrics (all prefixed ``phasewatch_``):

- ``files{state}``: files in the queue by state, read from the store at scrape time.
- ``queue_depth``: images handed to the inference worker and not finished yet.
- ``results_total{outcome}``: ``done`` and ``failed`` results.
- ``result_latency_seconds``: histogram, file settled -> result served (done results).
- ``inference_seconds``: histogram, backend time per image (all its tiles).
- ``backend_info{backend, model}``: the backend and model in use; changes on reload.
- ``process_*``: CPU, memory and open files of the daemon's process.
- ``gpu_utilisation_ratio{gpu, name}``, ``gpu_memory_used_bytes``, ``gpu_memory_total_bytes``,
  ``gpu_temperature_celsius``: each GPU as NVML reads it at scrape time (``service/gpu.py``);
  absent without NVML (a CPU machine, a Jetson).

Throughput is not a gauge of its own: Prometheus derives it from the counter, e.g. images per
second over the last minute is ``rate(phasewatch_results_total{outcome="done"}[1m])``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily

from phasewatch.service.gpu import Gpus

log = logging.getLogger(__name__)

NAMESPACE = "phasewatch"
OUTCOMES = ("done", "failed")
# The operator expects a result within about a second; a 20k x 20k field on a small board
# takes tens of seconds. Finer buckets around one second, where the promise is.
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0)
INFERENCE_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _FilesByStateCollector:
    """Reads the store's counts when scraped, so the numbers are never stale or double-kept."""

    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            counts = self._counts()
        except Exception as exc:
            # One unreadable source must not fail the whole scrape; the gap shows in graphs.
            log.warning("metrics: cannot read file counts from the store: %s", exc)
            return
        family = GaugeMetricFamily(
            f"{NAMESPACE}_files", "Files in the queue by state.", labels=["state"]
        )
        for state, n in sorted(counts.items()):
            family.add_metric([state], n)
        yield family


class _GpuCollector:
    """Reads NVML when scraped; a device NVML cannot read leaves the GPU series out of that
    scrape (``/healthz`` says why), never the whole page."""

    def __init__(self, gpus: Gpus) -> None:
        self._gpus = gpus

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            readings = self._gpus.read()
        except self._gpus.nvml.NVMLError as exc:
            log.warning("metrics: cannot read the GPUs through NVML: %s", exc)
            return
        labels = ["gpu", "name"]
        families = [
            (GaugeMetricFamily(f"{NAMESPACE}_gpu_utilisation_ratio",
                               "Share of the last sample period a kernel ran on the GPU (NVML).", labels=labels),
             lambda r: r.utilisation_pct / 100),
            (GaugeMetricFamily(f"{NAMESPACE}_gpu_memory_used_bytes", "GPU memory in use (NVML).", labels=labels),
             lambda r: r.memory_used_bytes),
            (GaugeMetricFamily(f"{NAMESPACE}_gpu_memory_total_bytes", "GPU memory in all (NVML).", labels=labels),
             lambda r: r.memory_total_bytes),
            (GaugeMetricFamily(f"{NAMESPACE}_gpu_temperature_celsius", "GPU core temperature (NVML).",
                               labels=labels),
             lambda r: r.temperature_c),
        ]
        for family, value in families:
            for reading in readings:
                family.add_metric([str(reading.gpu), reading.name], value(reading))
            yield family


class DaemonMetrics:
    """The daemon's metrics; ``counts`` returns files per state (e.g. ``store.counts_by_state``);
    ``gpus``, where NVML is present, adds the GPU series."""

    def __init__(self, counts: Callable[[], dict[str, int]], gpus: Gpus | None = None) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_FilesByStateCollector(counts))
        if gpus is not None:
            self.registry.register(_GpuCollector(gpus))
        ProcessCollector(registry=self.registry)
        self.queue_depth = Gauge(
            "queue_depth",
            "Images handed to the inference worker and not finished yet.",
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.results = Counter(
            "results",
            "Results by outcome (done or failed).",
            ["outcome"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        for outcome in OUTCOMES:
            self.results.labels(outcome)  # both series exist, at 0, from the first scrape
        self.result_latency = Histogram(
            "result_latency_seconds",
            "Seconds from a file settling in the watch folder to its result being served.",
            namespace=NAMESPACE,
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.inference_time = Histogram(
            "inference_seconds",
            "Backend seconds per image, all of its tiles.",
            namespace=NAMESPACE,
            buckets=INFERENCE_BUCKETS_S,
            registry=self.registry,
        )
        self.backend_info = Info(
            "backend", "Inference backend and model in use.", namespace=NAMESPACE,
            registry=self.registry,
        )

    def set_backend(self, backend: str, model: str) -> None:
        self.backend_info.info({"backend": backend, "model": model})

    def result_done(self, latency_s: float) -> None:
        """A result was served ``latency_s`` seconds after its file settled."""
        self.results.labels("done").inc()
        self.result_latency.observe(latency_s)

    def result_failed(self) -> None:
        self.results.labels("failed").inc()

    def observe_inference(self, seconds: float) -> None:
        self.inference_time.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The text exposition and its content type, for the ``/metrics`` route."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
