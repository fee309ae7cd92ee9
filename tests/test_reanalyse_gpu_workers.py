"""`reanalyse` on a GPU (issue 26, defect 12): one worker per device by default, each pinned to its
own; the device count comes from a fake pynvml (tests/fakes/nvml.py), no GPU here."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from fakes.nvml import Device, fake_pynvml
from onnx_graphs import make_bundle

from phasewatch.app.commands import reanalyse
from phasewatch.backends import registry
from phasewatch.bundle import load_bundle
from phasewatch.service.archive_pool import open_pool


@pytest.fixture
def bundle(tmp_path: Path):
    return load_bundle(make_bundle(tmp_path / "bundle"))


@pytest.fixture
def three_gpus(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(Device(), Device(), Device()))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(reanalyse, "cores", lambda: 16)


def test_a_gpu_backend_gets_one_worker_per_device_and_the_cpu_one_per_core(bundle, three_gpus, monkeypatch):
    assert reanalyse.default_workers("cuda", bundle) == (3, ["0", "1", "2"])
    assert reanalyse.default_workers("tensorrt", bundle) == (3, ["0", "1", "2"])
    assert reanalyse.default_workers("cpu", bundle) == (16, [])
    assert reanalyse.default_workers("triton", bundle) == (16, [])  # the server holds the GPU
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    assert reanalyse.default_workers("cuda", bundle) == (2, ["2", "0"])


def test_auto_counts_as_gpu_only_where_a_gpu_kind_is_available(bundle, three_gpus, monkeypatch):
    # this machine's onnxruntime has no CUDA provider and there is no tensorrt module
    assert reanalyse.default_workers("auto", bundle) == (16, [])
    cuda = registry.BACKENDS["cuda"]
    monkeypatch.setitem(registry.BACKENDS, "cuda", cuda._replace(unavailable=lambda b: None))
    assert reanalyse.default_workers("auto", bundle) == (3, ["0", "1", "2"])


def test_without_nvml_a_gpu_backend_gets_one_worker(bundle, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # a Jetson: no NVML
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert reanalyse.default_workers("cuda", bundle) == (1, ["0"])


def device_of_worker(_: int) -> tuple[int, str | None]:
    time.sleep(0.5)  # both workers busy at once, so each takes one task
    return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES")


def test_each_local_worker_sees_only_its_own_device():
    with open_pool(2, None, ["3", "5"]) as (executor, slots):
        seen = dict(executor.map(device_of_worker, range(2)))
    assert slots == 2 and sorted(seen.values()) == ["3", "5"]
