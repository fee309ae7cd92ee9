"""Backends: ONNX Runtime runs and splits batches; the registry picks CPU here and says why,
takes a new entry as it is, and refuses what it cannot do."""

from __future__ import annotations

import logging
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from onnx_graphs import make_bundle, make_conv_net

from phasewatch.backends import onnxruntime as ort_backends
from phasewatch.backends.base import BackendError, BackendKind, no_options, options_from_table
from phasewatch.backends.onnxruntime import OrtBackend
from phasewatch.backends.registry import BACKENDS, choose_backend, kind_options, open_backend
from phasewatch.bundle import load_bundle
from phasewatch.service.config import ConfigError, load_config

GPU_PROVIDERS = {"CUDAExecutionProvider", "TensorrtExecutionProvider"}
no_gpu_provider = pytest.mark.skipif(
    bool(GPU_PROVIDERS & set(ort.get_available_providers())), reason="this machine has a GPU provider"
)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return load_bundle(make_bundle(tmp_path_factory.mktemp("bundle"), in_channels=1, num_classes=3))


class FakeBackend:
    name = "fake"
    max_batch = 1

    def run(self, batch: np.ndarray) -> np.ndarray:
        return batch

    def close(self) -> None:
        pass


def fake_kind() -> BackendKind:
    return BackendKind(open=lambda bundle, batch, threads, options: FakeBackend(), unavailable=lambda bundle: None,
                       options=no_options("fake"))


def switch_off_every_kind(monkeypatch) -> None:
    for kind, entry in list(BACKENDS.items()):
        monkeypatch.setitem(BACKENDS, kind, entry._replace(unavailable=lambda bundle: "switched off"))


def test_cpu_backend_computes_a_pointwise_net_by_hand(tmp_path):
    # No 3x3 layers: the net is one 1x1 conv, logits = W @ pixel + b, checkable in numpy.
    path = make_conv_net(tmp_path / "pointwise.onnx", in_channels=2, num_classes=3, layers=())
    params = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    weight, bias = params["w0"][:, :, 0, 0], params["b0"]
    batch = np.random.default_rng(1).normal(size=(3, 2, 16, 16)).astype(np.float32)

    backend = OrtBackend(path, "cpu", max_batch=4)
    logits = backend.run(batch)

    expected = np.einsum("kc,nchw->nkhw", weight, batch) + bias[None, :, None, None]
    assert logits.shape == (3, 3, 16, 16) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_batches_larger_than_max_batch_are_split(bundle, monkeypatch):
    backend = open_backend(bundle, "cpu", batch=2)
    batch = np.random.default_rng(2).normal(size=(5, 1, 32, 32)).astype(np.float32)
    one_by_one = np.concatenate([backend.run(batch[i : i + 1]) for i in range(5)])

    seen = []
    real_run = backend.session.run

    def spy(outputs, feeds):
        seen.append(len(feeds[backend.input_name]))
        return real_run(outputs, feeds)

    monkeypatch.setattr(backend.session, "run", spy)
    logits = backend.run(batch)

    assert seen == [2, 2, 1]
    np.testing.assert_allclose(logits, one_by_one, rtol=1e-5, atol=1e-5)


def test_session_is_set_up_for_a_service(bundle):
    backend = open_backend(bundle, "cpu", batch=4, threads=2)
    options = backend.session.get_session_options()
    assert backend.name == "cpu" and backend.max_batch == 4
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_unknown_kind_is_one_line_error(bundle):
    with pytest.raises(BackendError) as err:
        open_backend(bundle, "quantum")
    message = str(err.value)
    assert "quantum" in message and "\n" not in message and str(bundle.path) in message


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="this machine has CUDA"
)
def test_unavailable_provider_is_one_line_error(bundle):
    with pytest.raises(BackendError) as err:
        open_backend(bundle, "cuda")
    message = str(err.value)
    assert "CUDAExecutionProvider" in message and "\n" not in message


def test_native_tensorrt_missing_is_one_line_error(bundle):
    try:
        import tensorrt  # noqa: F401

        import phasewatch.backends.tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("native TensorRT is available here")
    with pytest.raises(BackendError) as err:
        open_backend(bundle, "tensorrt")
    assert "TensorRT" in str(err.value) and "\n" not in str(err.value)


@no_gpu_provider
def test_auto_picks_cpu_here_and_logs_why(bundle, caplog):
    with caplog.at_level(logging.INFO, logger="phasewatch.backends.registry"):
        backend = open_backend(bundle, "auto")
    assert backend.name == "cpu"
    assert "picked cpu" in caplog.text and "CUDAExecutionProvider" in caplog.text


@no_gpu_provider
def test_choose_backend_says_why_each_faster_kind_was_passed_over(bundle):
    backend, passed_over = choose_backend(bundle, "auto")
    assert backend.name == "cpu"
    assert list(passed_over) == ["tensorrt", "tensorrt-ep", "cuda"]  # fastest first
    assert passed_over["cuda"] == "onnxruntime lacks CUDAExecutionProvider"
    assert passed_over["tensorrt-ep"] == "onnxruntime lacks TensorrtExecutionProvider"
    assert passed_over["tensorrt"]  # no package here, or no engine in the bundle


def test_explicit_kind_passes_nothing_over(bundle):
    assert choose_backend(bundle, "cpu").passed_over == {}


