"""Native TensorRT backend: a prebuilt FP16 engine, pinned host buffers and one CUDA stream.

An engine is only valid for the GPU, the TensorRT version and the ONNX file it was built from,
so its file name and its JSON sidecar stamp all three (:class:`EngineStamp`); this module loads
only an engine whose sidecar matches the running machine and otherwise says to rebuild it with
``phasewatch build-engine``. ``tensorrt`` and ``pycuda`` are imported only when an engine is
opened, so the rest of the runtime works without them.

CUDA context: the backend retains the device's primary context (the one TensorRT's runtime API
uses too) and makes it current around every call, so that ``run`` works from whichever thread
the daemon calls it on; ``pycuda.autoinit`` would bind a context to the importing thread only.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from phasewatch.runtime.backends import BackendError
from phasewatch.runtime.bundle import Bundle, sha256_file

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
    """``(tensorrt, pycuda.driver)``, or a one-line BackendError saying what to install."""
    try:
        import pycuda.driver as cuda
        import tensorrt as trt
    except ImportError as exc:
        raise BackendError(
            f"the native TensorRT backend needs tensorrt and pycuda "
            f"(pip install 'phasewatch[tensorrt]'): {exc}"
        ) from exc
    return trt, cuda


def current_stamp(bundle: Bundle) -> EngineStamp:
    """The stamp an engine for ``bundle`` must carry on this machine (GPU 0)."""
    trt, cuda = import_tensorrt()
    if not bundle.onnx_fp16_path.is_file():
        raise BackendError(f"{bundle.path}: model.fp16.onnx is missing (re-export the bundle)")
    try:
        cuda.init()
        device = cuda.Device(0)
        major, minor = device.compute_capability()
        name = device.name()
    except cuda.Error as exc:
        raise BackendError(f"{bundle.path}: no usable CUDA device: {exc}") from exc
    return EngineStamp(
        gpu=name,
        compute_capability=f"sm{major}{minor}",
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


class TensorRTBackend:
    """One engine, one execution context, one stream, buffers for ``max_batch`` tiles.

    ``run`` is serialised by a lock because the buffers and the stream are shared.
    """

    name = "tensorrt"

    def __init__(self, engine_path: Path, batch: int) -> None:
        trt, cuda = import_tensorrt()
        self._trt, self._cuda = trt, cuda
        self._lock = threading.Lock()
        # TensorRT and pycuda objects: untyped, None until opened and after close
        self._runtime: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._input = self._output = ""
        self._tile_shape: tuple[int, ...] = ()
        self._batch_now = 0
        self._host_in: Any = None
        self._host_out: Any = None
        self._device_buffers: list[Any] = []
        cuda.init()
        self._cuda_context = cuda.Device(0).retain_primary_context()
        self._cuda_context.push()
        try:
            self._open(engine_path, batch)
        except BaseException:
            self._release()
            cuda.Context.pop()
            self._cuda_context.detach()
            raise
        cuda.Context.pop()

    def _open(self, engine_path: Path, batch: int) -> None:
        trt, cuda = self._trt, self._cuda
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
        largest = tuple(engine.get_tensor_profile_shape(self._input, 0)[2])
        self.max_batch = max(1, min(int(batch), largest[0]))
        self._tile_shape = largest[1:]
        self._context = engine.create_execution_context()
        self._stream = cuda.Stream()
        self._set_batch(self.max_batch)
        out_shape = tuple(self._context.get_tensor_shape(self._output))
        if min(out_shape) < 1:
            raise BackendError(f"{where}: cannot tell the output shape ({out_shape})")
        self._host_in = cuda.pagelocked_empty((self.max_batch, *self._tile_shape), np.float32)
        self._host_out = cuda.pagelocked_empty(out_shape, np.float32)
        for name, host in ((self._input, self._host_in), (self._output, self._host_out)):
            buffer = cuda.mem_alloc(host.nbytes)
            self._device_buffers.append(buffer)
            if not self._context.set_tensor_address(name, int(buffer)):
                raise BackendError(f"{where}: TensorRT refused the device address for '{name}'")
        self._batch_now = self.max_batch

    def _set_batch(self, n: int) -> None:
        if not self._context.set_input_shape(self._input, (n, *self._tile_shape)):
            raise BackendError(f"{self._input}: TensorRT refused batch shape {(n, *self._tile_shape)}")
        self._batch_now = n

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1:] != self._tile_shape:
            raise ValueError(f"tensorrt backend: batch shape {batch.shape} is not N x {self._tile_shape}")
        if self._context is None:
            raise BackendError("tensorrt backend: run() after close()")
        with self._lock:
            self._cuda_context.push()
            try:
                chunks = [self._run_chunk(batch[i : i + self.max_batch])
                          for i in range(0, len(batch), self.max_batch)]
            finally:
                self._cuda.Context.pop()
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)

    def _run_chunk(self, chunk: np.ndarray) -> np.ndarray:
        n = len(chunk)
        if n != self._batch_now:
            self._set_batch(n)
        cuda, stream = self._cuda, self._stream
        host_in, host_out = self._host_in[:n], self._host_out[:n]
        host_in[...] = chunk
        cuda.memcpy_htod_async(self._device_buffers[0], host_in, stream)
        if not self._context.execute_async_v3(stream.handle):
            raise BackendError(f"tensorrt backend: execute_async_v3 failed for a batch of {n}")
        cuda.memcpy_dtoh_async(host_out, self._device_buffers[1], stream)
        stream.synchronize()
        return host_out.copy()  # the pinned buffer is reused by the next batch

    def close(self) -> None:
        with self._lock:
            if self._cuda_context is None:
                return
            self._cuda_context.push()
            try:
                self._release()
            finally:
                self._cuda.Context.pop()
            self._cuda_context.detach()
            self._cuda_context = None

    def _release(self) -> None:
        for buffer in self._device_buffers:
            buffer.free()
        self._device_buffers = []
        # TensorRT objects go while the CUDA context is current: context, engine, then runtime
        self._context = self._stream = self._engine = self._runtime = None
