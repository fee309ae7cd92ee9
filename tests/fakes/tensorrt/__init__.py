"""Fake of the subset of the TensorRT 10 Python API that phasewatch uses, for machines without a GPU.

Same class, method and enum names and the same call contracts as ``tensorrt`` 10.x:
``Logger``, ``Builder(logger).create_network(flags)`` (flags is an int of ``1 << flag`` bits),
``OnnxParser(network, logger).parse(bytes) -> bool`` with ``num_errors`` / ``get_error(i)``,
``create_builder_config`` (``set_memory_pool_limit``, ``add_optimization_profile``,
``create_timing_cache`` / ``set_timing_cache`` / ``get_timing_cache``), ``create_optimization_profile``
(``set_shape``), ``build_serialized_network -> IHostMemory | None``, ``Runtime(logger).
deserialize_cuda_engine -> ICudaEngine | None``, the name-based I/O tensor API of the engine and
``IExecutionContext`` (``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``).

Real where it matters: the "engine" runs the parsed ONNX with onnxruntime on the CPU, reading its
input from and writing its output to the fake CUDA device memory (``cuda.bindings.runtime`` in
this folder) at the addresses it was given, queued on the stream whose handle it was given. It
enforces what TensorRT enforces: dynamic inputs need an optimisation profile, and ``set_shape``
raises on an inconsistent one; ``BuilderFlag.FP16`` is refused on a strongly typed network;
execution needs every input shape set (inside the profile) and every I/O address set; a plan
from another TensorRT version or another compute capability does not deserialize. As the real
API does, it can say no where callers forget to look: ``set_timing_cache`` returns False for a
cache made on a GPU with other properties, ``get_timing_cache`` returns None when no cache is
set, ``create_timing_cache`` returns None for bytes that are no timing cache, and
``create_execution_context`` returns None when its activation memory does not fit the device
(each context takes its own, from the fake device memory, and gives it back when deleted).

A lost CUDA context (the fake CUDA's sticky error) makes ``execute_async_v3`` return False, as
TensorRT's enqueue fails on it; ``Builder.platform_has_fast_fp16`` is False for the GPUs whose
FP16 is slow (sm61, Maxwell), as TensorRT's is.

Test hooks: ``__version__`` (simulate another TensorRT) and ``OUTPUT_PERTURBATION`` (a function
applied to every output, to simulate an engine whose FP16 arithmetic drifts).

On a GPU machine with the real cuda-python imported first (``bench/gpu_check.sh``), the same
engine works on real device memory and streams: it waits for its stream, copies its input from
the device, runs the ONNX on ONNX Runtime's CUDA provider and copies the output back, and its
activation memory is a real ``cudaMalloc``.
"""

from __future__ import annotations

import enum
import json
import struct
import sys
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
from cuda.bindings import runtime as driver

__version__ = "10.3.0"
ACTIVATION_FACTOR = 4  # fake activation memory per context: bytes of the largest input x this
OUTPUT_PERTURBATION: Callable[[np.ndarray], np.ndarray] | None = None

REAL_CUDA = not hasattr(driver, "FAKE_DEVICE_NAME")  # the real cuda.bindings.runtime was imported
_PLAN_MAGIC = b"FAKETRT\x01"
_CACHE_MAGIC = b"FAKETCACHE\x01"


class NetworkDefinitionCreationFlag(enum.IntEnum):
    EXPLICIT_BATCH = 0
    STRONGLY_TYPED = 1


class BuilderFlag(enum.IntEnum):
    FP16 = 0
    INT8 = 1


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    INT64 = 8


class ErrorCode(enum.IntEnum):
    SUCCESS = 0
    INTERNAL_ERROR = 1
    MODEL_DESERIALIZE_FAILED = 3
    INVALID_GRAPH = 5
    UNSUPPORTED_NODE = 8


_NUMPY_TYPES = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8,
                DataType.INT32: np.int32, DataType.BOOL: np.bool_, DataType.INT64: np.int64}
_ONNX_TYPES = {onnx.TensorProto.FLOAT: DataType.FLOAT, onnx.TensorProto.FLOAT16: DataType.HALF,
               onnx.TensorProto.INT32: DataType.INT32, onnx.TensorProto.INT64: DataType.INT64}


def nptype(dtype: DataType) -> type:
    return _NUMPY_TYPES[DataType(dtype)]


class ILogger:
    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4


