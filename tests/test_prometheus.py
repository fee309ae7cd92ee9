"""The daemon's Prometheus page, parsed back with prometheus_client's own parser.

(test_metrics.py belongs to the segmentation scores; this file is about /metrics.)
"""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from phasewatch.service.prometheus import LATENCY_BUCKETS_S, DaemonMetrics


def _samples(metrics: DaemonMetrics) -> dict[tuple[str, tuple], float]:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def _counts():
    return {"pending": 4, "processing": 1, "done": 17, "failed": 2}


def test_files_by_state_are_read_at_scrape_time():
    counts = _counts()
    metrics = DaemonMetrics(lambda: counts)
    s = _samples(metrics)
    assert s[("phasewatch_files", (("state", "pending"),))] == 4
    assert s[("phasewatch_files", (("state", "failed"),))] == 2
    counts["pending"] = 0
    assert _samples(metrics)[("phasewatch_files", (("state", "pending"),))] == 0


def test_failing_counts_leave_the_rest_of_the_page():
    def broken() -> dict[str, int]:
        raise RuntimeError("database is locked")

    metrics = DaemonMetrics(broken)
    metrics.result_failed()
    s = _samples(metrics)
    assert not any(name == "phasewatch_files" for name, _ in s)
    assert s[("phasewatch_results_total", (("outcome", "failed"),))] == 1


def test_results_and_latency():
    metrics = DaemonMetrics(_counts)
    s = _samples(metrics)
    assert s[("phasewatch_results_total", (("outcome", "done"),))] == 0
    assert s[("phasewatch_results_total", (("outcome", "failed"),))] == 0

    for latency in (0.04, 0.3, 0.9, 45.0):
        metrics.result_done(latency)
    metrics.result_failed()
    s = _samples(metrics)
    assert s[("phasewatch_results_total", (("outcome", "done"),))] == 4
    assert s[("phasewatch_results_total", (("outcome", "failed"),))] == 1
    assert s[("phasewatch_result_latency_seconds_count", ())] == 4
    assert s[("phasewatch_result_latency_seconds_sum", ())] == pytest.approx(46.24)

    def bucket(le: str) -> float:
        return s[("phasewatch_result_latency_seconds_bucket", (("le", le),))]

    # cumulative counts, by hand: 0.04 | 0.3 | 0.9 | 45 (beyond the last bucket)
    assert bucket("0.05") == 1
    assert bucket("0.25") == 1
    assert bucket("0.5") == 2
    assert bucket("1.0") == 3
    assert bucket("30.0") == 3
    assert bucket("+Inf") == 4
    assert LATENCY_BUCKETS_S[0] == 0.05 and LATENCY_BUCKETS_S[-1] == 30.0


def test_inference_time_queue_depth_and_backend():
    metrics = DaemonMetrics(_counts)
    metrics.observe_inference(0.02)
    metrics.observe_inference(0.2)
    metrics.queue_depth.set(3)
    metrics.queue_depth.dec()
    metrics.set_backend("cpu", "ferrite-pearlite")
    s = _samples(metrics)
    assert s[("phasewatch_inference_seconds_count", ())] == 2
    assert s[("phasewatch_inference_seconds_sum", ())] == pytest.approx(0.22)
    assert s[("phasewatch_inference_seconds_bucket", (("le", "0.025"),))] == 1
    assert s[("phasewatch_inference_seconds_bucket", (("le", "0.25"),))] == 2
    assert s[("phasewatch_queue_depth", ())] == 2
    key = ("phasewatch_backend_info", (("backend", "cpu"), ("model", "ferrite-pearlite")))
    assert s[key] == 1

    metrics.set_backend("tensorrt", "ferrite-pearlite")  # a reload replaces, never adds
    infos = [k for k in _samples(metrics) if k[0] == "phasewatch_backend_info"]
    assert infos == [("phasewatch_backend_info", (("backend", "tensorrt"),
                                                  ("model", "ferrite-pearlite")))]


def test_own_registry_not_the_global_one():
    first, second = DaemonMetrics(_counts), DaemonMetrics(_counts)  # would clash if global
    first.result_failed()
    assert _samples(second)[("phasewatch_results_total", (("outcome", "failed"),))] == 0
    assert REGISTRY.get_sample_value("phasewatch_results_total", {"outcome": "failed"}) is None
