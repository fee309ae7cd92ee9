"""The ONNX Runtime backends: ``cpu``, ``cuda`` and ``tensorrt-ep`` (ONNX Runtime's execution
providers) run the bundle's ONNX model; ``cpu-int8`` runs its INT8 model (``phasewatch
quantise``) on the CPU provider. None of them has settings of its own ([model.<kind>] is empty).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from phasewatch.backends.base import Backend, BackendError, BackendKind, no_options, physical_cores
from phasewatch.bundle import Bundle, sha256_file
from phasewatch.errors import one_line

log = logging.getLogger(__name__)

# Pixels per call on ONNX Runtime's CPU provider (call_pixels): two 256 x 256 tiles, one 362 x 362.
# On the CPU provider a batch gains nothing over one tile at a time and large ones fall out of
# the cache: per pixel, 512 x 512 tiles cost 3-20 % more in batches of 8 than one by one over four
# runs (bench/batch_pixels.py, one core; smaller tiles vary either way with the machine's load).
CPU_CALL_PIXELS = 1 << 17

# Kind -> ONNX Runtime execution provider.
PROVIDERS = {
    "tensorrt-ep": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


def session_options(threads: int | None = None) -> Any:
    """Options for a long-running service: one worker pool sized to the physical cores,
    no spin-waiting between requests (it would burn a core while the service idles)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or physical_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # warnings about unused initialisers are noise here
    return options


class OrtBackend:
    """An ONNX Runtime session with the execution provider of ``kind`` (:data:`PROVIDERS`);
    batches larger than ``max_batch`` are run in chunks."""

    def __init__(
        self,
        onnx_path: Path,
        kind: str = "cpu",
        max_batch: int = 8,
        threads: int | None = None,
        provider_options: dict[str, str] | None = None,
    ) -> None:
        import onnxruntime as ort

        provider = PROVIDERS.get(kind)
        if provider is None:
            raise BackendError(f"{onnx_path}: '{kind}' is not an ONNX Runtime backend kind")
        if provider not in ort.get_available_providers():
            raise BackendError(
                f"{onnx_path}: backend '{kind}' needs {provider}, which this onnxruntime "
                f"lacks (available: {', '.join(ort.get_available_providers())})"
            )
        providers: list[Any] = [(provider, provider_options or {})]
        if provider == "TensorrtExecutionProvider" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.append(("CUDAExecutionProvider", _cuda_options()))  # nodes TensorRT lacks stay on the GPU
        if provider != "CPUExecutionProvider":
            preload_gpu_libraries(provider)
            providers.append("CPUExecutionProvider")  # for the odd node a GPU provider lacks
        try:
            self.session = ort.InferenceSession(
                str(onnx_path), sess_options=session_options(threads), providers=providers
            )
        except Exception as exc:  # ORT raises its own, mostly multi-line, exception types
            raise BackendError(f"{onnx_path}: cannot open with {provider}: {one_line(exc)}") from exc
        if self.session.get_providers()[0] != provider:
            # ORT falls back to CPU silently when a GPU provider fails to initialise.
            raise BackendError(f"{onnx_path}: {provider} failed to initialise (CUDA libraries?)")
        self.name = kind
        self.max_batch = max(1, int(max_batch))
        self.call_pixels = CPU_CALL_PIXELS if provider == "CPUExecutionProvider" else 0
        # The CPU provider's arena keeps the largest buffers it ever allocated: after a huge field
        # the service held about its peak for good (1711 of 2643 MiB after a 50 MP field). Shrunk
        # at the end of each call, it hands them back (docs/reliability.md, bench/field_memory.py).
        self.run_options = ort.RunOptions()
        if provider == "CPUExecutionProvider":
            self.run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        # Symbolic height and width (an export with dynamic spatial axes): any size runs, except
        # on the TensorRT provider, whose engine profile is built for the bundle's one tile.
        self.any_size = (provider != "TensorrtExecutionProvider"
                         and not any(isinstance(dim, int) for dim in model_input.shape[2:]))

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        chunks = [
            self.session.run(None, {self.input_name: batch[i : i + self.max_batch]}, self.run_options)[0]
            for i in range(0, len(batch), self.max_batch)
        ]
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)

    def close(self) -> None:
        self.session = None