class Logger(ILogger):
    INTERNAL_ERROR = ILogger.Severity.INTERNAL_ERROR
    ERROR = ILogger.Severity.ERROR
    WARNING = ILogger.Severity.WARNING
    INFO = ILogger.Severity.INFO
    VERBOSE = ILogger.Severity.VERBOSE

    def __init__(self, min_severity: ILogger.Severity = ILogger.Severity.WARNING) -> None:
        self.min_severity = min_severity

    def log(self, severity: ILogger.Severity, msg: str) -> None:
        if severity <= self.min_severity:
            print(f"[TRT] [{severity.name[0]}] {msg}", file=sys.stderr)


class IHostMemory(bytes):
    """Serialized data owned by TensorRT; supports the buffer protocol like the real one."""

    @property
    def nbytes(self) -> int:
        return len(self)

    @property
    def dtype(self) -> DataType:
        return DataType.INT8


class ITensor:
    def __init__(self, name: str, shape: tuple[int, ...], dtype: DataType) -> None:
        self.name, self.shape, self.dtype = name, shape, dtype


class INetworkDefinition:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self._inputs: list[ITensor] = []
        self._outputs: list[ITensor] = []
        self._onnx: bytes | None = None
        self._dims: dict[str, list[int | str]] = {}
        self._node_keys: list[str] = []

    def get_flag(self, flag: NetworkDefinitionCreationFlag) -> bool:
        return bool(self.flags & (1 << int(flag)))

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_input(self, index: int) -> ITensor:
        return self._inputs[index]

    def get_output(self, index: int) -> ITensor:
        return self._outputs[index]


class ParserError:
    def __init__(self, code: ErrorCode, desc: str, node: int = -1) -> None:
        self._code, self._desc, self._node = code, desc, node

    def code(self) -> ErrorCode:
        return self._code

    def desc(self) -> str:
        return self._desc

    def node(self) -> int:
        return self._node

    def __str__(self) -> str:
        return f"In node {self._node} with name: and operator: ({self._code.name}): {self._desc}"


def _onnx_dims(value: onnx.ValueInfoProto) -> list[int | str]:
    """Each dim as its value, its symbolic name, or -1 when neither is given."""
    dims: list[int | str] = []
    for dim in value.type.tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        else:
            dims.append(dim.dim_param or -1)
    return dims


def _trt_shape(dims: list[int | str]) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) else -1 for d in dims)


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: ILogger) -> None:
        self._network, self._logger = network, logger
        self._errors: list[ParserError] = []

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> ParserError:
        return self._errors[index]

    def parse(self, model: bytes, path: str | None = None) -> bool:
        try:
            proto = onnx.load_from_string(bytes(model))
        except Exception as exc:  # the real parser reports any protobuf failure the same way
            self._errors.append(ParserError(ErrorCode.MODEL_DESERIALIZE_FAILED, f"protobuf: {exc}"))
            return False
        for index, node in enumerate(proto.graph.node):
            if node.domain not in ("", "ai.onnx"):
                self._errors.append(ParserError(
                    ErrorCode.UNSUPPORTED_NODE,
                    f"No importer registered for op: {node.op_type} (domain {node.domain}); "
                    "a plugin is needed", index))
        if self._errors:
            return False
        initialisers = {init.name for init in proto.graph.initializer}
        network = self._network
        for value in proto.graph.input:
            if value.name not in initialisers:
                dims = _onnx_dims(value)
                network._dims[value.name] = dims
                dtype = _ONNX_TYPES[value.type.tensor_type.elem_type]
                network._inputs.append(ITensor(value.name, _trt_shape(dims), dtype))
        for value in proto.graph.output:
            dims = _onnx_dims(value)
            network._dims[value.name] = dims
            dtype = _ONNX_TYPES[value.type.tensor_type.elem_type]
            network._outputs.append(ITensor(value.name, _trt_shape(dims), dtype))
        network._onnx = bytes(model)
        network._node_keys = [f"{n.op_type}:{n.name}:{i}" for i, n in enumerate(proto.graph.node)]
        return True


class IOptimizationProfile:
    def __init__(self) -> None:
        self._shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

    def set_shape(self, input: str, min, opt, max) -> None:  # noqa: A002 - TensorRT's names
        shapes = tuple(tuple(int(v) for v in s) for s in (min, opt, max))
        # pyCore's setShape raises when IOptimizationProfile::setDimensions refuses a shape
        if len({len(s) for s in shapes}) != 1 or any(v < 0 for s in shapes for v in s):
            raise ValueError("min input provided to optimization profile is invalid.")
        if not all(a <= b <= c for a, b, c in zip(*shapes, strict=True)):
            raise ValueError("opt input provided to optimization profile is invalid.")
        self._shapes[input] = shapes

    def get_shape(self, input: str) -> list[tuple[int, ...]]:  # noqa: A002
        return list(self._shapes[input])

    def __bool__(self) -> bool:  # isValid(): every shape set is consistent, checked by set_shape
        return bool(self._shapes)


