"""Fake of the subset of ``pycuda.driver`` that phasewatch uses, for machines without a GPU.

Same names and call contracts as pycuda: ``init``, ``Device(i).name()/compute_capability()/
retain_primary_context()``, ``Context.push/pop/detach``, ``mem_alloc`` (a ``DeviceAllocation``
whose ``int()`` is a device address), ``pagelocked_empty``, ``Stream`` with ``handle`` and
``synchronize``, ``memcpy_htod_async`` / ``memcpy_dtoh_async``.

It is real where mistakes would hide: device memory is numpy bytes addressed by integer
pointers (a wrong or out-of-range address fails like an illegal memory access), async work is
queued on its stream and only happens at ``synchronize`` (reading host output before it sees
stale data), and allocating or creating a stream without a current context on the calling thread
fails. Stricter than pycuda on purpose: async copies demand page-locked host arrays (real CUDA
silently degrades pageable copies to synchronous ones).

Tests change the simulated GPU through ``FAKE_DEVICE_NAME`` / ``FAKE_COMPUTE_CAPABILITY``.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable

import numpy as np

FAKE_DEVICE_NAME = "NVIDIA Fake RTX A2000"
FAKE_COMPUTE_CAPABILITY = (8, 6)
FAKE_DEVICE_COUNT = 1


class Error(Exception):
    pass


class LogicError(Error):
    pass


_state = {"initialised": False}
_local = threading.local()
_allocations: dict[int, np.ndarray] = {}  # base address -> bytes
_streams: dict[int, Stream] = {}
_heap = {"next": 0x7F00_0000_0000}
_next_handle = itertools.count(0x5500_0001)


def init(flags: int = 0) -> None:
    _state["initialised"] = True


def _require_init(what: str) -> None:
    if not _state["initialised"]:
        raise LogicError(f"{what} failed: initialization error")


def _context_stack() -> list[Context]:
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


def _require_context(what: str) -> None:
    if not _context_stack():
        raise LogicError(f"{what} failed: invalid device context - no currently active context?")


class Context:
    def __init__(self, device: Device) -> None:
        self._device = device

    def push(self) -> None:
        _context_stack().append(self)

    @staticmethod
    def pop() -> None:
        stack = _context_stack()
        if not stack:
            raise LogicError("cuCtxPopCurrent failed: invalid device context")
        stack.pop()

    @staticmethod
    def get_current() -> Context | None:
        stack = _context_stack()
        return stack[-1] if stack else None

    def detach(self) -> None:
        stack = _context_stack()
        if self in stack:
            stack.remove(self)

    def get_device(self) -> Device:
        return self._device


class Device:
    _primary: dict[int, Context] = {}

    def __init__(self, ordinal: int) -> None:
        _require_init("cuDeviceGet")
        if not 0 <= ordinal < FAKE_DEVICE_COUNT:
            raise LogicError("cuDeviceGet failed: invalid device ordinal")
        self.ordinal = ordinal

    @staticmethod
    def count() -> int:
        _require_init("cuDeviceGetCount")
        return FAKE_DEVICE_COUNT

    def name(self) -> str:
        return FAKE_DEVICE_NAME

    def compute_capability(self) -> tuple[int, int]:
        return tuple(FAKE_COMPUTE_CAPABILITY)

    def retain_primary_context(self) -> Context:
        return Device._primary.setdefault(self.ordinal, Context(self))


class DeviceAllocation:
    def __init__(self, address: int) -> None:
        self._address = address

    def __int__(self) -> int:
        return self._address

    def free(self) -> None:
        _allocations.pop(self._address, None)


def mem_alloc(nbytes: int) -> DeviceAllocation:
    _require_context("cuMemAlloc")
    if nbytes <= 0:
        raise LogicError(f"cuMemAlloc failed: invalid argument ({nbytes} bytes)")
    address = _heap["next"]
    # 256-byte aligned like cudaMalloc, with a gap so that an overrun never lands in a neighbour
    _heap["next"] = address + (nbytes + 511) // 256 * 256
    _allocations[address] = np.zeros(nbytes, dtype=np.uint8)
    return DeviceAllocation(address)


def device_bytes(address: int, nbytes: int) -> np.ndarray:
    """The device memory at ``address`` as a writable uint8 view; fails like an illegal access."""
    for base, buffer in _allocations.items():
        if base <= address and address + nbytes <= base + buffer.size:
            return buffer[address - base : address - base + nbytes]
    raise LogicError(
        f"an illegal memory access was encountered ({nbytes} bytes at {address:#x} are not allocated)"
    )


class _PageLockedArray(np.ndarray):
    """Marks host memory from ``pagelocked_empty``; numpy views of it keep the mark."""


def pagelocked_empty(shape, dtype, order: str = "C", mem_flags: int = 0) -> np.ndarray:
    _require_context("cuMemHostAlloc")
    return np.empty(shape, dtype=dtype, order=order).view(_PageLockedArray)


def _require_pinned(array: np.ndarray, what: str) -> None:
    if not isinstance(array, _PageLockedArray):
        raise LogicError(f"{what}: host array is not page-locked (use pagelocked_empty)")
    if not array.flags.c_contiguous:
        raise LogicError(f"{what}: host array is not contiguous")


class Stream:
    def __init__(self, flags: int = 0) -> None:
        _require_context("cuStreamCreate")
        self.handle = next(_next_handle)
        self._pending: list[Callable[[], None]] = []
        _streams[self.handle] = self

    def enqueue(self, work: Callable[[], None]) -> None:
        self._pending.append(work)

    def synchronize(self) -> None:
        pending, self._pending = self._pending, []
        for work in pending:
            work()


def stream_from_handle(handle: int) -> Stream | None:
    """The stream behind a raw handle, as a CUDA library would see it; 0 is the default stream."""
    return _streams.get(handle)


def submit(stream: Stream | None, work: Callable[[], None]) -> None:
    """Queue ``work`` on ``stream``; ``None`` is the legacy default stream."""
    if stream is None:  # the legacy default stream waits for all other work, then runs at once
        for other in list(_streams.values()):
            other.synchronize()
        work()
    else:
        stream.enqueue(work)


def memcpy_htod_async(dest, src: np.ndarray, stream: Stream | None = None) -> None:
    _require_context("cuMemcpyHtoDAsync")
    _require_pinned(src, "cuMemcpyHtoDAsync")
    address = int(dest)

    def copy() -> None:
        device_bytes(address, src.nbytes)[:] = src.reshape(-1).view(np.uint8)

    submit(stream, copy)


def memcpy_dtoh_async(dest: np.ndarray, src, stream: Stream | None = None) -> None:
    _require_context("cuMemcpyDtoHAsync")
    _require_pinned(dest, "cuMemcpyDtoHAsync")
    address = int(src)

    def copy() -> None:
        dest.reshape(-1).view(np.uint8)[:] = device_bytes(address, dest.nbytes)

    submit(stream, copy)
