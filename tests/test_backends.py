"""ONNX Runtime backend: runs, splits batches, picks CPU here, refuses what it cannot do."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from onnx_graphs import make_bundle, make_conv_net

from phasewatch.runtime.backends import BackendError, OrtBackend, open_backend
from phasewatch.runtime.bundle import load_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return load_bundle(make_bundle(tmp_path_factory.mktemp("bundle"), in_channels=1, num_classes=3))


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

        import phasewatch.runtime.tensorrt_backend  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("native TensorRT is available here")
    with pytest.raises(BackendError) as err:
        open_backend(bundle, "tensorrt")
    assert "TensorRT" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.skipif(
    len(set(ort.get_available_providers()) & {"CUDAExecutionProvider", "TensorrtExecutionProvider"})
    > 0,
    reason="this machine has a GPU provider",
)
def test_auto_picks_cpu_here_and_says_why(bundle, caplog):
    with caplog.at_level(logging.INFO, logger="phasewatch.runtime.backends"):
        backend = open_backend(bundle, "auto")
    assert backend.name == "cpu"
    assert "picked cpu" in caplog.text and "CUDAExecutionProvider" in caplog.text
