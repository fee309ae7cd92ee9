"""A fake of ``pynvml`` (nvidia-ml-py) as strict as the real module on what service/gpu.py calls.

:func:`fake_pynvml` returns a fresh module object to put in ``sys.modules['pynvml']``. Like the
real one: every call before ``nvmlInit`` raises ``NVMLError_Uninitialized``; errors are
``NVMLError`` subclasses carrying ``value`` (nvml.h's return code) and made by ``NVMLError(code)``;
handles are opaque objects, valid only for indices below the count; ``nvmlDeviceGetUtilizationRates``
returns a struct with ``gpu`` and ``memory`` (percent), ``nvmlDeviceGetMemoryInfo`` one with
``total``, ``free`` and ``used`` (bytes); ``nvmlDeviceGetTemperature`` takes a sensor type and
knows only NVML_TEMPERATURE_GPU (0); ``nvmlDeviceGetTotalEccErrors`` raises NotSupported on a GPU
without ECC; ``nvmlEventSetWait_v2`` raises Timeout when no event waits. A test drives a device
through :class:`Device` (``lost``, ``ecc``, ``xids``) and the module's ``devices`` list.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field

ERROR_UNINITIALIZED = 1
ERROR_INVALID_ARGUMENT = 2
ERROR_NOT_SUPPORTED = 3
ERROR_TIMEOUT = 10
ERROR_GPU_IS_LOST = 15
NAMES = {ERROR_UNINITIALIZED: "Uninitialized", ERROR_INVALID_ARGUMENT: "Invalid Argument",
         ERROR_NOT_SUPPORTED: "Not Supported", ERROR_TIMEOUT: "Timeout", ERROR_GPU_IS_LOST: "GPU is lost"}


class NVMLError(Exception):
    """pynvml's base error: ``NVMLError(code)`` makes the subclass for that code, as pynvml's does."""

    _subclasses: dict[int, type[NVMLError]] = {}

    def __new__(cls, value: int) -> NVMLError:
        if cls is NVMLError and value in NVMLError._subclasses:
            cls = NVMLError._subclasses[value]
        return Exception.__new__(cls)

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return NAMES.get(self.value, f"Unknown Error {self.value}")


for _code, _name in NAMES.items():
    NVMLError._subclasses[_code] = type(f"NVMLError_{_name.replace(' ', '')}", (NVMLError,), {})


@dataclass
class Device:
    name: str = "NVIDIA H100 80GB HBM3"
    utilisation: int = 37
    used: int = 12 << 30
    total: int = 80 << 30
    temperature: int = 54
    ecc: int | None = 0  # None: a GPU without ECC
    lost: bool = False  # fallen off the bus: every query raises GPU_IS_LOST
    xids: list[int] = field(default_factory=list)  # critical Xid events not yet waited for


class _Handle:
    def __init__(self, device: Device) -> None:
        self.device = device


def fake_pynvml(*devices: Device) -> types.ModuleType:
    module = types.ModuleType("pynvml")
    state = {"initialised": False}
    module.devices = list(devices)  # type: ignore[attr-defined]
    module.NVMLError = NVMLError  # type: ignore[attr-defined]
    handles: dict[int, _Handle] = {}
    sets: list[list[_Handle]] = []

    def checked(function):  # type: ignore[no-untyped-def]
        def call(*args):  # type: ignore[no-untyped-def]
            if not state["initialised"]:
                raise NVMLError(ERROR_UNINITIALIZED)
            for arg in args:
                if isinstance(arg, _Handle) and arg.device.lost:
                    raise NVMLError(ERROR_GPU_IS_LOST)
            return function(*args)
        setattr(module, function.__name__, call)
        return call

    def nvmlInit() -> None:
        state["initialised"] = True

    module.nvmlInit = nvmlInit  # type: ignore[attr-defined]

    @checked
    def nvmlDeviceGetCount() -> int:
        return sum(not d.lost for d in module.devices)  # type: ignore[attr-defined]

    @checked
    def nvmlDeviceGetHandleByIndex(index: int) -> _Handle:
        if not 0 <= index < len(module.devices):  # type: ignore[attr-defined]
            raise NVMLError(ERROR_INVALID_ARGUMENT)
        return handles.setdefault(index, _Handle(module.devices[index]))  # type: ignore[attr-defined]

    @checked
    def nvmlDeviceGetName(handle: _Handle) -> str:
        return handle.device.name

    @checked
    def nvmlDeviceGetUtilizationRates(handle: _Handle) -> types.SimpleNamespace:
        return types.SimpleNamespace(gpu=handle.device.utilisation, memory=handle.device.utilisation // 2)

    @checked
    def nvmlDeviceGetMemoryInfo(handle: _Handle) -> types.SimpleNamespace:
        d = handle.device
        return types.SimpleNamespace(total=d.total, used=d.used, free=d.total - d.used)

    @checked
    def nvmlDeviceGetTemperature(handle: _Handle, sensor: int) -> int:
        if sensor != 0:
            raise NVMLError(ERROR_INVALID_ARGUMENT)
        return handle.device.temperature

    @checked
    def nvmlDeviceGetTotalEccErrors(handle: _Handle, error_type: int, counter_type: int) -> int:
        if error_type not in (0, 1) or counter_type not in (0, 1):
            raise NVMLError(ERROR_INVALID_ARGUMENT)
        if handle.device.ecc is None:
            raise NVMLError(ERROR_NOT_SUPPORTED)
        return handle.device.ecc

    @checked
    def nvmlEventSetCreate() -> list[_Handle]:
        sets.append([])
        return sets[-1]

    @checked
    def nvmlDeviceRegisterEvents(handle: _Handle, types_: int, event_set: list[_Handle]) -> None:
        if types_ != 0x8:
            raise NVMLError(ERROR_NOT_SUPPORTED)  # the fake models only critical Xid events
        event_set.append(handle)

    @checked
    def nvmlEventSetWait_v2(event_set: list[_Handle], timeout_ms: int) -> types.SimpleNamespace:
        for handle in event_set:
            if handle.device.xids:
                return types.SimpleNamespace(device=handle, eventType=0x8, eventData=handle.device.xids.pop(0))
        raise NVMLError(ERROR_TIMEOUT)

    return module
