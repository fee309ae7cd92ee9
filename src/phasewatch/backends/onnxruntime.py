"""The ONNX Runtime backends: ``cpu``, ``cuda`` and ``tensorrt-ep`` (ONNX Runtime's execution
providers) run the bundle's ONNX model; ``cpu-int8`` runs its INT8 model (``phasewatch
quantise``) on the CPU provider. ``cuda`` has settings (``[model.cuda]``: the memory arena's
limit) and ``tensorrt-ep`` too (``[model.tensorrt-ep]``: where its engines are cached, the
profile's largest side); the CPU kinds have none.

``tensorrt-ep`` builds FP16 from the FP32 ONNX with no accuracy gate, so ``auto`` never picks
it (``BackendKind.manual``): a user who names it gets it.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from phasewatch.backends.base import (
    Backend,
    BackendError,
    BackendFatal,
    BackendKind,
    Table,
    no_options,
    options_from_table,
    physical_cores,
    sticky_cuda_error,
)
from phasewatch.backends.engines import EngineOptions, engine_folder
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
    batches larger than ``max_batch`` are run in chunks. On the TensorRT provider, ``max_side``
    is the largest height and width of its engine profile (0: the profile is the bundle's tile)."""

    def __init__(
        self,
        onnx_path: Path,
        kind: str = "cpu",
        max_batch: int = 8,
        threads: int | None = None,
        provider_options: dict[str, str] | None = None,
        max_side: int = 0,
        head_path: Path | None = None,
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
            # nodes TensorRT lacks stay on the GPU, in an arena as bounded as the cuda kind's
            providers.append(("CUDAExecutionProvider", cuda_options(CudaOptions(), any_size=True)))
        if provider != "CPUExecutionProvider":
            preload_gpu_libraries(provider)
            providers.append("CPUExecutionProvider")  # for the odd node a GPU provider lacks
        self.session = _session(onnx_path, provider, threads, providers)
        # The model with its post-processing in the graph (export/head.py), for fields run in one pass.
        self._head: Any = _session(head_path, provider, threads, providers) if head_path is not None else None
        if self.session.get_providers()[0] != provider:
            # ORT falls back to CPU silently when a GPU provider fails to initialise.
            raise BackendError(f"{onnx_path}: {provider} failed to initialise (CUDA libraries?)")
        self.name = kind
        self.max_batch = max(1, int(max_batch))
        self.call_pixels = CPU_CALL_PIXELS if provider == "CPUExecutionProvider" else 0
        # The CPU provider's arena keeps the largest buffers it ever allocated: after a huge field
        # the service held about its peak for good (1711 of 2643 MiB after a 50 MP field), until
        # return_free_memory. Not shrunk after every call: each next call of a large field would
        # fault its memory in again (a 4 MP field took 30-40 % longer).
        self._shrink: Any = None
        if provider == "CPUExecutionProvider":
            self._shrink = ort.RunOptions()
            self._shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        # Symbolic height and width (an export with dynamic spatial axes): any size runs; on the
        # TensorRT provider, any size within its profile, up to max_side.
        dynamic = not any(isinstance(dim, int) for dim in model_input.shape[2:])
        self.any_size = dynamic and (provider != "TensorrtExecutionProvider" or max_side > 0)
        self.max_side = max_side if provider == "TensorrtExecutionProvider" else 0

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        try:
            chunks = [
                self.session.run(None, {self.input_name: batch[i : i + self.max_batch]})[0]
                for i in range(0, len(batch), self.max_batch)
            ]
        except Exception as exc:  # ORT's own exception types; a sticky CUDA error is named in the text
            if sticky_cuda_error(str(exc)):
                raise BackendFatal(f"{self.name}: {one_line(exc)}") from exc
            raise
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)

    def run_head(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 N x C x H x W -> uint8 class ids and uint8 softmax margins, N x H x W each, from
        the head model (``tiling``'s argmax and margin of one pass, computed by the runtime)."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        try:
            chunks = [self._head.run(None, {self.input_name: batch[i : i + self.max_batch]})
                      for i in range(0, len(batch), self.max_batch)]
        except Exception as exc:  # as in run
            if sticky_cuda_error(str(exc)):
                raise BackendFatal(f"{self.name}: {one_line(exc)}") from exc
            raise
        if len(chunks) == 1:
            return chunks[0][0], chunks[0][1]
        return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])

    @property
    def has_head(self) -> bool:
        return self._head is not None

    def return_free_memory(self, smallest: tuple[int, int, int, int]) -> None:
        """Hand the CPU arena's free memory back to the system (between files, after a large
        one): one call of the ``smallest`` input the model takes, at whose end ONNX Runtime
        frees the arena's regions that nothing uses (0.1 s; 568 -> 112 MiB after a 1024^2 call)."""
        if self._shrink is not None:
            self.session.run(None, {self.input_name: np.zeros(smallest, np.float32)}, self._shrink)

    def close(self) -> None:
        self.session = None
        self._head = None


