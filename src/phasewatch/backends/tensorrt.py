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
Every CUDA error becomes a one-line :class:`BackendError`, so ``auto`` can fall back; a sticky
one (:data:`~phasewatch.backends.base.STICKY_CUDA_ERRORS`: an illegal address, a kernel that
faulted, an uncorrectable ECC error) is a :class:`BackendFatal`: the primary context is lost
until the process ends, so the backend stops touching it (``close`` only drops its references)
and the service exits for systemd to restart it.

Engines are kept in the data folder, never in the bundle (:mod:`phasewatch.backends.engines`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from phasewatch.backends.base import STICKY_CUDA_ERRORS, BackendError, BackendFatal
from phasewatch.backends.engines import EngineOptions, engine_folders, sanitise
from phasewatch.bundle import Bundle, sha256_file
from phasewatch.errors import one_line

log = logging.getLogger(__name__)

ENGINE_SUFFIX = ".engine"
SIDECAR_SUFFIX = ENGINE_SUFFIX + ".json"
SIDECAR_FORMAT = 2  # 2: the stamp has the SM count and the memory
@dataclass(frozen=True)
class EngineStamp:
    """What an engine is bound to; any difference means rebuild."""

    gpu: str  # device name as the driver reports it
    compute_capability: str  # e.g. "sm87"
    # Every Jetson Orin module is an "Orin" sm87: an engine tuned for an AGX (16 SMs, 32-64 GB)
    # must not load on an 8 GB Orin Nano (8 SMs), whose memory its profile may not fit.
    multiprocessors: int
    memory_gib: int  # device memory, whole GiB
    tensorrt: str  # TensorRT version
    onnx_sha256: str  # of the ONNX the engine is built from (FP16; FP32 on a GPU without fast FP16)

    def file_name(self) -> str:
        return (
            f"{sanitise(self.gpu)}.{self.compute_capability}.{self.multiprocessors}sm.{self.memory_gib}gib."
            f"trt{sanitise(self.tensorrt)}.{self.onnx_sha256[:12]}{ENGINE_SUFFIX}"
        )

    def describe(self) -> str:
        return (f"{self.gpu} {self.compute_capability} ({self.multiprocessors} SMs, {self.memory_gib} GiB), "
                f"TensorRT {self.tensorrt}, ONNX {self.onnx_sha256[:12]}")


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
    """The value of a cuda-python call (``(error, *values)``); a BackendError unless it
    succeeded, a BackendFatal for a sticky error (the context is lost until the process ends)."""
    error, *values = result
    if error != cudart.cudaError_t.cudaSuccess:
        _, text = cudart.cudaGetErrorString(error)
        detail = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
        if int(error) in STICKY_CUDA_ERRORS:
            raise BackendFatal(f"CUDA {what} failed: {detail} ({int(error)}); this error sticks to the GPU "
                               "context until the process exits")
        raise BackendError(f"CUDA {what} failed: {detail} ({int(error)})")
    return values[0] if len(values) == 1 else tuple(values)


def engine_onnx_paths(bundle: Bundle) -> list[Path]:
    """The ONNX files an engine may be built from: the FP16 one, or the FP32 one on a GPU
    without fast FP16 (``build-engine`` chooses; the stamp's sha256 says which)."""
    return [bundle.onnx_fp16_path, bundle.onnx_path]


def current_stamp(bundle: Bundle, device: int = 0, onnx: Path | None = None) -> EngineStamp:
    """The stamp an engine for ``bundle`` built from ``onnx`` (default the FP16 ONNX) must
    carry on this machine's GPU ``device``."""
    trt, cudart = import_tensorrt()
    onnx = onnx or bundle.onnx_fp16_path
    if not onnx.is_file():
        raise BackendError(f"{bundle.path}: {onnx.name} is missing (re-export the bundle)")
    try:
        props = cuda_call(cudart, "cudaGetDeviceProperties", cudart.cudaGetDeviceProperties(device))
    except BackendFatal:
        raise
    except BackendError as exc:
        raise BackendError(f"{bundle.path}: no usable CUDA device: {exc}") from exc
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return EngineStamp(
        gpu=name.rstrip("\0"),
        compute_capability=f"sm{props.major}{props.minor}",
        multiprocessors=int(props.multiProcessorCount),
        memory_gib=round(int(props.totalGlobalMem) / 2**30),
        tensorrt=str(trt.__version__),
        onnx_sha256=sha256_file(onnx),
    )


def read_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        sidecar = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return sidecar if isinstance(sidecar, dict) else None


def sidecar_stamp(sidecar: dict[str, Any]) -> EngineStamp | None:
    """The stamp a sidecar records; None for one without every field (an older format)."""
    try:
        return EngineStamp(gpu=str(sidecar["gpu"]), compute_capability=str(sidecar["compute_capability"]),
                           multiprocessors=int(sidecar["multiprocessors"]), memory_gib=int(sidecar["memory_gib"]),
                           tensorrt=str(sidecar["tensorrt"]), onnx_sha256=str(sidecar["onnx_sha256"]))
    except (KeyError, TypeError, ValueError):
        return None


def sidecar_path(engine: Path) -> Path:
    return engine.with_name(engine.name + ".json")


def find_engine(bundle: Bundle, stamps: list[EngineStamp], root: Path | None = None) -> Path:
    """The engine, under ``root`` (default: the default data folder's) or in the bundle, whose
    sidecar matches one of ``stamps`` and whose bytes match the sidecar."""
    folders = engine_folders(root or EngineOptions().root, bundle)
    for folder in folders:
        for stamp in stamps:
            engine = folder / stamp.file_name()
            sidecar = read_sidecar(sidecar_path(engine))
            if sidecar is not None and sidecar_stamp(sidecar) == stamp and engine.is_file():
                if sha256_file(engine) != sidecar.get("engine_sha256"):
                    raise BackendError(f"{engine}: file differs from its sidecar (partial copy?); "
                                       f"rebuild with: phasewatch build-engine {bundle.path}")
                return engine
    others = [describe_sidecar(path) for folder in folders for path in sorted(folder.glob(f"*{SIDECAR_SUFFIX}"))]
    have = "; ".join(others) if others else "none"
    raise BackendError(
        f"{bundle.path}: no TensorRT engine for {stamps[0].describe()} in {folders[0]} or {folders[1]} "
        f"(engines there: {have}); build one with: phasewatch build-engine {bundle.path}"
    )


def describe_sidecar(path: Path) -> str:
    found = sidecar_stamp(read_sidecar(path) or {})
    return found.describe() if found else f"{path.name[:-len(SIDECAR_SUFFIX)]} (stamped without SM count and memory)"


def machine_stamps(bundle: Bundle) -> list[EngineStamp]:
    """The stamps an engine for ``bundle`` may carry here, one per ONNX it may be built from."""
    return [current_stamp(bundle, onnx=path) for path in engine_onnx_paths(bundle) if path.is_file()] or [
        current_stamp(bundle)]  # none there: the error names the FP16 ONNX


def open_tensorrt_backend(bundle: Bundle, batch: int, root: Path | None = None) -> TensorRTBackend:
    """The backend for ``bundle`` on this machine's GPU with an engine kept under ``root`` (or in
    the bundle); ``batch`` caps the engine's max batch."""
    return TensorRTBackend(find_engine(bundle, machine_stamps(bundle), root), batch)


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
        self._lost: str | None = None  # the sticky CUDA error that lost the context, if one did
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
        # non-blocking: work another library queues on the legacy default stream (ONNX Runtime,
        # a synchronous cudaMemcpy) neither waits for ours nor makes ours wait
        self._stream = cuda_call(self._cudart, "cudaStreamCreateWithFlags", self._cudart.cudaStreamCreateWithFlags(
            self._cudart.cudaStreamNonBlocking))
        # sized for a full batch at the size TensorRT tuned for; grown when a larger one comes
        self._prepare((self.max_batch, *opt[1:]))

    def _prepare(self, shape: tuple[int, ...]) -> None:
        """Set the context's input shape and the buffers for it. Allocate, then swap: a larger
        buffer is allocated before the one it replaces is freed, and the shape is recorded last,
        so an out-of-memory error while growing (an 8 GB Jetson) leaves the buffers that were
        there in use, and the next call with this shape tries again."""
        if shape == self._shape:
            return
        self._shape = ()  # the context's input shape changes now: nothing is current until done
        if not self._context.set_input_shape(self._input, shape):
            raise BackendError(f"{self._input}: TensorRT refused input shape {shape}")
        out_shape = tuple(self._context.get_tensor_shape(self._output))
        if min(out_shape) < 1:
            raise BackendError(f"{self._output}: cannot tell the output shape ({out_shape})")
        needed = {self._input: int(np.prod(shape)), self._output: int(np.prod(out_shape))}
        fresh: dict[str, _Buffer] = {}
        try:
            for name, elements in needed.items():
                if name not in self._buffers or self._buffers[name].elements < elements:
                    fresh[name] = _Buffer(self._cudart, elements)
            self._point_at(fresh)
        except BaseException:
            with contextlib.suppress(BackendError):  # the error that stopped the growing matters
                self._point_at(self._buffers)  # what stays in use
                for buffer in fresh.values():
                    buffer.free(self._cudart)
            raise
        replaced = [self._buffers[name] for name in fresh if name in self._buffers]
        self._buffers.update(fresh)
        self._shape, self._out_shape = shape, out_shape
        errors: list[BackendError] = []
        for buffer in replaced:  # the stream is idle between runs: nothing still uses them
            errors += _attempt(functools.partial(buffer.free, self._cudart))
        if errors:
            raise errors[0]

    def _point_at(self, buffers: dict[str, _Buffer]) -> None:
        """Give TensorRT the device addresses of ``buffers``."""
        for name, buffer in buffers.items():
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
            if self._lost is not None:
                raise BackendFatal(f"tensorrt backend: the GPU context was lost earlier: {self._lost}")
            try:
                self._bind()
                chunks = [self._run_chunk(batch[i : i + self.max_batch])
                          for i in range(0, len(batch), self.max_batch)]
            except BackendFatal as exc:
                self._lost = str(exc)
                raise
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
            # TensorRT logs why; a sticky error it met is still CUDA's last error (a BackendFatal)
            cuda_call(cudart, "cudaGetLastError after execute_async_v3", cudart.cudaGetLastError())
            raise BackendError(f"tensorrt backend: execute_async_v3 failed for input {chunk.shape}")
        cuda_call(cudart, "cudaMemcpyAsync", cudart.cudaMemcpyAsync(
            target.host_ptr, target.device, size_out * 4, d2h, stream))
        cuda_call(cudart, "cudaStreamSynchronize", cudart.cudaStreamSynchronize(stream))
        # a copy: the pinned buffer is reused by the next batch
        return target.host[:size_out].reshape(self._out_shape).copy()

    def close(self) -> None:
        """Free everything, from whichever thread: the context is bound to the caller first.
        After a sticky error nothing is freed (every CUDA call would fail the same way): the
        references are dropped and the driver reclaims the memory when the process exits."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._lost is None:
                try:
                    self._bind()
                    self._release()
                    return
                except BackendFatal as exc:
                    self._lost = str(exc)
            log.warning("tensorrt backend: closed without freeing its GPU memory, the context is lost: %s",
                        self._lost)
            self._context = self._engine = self._runtime = self._stream = None
            for buffer in self._buffers.values():
                buffer.host = None  # the views go; the memory goes with the process
            self._buffers = {}

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
        fatal = [e for e in errors if isinstance(e, BackendFatal)]
        if errors:  # everything was attempted; say what failed (a lost context first)
            raise (fatal or errors)[0]


def _attempt(release: Callable[[], object]) -> list[BackendError]:
    """Run one release step; its error is collected so that the later steps still run."""
    try:
        release()
    except BackendError as exc:
        return [exc]
    return []
