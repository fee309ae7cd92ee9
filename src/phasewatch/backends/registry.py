"""Inference backends by kind: :data:`BACKENDS` is the one list of them, fastest first, and
:func:`choose_backend` opens one (or, for ``auto``, the first that is available and opens).

Adding a backend is its module and one entry here. Its own settings, if any, are the
``[model.<kind>]`` config table, which the module parses itself (``base.options_from_table``);
every opener takes the bundle, the common arguments (batch, threads) and those options.
TensorRT with cuda-python, and the Triton module, are imported only when their kind is asked
for, since those libraries are optional. ``tensorrt-ep`` builds FP16 with no accuracy gate,
``cpu-int8`` changes the numbers and ``triton`` runs on a shared server, so only a user who
names them gets them (``BackendKind.manual``; 'auto' lists them with that reason).

A sticky CUDA error (:class:`BackendFatal`) is never a reason to try the next kind: the
process's CUDA context is lost, for every GPU kind alike; it goes to the caller.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from phasewatch.backends import onnxruntime
from phasewatch.backends.base import Backend, BackendError, BackendFatal, BackendKind, Table
from phasewatch.backends.engines import EngineOptions
from phasewatch.bundle import Bundle

log = logging.getLogger(__name__)

# Kind -> its [model.<kind>] table; a kind that is absent has an empty table.
Settings = Mapping[str, Table]


def _lazy(module: str, name: str) -> Callable[..., Any]:
    """``module.name`` (dotted: a class's method), imported when first called."""

    def call(*args: Any) -> Any:
        target: Any = importlib.import_module(module)
        for part in name.split("."):
            target = getattr(target, part)
        return target(*args)

    return call


def _native_tensorrt_unavailable(bundle: Bundle) -> str | None:
    # a missing engine is the opener's one line: only it knows the engines folder (its options)
    if importlib.util.find_spec("tensorrt") is None:
        return "python package 'tensorrt' is not installed"
    return None


def _open_native_tensorrt(bundle: Bundle, batch: int, threads: int | None, options: EngineOptions) -> Backend:
    # threads is not used: TensorRT keeps no CPU thread pool to size.
    from phasewatch.backends.tensorrt import open_tensorrt_backend

    return open_tensorrt_backend(bundle, batch, options.root)


def _triton_unavailable(bundle: Bundle) -> str | None:
    if importlib.util.find_spec("tritonclient") is None:
        return "python package 'tritonclient' is not installed (pip install 'phasewatch[triton]')"
    return None


def _open_triton(bundle: Bundle, batch: int, threads: int | None, options: Any) -> Backend:
    if (reason := _triton_unavailable(bundle)) is not None:
        raise BackendError(f"{bundle.path}: backend 'triton': {reason}")
    module = importlib.import_module("phasewatch.backends.triton.client")
    return module.open_triton(bundle, batch, threads, options)


# Fastest first: 'auto' takes the first kind that is available and opens.
BACKENDS: dict[str, BackendKind] = {
    "tensorrt": BackendKind(_open_native_tensorrt, _native_tensorrt_unavailable, EngineOptions.from_table),
    "tensorrt-ep": onnxruntime.TENSORRT_EP,
    "cuda": onnxruntime.CUDA,
    "cpu": onnxruntime.CPU,
    "cpu-int8": onnxruntime.CPU_INT8,
    "triton": BackendKind(_open_triton, _triton_unavailable,
                          _lazy("phasewatch.backends.triton.client", "TritonOptions.from_table"),
                          manual="it runs on a shared Triton server"),
}
KINDS = ("auto", *BACKENDS)  # the choices of --backend and model.backend
# Kinds with an 'engines' setting: the service gives them its data folder's (DataConfig.engines_dir).
ENGINE_KINDS = ("tensorrt", "tensorrt-ep")


def kind_options(kind: str, table: Table) -> Any:
    """What backend ``kind`` makes of its ``[model.<kind>]`` table; raises a one-line
    :class:`BackendError` naming the key (the config checks every table at load time)."""
    if kind not in BACKENDS:
        raise BackendError(f"[model.{kind}]: no backend '{kind}' (backends: {', '.join(BACKENDS)})")
    return BACKENDS[kind].options(table)


class Choice(NamedTuple):
    backend: Backend
    passed_over: dict[str, str]  # kind -> why 'auto' did not take it, fastest first


def _listed(reasons: dict[str, str]) -> str:
    return "; ".join(f"{kind}: {reason}" for kind, reason in reasons.items())


def _open(name: str, bundle: Bundle, batch: int, threads: int | None, settings: Settings) -> Backend:
    return BACKENDS[name].open(bundle, batch, threads, kind_options(name, settings.get(name, {})))


def choose_backend(
    bundle: Bundle, kind: str = "auto", batch: int = 8, threads: int | None = None, settings: Settings | None = None
) -> Choice:
    """Open the backend ``kind`` (one of KINDS) for ``bundle``; 'auto' takes the first entry
    of BACKENDS that is available, opens and is not ``manual``, and says why it passed over the
    ones before (a manual kind with its reason); ``settings`` holds the kinds' ``[model.<kind>]``
    tables."""
    settings = settings or {}
    if kind != "auto":
        if kind not in BACKENDS:
            raise BackendError(f"{bundle.path}: unknown backend '{kind}' (choose from {', '.join(KINDS)})")
        return Choice(_open(kind, bundle, batch, threads, settings), {})
    passed_over: dict[str, str] = {}
    names = list(BACKENDS)
    last_auto = max(i for i, entry in enumerate(BACKENDS.values()) if not entry.manual)
    for name, entry in BACKENDS.items():
        if entry.manual and names.index(name) > last_auto:
            continue  # slower than every kind auto may pick: not 'passed over'
        reason = entry.unavailable(bundle)
        if reason is None and entry.manual:
            reason = f"not for auto: {entry.manual}"
        if reason is None:
            try:
                return Choice(_open(name, bundle, batch, threads, settings), passed_over)
            except BackendFatal:
                raise  # the context is lost for every GPU kind alike
            except BackendError as exc:
                reason = str(exc)
        passed_over[name] = reason
    raise BackendError(f"{bundle.path}: no backend could be opened ({_listed(passed_over)})")


def open_backend(
    bundle: Bundle, kind: str = "auto", batch: int = 8, threads: int | None = None, settings: Settings | None = None
) -> Backend:
    """:func:`choose_backend`'s backend; for 'auto' it logs the choice and its reasons."""
    backend, passed_over = choose_backend(bundle, kind, batch, threads, settings)
    if kind == "auto":
        log.info("backend auto: picked %s (%s)", backend.name, _listed(passed_over) or "fastest available")
    return backend
