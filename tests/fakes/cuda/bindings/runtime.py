"""Fake of the subset of ``cuda.bindings.runtime`` (cuda-python's cudart) that phasewatch uses.

Same names and call contracts as cuda-python: every call returns a tuple whose first item is a
``cudaError_t`` (``(err,)`` or ``(err, value)``), never raises for a CUDA error; ``cudaMalloc`` /
``cudaMallocHost`` return integer addresses, ``cudaStreamCreate`` a ``cudaStream_t`` whose
``int()`` is the handle TensorRT takes (``cudaStreamCreateWithFlags(cudaStreamNonBlocking)``
too); ``cudaMemcpyAsync(dst, src, count, kind, stream)``; ``cudaGetDeviceProperties(i)`` a
``cudaDeviceProp`` with ``name`` as bytes, ``major``, ``minor``, ``multiProcessorCount`` and
``totalGlobalMem``; ``cudaGetLastError()``.

Real where mistakes would hide: device memory is numpy bytes behind integer addresses (a wrong or
out-of-range address fails like an illegal memory access), host memory from ``cudaMallocHost`` is
real memory at a real address (numpy views of it work as they do on a GPU machine), async work
is queued on its stream and happens only at ``cudaStreamSynchronize``, device memory is finite
(``FAKE_DEVICE_MEMORY``: out of memory is ``cudaErrorMemoryAllocation``), and every allocation
and stream is counted until freed (:func:`live`), so a leak shows. Freed host memory is kept,
poisoned with NaN, so that a use after free reads garbage instead of crashing the test run.
Sticky errors stick as on a GPU: once queued work touches memory that is not allocated device
memory (``cudaErrorIllegalAddress``, 700), or a test calls :func:`fault` (a kernel that faulted,
719; an uncorrectable ECC error, 214), every later call that uses the device returns that error
until the module is imported afresh (a new process). The legacy default stream waits for the
blocking streams only, not for those made with ``cudaStreamNonBlocking``.

Stricter than CUDA on purpose: a thread must call ``cudaSetDevice`` before any call that uses
the device (real CUDA falls back to device 0 or to whatever context another library left
current on that thread), and async copies demand host memory from ``cudaMallocHost`` (real
CUDA silently degrades pageable copies to synchronous ones).

Tests change the simulated GPU through ``FAKE_DEVICE_NAME`` / ``FAKE_COMPUTE_CAPABILITY`` /
``FAKE_MULTIPROCESSORS`` / ``FAKE_DEVICE_MEMORY`` (:func:`orin_nano` sets an 8 GB Orin Nano).
"""

from __future__ import annotations

import enum
import functools
import itertools
import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

FAKE_DEVICE_NAME = "NVIDIA Fake RTX A2000"
FAKE_COMPUTE_CAPABILITY = (8, 6)
FAKE_MULTIPROCESSORS = 26
FAKE_DEVICE_COUNT = 1
FAKE_DEVICE_MEMORY = 1 << 30
cudaStreamDefault = 0  # noqa: N816 - cuda-python's names: flags of cudaStreamCreateWithFlags
cudaStreamNonBlocking = 1  # noqa: N816


class cudaError_t(enum.IntEnum):  # noqa: N801 - cuda-python's names
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInvalidDevicePointer = 17
    cudaErrorNoDevice = 100
    cudaErrorInvalidDevice = 101
    cudaErrorDeviceUninitialized = 201
    cudaErrorECCUncorrectable = 214
    cudaErrorInvalidResourceHandle = 400
    cudaErrorIllegalAddress = 700
    cudaErrorLaunchOutOfResources = 701
    cudaErrorLaunchFailure = 719


class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3
    cudaMemcpyDefault = 4


class cudaStream_t:  # noqa: N801
    def __init__(self, handle: int = 0) -> None:
        self._handle = int(handle)

    def __int__(self) -> int:
        return self._handle

    def getPtr(self) -> int:  # noqa: N802
        return self._handle


class cudaDeviceProp:  # noqa: N801
    def __init__(self) -> None:
        self.name = FAKE_DEVICE_NAME.encode()
        self.major, self.minor = FAKE_COMPUTE_CAPABILITY
        self.multiProcessorCount = FAKE_MULTIPROCESSORS
        self.totalGlobalMem = FAKE_DEVICE_MEMORY


_local = threading.local()
_device: dict[int, np.ndarray] = {}  # base address -> bytes
_host: dict[int, np.ndarray] = {}  # real base address -> the array that owns it
_freed_host: list[np.ndarray] = []  # kept (poisoned) so that a use after free cannot crash
_streams: dict[int, _Stream] = {}
_heap = {"next": 0x7F00_0000_0000}
_handles = itertools.count(0x5500_0001)
_sticky: list[cudaError_t] = []  # the sticky error, once one happened


def orin_nano() -> None:
    """Make the fake GPU an 8 GB Jetson Orin Nano as the driver reports it (all Orins: sm87)."""
    module = sys.modules[__name__]
    module.FAKE_DEVICE_NAME, module.FAKE_COMPUTE_CAPABILITY = "Orin", (8, 7)
    module.FAKE_MULTIPROCESSORS, module.FAKE_DEVICE_MEMORY = 8, 7_620_000_000  # MemTotal: shared with the CPU


