"""The GPU in /metrics and /healthz (issue 26, defect 13), through the fake pynvml of
tests/fakes/nvml.py (no GPU here), on the real daemon, store and Prometheus page."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from fakes.nvml import Device, fake_pynvml
from onnx_graphs import make_bundle
from prometheus_client.parser import text_string_to_metric_families
from test_daemon import ThresholdBackend

from phasewatch.bundle import load_bundle
from phasewatch.core.pipeline import Model
from phasewatch.service.config import load_config
from phasewatch.service.daemon import Daemon
from phasewatch.service.gpu import open_gpus, visible_devices
from phasewatch.store import Store


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch):
    module = fake_pynvml(Device(), Device(name="NVIDIA L4", total=24 << 30, used=1 << 30, ecc=None, temperature=41))
    monkeypatch.setitem(sys.modules, "pynvml", module)
    return module


@pytest.fixture
def daemon(tmp_path: Path, nvml):
    bundle = load_bundle(make_bundle(tmp_path / "bundle"))
    (tmp_path / "watch").mkdir()
    config = load_config(None, {"watch": tmp_path / "watch", "data": tmp_path / "data"})
    store = Store(config.data.database)
    made = Daemon(config, store, lambda: Model(bundle, ThresholdBackend()))
    yield made
    made.model.close()
    store.close()


def samples(daemon: Daemon) -> dict[tuple[str, str], float]:
    body, _ = daemon.metrics.render()
    return {(s.name, s.labels.get("gpu", "")): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples
            if s.name.startswith("phasewatch_gpu_")}


def test_metrics_show_each_gpus_utilisation_memory_and_temperature(daemon, nvml):
    s = samples(daemon)
    assert s[("phasewatch_gpu_utilisation_ratio", "0")] == pytest.approx(0.37)
    assert s[("phasewatch_gpu_memory_used_bytes", "0")] == 12 << 30
    assert s[("phasewatch_gpu_memory_total_bytes", "1")] == 24 << 30
    assert s[("phasewatch_gpu_temperature_celsius", "1")] == 41
    nvml.devices[0].temperature = 83  # read at scrape time, not at start
    assert samples(daemon)[("phasewatch_gpu_temperature_celsius", "0")] == 83


def test_a_healthy_gpu_is_no_problem_and_one_that_falls_off_the_bus_is(daemon, nvml):
    assert "gpu" not in daemon.health()[1]  # (the watcher, not started here, is a problem of its own)
    nvml.devices[1].lost = True
    ok, problems = daemon.health()
    assert not ok and problems["gpu"] == "1 of 2 GPU(s) gone since the service started"
    assert daemon.alive()  # the page says so; the watchdog is for stuck stages
    assert samples(daemon) == {}  # the GPU series leave that scrape, the rest of the page stays


def test_uncorrected_ecc_errors_and_critical_xids_since_start_fail_health(daemon, nvml):
    nvml.devices[0].ecc = 2
    nvml.devices[1].xids.append(79)  # "GPU has fallen off the bus"
    ok, problems = daemon.health()
    assert not ok
    assert problems["gpu"] == ("GPU 1: critical Xid 79; GPU 0 (NVIDIA H100 80GB HBM3): 2 uncorrected ECC "
                               "error(s) since the service started")
    assert daemon.health()[1]["gpu"].startswith("GPU 1: critical Xid 79")  # an Xid stays once seen


def test_no_nvml_no_gpu_series_and_no_gpu_component(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails as where nvidia-ml-py is absent
    assert open_gpus() is None


def test_nvml_that_does_not_start_is_no_gpu(monkeypatch):
    module = fake_pynvml(Device())

    def no_driver() -> None:
        raise module.NVMLError(9)  # NVML_ERROR_DRIVER_NOT_LOADED

    module.nvmlInit = no_driver
    monkeypatch.setitem(sys.modules, "pynvml", module)
    assert open_gpus() is None


def test_visible_devices_follow_cuda_visible_devices_then_nvml(nvml, monkeypatch):
    gpus = open_gpus()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_devices(gpus) == 2 and visible_devices(None) is None
    for value, count in (("1", 1), ("", 0), ("-1", 0), ("0,1,-1,2", 2), ("GPU-8e1c,GPU-77aa", 2)):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
        assert visible_devices(gpus) == count, value