def _session(path: Path, provider: str, threads: int | None, providers: list[Any]) -> Any:
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), sess_options=session_options(threads), providers=providers)
    except Exception as exc:  # ORT raises its own, mostly multi-line, exception types
        raise BackendError(f"{path}: cannot open with {provider}: {one_line(exc)}") from exc


def head_path(bundle: Bundle) -> Path | None:
    """The bundle's head model (``Bundle.head_path``) where it is the file its manifest names;
    None (today's path, logits stitched in NumPy) for a bundle without one. A head file that is
    missing or changed is not used: the plain model gives the same maps, only slower."""
    path = bundle.head_path
    if path is None or not path.is_file() or sha256_file(path) != bundle.manifest["head"].get("sha256"):
        if path is not None:
            log.warning("%s: missing or not the file the manifest's sha256 names; post-processing on the CPU", path)
        return None
    return path


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


# The TensorRT provider's largest tile side for a bundle of any size (what build-engine's
# --max-side defaults to): TensorRT sizes its activation memory for batch x max side squared.
DEFAULT_EP_MAX_SIDE = 1024


@dataclass(frozen=True)
class TensorrtEpOptions(EngineOptions):
    """``[model.tensorrt-ep]``: ``engines`` (the folder under which its engine and timing caches
    go: ``<engines>/<model>/ort-tensorrt``) and ``max_side``, the largest tile height and width
    of its profile for a bundle exported for any size (a multiple of its spatial multiple)."""

    max_side: int = DEFAULT_EP_MAX_SIDE

    @classmethod
    def from_table(cls, table: Table) -> TensorrtEpOptions:
        return options_from_table(cls, "tensorrt-ep", table)

    def __post_init__(self) -> None:
        if self.max_side < 1:
            raise BackendError(f"[model.tensorrt-ep] max_side: must be >= 1, got {self.max_side}")


def tensorrt_ep_profile(bundle: Bundle, batch: int, max_side: int) -> tuple[str, str, str]:
    """The TensorRT provider's optimisation profile (min, opt, max shapes) for ``bundle``: its
    tile for a bundle of one size; else from its spatial multiple up to ``max_side`` (rounded
    down to a multiple), tuned for one field of the largest side, as the tile planner sends."""
    name = bundle.manifest.get("input", {}).get("name", "input")
    channels, multiple = bundle.input_channels, bundle.spatial_multiple
    if not multiple:
        shape = f"{channels}x{bundle.tile}x{bundle.tile}"
        return f"{name}:1x{shape}", f"{name}:{batch}x{shape}", f"{name}:{batch}x{shape}"
    side = max_side // multiple * multiple
    if side < multiple:
        raise BackendError(f"[model.tensorrt-ep] max_side: {max_side} is below {bundle.name}'s spatial multiple "
                           f"{multiple}")
    return (f"{name}:1x{channels}x{multiple}x{multiple}", f"{name}:1x{channels}x{side}x{side}",
            f"{name}:{batch}x{channels}x{side}x{side}")


def tensorrt_ep_options(bundle: Bundle, batch: int, options: TensorrtEpOptions) -> dict[str, str]:
    """FP16 (TensorRT builds it from the FP32 ONNX, with no accuracy gate: 'auto' never picks
    this kind) with the profile of :func:`tensorrt_ep_profile`; the engine and timing caches in
    the data folder (``<engines>/<model>/ort-tensorrt``), never in the bundle (read-only in
    site-packages) nor the working folder, so a restart reuses them instead of rebuilding."""
    cache = engine_folder(options.root, bundle) / "ort-tensorrt"
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackendError(f"{cache}: cannot create the TensorRT engine cache: {exc.strerror or exc}") from exc
    low, opt, high = tensorrt_ep_profile(bundle, batch, options.max_side)
    return {
        "trt_fp16_enable": "True",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache),
        "trt_profile_min_shapes": low,
        "trt_profile_opt_shapes": opt,
        "trt_profile_max_shapes": high,
    }


