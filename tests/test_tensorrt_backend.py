"""The native TensorRT backend against the fake TensorRT 10 / pycuda in tests/fakes (no GPU here).

The fake moves data for real (device memory is numpy bytes behind integer addresses, work runs
when its stream is synchronised), so a missing copy, a wrong address or a missing sync fails.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import test_build_engine as shared

from phasewatch.export.build_engine import build_engine
from phasewatch.runtime.backends import BackendError
from phasewatch.runtime.tensorrt_backend import open_tensorrt_backend

# the fake-GPU and bundle fixtures are shared with the build-engine tests
fake_gpu = shared.fake_gpu
fp16_bundle = shared.fp16_bundle
smooth_tiles = shared.smooth_tiles


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


def test_the_fake_catches_a_missing_copy(backend, fake_gpu, monkeypatch):
    tiles = smooth_tiles(2, seed=4)
    good = backend.run(tiles)
    monkeypatch.setattr(fake_gpu.cuda, "memcpy_htod_async", lambda dest, src, stream=None: None)
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


@pytest.mark.parametrize("change", ["gpu", "compute_capability", "tensorrt", "onnx"])
def test_an_engine_for_something_else_is_never_loaded(fake_gpu, fp16_bundle, monkeypatch,
                                                       change):
    build_engine(fp16_bundle, max_batch=2)
    if change == "gpu":
        monkeypatch.setattr(fake_gpu.cuda, "FAKE_DEVICE_NAME", "NVIDIA Jetson Orin")
    elif change == "compute_capability":
        monkeypatch.setattr(fake_gpu.cuda, "FAKE_COMPUTE_CAPABILITY", (8, 7))
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
    assert "engines here: NVIDIA Fake RTX A2000 sm86, TensorRT 10.3.0" in message
    assert f"phasewatch build-engine {fp16_bundle.path}" in message


def test_an_engine_that_differs_from_its_sidecar_is_refused(fake_gpu, fp16_bundle):
    path = build_engine(fp16_bundle, max_batch=2)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(BackendError, match="differs from its sidecar"):
        open_tensorrt_backend(fp16_bundle, batch=2)


def test_without_tensorrt_installed_the_error_says_what_to_install(fp16_bundle):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("a real tensorrt is installed here")
    with pytest.raises(BackendError, match=r"pip install 'phasewatch\[tensorrt\]'"):
        open_tensorrt_backend(fp16_bundle, batch=2)


def test_importing_the_backend_pulls_in_neither_tensorrt_nor_torch():
    code = ("import sys, phasewatch.runtime.tensorrt_backend; "
            "print(sorted({'tensorrt', 'pycuda', 'torch'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_fake_enforces_what_tensorrt_enforces(backend, fake_gpu):
    trt = fake_gpu.trt
    context = backend._engine.create_execution_context()
    assert not context.set_input_shape("input", (5, 1, 64, 64))  # outside the profile 1..4
    assert not context.set_input_shape("input", (1, 1, 32, 32))  # outside the profile's tile
    stream_handle = backend._stream.handle
    assert not context.execute_async_v3(stream_handle)  # no input shape set
    assert context.set_input_shape("input", (1, 1, 64, 64))
    assert not context.execute_async_v3(stream_handle)  # no addresses set
    assert trt.Builder(trt.Logger()).create_network(0).get_flag(
        trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) is False