def _device_properties() -> list:
    if REAL_CUDA:
        _, props = driver.cudaGetDeviceProperties(0)
        return [props.name.decode().rstrip("\0"), [props.major, props.minor]]
    return [driver.FAKE_DEVICE_NAME, list(driver.FAKE_COMPUTE_CAPABILITY)]


def _compute_capability() -> tuple[int, int]:
    return tuple(_device_properties()[1])


def _reserve(nbytes: int) -> int | None:
    if not REAL_CUDA:
        return driver.reserve(nbytes)
    error, address = driver.cudaMalloc(nbytes)
    return int(address) if error == driver.cudaError_t.cudaSuccess else None


def _release(address: int) -> None:
    if REAL_CUDA:
        driver.cudaFree(address)
    else:
        driver.release(address)


def _read(address: int, nbytes: int) -> np.ndarray:
    if not REAL_CUDA:
        return driver.device_bytes(address, nbytes).copy()
    host = np.empty(nbytes, np.uint8)
    driver.cudaMemcpy(host.ctypes.data, address, nbytes, driver.cudaMemcpyKind.cudaMemcpyDeviceToHost)
    return host


def _write(address: int, data: np.ndarray) -> None:
    data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    if not REAL_CUDA:
        driver.device_bytes(address, data.nbytes)[:] = data
        return
    driver.cudaMemcpy(address, data.ctypes.data, data.nbytes, driver.cudaMemcpyKind.cudaMemcpyHostToDevice)


def _submit(stream_handle: int, work: Callable[[], None]) -> None:
    if REAL_CUDA:  # run in stream order, synchronously: wait for what came before
        driver.cudaStreamSynchronize(stream_handle)
        work()
    else:
        driver.submit(driver.stream_from_handle(stream_handle), work)


class ITimingCache:
    """Timings are only valid for the GPU they were measured on: the cache carries its device."""

    def __init__(self, entries: dict[str, int], device: list) -> None:
        self.entries = dict(entries)
        self.device = device

    def serialize(self) -> IHostMemory:
        body = json.dumps({"tensorrt": __version__, "device": self.device, "entries": self.entries})
        return IHostMemory(_CACHE_MAGIC + body.encode())


class IBuilderConfig:
    def __init__(self) -> None:
        self._pools: dict[MemoryPoolType, int] = {}
        self._profiles: list[IOptimizationProfile] = []
        self._flags = 0
        self._cache: ITimingCache | None = None

    def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None:
        self._pools[MemoryPoolType(pool)] = int(pool_size)

    def get_memory_pool_limit(self, pool: MemoryPoolType) -> int:
        return self._pools.get(MemoryPoolType(pool), 1 << 40)

    def set_flag(self, flag: BuilderFlag) -> None:
        self._flags |= 1 << int(flag)

    def get_flag(self, flag: BuilderFlag) -> bool:
        return bool(self._flags & (1 << int(flag)))

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        if not profile:
            return -1
        self._profiles.append(profile)
        return len(self._profiles) - 1

    @property
    def num_optimization_profiles(self) -> int:
        return len(self._profiles)

    def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache | None:
        blob = bytes(serialized_timing_cache)
        if not blob:
            return ITimingCache({}, _device_properties())
        if not blob.startswith(_CACHE_MAGIC):
            return None  # TensorRT logs an error and the binding returns None
        body = json.loads(blob[len(_CACHE_MAGIC):])
        # a cache from another TensorRT version is dropped, as TensorRT does
        entries = body["entries"] if body["tensorrt"] == __version__ else {}
        return ITimingCache(entries, body["device"])

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        # IBuilderConfig::setTimingCache refuses a cache from a device with other properties
        if cache.device != _device_properties() and not ignore_mismatch:
            return False
        self._cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache | None:
        return self._cache


