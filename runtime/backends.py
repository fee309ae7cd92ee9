"""Inference backends: something that turns a batch of tiles into a batch of logits.

Every backend has ``name``, ``max_batch``, ``run(batch) -> logits`` and ``close()``.
ONNX Runtime covers CPU, CUDA and the TensorRT execution provider; the native
TensorRT backend lives in ``tensorrt_backend.py`` and is imported only when asked for.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from phasewatch.runtime.bundle import Bundle
from phasewatch.runtime.errors import PhasewatchError, one_line

log = logging.getLogger(__name__)

KINDS = ("auto", "cpu", "cuda", "tensorrt-ep", "tensorrt")
ORT_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt-ep": "TensorrtExecutionProvider",
}
# Fastest first; 'auto' takes the first one that works.
AUTO_ORDER = ("tensorrt", "tensorrt-ep", "cuda", "cpu")


class BackendError(PhasewatchError):
    """A backend that cannot be opened or run; the message is one line."""


class Backend(Protocol):
    name: str
    max_batch: int

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 N x C x T x T -> float32 N x K x T x T."""
        ...

    def close(self) -> None: ...


def physical_cores() -> int:
    try:
        import psutil
    except ImportError:  # psutil is optional at runtime
        return os.cpu_count() or 1
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


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
    """An ONNX Runtime session; batches larger than ``max_batch`` are run in chunks."""

    def __init__(
        self,
        onnx_path: Path,
        kind: str = "cpu",
        max_batch: int = 8,
        threads: int | None = None,
        provider_options: dict[str, str] | None = None,
    ) -> None:
        import onnxruntime as ort

        if kind not in ORT_PROVIDERS:
            raise BackendError(f"{onnx_path}: '{kind}' is not an ONNX Runtime backend kind")
        provider = ORT_PROVIDERS[kind]
        if provider not in ort.get_available_providers():
            raise BackendError(
                f"{onnx_path}: backend '{kind}' needs {provider}, which this onnxruntime "
                f"lacks (available: {', '.join(ort.get_available_providers())})"
            )
        providers: list[Any] = [(provider, provider_options or {})]
        if kind != "cpu":
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
        self.input_name = self.session.get_inputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        chunks = [
            self.session.run(None, {self.input_name: batch[i : i + self.max_batch]})[0]
            for i in range(0, len(batch), self.max_batch)
        ]
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)

    def close(self) -> None:
        self.session = None


def tensorrt_ep_options(bundle: Bundle, batch: int) -> dict[str, str]:
    """Build the TensorRT engine once for tile-sized batches of 1..batch and cache it in
    the bundle, so that a restart does not pay minutes of engine building again."""
    name = bundle.manifest.get("input", {}).get("name", "input")
    shape = f"{bundle.channels}x{bundle.tile}x{bundle.tile}"
    cache = bundle.engines_dir / "ort-tensorrt"
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackendError(f"{cache}: cannot create the TensorRT engine cache: {exc}") from exc
    return {
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": "True",
        "trt_profile_min_shapes": f"{name}:1x{shape}",
        "trt_profile_opt_shapes": f"{name}:{batch}x{shape}",
        "trt_profile_max_shapes": f"{name}:{batch}x{shape}",
    }


def _native_tensorrt_engine_present(bundle: Bundle) -> bool:
    return bundle.engines_dir.is_dir() and any(bundle.engines_dir.glob("*.engine"))


def _tensorrt_importable() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def _open_native_tensorrt(bundle: Bundle, batch: int) -> Backend:
    try:
        module = importlib.import_module("phasewatch.runtime.tensorrt_backend")
    except ImportError as exc:
        raise BackendError(f"{bundle.path}: native TensorRT backend unavailable: {exc}") from exc
    return module.open_tensorrt_backend(bundle, batch)


def _open_kind(bundle: Bundle, kind: str, batch: int, threads: int | None) -> Backend:
    if kind == "tensorrt":
        return _open_native_tensorrt(bundle, batch)
    options: dict[str, str] = {}
    if kind == "cuda":
        # Tiles always have one shape, so the slow exhaustive search pays off after one run.
        options = {"cudnn_conv_algo_search": "EXHAUSTIVE"}
    elif kind == "tensorrt-ep":
        options = tensorrt_ep_options(bundle, batch)
    return OrtBackend(bundle.onnx_path, kind, batch, threads, options)


def _auto(bundle: Bundle, batch: int, threads: int | None) -> Backend:
    import onnxruntime as ort

    available = ort.get_available_providers()
    reasons = []
    for kind in AUTO_ORDER:
        if kind == "tensorrt":
            if not _tensorrt_importable():
                reasons.append("tensorrt: python package not installed")
                continue
            if not _native_tensorrt_engine_present(bundle):
                reasons.append(f"tensorrt: no engine in {bundle.engines_dir} (run build-engine)")
                continue
        elif ORT_PROVIDERS[kind] not in available:
            reasons.append(f"{kind}: onnxruntime lacks {ORT_PROVIDERS[kind]}")
            continue
        try:
            backend = _open_kind(bundle, kind, batch, threads)
        except BackendError as exc:
            reasons.append(f"{kind}: {exc}")
            continue
        why = "; ".join(reasons) if reasons else "fastest available"
        log.info("backend auto: picked %s (%s)", kind, why)
        return backend
    raise BackendError(f"{bundle.path}: no backend could be opened ({'; '.join(reasons)})")


def open_backend(
    bundle: Bundle, kind: str = "auto", batch: int = 8, threads: int | None = None
) -> Backend:
    """Open the backend ``kind`` (one of KINDS) for ``bundle``; 'auto' picks the fastest
    one that opens and logs why the faster ones were passed over."""
    if kind not in KINDS:
        raise BackendError(f"{bundle.path}: unknown backend '{kind}' (choose from {', '.join(KINDS)})")
    if kind == "auto":
        return _auto(bundle, batch, threads)
    return _open_kind(bundle, kind, batch, threads)