def fault(error: cudaError_t) -> None:
    """A kernel failed with the sticky ``error`` (700, 719, 214): the context is lost for good."""
    if not _sticky:
        _sticky.append(cudaError_t(error))


def sticky() -> cudaError_t | None:
    return _sticky[0] if _sticky else None


def _lost(values: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A call that returns the sticky error (and ``values`` Nones) once the context is lost."""

    def wrap(call: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(call)
        def guarded(*args: Any) -> Any:
            if _sticky:
                return (_sticky[0], *([None] * values))
            return call(*args)

        return guarded

    return wrap


class _Stream:
    def __init__(self, blocking: bool = True) -> None:
        self.pending: list[Callable[[], None]] = []
        self.blocking = blocking

    def synchronize(self) -> None:
        pending, self.pending = self.pending, []
        for work in pending:
            work()


def live() -> dict[str, int]:
    """Allocations and streams not yet freed (device bytes include TensorRT's own)."""
    return {"device_bytes": sum(b.size for b in _device.values()), "device": len(_device),
            "host": len(_host), "streams": len(_streams)}


def _bound() -> bool:
    return getattr(_local, "device", None) is not None


@_lost(0)
def cudaSetDevice(device: int) -> tuple[cudaError_t]:  # noqa: N802
    if not 0 <= device < FAKE_DEVICE_COUNT:
        return (cudaError_t.cudaErrorInvalidDevice,)
    _local.device = device
    return (cudaError_t.cudaSuccess,)


def cudaGetDeviceCount() -> tuple[cudaError_t, int]:  # noqa: N802
    return cudaError_t.cudaSuccess, FAKE_DEVICE_COUNT


@_lost(1)
def cudaGetDeviceProperties(device: int) -> tuple[cudaError_t, cudaDeviceProp | None]:  # noqa: N802
    if not 0 <= device < FAKE_DEVICE_COUNT:
        return cudaError_t.cudaErrorInvalidDevice, None
    return cudaError_t.cudaSuccess, cudaDeviceProp()


def cudaGetErrorString(error: cudaError_t) -> tuple[cudaError_t, bytes]:  # noqa: N802
    return cudaError_t.cudaSuccess, cudaError_t(error).name.encode()


@_lost(2)
def cudaMemGetInfo() -> tuple[cudaError_t, int, int]:  # noqa: N802
    if not _bound():
        return cudaError_t.cudaErrorDeviceUninitialized, 0, 0
    return cudaError_t.cudaSuccess, FAKE_DEVICE_MEMORY - live()["device_bytes"], FAKE_DEVICE_MEMORY


def reserve(nbytes: int) -> int | None:
    """Device memory for a fake library (TensorRT's activations): its address, None when full."""
    if not _bound():
        return None
    if nbytes <= 0 or live()["device_bytes"] + nbytes > FAKE_DEVICE_MEMORY:
        return None
    address = _heap["next"]
    # 256-byte aligned like cudaMalloc, with a gap so that an overrun never lands in a neighbour
    _heap["next"] = address + (nbytes + 511) // 256 * 256
    _device[address] = np.zeros(nbytes, dtype=np.uint8)
    return address


def release(address: int) -> bool:
    return _device.pop(int(address), None) is not None


@_lost(1)
def cudaMalloc(size: int) -> tuple[cudaError_t, int]:  # noqa: N802
    if not _bound():
        return cudaError_t.cudaErrorDeviceUninitialized, 0
    address = reserve(int(size))
    if address is None:
        return (cudaError_t.cudaErrorMemoryAllocation if size > 0 else cudaError_t.cudaErrorInvalidValue), 0
    return cudaError_t.cudaSuccess, address


@_lost(0)
def cudaFree(ptr: int) -> tuple[cudaError_t]:  # noqa: N802
    if not _bound():
        return (cudaError_t.cudaErrorDeviceUninitialized,)
    return (cudaError_t.cudaSuccess if release(ptr) else cudaError_t.cudaErrorInvalidDevicePointer,)


@_lost(1)
def cudaMallocHost(size: int) -> tuple[cudaError_t, int]:  # noqa: N802
    if not _bound():
        return cudaError_t.cudaErrorDeviceUninitialized, 0
    if size <= 0:
        return cudaError_t.cudaErrorInvalidValue, 0
    memory = np.zeros(int(size), dtype=np.uint8)
    _host[memory.ctypes.data] = memory
    return cudaError_t.cudaSuccess, memory.ctypes.data


@_lost(0)
def cudaFreeHost(ptr: int) -> tuple[cudaError_t]:  # noqa: N802
    if not _bound():
        return (cudaError_t.cudaErrorDeviceUninitialized,)
    memory = _host.pop(int(ptr), None)
    if memory is None:
        return (cudaError_t.cudaErrorInvalidValue,)
    memory[:] = 0xFF  # NaN as float32: a read after free shows
    _freed_host.append(memory)
    return (cudaError_t.cudaSuccess,)


@_lost(1)
def cudaStreamCreate() -> tuple[cudaError_t, cudaStream_t | None]:  # noqa: N802
    return cudaStreamCreateWithFlags(cudaStreamDefault)


@_lost(1)
def cudaStreamCreateWithFlags(flags: int) -> tuple[cudaError_t, cudaStream_t | None]:  # noqa: N802
    if not _bound():
        return cudaError_t.cudaErrorDeviceUninitialized, None
    if int(flags) not in (cudaStreamDefault, cudaStreamNonBlocking):
        return cudaError_t.cudaErrorInvalidValue, None
    handle = next(_handles)
    _streams[handle] = _Stream(blocking=int(flags) == cudaStreamDefault)
    return cudaError_t.cudaSuccess, cudaStream_t(handle)


def cudaGetLastError() -> tuple[cudaError_t]:  # noqa: N802
    """The sticky error once there is one (it cannot be cleared); this fake records no other."""
    return (_sticky[0] if _sticky else cudaError_t.cudaSuccess,)


def stream_from_handle(handle: int) -> _Stream | None:
    """The stream behind a raw handle, as a CUDA library would see it; 0 is the default stream."""
    return _streams.get(int(handle))


@_lost(0)
def cudaStreamSynchronize(stream: cudaStream_t) -> tuple[cudaError_t]:  # noqa: N802
    if not _bound():
        return (cudaError_t.cudaErrorDeviceUninitialized,)
    found = stream_from_handle(int(stream))
    if found is None:
        return (cudaError_t.cudaErrorInvalidResourceHandle,)
    try:
        found.synchronize()
    except _IllegalAddress:
        fault(cudaError_t.cudaErrorIllegalAddress)
        return (cudaError_t.cudaErrorIllegalAddress,)
    return (cudaError_t.cudaSuccess,)


@_lost(0)
def cudaStreamDestroy(stream: cudaStream_t) -> tuple[cudaError_t]:  # noqa: N802
    if not _bound():
        return (cudaError_t.cudaErrorDeviceUninitialized,)
    found = _streams.pop(int(stream), None)
    if found is None:
        return (cudaError_t.cudaErrorInvalidResourceHandle,)
    try:
        found.synchronize()  # queued work still completes, as it does on a GPU
    except _IllegalAddress:  # ... and faults if its memory was freed under it
        fault(cudaError_t.cudaErrorIllegalAddress)
        return (cudaError_t.cudaErrorIllegalAddress,)
    return (cudaError_t.cudaSuccess,)


class _IllegalAddress(Exception):
    pass


def device_bytes(address: int, nbytes: int) -> np.ndarray:
    """The device memory at ``address`` as a writable uint8 view; fails like an illegal access."""
    for base, buffer in _device.items():
        if base <= address and address + nbytes <= base + buffer.size:
            return buffer[address - base : address - base + nbytes]
    raise _IllegalAddress(f"{nbytes} bytes at {address:#x} are not allocated device memory")


def _pinned_bytes(address: int, nbytes: int) -> np.ndarray | None:
    for base, memory in _host.items():
        if base <= address and address + nbytes <= base + memory.size:
            return memory[address - base : address - base + nbytes]
    return None


def submit(stream: _Stream | None, work: Callable[[], None]) -> None:
    """Queue ``work`` on ``stream``; ``None`` is the legacy default stream."""
    if stream is None:  # the legacy default stream waits for the blocking streams, then runs at once
        for other in list(_streams.values()):
            if other.blocking:
                other.synchronize()
        work()
    else:
        stream.pending.append(work)


@_lost(0)
def cudaMemcpyAsync(dst: int, src: int, count: int, kind: cudaMemcpyKind,  # noqa: N802
                    stream: cudaStream_t) -> tuple[cudaError_t]:
    if not _bound():
        return (cudaError_t.cudaErrorDeviceUninitialized,)
    queue = stream_from_handle(int(stream))
    if queue is None and int(stream) != 0:
        return (cudaError_t.cudaErrorInvalidResourceHandle,)
    dst, src, count = int(dst), int(src), int(count)
    if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
        host = _pinned_bytes(src, count)
        if host is None:
            return (cudaError_t.cudaErrorInvalidValue,)  # not from cudaMallocHost (see above)

        def copy() -> None:
            device_bytes(dst, count)[:] = host
    elif kind == cudaMemcpyKind.cudaMemcpyDeviceToHost:
        host = _pinned_bytes(dst, count)
        if host is None:
            return (cudaError_t.cudaErrorInvalidValue,)

        def copy() -> None:
            host[:] = device_bytes(src, count)
    else:
        return (cudaError_t.cudaErrorInvalidValue,)
    try:
        submit(queue, copy)
    except _IllegalAddress:
        fault(cudaError_t.cudaErrorIllegalAddress)
        return (cudaError_t.cudaErrorIllegalAddress,)
    return (cudaError_t.cudaSuccess,)