class Builder:
    def __init__(self, logger: ILogger) -> None:
        self._logger = logger

    @property
    def platform_has_fast_fp16(self) -> bool:
        # native FP16 arithmetic at full rate or more: sm53, sm60, sm62 and sm70 on, not the
        # consumer Pascals (sm61, FP16 at 1/64 of the FP32 rate) nor Maxwell
        capability = _compute_capability()
        return capability >= (5, 3) and capability != (6, 1)

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        return INetworkDefinition(int(flags))

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def _error(self, msg: str) -> None:
        self._logger.log(ILogger.Severity.ERROR, msg)

    def build_serialized_network(
        self, network: INetworkDefinition, config: IBuilderConfig
    ) -> IHostMemory | None:
        if network._onnx is None or not network.num_inputs:
            self._error("Network must have at least one input.")
            return None
        if network.get_flag(NetworkDefinitionCreationFlag.STRONGLY_TYPED) and config.get_flag(
            BuilderFlag.FP16
        ):
            self._error("BuilderFlag::kFP16 is not allowed with a strongly typed network.")
            return None
        profiles = []
        for tensor in network._inputs:
            if -1 not in tensor.shape:
                continue
            if not config._profiles:
                self._error(f"Network has dynamic or shape inputs, but no optimization profile "
                            f"has been defined ({tensor.name}).")
                return None
            for index, profile in enumerate(config._profiles):
                shapes = profile._shapes.get(tensor.name)
                if shapes is None or any(
                    len(s) != len(tensor.shape)
                    or any(d not in (-1, v) for d, v in zip(tensor.shape, s, strict=True))
                    for s in shapes
                ):
                    self._error(f"Optimization profile {index} has no valid shapes for "
                                f"input {tensor.name} {tensor.shape}.")
                    return None
        for profile in config._profiles:
            profiles.append({name: [list(s) for s in shapes] for name, shapes in profile._shapes.items()})
        if config._cache is not None:
            for key in network._node_keys:
                config._cache.entries.setdefault(key, hash(key) & 0xFFFF)
        io = [{"name": t.name, "mode": "INPUT", "dtype": int(t.dtype)} for t in network._inputs]
        io += [{"name": t.name, "mode": "OUTPUT", "dtype": int(t.dtype)} for t in network._outputs]
        header = {
            "tensorrt": __version__,
            "compute_capability": list(_compute_capability()),
            "io": io,
            "dims": network._dims,
            "profiles": profiles,
        }
        blob = json.dumps(header).encode()
        return IHostMemory(_PLAN_MAGIC + struct.pack("<I", len(blob)) + blob + network._onnx)


class Runtime:
    def __init__(self, logger: ILogger) -> None:
        self._logger = logger

    def deserialize_cuda_engine(self, serialized_engine: bytes) -> ICudaEngine | None:
        plan = bytes(serialized_engine)
        if not plan.startswith(_PLAN_MAGIC):
            self._logger.log(ILogger.Severity.ERROR, "IRuntime::deserializeCudaEngine: Error Code "
                             "1: Serialization (Serialization assertion magicTagRead == kMAGIC_TAG failed.)")
            return None
        start = len(_PLAN_MAGIC) + 4
        (length,) = struct.unpack("<I", plan[len(_PLAN_MAGIC):start])
        header = json.loads(plan[start:start + length])
        if header["tensorrt"] != __version__:
            self._logger.log(ILogger.Severity.ERROR, "The engine plan file is not compatible with "
                             f"this version of TensorRT, expecting library version {__version__} "
                             f"got {header['tensorrt']}, please rebuild.")
            return None
        if tuple(header["compute_capability"]) != _compute_capability():
            self._logger.log(ILogger.Severity.ERROR, "The engine plan file is generated on an "
                             "incompatible device, please rebuild.")
            return None
        return ICudaEngine(header, plan[start + length:], self._logger)


class ICudaEngine:
    def __init__(self, header: dict, onnx_bytes: bytes, logger: ILogger) -> None:
        self._io = header["io"]
        self._dims = header["dims"]
        self._profiles = header["profiles"]
        self._onnx = onnx_bytes
        self._logger = logger
        self._session: ort.InferenceSession | None = None

    @property
    def num_io_tensors(self) -> int:
        return len(self._io)

    @property
    def num_optimization_profiles(self) -> int:
        return len(self._profiles)

    def _tensor(self, name: str) -> dict:
        for tensor in self._io:
            if tensor["name"] == name:
                return tensor
        raise KeyError(name)

    def get_tensor_name(self, index: int) -> str:
        return self._io[index]["name"]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        try:
            return TensorIOMode[self._tensor(name)["mode"]]
        except KeyError:
            return TensorIOMode.NONE

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return _trt_shape(self._dims[name])

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType(self._tensor(name)["dtype"])

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
        return [tuple(s) for s in self._profiles[profile_index][name]]

    def create_execution_context(self) -> IExecutionContext | None:
        # activation memory for the profile's largest shapes; None when it does not fit
        largest = max(int(np.prod(s[2])) for p in self._profiles for s in p.values()) if self._profiles else 1
        address = _reserve(largest * 4 * ACTIVATION_FACTOR)
        if address is None:
            self._logger.log(ILogger.Severity.ERROR, "IExecutionContext: Error Code 2: OutOfMemory "
                             "(Requested size was too large)")
            return None
        return IExecutionContext(self, address)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._session is None:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            # On a GPU machine with onnxruntime-gpu; a CPU onnxruntime there computes on the CPU
            # (the buffers and stream stay real CUDA).
            cuda = REAL_CUDA and "CUDAExecutionProvider" in ort.get_available_providers()
            providers = ["CUDAExecutionProvider"] if cuda else []
            self._session = ort.InferenceSession(self._onnx, options, providers=[*providers, "CPUExecutionProvider"])
        names = [t["name"] for t in self._io if t["mode"] == "OUTPUT"]
        return dict(zip(names, self._session.run(names, feeds), strict=True))


