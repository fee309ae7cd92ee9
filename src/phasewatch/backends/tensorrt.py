"""Native TensorRT backend: a prebuilt FP16 engine, pinned host buffers and one CUDA stream.

An engine is only valid for the GPU, the TensorRT version and the ONNX file it was built from,
so its file name and its JSON sidecar stamp all three (:class:`EngineStamp`); this module loads
only an engine whose sidecar matches the running machine and otherwise says to rebuild it with
``phasewatch build-engine``. ``tensorrt`` and cuda-python (``cuda.bindings.runtime``, the CUDA
runtime API, as NVIDIA's TensorRT samples use it) are imported only when an engine is opened, so
the rest of the runtime works without them.

CUDA context: everything (TensorRT, the buffers, the stream) lives in the device's primary
context, which is one per process. A thread uses it once ``cudaSetDevice`` has bound it to that
thread, so every entry point (open, run, close) binds it first: ``run`` works from whichever
thread the daemon calls it on, and ``close`` from another thread than the opener still frees
everything (pycuda's context stack was per thread, and its frees silently did nothing there).
Every CUDA error becomes a one-line :class:`BackendError`, so ``auto`` can fall back.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from phasewatch.backends.base import BackendError
from phasewatch.bundle import Bundle, sha256_file
from phasewatch.errors import one_line

ENGINE_SUFFIX = ".engine"
SIDECAR_SUFFIX = ENGINE_SUFFIX + ".json"
SIDECAR_FORMAT = 1


@dataclass(frozen=True)
class EngineStamp:
    """What an engine is bound to; any difference means rebuild."""

    gpu: str  # device name as the driver reports it
    compute_capability: str  # e.g. "sm87"
    tensorrt: str  # TensorRT version
    onnx_sha256: str  # of the FP16 ONNX the engine is built from

    def file_name(self) -> str:
        return (
            f"{sanitise(self.gpu)}.{self.compute_capability}.trt{sanitise(self.tensorrt)}."
            f"{self.onnx_sha256[:12]}{ENGINE_SUFFIX}"
        )

    def describe(self) -> str:
        return f"{self.gpu} {self.compute_capability}, TensorRT {self.tensorrt}, ONNX {self.onnx_sha256[:12]}"


def sanitise(text: str) -> str:
    """A file-name-safe, lower-case form: runs of anything but letters, digits and dots become '-'."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-.") or "unknown"


def import_tensorrt() -> tuple[Any, Any]:
    """``(tensorrt, cuda.bindings.runtime)``, or a one-line BackendError saying what to install."""
    try:
        import tensorrt as trt
        from cuda.bindings import runtime as cudart
    except ImportError as exc:
        raise BackendError(
            f"the native TensorRT backend needs tensorrt and cuda-python "
            f"(pip install 'phasewatch[tensorrt]'; on a Jetson see docs/TENSORRT.md): {exc}"
        ) from exc
    return trt, cudart


def cuda_call(cudart: Any, what: str, result: tuple[Any, ...]) -> Any:
    """The value of a cuda-python call (``(error, *values)``); a BackendError unless it succeeded."""
    error, *values = result
    if error != cudart.cudaError_t.cudaSuccess:
        _, text = cudart.cudaGetErrorString(error)
        detail = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
        raise BackendError(f"CUDA {what} failed: {detail} ({int(error)})")
    return values[0] if len(values) == 1 else tuple(values)


def current_stamp(bundle: Bundle, device: int = 0) -> EngineStamp:
    """The stamp an engine for ``bundle`` must carry on this machine's GPU ``device``."""
    trt, cudart = import_tensorrt()
    if not bundle.onnx_fp16_path.is_file():
        raise BackendError(f"{bundle.path}: model.fp16.onnx is missing (re-export the bundle)")
    try:
        props = cuda_call(cudart, "cudaGetDeviceProperties", cudart.cudaGetDeviceProperties(device))
    except BackendError as exc:
        raise BackendError(f"{bundle.path}: no usable CUDA device: {exc}") from exc
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return EngineStamp(
        gpu=name.rstrip("\0"),
        compute_capability=f"sm{props.major}{props.minor}",
        tensorrt=str(trt.__version__),
        onnx_sha256=sha256_file(bundle.onnx_fp16_path),
    )


def read_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        sidecar = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return sidecar if isinstance(sidecar, dict) else None


def sidecar_stamp(sidecar: dict[str, Any]) -> EngineStamp | None:
    try:
        return EngineStamp(**{key: str(sidecar[key]) for key in EngineStamp.__dataclass_fields__})
    except KeyError:
        return None


def sidecar_path(engine: Path) -> Path:
    return engine.with_name(engine.name + ".json")