def _open_tensorrt_ep(bundle: Bundle, batch: int, threads: int | None, options: TensorrtEpOptions) -> Backend:
    provider_options = tensorrt_ep_options(bundle, batch, options)
    max_side = int(provider_options["trt_profile_max_shapes"].rsplit("x", 1)[1]) if bundle.spatial_multiple else 0
    return OrtBackend(bundle.onnx_path, "tensorrt-ep", batch, threads, provider_options, max_side)


# The CUDA provider's memory arena, unless [model.cuda] gpu_mem_limit_mb says otherwise: about
# twice what a 2-megapixel call of a bundled U-Net needs, and a bound inside a Jetson's shared RAM.
DEFAULT_GPU_MEM_LIMIT_MB = 4096


@dataclass(frozen=True)
class CudaOptions:
    """``[model.cuda]``: ``gpu_mem_limit_mb``, the most device memory ONNX Runtime's arena takes."""

    gpu_mem_limit_mb: int = DEFAULT_GPU_MEM_LIMIT_MB

    @classmethod
    def from_table(cls, table: Table) -> CudaOptions:
        return options_from_table(cls, "cuda", table)

    def __post_init__(self) -> None:
        if self.gpu_mem_limit_mb < 64:
            raise BackendError(f"[model.cuda] gpu_mem_limit_mb: must be >= 64, got {self.gpu_mem_limit_mb}")


def cuda_options(options: CudaOptions, any_size: bool) -> dict[str, str]:
    """The CUDA provider's options. The arena grows by what is asked (not in powers of two)
    up to the limit. cuDNN's exhaustive algorithm search runs once per input shape: worth it
    for a bundle of one tile size (batches of 1..N tiles), not where tiles are planned per field
    (``any_size``: a new shape for nearly every field), where the heuristic picks at once."""
    return {
        "cudnn_conv_algo_search": "HEURISTIC" if any_size else "EXHAUSTIVE",
        "arena_extend_strategy": "kSameAsRequested",
        "gpu_mem_limit": str(options.gpu_mem_limit_mb << 20),
    }


def _open_cuda(bundle: Bundle, batch: int, threads: int | None, options: CudaOptions) -> Backend:
    provider_options = cuda_options(options, any_size=bool(bundle.spatial_multiple))
    return OrtBackend(bundle.onnx_path, "cuda", batch, threads, provider_options)


def _open_cpu(bundle: Bundle, batch: int, threads: int | None, options: None) -> Backend:
    return OrtBackend(bundle.onnx_path, "cpu", batch, threads, head_path=head_path(bundle))


def provider_unavailable(provider: str) -> Any:
    """The ``unavailable`` of a kind run by ONNX Runtime's ``provider``."""

    def unavailable(bundle: Bundle) -> str | None:
        import onnxruntime as ort

        return None if provider in ort.get_available_providers() else f"onnxruntime lacks {provider}"

    return unavailable


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


TENSORRT_EP = BackendKind(
    _open_tensorrt_ep, provider_unavailable(PROVIDERS["tensorrt-ep"]), TensorrtEpOptions.from_table,
    PROVIDERS["tensorrt-ep"],
    manual="ONNX Runtime builds its FP16 engine from the FP32 ONNX with no accuracy gate (the native "
           "'tensorrt' engines pass build-engine's gate); named, it is used")
CUDA = BackendKind(_open_cuda, provider_unavailable(PROVIDERS["cuda"]), CudaOptions.from_table, PROVIDERS["cuda"])
CPU = BackendKind(_open_cpu, provider_unavailable(PROVIDERS["cpu"]), no_options("cpu"), PROVIDERS["cpu"])
# It changes the numbers (within the quantise gate's bars), so only a user who names it gets it.
CPU_INT8 = BackendKind(_open_int8, _int8_unavailable, no_options("cpu-int8"),
                       manual="INT8 changes the numbers (within the quantise gate's bars)")
