"""Inference backends: something that turns a batch of tiles into a batch of logits.

Every backend has ``name``, ``max_batch``, ``run(batch) -> logits`` and ``close()``.
:data:`BACKENDS` is the one list of backend kinds, fastest first: adding a backend is
one entry there. ONNX Runtime covers CPU, CUDA and the TensorRT execution provider; the
native TensorRT backend lives in ``tensorrt_backend.py`` and is imported only when asked for.
``cpu-int8`` runs the bundle's INT8 model (``phasewatch quantise``) on the CPU provider; it
changes the numbers (within the gate's bars), so only a user who names it gets it.
``triton`` sends the tile batches to an NVIDIA Triton Inference Server (``triton_backend.py``,
imported only when asked for): the server is shared, so only a user who names it gets it.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np

from phasewatch.bundle import Bundle, sha256_file
from phasewatch.errors import PhasewatchError, one_line

log = logging.getLogger(__name__)


# Pixels per call on ONNX Runtime's CPU provider (call_pixels): two 256 x 256 tiles, one 362 x 362.
CPU_CALL_PIXELS = 1 << 17


class BackendError(PhasewatchError):
    """A backend that cannot be opened or run; the message is one line."""


class Backend(Protocol):
    name: str
    max_batch: int

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 N x C x T x T -> float32 N x K x T x T."""
        ...

    def close(self) -> None: ...


def any_size(backend: Backend) -> bool:
    """Whether ``backend`` runs inputs of any height and width (a model exported with
    dynamic spatial axes on ONNX Runtime, or a TensorRT engine built with a spatial profile),
    so the engine may plan tiles per field; a backend without the attribute (a TensorRT
    engine built for one tile) takes one size."""
    return bool(getattr(backend, "any_size", False))


def max_side(backend: Backend) -> int:
    """The largest tile height and width ``backend`` takes (a TensorRT engine's profile), 0
    for no limit; a wrapper (test-time augmentation) is asked through to what it wraps."""
    return _wrapped_attribute(backend, "max_side")


def call_pixels(backend: Backend) -> int:
    """The most pixels one call of ``backend`` should hold for speed (0: as many as memory
    allows). On ONNX Runtime's CPU provider a batch gains nothing over one tile at a time and
    large ones fall out of the cache: per pixel, 512 x 512 tiles cost 3-20 % more in batches of
    8 than one by one over four runs (bench/batch_pixels.py, one core; smaller tiles vary
    either way with the machine's load)."""
    return _wrapped_attribute(backend, "call_pixels")


def _wrapped_attribute(backend: Backend, name: str) -> int:
    current: Any = backend
    while current is not None:
        if getattr(current, name, 0):
            return int(getattr(current, name))
        current = getattr(current, "inner", None)
    return 0


class Remote(NamedTuple):
    """Where a backend that runs on a server (``triton``) finds its model; the others ignore it."""

    url: str = ""  # host:port; empty: this host on the protocol's default port
    model: str = ""  # the server's model name; empty: the bundle's name
    protocol: str = "grpc"  # grpc or http
    timeout_s: float = 60.0  # one request, connection included
    shared_memory: bool = False  # tiles and logits through system shared memory (server on this host)


REMOTE_PROTOCOLS = ("grpc", "http")
DEFAULT_REMOTE = Remote()


class BackendKind(NamedTuple):
    """One entry of :data:`BACKENDS`."""

    # (bundle, batch, threads, remote); raises BackendError
    open: Callable[[Bundle, int, int | None, Remote], Backend]
    # Loads no model: None, or one line saying why ``open`` cannot work on this machine.
    unavailable: Callable[[Bundle], str | None]
    provider: str | None = None  # the ONNX Runtime execution provider, for kinds OrtBackend runs
    # 'auto' may pick it; False for a kind that changes the numbers (INT8): asked for by name only.
    auto: bool = True