@functools.cache
def preload_gpu_libraries(provider: str) -> None:
    """Load CUDA and cuDNN from pip's nvidia-* wheels (``onnxruntime.preload_dlls()``, ONNX
    Runtime 1.21+) and, for the TensorRT provider, pip TensorRT's libnvinfer (its wheel keeps
    the libraries in its package folder, where the loader would not look); without these a
    pip-installed GPU stack is not found and ONNX Runtime falls back to the CPU. Where they are
    absent (JetPack, a system CUDA), the system's libraries are found as before."""
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except OSError as exc:  # a missing library shows when the session starts; say which here
            log.warning("onnxruntime.preload_dlls: %s", one_line(exc))
    if provider == "TensorrtExecutionProvider" and importlib.util.find_spec("tensorrt_libs") is not None:
        importlib.import_module("tensorrt_libs")  # its import loads libnvinfer and the ONNX parser


def tensorrt_ep_options(bundle: Bundle, batch: int) -> dict[str, str]:
    """Build the TensorRT engine once for tile-sized batches of 1..batch and cache it in
    the bundle, so that a restart does not pay minutes of engine building again. FP16, as
    the native engine is (TensorRT builds it from the FP32 ONNX; the native backend's gate
    does not cover this provider); the CUDA provider after it runs what TensorRT cannot."""
    name = bundle.manifest.get("input", {}).get("name", "input")
    shape = f"{bundle.input_channels}x{bundle.tile}x{bundle.tile}"
    cache = bundle.engines_dir / "ort-tensorrt"
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackendError(f"{cache}: cannot create the TensorRT engine cache: {exc}") from exc
    return {
        "trt_fp16_enable": "True",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": "True",
        "trt_profile_min_shapes": f"{name}:1x{shape}",
        "trt_profile_opt_shapes": f"{name}:{batch}x{shape}",
        "trt_profile_max_shapes": f"{name}:{batch}x{shape}",
    }


def _cuda_options(bundle: Bundle | None = None, batch: int = 0) -> dict[str, str]:
    # The slow exhaustive search runs once per input shape, and a microscope's fields mostly
    # share one, so it pays off after a few runs.
    return {"cudnn_conv_algo_search": "EXHAUSTIVE"}


def ort_kind(kind: str, options: Callable[[Bundle, int], dict[str, str]] | None = None) -> BackendKind:
    """The registry entry of a kind that :class:`OrtBackend` runs with its provider;
    ``options(bundle, batch)`` gives the provider's options."""
    provider = PROVIDERS[kind]

    def open_(bundle: Bundle, batch: int, threads: int | None, settings: None) -> Backend:
        provider_options = options(bundle, batch) if options else None
        return OrtBackend(bundle.onnx_path, kind, batch, threads, provider_options)

    def unavailable(bundle: Bundle) -> str | None:
        import onnxruntime as ort

        return None if provider in ort.get_available_providers() else f"onnxruntime lacks {provider}"

    return BackendKind(open_, unavailable, no_options(kind), provider)


def _int8_unavailable(bundle: Bundle) -> str | None:
    path = bundle.int8_path
    if path is None:
        return f"{bundle.path} has no INT8 model (run phasewatch quantise)"
    if not path.is_file() or sha256_file(path) != bundle.manifest["int8"].get("sha256"):
        return f"{path}: missing or not the file the manifest's sha256 names"
    return None


def _open_int8(bundle: Bundle, batch: int, threads: int | None, settings: None) -> Backend:
    if (reason := _int8_unavailable(bundle)) is not None:
        raise BackendError(reason)
    assert bundle.int8_path is not None
    backend = OrtBackend(bundle.int8_path, "cpu", batch, threads)
    backend.name = "cpu-int8"
    return backend


TENSORRT_EP = ort_kind("tensorrt-ep", tensorrt_ep_options)
CUDA = ort_kind("cuda", _cuda_options)
CPU = ort_kind("cpu")
# It changes the numbers (within the quantise gate's bars), so only a user who names it gets it.
CPU_INT8 = BackendKind(_open_int8, _int8_unavailable, no_options("cpu-int8"), auto=False)