def find_engine(bundle: Bundle, stamp: EngineStamp) -> Path:
    """The engine whose sidecar matches ``stamp`` and whose bytes match the sidecar."""
    engine = bundle.engines_dir / stamp.file_name()
    sidecar = read_sidecar(sidecar_path(engine))
    if sidecar is not None and sidecar_stamp(sidecar) == stamp and engine.is_file():
        if sha256_file(engine) != sidecar.get("engine_sha256"):
            raise BackendError(f"{engine}: file differs from its sidecar (partial copy?); "
                               f"rebuild with: phasewatch build-engine {bundle.path}")
        return engine
    others = [
        found.describe()
        for path in sorted(bundle.engines_dir.glob(f"*{SIDECAR_SUFFIX}"))
        if (found := sidecar_stamp(read_sidecar(path) or {})) is not None
    ]
    have = "; ".join(others) if others else "none"
    raise BackendError(
        f"{bundle.path}: no TensorRT engine for {stamp.describe()} (engines here: {have}); "
        f"build one with: phasewatch build-engine {bundle.path}"
    )


def open_tensorrt_backend(bundle: Bundle, batch: int) -> TensorRTBackend:
    """The backend for ``bundle`` on this machine's GPU; ``batch`` caps the engine's max batch."""
    return TensorRTBackend(find_engine(bundle, current_stamp(bundle)), batch)


class _Buffer:
    """One I/O tensor's page-locked host memory (as a flat float32 array) and device memory."""

    def __init__(self, cudart: Any, elements: int) -> None:
        self.elements = elements
        nbytes = elements * 4
        self.device = 0
        self.host_ptr = cuda_call(cudart, f"cudaMallocHost({nbytes})", cudart.cudaMallocHost(nbytes))
        try:
            self.device = cuda_call(cudart, f"cudaMalloc({nbytes})", cudart.cudaMalloc(nbytes))
        except BackendError:
            cuda_call(cudart, "cudaFreeHost", cudart.cudaFreeHost(self.host_ptr))
            raise
        # a numpy view of the pinned memory: valid only until free()
        self.host: np.ndarray | None = np.ctypeslib.as_array(
            ctypes.cast(self.host_ptr, ctypes.POINTER(ctypes.c_float)), (elements,))

    def free(self, cudart: Any) -> None:
        self.host = None  # no view may outlive the memory
        cuda_call(cudart, "cudaFree", cudart.cudaFree(self.device))
        cuda_call(cudart, "cudaFreeHost", cudart.cudaFreeHost(self.host_ptr))