def test_a_new_backend_is_one_registry_entry(bundle, monkeypatch):
    switch_off_every_kind(monkeypatch)
    monkeypatch.setitem(BACKENDS, "fake", fake_kind())
    assert isinstance(open_backend(bundle, "fake"), FakeBackend)
    backend, passed_over = choose_backend(bundle, "auto")
    assert isinstance(backend, FakeBackend)
    assert passed_over == dict.fromkeys(["tensorrt", "tensorrt-ep", "cuda", "cpu"], "switched off")


def test_auto_passes_over_a_kind_that_fails_to_open_with_its_error(bundle, monkeypatch):
    def refuse(bundle, batch, threads, options):
        raise BackendError("cannot open: out of device memory")

    switch_off_every_kind(monkeypatch)
    monkeypatch.setitem(BACKENDS, "tensorrt", BackendKind(refuse, lambda bundle: None, no_options("tensorrt")))
    monkeypatch.setitem(BACKENDS, "fake", fake_kind())
    _, passed_over = choose_backend(bundle, "auto")
    assert passed_over["tensorrt"] == "cannot open: out of device memory"


def test_no_backend_at_all_is_one_line_error_with_every_reason(bundle, monkeypatch):
    switch_off_every_kind(monkeypatch)
    with pytest.raises(BackendError) as err:
        choose_backend(bundle, "auto")
    assert str(err.value) == (f"{bundle.path}: no backend could be opened (tensorrt: switched off; "
                       "tensorrt-ep: switched off; cuda: switched off; cpu: switched off)")


def test_onnxruntime_kinds_open_a_session_named_after_their_entry(bundle, monkeypatch):
    opened = []
    monkeypatch.setattr(ort_backends, "OrtBackend", lambda path, kind, *args: opened.append(kind))
    for entry in BACKENDS.values():
        if entry.provider is not None:
            entry.open(bundle, 2, None, None)
    assert opened == [kind for kind, entry in BACKENDS.items() if entry.provider is not None]
    assert opened == ["tensorrt-ep", "cuda", "cpu"]


def test_native_tensorrt_backend_is_imported_only_when_asked_for():
    script = ("import sys\nfrom phasewatch.backends.registry import KINDS\n"
              "assert 'tensorrt' in KINDS\nassert 'phasewatch.backends.tensorrt' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_tensorrt_ep_builds_fp16_with_cuda_after_it_and_preloads_gpu_libraries(bundle, monkeypatch):
    sessions, preloads = [], []

    class Session:
        def __init__(self, path, sess_options=None, providers=()):
            sessions.append(providers)

        def get_providers(self):
            return [sessions[-1][0][0], "CPUExecutionProvider"]

        def get_inputs(self):
            return [type("Input", (), {"name": "input", "shape": ["N", 1, 64, 64]})()]

    available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: available)
    monkeypatch.setattr(ort, "InferenceSession", Session)
    monkeypatch.setattr(ort, "preload_dlls", lambda: preloads.append(1), raising=False)
    ort_backends.preload_gpu_libraries.cache_clear()
    try:
        BACKENDS["tensorrt-ep"].open(bundle, 2, None, None)
        BACKENDS["tensorrt-ep"].open(bundle, 2, None, None)
    finally:
        ort_backends.preload_gpu_libraries.cache_clear()
    (trt, trt_options), (cuda, _), cpu = sessions[0]
    assert (trt, cuda, cpu) == ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    assert trt_options["trt_fp16_enable"] == "True"
    assert preloads == [1]  # once per process


@dataclass(frozen=True)
class RemoteOptions:
    """A new backend's own settings, as its module would declare them."""

    address: str = "here"
    retries: int = 1

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise BackendError(f"[model.remote] retries: must be >= 0, got {self.retries}")

    @classmethod
    def from_table(cls, table):
        return options_from_table(cls, "remote", table)


def test_a_new_backend_with_settings_is_its_module_and_one_entry(bundle, monkeypatch, tmp_path):
    """Nothing but the registry entry names the new kind: the config checks its [model.remote]
    table through it, and the opener gets the parsed options."""
    opened = []

    def open_remote(bundle, batch, threads, options):
        opened.append((batch, threads, options))
        return FakeBackend()

    monkeypatch.setitem(BACKENDS, "remote", BackendKind(open_remote, lambda bundle: None, RemoteOptions.from_table,
                                                         auto=False))
    config = tmp_path / "phasewatch.toml"
    config.write_text('[model]\nbatch = 4\n\n[model.remote]\naddress = "gpu-box"\nretries = 3\n')
    settings = load_config(config).model.settings
    assert settings == {"remote": {"address": "gpu-box", "retries": 3}}
    choose_backend(bundle, "remote", 4, 2, settings)
    assert opened == [(4, 2, RemoteOptions("gpu-box", 3))]
    for text, error in [('retries = -1', "[model.remote] retries: must be >= 0, got -1"),
                        ('retries = "3"', "[model.remote] retries: must be int, got '3'"),
                        ('adress = "x"', "[model.remote]: unknown key 'adress' (known: address, retries)")]:
        config.write_text(f"[model.remote]\n{text}\n")
        with pytest.raises(ConfigError) as err:
            load_config(config)
        assert str(err.value) == f"{config}: {error}"


def test_kinds_without_settings_refuse_a_table_and_an_unknown_kind_is_named():
    assert kind_options("cpu", {}) is None
    with pytest.raises(BackendError, match=r"^\[model.cpu\]: backend 'cpu' has no settings, got threads$"):
        kind_options("cpu", {"threads": 2})
    with pytest.raises(BackendError, match=r"^\[model.tpu\]: no backend 'tpu' \(backends: tensorrt, "):
        kind_options("tpu", {})