class IExecutionContext:
    def __init__(self, engine: ICudaEngine, activations: int) -> None:
        self.engine = engine
        self._activations = activations
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._addresses: dict[str, int] = {}

    def __del__(self) -> None:
        # TensorRT frees a context's activation memory when the context is destroyed
        _release(self._activations)

    def _error(self, msg: str) -> None:
        self.engine._logger.log(ILogger.Severity.ERROR, msg)

    def set_input_shape(self, name: str, shape) -> bool:
        shape = tuple(int(v) for v in shape)
        if self.engine.get_tensor_mode(name) != TensorIOMode.INPUT:
            self._error(f"IExecutionContext::setInputShape: {name} is not an input tensor")
            return False
        low, _, high = self.engine.get_tensor_profile_shape(name, 0)
        declared = self.engine.get_tensor_shape(name)
        if len(shape) != len(declared) or any(d not in (-1, v) for d, v in zip(declared, shape,
                                                                              strict=True)):
            self._error(f"IExecutionContext::setInputShape: {name} {shape} does not match {declared}")
            return False
        if not all(lo <= v <= hi for lo, v, hi in zip(low, shape, high, strict=True)):
            self._error(f"IExecutionContext::setInputShape: {name} {shape} is outside the "
                        f"optimization profile [{low}, {high}]")
            return False
        self._shapes[name] = shape
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name in self._shapes:
            return self._shapes[name]
        symbols: dict[str, int] = {}
        for input_name, shape in self._shapes.items():
            for dim, value in zip(self.engine._dims[input_name], shape, strict=True):
                if isinstance(dim, str):
                    symbols[dim] = value
        return tuple(d if isinstance(d, int) else symbols.get(d, -1) for d in self.engine._dims[name])

    @property
    def all_binding_shapes_specified(self) -> bool:
        return all(t["name"] in self._shapes for t in self.engine._io if t["mode"] == "INPUT")

    def set_tensor_address(self, name: str, memory: int) -> bool:
        if self.engine.get_tensor_mode(name) == TensorIOMode.NONE:
            self._error(f"IExecutionContext::setTensorAddress: {name} is not an I/O tensor")
            return False
        if int(memory) % 256:
            self._error(f"IExecutionContext::setTensorAddress: {name} address is not 256-byte aligned")
            return False
        self._addresses[name] = int(memory)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        if not self.all_binding_shapes_specified:
            self._error("IExecutionContext::enqueueV3: input shapes not specified (setInputShape)")
            return False
        missing = [t["name"] for t in self.engine._io if t["name"] not in self._addresses]
        if missing:
            self._error(f"IExecutionContext::enqueueV3: Error Code 3: API Usage Error (address is "
                        f"not set for tensor {missing[0]}. Call setTensorAddress)")
            return False
        if not REAL_CUDA and driver.sticky() is not None:  # the context is lost: nothing runs
            self._error(f"IExecutionContext::enqueueV3: Error Code 1: Cuda Runtime ({driver.sticky().name})")
            return False
        if not REAL_CUDA and driver.stream_from_handle(int(stream_handle)) is None and int(stream_handle) != 0:
            self._error(f"IExecutionContext::enqueueV3: invalid stream {stream_handle:#x}")
            return False
        shapes, addresses = dict(self._shapes), dict(self._addresses)

        def work() -> None:  # runs when the stream reaches it, like the kernels would
            feeds = {}
            for name, shape in shapes.items():
                dtype = nptype(self.engine.get_tensor_dtype(name))
                nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
                feeds[name] = _read(addresses[name], nbytes).view(dtype).reshape(shape)
            for name, value in self.engine._run(feeds).items():
                if OUTPUT_PERTURBATION is not None:
                    value = OUTPUT_PERTURBATION(value)
                _write(addresses[name], np.asarray(value, dtype=nptype(self.engine.get_tensor_dtype(name))))

        _submit(int(stream_handle), work)
        return True