class TensorRTBackend:
    """One engine, one execution context, one stream, one pinned and device buffer per I/O tensor.

    ``run`` is serialised by a lock because the buffers and the stream are shared. An engine
    built with a spatial profile (``phasewatch build-engine`` for a bundle with dynamic height
    and width) runs any height and width within it: ``any_size`` is then True and ``max_side``
    the profile's largest side, which the tile planner respects; buffers grow to the largest
    batch seen. Otherwise tiles are the one size the engine was built for.
    """

    name = "tensorrt"

    def __init__(self, engine_path: Path, batch: int, device: int = 0) -> None:
        trt, cudart = import_tensorrt()
        self._trt, self._cudart, self._device = trt, cudart, device
        self._lock = threading.Lock()
        self._closed = False
        # TensorRT objects: untyped, None until opened and after close
        self._runtime: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._buffers: dict[str, _Buffer] = {}
        self._input = self._output = ""
        self._low: tuple[int, ...] = ()  # the profile's smallest and largest input shapes
        self._high: tuple[int, ...] = ()
        self._shape: tuple[int, ...] = ()  # the input shape the context is set to
        self._out_shape: tuple[int, ...] = ()
        self.max_batch, self.any_size, self.max_side = 1, False, 0
        self._bind()
        try:
            self._open(engine_path, batch)
        except BaseException as exc:
            with contextlib.suppress(BackendError):  # the error that stopped the opening matters
                self._release()
            if isinstance(exc, RuntimeError):  # what TensorRT's binding raises
                raise BackendError(f"{engine_path}: TensorRT: {one_line(exc)}") from exc
            raise

    def _bind(self) -> None:
        """Make the device's primary context current on the calling thread."""
        cuda_call(self._cudart, f"cudaSetDevice({self._device})", self._cudart.cudaSetDevice(self._device))

    def _open(self, engine_path: Path, batch: int) -> None:
        trt = self._trt
        where = engine_path
        # the runtime (and its logger) must outlive the engine deserialized from it
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self._engine is None:
            raise BackendError(f"{where}: TensorRT cannot load this engine (other TensorRT version "
                               "or GPU?); rebuild it with phasewatch build-engine")
        engine = self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise BackendError(f"{where}: expected one input and one output, got {inputs} and {outputs}")
        self._input, self._output = inputs[0], outputs[0]
        for name in names:
            if np.dtype(trt.nptype(engine.get_tensor_dtype(name))) != np.float32:
                raise BackendError(f"{where}: tensor '{name}' is not float32 (FP16 engines keep "
                                   "float32 I/O)")
        low, opt, high = (tuple(int(v) for v in s) for s in engine.get_tensor_profile_shape(self._input, 0))
        self._low, self._high = low, high
        self.max_batch = max(1, min(int(batch), high[0]))
        self.any_size = low[2:] != high[2:]
        self.max_side = min(high[2:])
        self._context = engine.create_execution_context()
        if self._context is None:  # TensorRT could not allocate the activation memory
            raise BackendError(f"{where}: TensorRT could not create an execution context (out of GPU "
                               "memory? a smaller --max-batch or --max-side engine needs less)")
        self._stream = cuda_call(self._cudart, "cudaStreamCreate", self._cudart.cudaStreamCreate())
        # sized for a full batch at the size TensorRT tuned for; grown when a larger one comes
        self._prepare((self.max_batch, *opt[1:]))

    def _prepare(self, shape: tuple[int, ...]) -> None:
        """Set the context's input shape and make the buffers large enough for it."""
        if shape == self._shape:
            return
        if not self._context.set_input_shape(self._input, shape):
            raise BackendError(f"{self._input}: TensorRT refused input shape {shape}")
        self._shape = shape
        out_shape = tuple(self._context.get_tensor_shape(self._output))
        if min(out_shape) < 1:
            raise BackendError(f"{self._output}: cannot tell the output shape ({out_shape})")
        for name, elements in ((self._input, int(np.prod(shape))), (self._output, int(np.prod(out_shape)))):
            self._ensure_buffer(name, elements)
        self._out_shape = out_shape

    def _ensure_buffer(self, name: str, elements: int) -> None:
        old = self._buffers.get(name)
        if old is not None and old.elements >= elements:
            return
        if old is not None:  # the stream is idle between runs: nothing still uses the old one
            del self._buffers[name]
            old.free(self._cudart)
        buffer = self._buffers[name] = _Buffer(self._cudart, elements)
        if not self._context.set_tensor_address(name, buffer.device):
            raise BackendError(f"{name}: TensorRT refused the device address {buffer.device:#x}")

    def _check_shape(self, shape: tuple[int, ...]) -> None:
        if self.any_size:
            fits = (len(shape) == 4 and shape[1] == self._low[1]
                    and all(lo <= v <= hi for lo, v, hi in zip(self._low[2:], shape[2:], self._high[2:],
                                                                strict=True)))
            expected = f"N x {self._low[1]} x H x W with {self._low[2:]} <= (H, W) <= {self._high[2:]}"
        else:
            fits = len(shape) == 4 and shape[1:] == self._high[1:]
            expected = f"N x {self._high[1:]}"
        if not fits:
            raise ValueError(f"tensorrt backend: batch shape {shape} is not {expected}")

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.float32)
        self._check_shape(batch.shape)
        with self._lock:
            if self._closed:
                raise BackendError("tensorrt backend: run() after close()")
            self._bind()
            chunks = [self._run_chunk(batch[i : i + self.max_batch])
                      for i in range(0, len(batch), self.max_batch)]
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)

    def _run_chunk(self, chunk: np.ndarray) -> np.ndarray:
        cudart, stream = self._cudart, self._stream
        self._prepare(chunk.shape)
        source, target = self._buffers[self._input], self._buffers[self._output]
        assert source.host is not None and target.host is not None
        size_in, size_out = chunk.size, int(np.prod(self._out_shape))
        source.host[:size_in] = chunk.reshape(-1)
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        cuda_call(cudart, "cudaMemcpyAsync", cudart.cudaMemcpyAsync(
            source.device, source.host_ptr, size_in * 4, h2d, stream))
        if not self._context.execute_async_v3(int(stream)):
            raise BackendError(f"tensorrt backend: execute_async_v3 failed for input {chunk.shape}")
        cuda_call(cudart, "cudaMemcpyAsync", cudart.cudaMemcpyAsync(
            target.host_ptr, target.device, size_out * 4, d2h, stream))
        cuda_call(cudart, "cudaStreamSynchronize", cudart.cudaStreamSynchronize(stream))
        # a copy: the pinned buffer is reused by the next batch
        return target.host[:size_out].reshape(self._out_shape).copy()

    def close(self) -> None:
        """Free everything, from whichever thread: the context is bound to the caller first."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._bind()
            self._release()

    def _release(self) -> None:
        """Close order: wait for the stream; TensorRT's context, engine and runtime (each needs
        the ones after it); then the buffers the context pointed at; the stream last."""
        cudart = self._cudart
        errors: list[BackendError] = []
        if self._stream is not None:
            errors += _attempt(lambda: cuda_call(cudart, "cudaStreamSynchronize",
                                                 cudart.cudaStreamSynchronize(self._stream)))
        self._context = None
        self._engine = None
        self._runtime = None
        for buffer in self._buffers.values():
            errors += _attempt(functools.partial(buffer.free, cudart))
        self._buffers = {}
        if self._stream is not None:
            stream, self._stream = self._stream, None
            errors += _attempt(lambda: cuda_call(cudart, "cudaStreamDestroy", cudart.cudaStreamDestroy(stream)))
        if errors:  # everything was attempted; say what failed
            raise errors[0]


def _attempt(release: Callable[[], object]) -> list[BackendError]:
    """Run one release step; its error is collected so that the later steps still run."""
    try:
        release()
    except BackendError as exc:
        return [exc]
    return []
