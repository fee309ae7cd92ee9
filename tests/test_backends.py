"""Backends: ONNX Runtime runs and splits batches; the registry picks CPU here and says why,
takes a new entry as it is, and refuses what it cannot do."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import test_daemon
import tifffile
from onnx import numpy_helper
from onnx_graphs import make_bundle, make_conv_net

from phasewatch.app.cli import main
from phasewatch.backends import onnxruntime as ort_backends
from phasewatch.backends.base import (
    BackendError,
    BackendFatal,
    BackendKind,
    no_options,
    options_from_table,
    sticky_cuda_error,
)
from phasewatch.backends.engines import DEFAULT_ENGINES
from phasewatch.backends.onnxruntime import OrtBackend
from phasewatch.backends.registry import BACKENDS, choose_backend, kind_options, open_backend
from phasewatch.bundle import load_bundle
from phasewatch.core.pipeline import Model
from phasewatch.service.config import Config, ConfigError, load_config

make_daemon = test_daemon.make_daemon  # the in-process daemon on a real store, shared

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

    def spy(outputs, feeds, *options):
        seen.append(len(feeds[backend.input_name]))
        return real_run(outputs, feeds, *options)

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
    # the kinds only a user who names gets come before the new one: passed over too, with their reason
    assert passed_over == dict.fromkeys(["tensorrt", "tensorrt-ep", "cuda", "cpu", "cpu-int8", "triton"],
                                        "switched off")


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


def test_onnxruntime_kinds_open_a_session_named_after_their_entry(bundle, monkeypatch, tmp_path):
    opened = []
    monkeypatch.setattr(ort_backends, "OrtBackend", lambda path, kind, *args, **kwargs: opened.append(kind))
    tables = {"tensorrt-ep": {"engines": str(tmp_path)}}
    for kind, entry in BACKENDS.items():
        if entry.provider is not None:
            entry.open(bundle, 2, None, kind_options(kind, tables.get(kind, {})))
    assert opened == [kind for kind, entry in BACKENDS.items() if entry.provider is not None]
    assert opened == ["tensorrt-ep", "cuda", "cpu"]


def test_native_tensorrt_backend_is_imported_only_when_asked_for():
    script = ("import sys\nfrom phasewatch.backends.registry import KINDS\n"
              "assert 'tensorrt' in KINDS\nassert 'phasewatch.backends.tensorrt' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


class GpuSessions:
    """ONNX Runtime with the TensorRT and CUDA providers, as far as opening a session goes: the
    sessions record their providers (no GPU here); the input has the shape ``input_shape``."""

    def __init__(self, monkeypatch, input_shape=("N", 1, 64, 64)) -> None:
        self.opened: list[list] = []
        self.preloads: list[int] = []
        sessions = self

        class Session:
            def __init__(self, path, sess_options=None, providers=()):
                sessions.opened.append(list(providers))

            def get_providers(self):
                return [sessions.opened[-1][0][0], "CPUExecutionProvider"]

            def get_inputs(self):
                return [type("Input", (), {"name": "input", "shape": list(input_shape)})()]

        available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
        monkeypatch.setattr(ort, "get_available_providers", lambda: available)
        monkeypatch.setattr(ort, "InferenceSession", Session)
        monkeypatch.setattr(ort, "preload_dlls", lambda: self.preloads.append(1), raising=False)
        ort_backends.preload_gpu_libraries.cache_clear()
        monkeypatch.setattr(ort_backends, "preload_gpu_libraries", ort_backends.preload_gpu_libraries)


def test_tensorrt_ep_builds_fp16_with_cuda_after_it_and_preloads_gpu_libraries(bundle, monkeypatch, tmp_path):
    gpu = GpuSessions(monkeypatch)
    options = kind_options("tensorrt-ep", {"engines": str(tmp_path / "engines")})
    try:
        BACKENDS["tensorrt-ep"].open(bundle, 2, None, options)
        BACKENDS["tensorrt-ep"].open(bundle, 2, None, options)
    finally:
        ort_backends.preload_gpu_libraries.cache_clear()
    (trt, trt_options), (cuda, _), cpu = gpu.opened[0]
    assert (trt, cuda, cpu) == ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    assert trt_options["trt_fp16_enable"] == "True"
    assert gpu.preloads == [1]  # once per process


# Issue 26, defect 3: auto fell from a missing engine to tensorrt-ep, FP16 with no accuracy gate.

def test_auto_never_picks_the_ungated_tensorrt_provider_and_says_why(bundle, monkeypatch, tmp_path):
    gpu = GpuSessions(monkeypatch)
    backend, passed_over = choose_backend(bundle, "auto", 2, settings={"tensorrt-ep": {"engines": str(tmp_path)}})
    assert backend.name == "cuda" and gpu.opened[0][0][0] == "CUDAExecutionProvider"
    assert passed_over["tensorrt-ep"].startswith("not for auto: ONNX Runtime builds its FP16 engine from the FP32 "
                                                 "ONNX with no accuracy gate")
    named = choose_backend(bundle, "tensorrt-ep", 2, settings={"tensorrt-ep": {"engines": str(tmp_path)}})
    assert named.backend.name == "tensorrt-ep"  # a user who names it gets it


# Issue 26, defect 4: the TensorRT provider's profile was fixed at the bundle's tile (fixed tiling,
# 4-8x the compute of per-field planning) and its engine cache sat in the read-only bundle.

def test_tensorrt_provider_profile_spans_the_bundles_sizes_and_its_cache_is_in_the_data_folder(
        bundle, monkeypatch, tmp_path):
    spatial = dataclasses.replace(bundle, spatial_multiple=8)
    GpuSessions(monkeypatch, input_shape=("N", 1, "H", "W"))
    options = kind_options("tensorrt-ep", {"engines": str(tmp_path / "engines"), "max_side": 1003})
    backend = BACKENDS["tensorrt-ep"].open(spatial, 4, None, options)
    provider_options = ort_backends.tensorrt_ep_options(spatial, 4, options)
    assert (provider_options["trt_profile_min_shapes"], provider_options["trt_profile_opt_shapes"],
            provider_options["trt_profile_max_shapes"]) == (
        "input:1x1x8x8", "input:1x1x1000x1000", "input:4x1x1000x1000")
    assert backend.any_size and backend.max_side == 1000  # the tile planner plans per field, up to 1000
    cache = tmp_path / "engines" / "tiny" / "ort-tensorrt"
    assert provider_options["trt_engine_cache_path"] == provider_options["trt_timing_cache_path"] == str(cache)
    assert cache.is_dir() and not bundle.engines_dir.exists()
    fixed = BACKENDS["tensorrt-ep"].open(bundle, 4, None, options)  # a bundle of one tile size keeps its tile
    assert not fixed.any_size
    assert ort_backends.tensorrt_ep_profile(bundle, 4, 1000) == ("input:1x1x64x64", "input:4x1x64x64",
                                                                 "input:4x1x64x64")
    with pytest.raises(BackendError, match=r"max_side: 4 is below tiny's spatial multiple 8"):
        ort_backends.tensorrt_ep_profile(spatial, 4, 4)


# Issue 26, defect 6: cuDNN's exhaustive search for every new field size, an arena growing in
# powers of two with no limit (inside a Jetson's shared RAM).

def test_cuda_provider_arena_is_bounded_and_its_search_fits_the_bundle(bundle, monkeypatch, tmp_path):
    gpu = GpuSessions(monkeypatch)
    spatial = dataclasses.replace(bundle, spatial_multiple=8)
    for opened, expected_search in ((bundle, "EXHAUSTIVE"), (spatial, "HEURISTIC")):
        BACKENDS["cuda"].open(opened, 2, None, kind_options("cuda", {}))
        (provider, options), _ = gpu.opened[-1]
        assert provider == "CUDAExecutionProvider"
        assert options == {"cudnn_conv_algo_search": expected_search, "arena_extend_strategy": "kSameAsRequested",
                           "gpu_mem_limit": str(4096 << 20)}
    config = tmp_path / "phasewatch.toml"
    config.write_text("[model.cuda]\ngpu_mem_limit_mb = 1024\n")
    BACKENDS["cuda"].open(bundle, 2, None, kind_options("cuda", load_config(config).model.settings["cuda"]))
    assert gpu.opened[-1][0][1]["gpu_mem_limit"] == str(1 << 30)
    config.write_text("[model.cuda]\ngpu_mem_limit_mb = 8\n")
    with pytest.raises(ConfigError, match=r"\[model.cuda\] gpu_mem_limit_mb: must be >= 64, got 8"):
        load_config(config)
    BACKENDS["tensorrt-ep"].open(bundle, 2, None, kind_options("tensorrt-ep", {"engines": str(tmp_path)}))
    (_, trt_cuda_options) = gpu.opened[-1][1]  # the CUDA provider behind TensorRT's is bounded too
    assert trt_cuda_options["arena_extend_strategy"] == "kSameAsRequested"


# Issue 26, defect 2: a sticky CUDA error is fatal, on ONNX Runtime's GPU providers too.

@pytest.mark.parametrize("message, fatal", [
    ("[ONNXRuntimeError] : 1 : FAIL : CUDA failure 700: an illegal memory access was encountered ; GPU=0 ; "
     "hostname=orin ; file=cuda_call.cc ; line=123 ; expr=cudaStreamSynchronize(stream);", True),
    ("Non-zero status code returned while running Conv node. Status Message: CUDA error "
     "cudaErrorLaunchFailure:unspecified launch failure", True),
    ("CUDA failure 214: uncorrectable ECC error encountered ; GPU=0", True),
    ("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : CUDA failure 2: out of memory ; GPU=0", False),
    ("Non-zero status code returned while running Conv node. Status Message: CUDA error "
     "cudaErrorMemoryAllocation:out of memory", False),
])
def test_a_sticky_cuda_error_in_onnx_runtime_is_fatal_others_are_not(bundle, monkeypatch, message, fatal):
    backend = open_backend(bundle, "cpu", batch=2)

    def fail(outputs, feeds, *options):
        raise RuntimeError(message)

    monkeypatch.setattr(backend.session, "run", fail)
    with pytest.raises(Exception) as info:  # noqa: PT011 - which type is the point
        backend.run(np.zeros((1, 1, 64, 64), np.float32))
    assert isinstance(info.value, BackendFatal) is fatal
    assert sticky_cuda_error(message) is fatal


def test_auto_does_not_fall_back_after_a_sticky_error(bundle, monkeypatch):
    def lost(bundle, batch, threads, options):
        raise BackendFatal("CUDA cudaMalloc failed: cudaErrorIllegalAddress (700)")

    monkeypatch.setitem(BACKENDS, "tensorrt", BackendKind(lost, lambda bundle: None, no_options("tensorrt")))
    with pytest.raises(BackendFatal, match="cudaErrorIllegalAddress"):
        choose_backend(bundle, "auto")  # the CPU would open, but this process must end


# Issue 26, defect 5: the service's engines are in its data folder.

def test_the_service_keeps_engines_in_its_data_folder(tmp_path):
    config = tmp_path / "phasewatch.toml"
    config.write_text(f'[data]\ndir = "{tmp_path / "var"}"\n\n[model.tensorrt-ep]\nmax_side = 512\n')
    settings = load_config(config).backend_settings
    assert settings["tensorrt"] == {"engines": str(tmp_path / "var" / "engines")}
    assert settings["tensorrt-ep"] == {"max_side": 512, "engines": str(tmp_path / "var" / "engines")}
    config.write_text('[model.tensorrt]\nengines = "/srv/engines"\n')
    assert load_config(config).backend_settings["tensorrt"] == {"engines": "/srv/engines"}
    assert Config().data.engines_dir == DEFAULT_ENGINES  # the default the backends use without a config


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
                                                         manual="a remote server"))
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



# Issue 26, defect 2: in the service, a sticky CUDA error was one more transient fault, retried
# for ever on a lost context (and by a SIGHUP reload on the same one); now the service stops,
# charges no file, and serve exits 1 for systemd to restart it.

class LostContextBackend(test_daemon.ThresholdBackend):
    """Segments until ``lose`` is set, then fails every call as a lost CUDA context does."""

    def __init__(self) -> None:
        super().__init__()
        self.lose = threading.Event()
        self.failed_calls = 0

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self.lose.is_set():
            self.failed_calls += 1
            raise BackendFatal("CUDA cudaStreamSynchronize failed: cudaErrorIllegalAddress (700); this error "
                               "sticks to the GPU context until the process exits")
        return super().run(batch)


def test_a_lost_gpu_context_stops_the_service_and_charges_no_file(make_daemon, tmp_path):
    backend, opens = LostContextBackend(), []
    model_bundle = load_bundle(make_bundle(tmp_path / "lost-bundle"))
    daemon = make_daemon(models=lambda: opens.append(1) or Model(model_bundle, backend))
    test_daemon.drop(daemon, "before.tif", lambda p: tifffile.imwrite(p, test_daemon.half_bright(16, 16)))
    test_daemon.wait_for(lambda: test_daemon.finished(daemon, 1), "the first file done")
    backend.lose.set()
    test_daemon.drop(daemon, "after.tif", lambda p: tifffile.imwrite(p, test_daemon.half_bright(16, 24)))
    test_daemon.wait_for(daemon.fatal.is_set, "the service to learn its GPU context is lost")
    assert "cudaErrorIllegalAddress (700)" in daemon.lost and "exits for systemd to restart it" in daemon.lost
    assert daemon.health()[1]["backend"] == daemon.lost
    daemon.reload_model()  # a SIGHUP now must not reopen a backend on the lost context
    time.sleep(1.5)  # past the first backoff: the stage retried the batch
    assert opens == [1] and backend.failed_calls == 1  # no reload, no bisection, no test ramp on it
    daemon.stop()
    after = next(i for i in daemon.store.list_images(10) if i["path"].endswith("after.tif"))
    # back in the queue for the next process, no attempt charged, not marked as in a step
    assert (after["state"], after["attempts"], after["stage"], after["crashes"]) == ("pending", 0, None, 0), after


def test_serve_exits_1_when_the_gpu_context_is_lost(monkeypatch, tmp_path):
    from phasewatch.app.commands import serve

    class Daemon:
        fatal = threading.Event()
        lost = "tensorrt: CUDA ... (700)"
        model = SimpleNamespace(bundle=SimpleNamespace(name="tiny"), backend=SimpleNamespace(name="tensorrt"))

        def alive(self) -> bool:
            return True

    stopped = []
    service = SimpleNamespace(daemon=Daemon(), url="http://127.0.0.1:0")
    monkeypatch.setattr(serve, "start_service", lambda config: service)
    monkeypatch.setattr(serve, "stop_service", stopped.append)
    monkeypatch.setattr(serve, "setup_logging", lambda level: None)
    threading.Timer(0.2, Daemon.fatal.set).start()
    (tmp_path / "watch").mkdir()
    assert main(["serve", "--watch", str(tmp_path / "watch"), "--data", str(tmp_path / "data")]) == 1
    assert stopped == [service]  # stopped as on SIGTERM: the batch in hand goes back to the queue
