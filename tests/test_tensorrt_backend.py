"""The native TensorRT backend against the fake TensorRT 10 / cuda-python in tests/fakes (no GPU here).

The fake moves data for real (device memory is numpy bytes behind integer addresses, work runs
when its stream is synchronised), so a missing copy, a wrong address or a missing sync fails.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import threading

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import test_build_engine as shared

from phasewatch.backends.base import BackendError, BackendFatal
from phasewatch.backends.registry import choose_backend
from phasewatch.backends.tensorrt import open_tensorrt_backend
from phasewatch.backends.tta import TtaBackend
from phasewatch.bundle import sha256_file
from phasewatch.core.pipeline import tile_plan
from phasewatch.export.build_engine import build_engine

# the fake-GPU and bundle fixtures are shared with the build-engine tests
fake_gpu = shared.fake_gpu
fp16_bundle = shared.fp16_bundle
spatial_bundle = shared.spatial_bundle
smooth_tiles = shared.smooth_tiles
NOTHING_LIVE = shared.NOTHING_LIVE
fake_cuda_only = shared.fake_cuda_only
engines_root = shared.engines_root


def fp32_logits(bundle, tiles: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(bundle.onnx_path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": tiles})[0]


@pytest.fixture
def backend(fake_gpu, fp16_bundle):
    build_engine(fp16_bundle, max_batch=4)
    opened = open_tensorrt_backend(fp16_bundle, batch=4)
    yield opened
    opened.close()


def assert_matches_fp32(bundle, tiles: np.ndarray, logits: np.ndarray) -> None:
    reference = fp32_logits(bundle, tiles)
    assert logits.shape == reference.shape
    assert np.mean(logits.argmax(1) == reference.argmax(1)) >= 0.999
    np.testing.assert_allclose(logits, reference, atol=0.02)  # FP16 weights, FP32 reference


def test_runs_every_batch_size_and_splits_large_batches(backend, fp16_bundle):
    assert backend.name == "tensorrt" and backend.max_batch == 4
    tiles = smooth_tiles(9, seed=1)
    for n in (1, 2, 3, 4, 9, 2):  # 9 splits into 4 + 4 + 1; then shrink again
        assert_matches_fp32(fp16_bundle, tiles[:n], backend.run(tiles[:n]))


def test_batch_is_capped_by_the_engine_profile(fake_gpu, fp16_bundle):
    build_engine(fp16_bundle, max_batch=2)
    backend = open_tensorrt_backend(fp16_bundle, batch=16)
    try:
        assert backend.max_batch == 2
        tiles = smooth_tiles(5, seed=2)
        assert_matches_fp32(fp16_bundle, tiles, backend.run(tiles))
    finally:
        backend.close()


def test_runs_from_another_thread(backend, fp16_bundle):
    tiles = smooth_tiles(3, seed=3)
    results = []
    worker = threading.Thread(target=lambda: results.append(backend.run(tiles)))
    worker.start()
    worker.join()
    assert len(results) == 1
    assert_matches_fp32(fp16_bundle, tiles, results[0])


@fake_cuda_only
def test_the_fake_catches_a_missing_copy(backend, fake_gpu, monkeypatch):
    tiles = smooth_tiles(2, seed=4)
    good = backend.run(tiles)
    copy = fake_gpu.cuda.cudaMemcpyAsync
    h2d = fake_gpu.cuda.cudaMemcpyKind.cudaMemcpyHostToDevice
    monkeypatch.setattr(fake_gpu.cuda, "cudaMemcpyAsync", lambda dst, src, count, kind, stream: (
        (fake_gpu.cuda.cudaError_t.cudaSuccess,) if kind == h2d else copy(dst, src, count, kind, stream)))
    stale = backend.run(smooth_tiles(2, seed=5))
    assert np.array_equal(stale, good)  # the device still holds the previous batch's input


def test_close_is_final_and_idempotent(backend):
    backend.close()
    backend.close()
    with pytest.raises(BackendError, match="after close"):
        backend.run(smooth_tiles(1))


def test_wrong_tile_shape_is_a_one_line_error(backend):
    with pytest.raises(ValueError, match=r"batch shape \(1, 1, 32, 32\) is not N x \(1, 64, 64\)"):
        backend.run(np.zeros((1, 1, 32, 32), np.float32))


@pytest.mark.parametrize("change", ["gpu", "compute_capability", "multiprocessors", "memory", "tensorrt", "onnx"])
@fake_cuda_only
def test_an_engine_for_something_else_is_never_loaded(fake_gpu, fp16_bundle, monkeypatch,
                                                       change):
    build_engine(fp16_bundle, max_batch=2)
    if change == "gpu":
        monkeypatch.setattr(fake_gpu.cuda, "FAKE_DEVICE_NAME", "NVIDIA Jetson Orin")
    elif change == "compute_capability":
        monkeypatch.setattr(fake_gpu.cuda, "FAKE_COMPUTE_CAPABILITY", (8, 7))
    elif change == "multiprocessors":
        monkeypatch.setattr(fake_gpu.cuda, "FAKE_MULTIPROCESSORS", 8)
    elif change == "memory":
        monkeypatch.setattr(fake_gpu.cuda, "FAKE_DEVICE_MEMORY", 8 << 30)
    elif change == "tensorrt":
        monkeypatch.setattr(fake_gpu.trt, "__version__", "10.4.0")
    else:
        model = onnx.load(str(fp16_bundle.onnx_fp16_path))
        model.doc_string = "re-exported"
        onnx.save(model, str(fp16_bundle.onnx_fp16_path))
    with pytest.raises(BackendError) as info:
        open_tensorrt_backend(fp16_bundle, batch=2)
    message = str(info.value)
    assert "\n" not in message
    assert "no TensorRT engine for" in message
    assert "engines there: NVIDIA Fake RTX A2000 sm86 (26 SMs, 1 GiB), TensorRT 10.3.0" in message
    assert f"phasewatch build-engine {fp16_bundle.path}" in message


def test_an_engine_that_differs_from_its_sidecar_is_refused(fake_gpu, fp16_bundle):
    path = build_engine(fp16_bundle, max_batch=2)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(BackendError, match="differs from its sidecar"):
        open_tensorrt_backend(fp16_bundle, batch=2)


@fake_cuda_only
def test_without_tensorrt_installed_the_error_says_what_to_install(fp16_bundle):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("a real tensorrt is installed here")
    with pytest.raises(BackendError, match=r"pip install 'phasewatch\[tensorrt\]'"):
        open_tensorrt_backend(fp16_bundle, batch=2)


def test_importing_the_backend_pulls_in_neither_tensorrt_nor_torch():
    code = ("import sys, phasewatch.backends.tensorrt; "
            "print(sorted({'tensorrt', 'cuda', 'torch'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@fake_cuda_only
def test_fake_enforces_what_tensorrt_enforces(backend, fake_gpu):
    trt = fake_gpu.trt
    context = backend._engine.create_execution_context()
    assert not context.set_input_shape("input", (5, 1, 64, 64))  # outside the profile 1..4
    assert not context.set_input_shape("input", (1, 1, 32, 32))  # outside the profile's tile
    stream_handle = int(backend._stream)
    assert not context.execute_async_v3(stream_handle)  # no input shape set
    assert context.set_input_shape("input", (1, 1, 64, 64))
    assert not context.execute_async_v3(stream_handle)  # no addresses set
    assert trt.Builder(trt.Logger()).create_network(0).get_flag(
        trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) is False


# Defect 2: pinned host memory (and the rest) must be freed on close, from whichever thread.

def assert_nothing_live(fake_gpu) -> None:
    """Everything freed (on the real CUDA of bench/gpu_check.sh, gpu_check.py measures it)."""
    if not shared.REAL_CUDA:
        assert fake_gpu.cuda.live() == NOTHING_LIVE


def in_thread(work):
    """Run ``work`` on a new thread (one that never bound the CUDA device); its result or error."""
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # handed back to the test
            outcome["error"] = exc

    worker = threading.Thread(target=target)
    worker.start()
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


@fake_cuda_only
def test_close_frees_pinned_and_device_memory_and_the_stream(fake_gpu, fp16_bundle):
    build_engine(fp16_bundle, max_batch=4)
    backend = open_tensorrt_backend(fp16_bundle, batch=4)
    backend.run(smooth_tiles(4))
    assert fake_gpu.cuda.live()["host"] == 2 and fake_gpu.cuda.live()["streams"] == 1
    backend.close()
    assert fake_gpu.cuda.live() == NOTHING_LIVE


def test_close_from_another_thread_frees_everything(fake_gpu, fp16_bundle):
    build_engine(fp16_bundle, max_batch=4)
    backend = in_thread(lambda: open_tensorrt_backend(fp16_bundle, batch=4))
    in_thread(lambda: backend.run(smooth_tiles(2)))
    in_thread(backend.close)
    assert_nothing_live(fake_gpu)


def test_twenty_reloads_across_threads_leak_nothing(fake_gpu, fp16_bundle):
    build_engine(fp16_bundle, max_batch=4)
    tiles = smooth_tiles(3, seed=6)
    for _ in range(20):  # what SIGHUP reloads do: open on one thread, run and close on others
        backend = in_thread(lambda: open_tensorrt_backend(fp16_bundle, batch=4))
        assert_matches_fp32(fp16_bundle, tiles, in_thread(lambda b=backend: b.run(tiles)))
        in_thread(backend.close)
        assert_nothing_live(fake_gpu)


# Defect 3: a context TensorRT could not create, and CUDA errors, are BackendErrors.

def activation_bytes(fake_gpu, batch: int) -> int:
    return batch * 1 * shared.TILE * shared.TILE * 4 * fake_gpu.trt.ACTIVATION_FACTOR


def occupy(fake_gpu, leave: int) -> int:
    """Take the fake device's memory but ``leave`` bytes (another process's); its address."""
    fake_gpu.cuda.cudaSetDevice(0)
    free = fake_gpu.cuda.cudaMemGetInfo()[1]
    address = fake_gpu.cuda.reserve(free - leave)
    assert address is not None
    return address


@fake_cuda_only
def test_no_execution_context_is_a_backend_error_and_frees_everything(fake_gpu, fp16_bundle):
    build_engine(fp16_bundle, max_batch=4)
    taken = occupy(fake_gpu, leave=activation_bytes(fake_gpu, 4) - 1)
    with pytest.raises(BackendError, match="could not create an execution context"):
        open_tensorrt_backend(fp16_bundle, batch=4)
    fake_gpu.cuda.release(taken)
    assert fake_gpu.cuda.live() == NOTHING_LIVE


@fake_cuda_only
def test_out_of_gpu_memory_lets_auto_fall_back(fake_gpu, fp16_bundle):
    build_engine(fp16_bundle, max_batch=4)
    # room for TensorRT's activations, none for the I/O buffers: cudaMalloc fails
    taken = occupy(fake_gpu, leave=activation_bytes(fake_gpu, 4) + 1024)
    backend, passed_over = choose_backend(fp16_bundle, "auto", batch=4)
    try:
        assert backend.name == "cpu"
        assert "cudaMalloc" in passed_over["tensorrt"] and "cudaErrorMemoryAllocation" in passed_over["tensorrt"]
    finally:
        backend.close()
    fake_gpu.cuda.release(taken)
    assert fake_gpu.cuda.live() == NOTHING_LIVE


@fake_cuda_only
def test_a_cuda_error_that_does_not_stick_is_a_backend_error(backend, fake_gpu, monkeypatch):
    refused = (fake_gpu.cuda.cudaError_t.cudaErrorLaunchOutOfResources,)
    synchronize = fake_gpu.cuda.cudaStreamSynchronize  # the stream's work done, then the error
    monkeypatch.setattr(fake_gpu.cuda, "cudaStreamSynchronize", lambda stream: synchronize(stream) and refused)
    with pytest.raises(BackendError, match="cudaStreamSynchronize failed: cudaErrorLaunchOutOfResources") as info:
        backend.run(smooth_tiles(1))
    assert not isinstance(info.value, BackendFatal)  # transient: the daemon retries it
    with pytest.raises(BackendError, match="cudaStreamSynchronize"):
        backend.close()  # every release step still ran; the error is reported, not swallowed
    assert fake_gpu.cuda.live() == NOTHING_LIVE


# Engines with a spatial profile run any size within it, and the tile planner respects its max side.

def test_spatial_engine_runs_any_size_within_its_profile(fake_gpu, spatial_bundle):
    build_engine(spatial_bundle, max_batch=2, max_side=128)
    backend = open_tensorrt_backend(spatial_bundle, batch=2)
    try:
        assert backend.any_size and backend.max_side == 128
        for shape in ((1, 8, 8), (2, 40, 128), (3, 128, 96), (1, 64, 64)):  # grows, then shrinks
            count, height, width = shape
            tiles = shared.smooth_tiles(count, seed=height)[:, :, :1, :1].repeat(height, 2).repeat(width, 3)
            tiles = tiles + np.random.default_rng(width).normal(0, 1, tiles.shape).astype(np.float32)
            assert_matches_fp32(spatial_bundle, tiles, backend.run(tiles))
        with pytest.raises(ValueError, match=r"\(8, 8\) <= \(H, W\) <= \(128, 128\)"):
            backend.run(np.zeros((1, 1, 136, 64), np.float32))
    finally:
        backend.close()
    assert_nothing_live(fake_gpu)


def test_tile_plan_keeps_tiles_within_the_engines_max_side(fake_gpu, spatial_bundle):
    build_engine(spatial_bundle, max_batch=2, max_side=128)
    backend = TtaBackend(open_tensorrt_backend(spatial_bundle, batch=2), "flips")
    try:
        plan = tile_plan(spatial_bundle, backend, megapixels=1.0)
        assert plan is not None and plan.max_side == 128
        geometry = plan.geometry(1000, 300)
        assert geometry.tile_h <= 128 and geometry.tile_w <= 128
        assert plan.geometry(100, 120)[:2] == (104, 120)  # a field within the profile runs whole
    finally:
        backend.close()


# Issue 26, defect 1: an out-of-memory error while a buffer grows left that shape broken for good
# (the shape stored before the buffers existed, the old buffer freed before the new one).

@fake_cuda_only
def test_out_of_memory_while_growing_leaves_the_backend_usable_and_a_retry_works(fake_gpu, spatial_bundle):
    build_engine(spatial_bundle, max_batch=2, max_side=128, opt_side=32, opt_batch=1)
    backend = open_tensorrt_backend(spatial_bundle, batch=2)
    small = shared.smooth_tiles(1, seed=7)[:, :, :32, :32].copy()
    large = np.concatenate([shared.smooth_tiles(2, seed=8)] * 2, axis=3)[:, :, :, :128].repeat(2, 2)[:, :, :128]
    try:
        expected_small = backend.run(small)
        taken = occupy(fake_gpu, leave=4096)  # another process takes the memory: growing fails
        for _ in range(2):  # the daemon retries the same group
            with pytest.raises(BackendError, match="cudaMalloc.*cudaErrorMemoryAllocation") as info:
                backend.run(large)
            assert not isinstance(info.value, BackendFatal)
            np.testing.assert_array_equal(backend.run(small), expected_small)  # the old state still works
        fake_gpu.cuda.release(taken)  # memory freed: the retry now goes through
        assert_matches_fp32(spatial_bundle, large, backend.run(large))
        np.testing.assert_array_equal(backend.run(small), expected_small)
    finally:
        backend.close()
    assert fake_gpu.cuda.live() == NOTHING_LIVE


# Issue 26, defect 2: a sticky CUDA error (the context is lost until the process ends) is fatal,
# not one more transient fault: no retry on it, no fallback in the same process, a close that
# does not raise.

def lose_the_context(fake_gpu, backend, how: str) -> None:
    if how == "illegal address":  # a kernel writes where no memory is: the stream faults
        fake_gpu.cuda.release(backend._buffers["logits"].device)
    else:
        fake_gpu.cuda.fault(fake_gpu.cuda.cudaError_t[how])


@pytest.mark.parametrize("how", ["illegal address", "cudaErrorLaunchFailure", "cudaErrorECCUncorrectable"])
@fake_cuda_only
def test_a_sticky_cuda_error_is_fatal_and_nothing_falls_back_in_this_process(fake_gpu, fp16_bundle, how):
    build_engine(fp16_bundle, max_batch=2)
    backend = open_tensorrt_backend(fp16_bundle, batch=2)
    backend.run(smooth_tiles(2))
    lose_the_context(fake_gpu, backend, how)
    with pytest.raises(BackendFatal, match="sticks to the GPU context until the process exits") as info:
        backend.run(smooth_tiles(2, seed=9))
    assert "\n" not in str(info.value)
    with pytest.raises(BackendFatal, match="the GPU context was lost earlier"):
        backend.run(smooth_tiles(1))  # no CUDA call on a lost context
    backend.close()  # the service's stop still runs: close drops what it held, without raising
    with pytest.raises(BackendFatal):  # a reload in this process would fail the same way ...
        choose_backend(fp16_bundle, "auto", batch=2)  # ... and auto must not fall back to the CPU


@fake_cuda_only
def test_the_stream_is_non_blocking(backend, fake_gpu):
    # Issue 26, defect 8: a blocking stream waits for (and holds up) every other library's work
    # on the legacy default stream.
    assert fake_gpu.cuda.stream_from_handle(int(backend._stream)).blocking is False


# Issue 26, defect 5: engines live in the data folder, never in the bundle (site-packages:
# read-only for the service, deleted by pip install --upgrade); older locations still read.

def test_engines_are_kept_in_the_data_folder_and_the_bundles_old_ones_still_load(
        fake_gpu, fp16_bundle, engines_root, tmp_path):
    path = build_engine(fp16_bundle, max_batch=2)
    assert path.parent == engines_root / "tiny"
    assert not fp16_bundle.engines_dir.exists()
    open_tensorrt_backend(fp16_bundle, batch=2).close()
    backend, _ = choose_backend(fp16_bundle, "tensorrt", batch=2, settings={"tensorrt": {"engines": str(engines_root)}})
    backend.close()
    # an engine a previous version built into the bundle is still found
    fp16_bundle.engines_dir.mkdir()
    for name in (path.name, path.name + ".json"):
        (engines_root / "tiny" / name).rename(fp16_bundle.engines_dir / name)
    backend = open_tensorrt_backend(fp16_bundle, batch=2, root=tmp_path / "elsewhere")
    try:
        assert_matches_fp32(fp16_bundle, smooth_tiles(2), backend.run(smooth_tiles(2)))
    finally:
        backend.close()


# Issue 26, defect 7: every Orin module reports "Orin" sm87; an engine built on an AGX must not
# load on an 8 GB Orin Nano.

@fake_cuda_only
def test_an_agx_orin_engine_is_not_loaded_on_an_orin_nano(fake_gpu, fp16_bundle, monkeypatch):
    for name, value in (("FAKE_DEVICE_NAME", "Orin"), ("FAKE_COMPUTE_CAPABILITY", (8, 7)),
                        ("FAKE_MULTIPROCESSORS", 16), ("FAKE_DEVICE_MEMORY", 30_000_000_000)):
        monkeypatch.setattr(fake_gpu.cuda, name, value)
    build_engine(fp16_bundle, max_batch=2)
    open_tensorrt_backend(fp16_bundle, batch=2).close()  # loads on the AGX it was built on
    fake_gpu.cuda.orin_nano()
    with pytest.raises(BackendError) as info:
        open_tensorrt_backend(fp16_bundle, batch=2)
    assert "no TensorRT engine for Orin sm87 (8 SMs, 7 GiB)" in str(info.value)
    assert "engines there: Orin sm87 (16 SMs, 28 GiB)" in str(info.value)


# Issue 26, defect 9: FP16 without TensorRT's platform_has_fast_fp16 (a consumer Pascal runs FP16
# at 1/64 of its FP32 rate).

@fake_cuda_only
def test_a_gpu_without_fast_fp16_gets_an_fp32_engine(fake_gpu, fp16_bundle, monkeypatch):
    monkeypatch.setattr(fake_gpu.cuda, "FAKE_COMPUTE_CAPABILITY", (6, 1))
    messages: list[str] = []
    path = build_engine(fp16_bundle, max_batch=2, progress=messages.append)
    sidecar = json.loads(path.with_name(path.name + ".json").read_text())
    assert sidecar["onnx"] == "model.onnx" and sidecar["precision"].startswith("fp32")
    assert sidecar["onnx_sha256"] == sha256_file(fp16_bundle.onnx_path) and sidecar["gate"]["64"]["passed"]
    assert any("no fast FP16" in m for m in messages)
    backend = open_tensorrt_backend(fp16_bundle, batch=2)
    try:
        tiles = smooth_tiles(2)
        np.testing.assert_allclose(backend.run(tiles), fp32_logits(fp16_bundle, tiles), atol=1e-4)  # FP32 itself
    finally:
        backend.close()