def physical_cores() -> int:
    """Physical cores, but no more than the CPUs this process may run on (systemd's
    CPUAffinity=, a container's cpuset, taskset): more threads than that only contend."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        import psutil
    except ImportError:  # psutil is optional at runtime
        return allowed
    return max(1, min(allowed, psutil.cpu_count(logical=False) or allowed))


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
    """An ONNX Runtime session with the provider of the :data:`BACKENDS` entry ``kind``;
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

        entry = BACKENDS.get(kind)
        provider = entry.provider if entry else None
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
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        # Symbolic height and width (an export with dynamic spatial axes): any size runs, except
        # on the TensorRT provider, whose engine profile is built for the bundle's one tile.
        self.any_size = (provider != "TensorrtExecutionProvider"
                         and not any(isinstance(dim, int) for dim in model_input.shape[2:]))

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        chunks = [
            self.session.run(None, {self.input_name: batch[i : i + self.max_batch]})[0]
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


def _onnxruntime(
    kind: str, provider: str, options: Callable[[Bundle, int], dict[str, str]] | None = None
) -> BackendKind:
    """The entry of a kind that :class:`OrtBackend` runs with ``provider``;
    ``options(bundle, batch)`` gives the provider's options."""

    def open_(bundle: Bundle, batch: int, threads: int | None, remote: Remote) -> Backend:
        provider_options = options(bundle, batch) if options else None
        return OrtBackend(bundle.onnx_path, kind, batch, threads, provider_options)

    def unavailable(bundle: Bundle) -> str | None:
        import onnxruntime as ort

        return None if provider in ort.get_available_providers() else f"onnxruntime lacks {provider}"

    return BackendKind(open_, unavailable, provider)


def _int8_unavailable(bundle: Bundle) -> str | None:
    path = bundle.int8_path
    if path is None:
        return f"{bundle.path} has no INT8 model (run phasewatch quantise)"
    if not path.is_file() or sha256_file(path) != bundle.manifest["int8"].get("sha256"):
        return f"{path}: missing or not the file the manifest's sha256 names"
    return None


def _open_int8(bundle: Bundle, batch: int, threads: int | None, remote: Remote) -> Backend:
    if (reason := _int8_unavailable(bundle)) is not None:
        raise BackendError(reason)
    assert bundle.int8_path is not None
    backend = OrtBackend(bundle.int8_path, "cpu", batch, threads)
    backend.name = "cpu-int8"
    return backend


def _native_tensorrt_unavailable(bundle: Bundle) -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "python package 'tensorrt' is not installed"
    if not (bundle.engines_dir.is_dir() and any(bundle.engines_dir.glob("*.engine"))):
        return f"no engine in {bundle.engines_dir} (run build-engine)"
    return None


def _open_native_tensorrt(bundle: Bundle, batch: int, threads: int | None, remote: Remote) -> Backend:
    # threads is not used: TensorRT keeps no CPU thread pool to size.
    try:
        module = importlib.import_module("phasewatch.backends.tensorrt")
    except ImportError as exc:
        raise BackendError(f"{bundle.path}: native TensorRT backend unavailable: {exc}") from exc
    return module.open_tensorrt_backend(bundle, batch)


def _triton_unavailable(bundle: Bundle) -> str | None:
    if importlib.util.find_spec("tritonclient") is None:
        return "python package 'tritonclient' is not installed (pip install 'phasewatch[triton]')"
    return None


def _open_triton(bundle: Bundle, batch: int, threads: int | None, remote: Remote) -> Backend:
    # threads is not used: the server runs the network.
    if (reason := _triton_unavailable(bundle)) is not None:
        raise BackendError(f"{bundle.path}: backend 'triton': {reason}")
    module = importlib.import_module("phasewatch.backends.triton.client")
    return module.TritonBackend(bundle, batch, remote)


# Fastest first: 'auto' takes the first kind that is available and opens.
BACKENDS: dict[str, BackendKind] = {
    "tensorrt": BackendKind(_open_native_tensorrt, _native_tensorrt_unavailable),
    "tensorrt-ep": _onnxruntime("tensorrt-ep", "TensorrtExecutionProvider", tensorrt_ep_options),
    "cuda": _onnxruntime("cuda", "CUDAExecutionProvider", _cuda_options),
    "cpu": _onnxruntime("cpu", "CPUExecutionProvider"),
    "cpu-int8": BackendKind(_open_int8, _int8_unavailable, auto=False),
    "triton": BackendKind(_open_triton, _triton_unavailable, auto=False),
}
KINDS = ("auto", *BACKENDS)  # the choices of --backend and model.backend


class Choice(NamedTuple):
    backend: Backend
    passed_over: dict[str, str]  # kind -> why 'auto' did not take it, fastest first


def _listed(reasons: dict[str, str]) -> str:
    return "; ".join(f"{kind}: {reason}" for kind, reason in reasons.items())


def choose_backend(
    bundle: Bundle, kind: str = "auto", batch: int = 8, threads: int | None = None, remote: Remote = DEFAULT_REMOTE
) -> Choice:
    """Open the backend ``kind`` (one of KINDS) for ``bundle``; 'auto' takes the first entry
    of BACKENDS that is available and opens, and says why it passed over the ones before;
    ``remote`` is where a server backend (``triton``) finds its model."""
    if kind != "auto":
        if kind not in BACKENDS:
            raise BackendError(f"{bundle.path}: unknown backend '{kind}' (choose from {', '.join(KINDS)})")
        return Choice(BACKENDS[kind].open(bundle, batch, threads, remote), {})
    passed_over: dict[str, str] = {}
    for name, entry in BACKENDS.items():
        if not entry.auto:
            continue
        reason = entry.unavailable(bundle)
        if reason is None:
            try:
                return Choice(entry.open(bundle, batch, threads, remote), passed_over)
            except BackendError as exc:
                reason = str(exc)
        passed_over[name] = reason
    raise BackendError(f"{bundle.path}: no backend could be opened ({_listed(passed_over)})")


def open_backend(
    bundle: Bundle, kind: str = "auto", batch: int = 8, threads: int | None = None, remote: Remote = DEFAULT_REMOTE
) -> Backend:
    """:func:`choose_backend`'s backend; for 'auto' it logs the choice and its reasons."""
    backend, passed_over = choose_backend(bundle, kind, batch, threads, remote)
    if kind == "auto":
        log.info("backend auto: picked %s (%s)", backend.name, _listed(passed_over) or "fastest available")
    return backend
