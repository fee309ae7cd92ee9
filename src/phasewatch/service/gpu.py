"""The GPUs as NVML sees them: readings for ``/metrics``, problems for ``/healthz``, a device count.

NVML comes from ``pynvml`` (the ``nvidia-ml-py`` wheel), only when it can be imported and
``nvmlInit`` succeeds: a CPU machine, a container without the driver's ``libnvidia-ml.so`` and a
Jetson (Tegra has no NVML; its ``tegrastats`` is not read here, docs/TENSORRT.md) have no
:class:`Gpus` and show no GPU series. Indices are NVML's, which order devices by PCI bus id; CUDA
orders them fastest first unless ``CUDA_DEVICE_ORDER=PCI_BUS_ID``.

What makes the GPU a failing ``/healthz`` component: fewer devices than when the service started
or a device NVML reports lost (``NVML_ERROR_GPU_IS_LOST``: fallen off the bus), more uncorrected
ECC errors than at start (``nvmlDeviceGetTotalEccErrors``, volatile count; GPUs without ECC
answer NotSupported and are not checked), and a critical Xid event since start (NVML's event
set, polled without waiting). A GPU in that state gives wrong numbers or none; the sticky-error
path (``backends.base.BackendFatal``) stops the service when inference itself meets it, this
shows it on the page and to the load balancer before or without that.
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import Any, NamedTuple

log = logging.getLogger(__name__)

# pynvml's constants (nvml.h), spelled here so that a reading never depends on a module attribute
# that an older nvidia-ml-py lacks.
TEMPERATURE_GPU = 0  # NVML_TEMPERATURE_GPU
MEMORY_ERROR_UNCORRECTED = 1  # NVML_MEMORY_ERROR_TYPE_UNCORRECTED
VOLATILE_ECC = 0  # NVML_VOLATILE_ECC: since the driver loaded
EVENT_XID_CRITICAL = 0x8  # nvmlEventTypeXidCriticalError
ERROR_NOT_SUPPORTED = 3  # NVML_ERROR_NOT_SUPPORTED
ERROR_TIMEOUT = 10  # NVML_ERROR_TIMEOUT: no event waiting


class Reading(NamedTuple):
    """One device at one moment."""

    gpu: int  # NVML index
    name: str
    utilisation_pct: float  # share of the last sample period a kernel ran
    memory_used_bytes: int
    memory_total_bytes: int
    temperature_c: float


def _text(name: Any) -> str:
    # nvidia-ml-py before 11.515 returned bytes, later str
    return name.decode(errors="replace") if isinstance(name, bytes) else str(name)


class Gpus:
    """NVML initialised once, with what it saw at start to compare later readings against."""

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        nvml.nvmlInit()
        self.count = int(nvml.nvmlDeviceGetCount())
        self.handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(self.count)]
        self.names = [_text(nvml.nvmlDeviceGetName(h)) for h in self.handles]
        self.ecc_at_start = [self._ecc(h) for h in self.handles]
        self.xids: list[str] = []  # critical Xid events seen since start, one line each
        self.events = self._event_set()

    def _ecc(self, handle: Any) -> int | None:
        try:
            return int(self.nvml.nvmlDeviceGetTotalEccErrors(handle, MEMORY_ERROR_UNCORRECTED, VOLATILE_ECC))
        except self.nvml.NVMLError as exc:
            if getattr(exc, "value", None) == ERROR_NOT_SUPPORTED:
                return None  # no ECC on this GPU (most consumer and Jetson-class parts)
            raise

    def _event_set(self) -> Any:
        """An event set with every device's critical Xid events, or None where NVML cannot."""
        try:
            events = self.nvml.nvmlEventSetCreate()
            for handle in self.handles:
                self.nvml.nvmlDeviceRegisterEvents(handle, EVENT_XID_CRITICAL, events)
        except self.nvml.NVMLError as exc:  # NotSupported on some boards and in some containers
            log.info("gpu: no Xid events from NVML: %s", exc)
            return None
        return events

    def read(self) -> list[Reading]:
        """Every device's utilisation, memory and temperature; raises ``nvml.NVMLError``."""
        readings = []
        for index, (handle, name) in enumerate(zip(self.handles, self.names, strict=True)):
            rates = self.nvml.nvmlDeviceGetUtilizationRates(handle)
            memory = self.nvml.nvmlDeviceGetMemoryInfo(handle)
            temperature = self.nvml.nvmlDeviceGetTemperature(handle, TEMPERATURE_GPU)
            readings.append(Reading(index, name, float(rates.gpu), int(memory.used), int(memory.total),
                                    float(temperature)))
        return readings

    def problem(self) -> str | None:
        """One line when a GPU is gone or erring (module doc), else None."""
        try:
            count = int(self.nvml.nvmlDeviceGetCount())
            if count < self.count:
                return f"{self.count - count} of {self.count} GPU(s) gone since the service started"
            lines = [*self._new_xids()]
            for index, (handle, before) in enumerate(zip(self.handles, self.ecc_at_start, strict=True)):
                now = self._ecc(handle)
                if before is not None and now is not None and now > before:
                    lines.append(f"GPU {index} ({self.names[index]}): {now - before} uncorrected ECC error(s) "
                                 "since the service started")
        except self.nvml.NVMLError as exc:  # GPU_IS_LOST, Unknown: the device no longer answers
            return f"NVML: {exc}"
        return "; ".join(lines) or None

    def _new_xids(self) -> list[str]:
        if self.events is None:
            return self.xids
        while True:
            try:
                event = self.nvml.nvmlEventSetWait_v2(self.events, 0)
            except self.nvml.NVMLError as exc:
                if getattr(exc, "value", None) == ERROR_TIMEOUT:
                    return self.xids  # none waiting
                raise
            index = self._index(event.device)
            self.xids.append(f"GPU {index}: critical Xid {int(event.eventData)}")

    def _index(self, handle: Any) -> int | str:
        return self.handles.index(handle) if handle in self.handles else "?"


def open_gpus(module: str = "pynvml") -> Gpus | None:
    """:class:`Gpus` through ``module``, or None where it is not installed or NVML does not start
    (no NVIDIA driver: the usual case on a CPU machine or a Jetson)."""
    try:
        nvml = importlib.import_module(module)
    except ImportError:
        return None
    try:
        return Gpus(nvml)
    except nvml.NVMLError as exc:
        log.info("gpu: NVML did not start: %s", exc)
        return None


def visible_devices(gpus: Gpus | None) -> int | None:
    """How many GPUs CUDA will show this process: ``CUDA_VISIBLE_DEVICES``'s entries where it is
    set (empty or starting with -1: none), else NVML's count; None where neither says."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        entries = [e.strip() for e in listed.split(",") if e.strip()]
        valid = []
        for entry in entries:
            if entry.startswith("-1"):
                break  # CUDA stops at the first invalid index
            valid.append(entry)
        return len(valid)
    return gpus.count if gpus is not None else None
