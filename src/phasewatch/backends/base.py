"""What every inference backend is: the :class:`Backend` protocol, its error, the optional
attributes the tiler asks about, and :class:`BackendKind`, one entry of the registry.

A backend's own settings come from its ``[model.<kind>]`` config table: the backend's module
describes them as a frozen dataclass whose ``from_table`` is :func:`options_from_table`, so the
config, the registry and the other backends never name them.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol, TypeVar

import numpy as np

from phasewatch.bundle import Bundle
from phasewatch.errors import PhasewatchError


class BackendError(PhasewatchError):
    """A backend that cannot be opened or run, or settings it cannot take; the message is one line."""


class BackendFatal(BackendError):
    """The device is unusable until this process ends: a sticky CUDA error (an illegal address,
    a kernel that faulted, an uncorrectable ECC error) poisons the process's CUDA context, and
    every later call, a reopened backend's included, fails the same way. No retry, fallback or
    reload can help: the service reports it and exits non-zero, so that systemd restarts it."""


# CUDA runtime errors after which "the context cannot be used" (CUDA's documentation of each):
# they stick to the primary context until the process exits. Any other error (out of memory,
# an invalid value) leaves the context usable and is transient.
STICKY_CUDA_ERRORS = {
    214: "cudaErrorECCUncorrectable",
    700: "cudaErrorIllegalAddress",
    702: "cudaErrorLaunchTimeout",
    710: "cudaErrorAssert",
    714: "cudaErrorHardwareStackError",
    715: "cudaErrorIllegalInstruction",
    716: "cudaErrorMisalignedAddress",
    717: "cudaErrorInvalidAddressSpace",
    718: "cudaErrorInvalidPc",
    719: "cudaErrorLaunchFailure",
}
# How ONNX Runtime's CUDA and TensorRT providers name a CUDA error in their exceptions:
# "CUDA failure 700: an illegal memory access ..." or "CUDA error cudaErrorIllegalAddress:...".
_CUDA_FAILURE = re.compile(r"CUDA failure (\d+)|(cudaError[A-Za-z]+)")


def sticky_cuda_error(message: str) -> bool:
    """Whether an error message names one of :data:`STICKY_CUDA_ERRORS`."""
    names = set(STICKY_CUDA_ERRORS.values())
    return any((code and int(code) in STICKY_CUDA_ERRORS) or name in names
               for code, name in _CUDA_FAILURE.findall(message))


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
    so the tiler may plan tiles per field; a backend without the attribute (a TensorRT
    engine built for one tile) takes one size."""
    return bool(getattr(backend, "any_size", False))


def max_side(backend: Backend) -> int:
    """The largest tile height and width ``backend`` takes (a TensorRT engine's profile), 0
    for no limit; a wrapper (test-time augmentation) is asked through to what it wraps."""
    return _wrapped_attribute(backend, "max_side")


def fused_head(backend: Backend) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None:
    """``backend``'s ``run_head`` (float32 N x C x H x W -> uint8 classes and margins, N x H x W)
    where it runs a model with the post-processing in its graph (``export/head.py``), else None.
    Not asked through a wrapper: test-time augmentation averages logits, which the head never returns."""
    return backend.run_head if getattr(backend, "has_head", False) else None  # type: ignore[attr-defined]


def call_pixels(backend: Backend) -> int:
    """The most pixels one call of ``backend`` should hold for speed (0: as many as memory
    allows); see ``onnxruntime.CPU_CALL_PIXELS``."""
    return _wrapped_attribute(backend, "call_pixels")


def return_free_memory(backend: Backend, bundle: Bundle) -> None:
    """Have ``backend`` (or what a wrapper wraps) hand back the memory it keeps free for its
    next calls, where it keeps any (ONNX Runtime's CPU arena; see
    ``OrtBackend.return_free_memory``): called between files, after a large one."""
    current: Any = backend
    while current is not None and not hasattr(current, "return_free_memory"):
        current = getattr(current, "inner", None)
    if current is not None:
        side = bundle.spatial_multiple or bundle.tile  # the smallest input the model takes
        current.return_free_memory((1, bundle.input_channels, side, side))


def _wrapped_attribute(backend: Backend, name: str) -> int:
    current: Any = backend
    while current is not None:
        if getattr(current, name, 0):
            return int(getattr(current, name))
        current = getattr(current, "inner", None)
    return 0


def physical_cores() -> int:
    """Physical cores, but no more than the CPUs this process may run on (systemd's
    CPUAffinity=, a container's cpuset, taskset): more threads than that only contend."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        import psutil
    except ImportError:  # psutil is optional at runtime
        return allowed
    return max(1, min(allowed, psutil.cpu_count(logical=False) or allowed))


# A backend kind's settings: its [model.<kind>] table, as read from the config or the flags.
Table = Mapping[str, Any]


class BackendKind(NamedTuple):
    """One entry of the registry's ``BACKENDS``."""

    # (bundle, batch, threads, options) -> Backend, options being what ``options`` made of the
    # kind's table; raises BackendError
    open: Callable[[Bundle, int, int | None, Any], Backend]
    # Loads no model: None, or one line saying why ``open`` cannot work on this machine.
    unavailable: Callable[[Bundle], str | None]
    # The kind's [model.<kind>] table -> its options; raises BackendError naming the key.
    options: Callable[[Table], Any]
    provider: str | None = None  # the ONNX Runtime execution provider, for kinds OrtBackend runs
    # "": 'auto' may pick it; else why only a user who names it gets it (it changes the numbers
    # without a gate, or runs elsewhere, on a shared server): 'auto' and doctor say so.
    manual: str = ""


def no_options(kind: str) -> Callable[[Table], None]:
    """The ``options`` of a kind that has no settings: any key in its table is an error."""

    def parse(table: Table) -> None:
        if table:
            raise BackendError(f"[model.{kind}]: backend '{kind}' has no settings, got {', '.join(sorted(table))}")

    return parse


OptionsT = TypeVar("OptionsT")


def options_from_table(cls: type[OptionsT], kind: str, table: Table) -> OptionsT:
    """``cls`` (a dataclass of str, bool, int and float fields with defaults) from a
    ``[model.<kind>]`` table: unknown keys and values of the wrong type are one-line
    :class:`BackendError`\\ s naming the key; ranges and choices are ``cls.__post_init__``'s."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in names:
            raise BackendError(f"[model.{kind}]: unknown key '{key}' (known: {', '.join(names)})")
        want = hints[key]
        ok = (isinstance(value, bool) if want is bool
              else isinstance(value, (int, float)) and not isinstance(value, bool) if want is float
              else isinstance(value, int) and not isinstance(value, bool) if want is int
              else isinstance(value, want))
        if not ok:
            raise BackendError(f"[model.{kind}] {key}: must be {want.__name__}, got {value!r}")
        values[key] = float(value) if want is float else value
    return cls(**values)
