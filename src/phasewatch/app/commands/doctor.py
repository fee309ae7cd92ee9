"""``phasewatch doctor``: what ``phasewatch serve`` would use here, and what stops it.

It reads the same configuration as ``serve`` (file and flags), then reports on the
configuration, the inference backends, the model, where TensorRT engines are kept and whether
one fits this GPU, the backend ``auto`` would pick, why it passed over the faster ones and
whether an accuracy gate covers what it picked, the watch and data folders, free disk, the
GPU, the CPU and the versions of Python and the packages. It changes nothing: the data folder is probed with a temporary
file that is removed at once, and nothing is created. Run it as the service's user
(``sudo -u phasewatch phasewatch doctor``): folder permissions are checked for whoever runs it.

Each line is ``STATUS  TOPIC  detail`` with STATUS ``ok``, ``FAIL`` (the service cannot
run like this) or ``--`` (information). The exit status is 1 when any line is ``FAIL``,
and the last line names those topics.
"""

from __future__ import annotations

import argparse
import getpass
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

from phasewatch.backends.base import BackendError, physical_cores
from phasewatch.backends.engines import EngineOptions, engine_folders
from phasewatch.backends.registry import Settings, choose_backend
from phasewatch.bundle import Bundle, BundleError, load_bundle
from phasewatch.service.config import Config, ConfigError, add_service_arguments, config_from_args
from phasewatch.service.daemon import DEFAULT_MODEL, MIN_FREE_DISK_BYTES
from phasewatch.service.watcher import choose_observer, filesystem_type

PACKAGES = ("phasewatch", "numpy", "opencv-python-headless", "tifffile", "imagecodecs", "onnxruntime",
            "onnxruntime-gpu", "watchdog", "flask", "waitress", "prometheus-client", "tensorrt", "cuda-bindings")
NVIDIA_SMI_QUERY = ("nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader")
NVIDIA_SMI_TIMEOUT_S = 10
JETSON_RELEASE = Path("/etc/nv_tegra_release")
OK, FAIL, INFO = "ok", "FAIL", "--"
# What stands between each kind's numbers and the FP32 model's ("fp16 gate" line).
GATES = {
    "tensorrt": "covered: its engine passed build-engine's gate against the FP32 ONNX",
    "tensorrt-ep": "NOT covered: ONNX Runtime builds FP16 from the FP32 ONNX with no accuracy gate",
    "cuda": "not needed: FP32",
    "cpu": "not needed: FP32",
    "cpu-int8": "INT8, not FP16: the model passed quantise's gate",
    "triton": "not checked here: the precision is the Triton server's (its model's identity is checked)",
}


class Check(NamedTuple):
    status: str  # OK, FAIL or INFO
    topic: str
    detail: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_service_arguments(parser)


def run(args: argparse.Namespace) -> int:
    checks: list[Check] = []
    config: Config | None
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        checks += [Check(FAIL, "config", line) for line in exc.errors]
        config = None
    else:
        where = str(config.source) if config.source else "none found, built-in defaults"
        checks.append(Check(OK, "config", f"{where}: valid"))
    if config is not None:
        checks += service_checks(config)
    checks += machine_checks()
    for check in checks:
        print(f"{check.status:<4}  {check.topic:<9} {check.detail}")
    failed = list(dict.fromkeys(c.topic for c in checks if c.status == FAIL))
    if failed:
        print(f"doctor: the service cannot run like this; fix: {', '.join(failed)}")
        return 1
    print("doctor: everything the service needs is in place")
    return 0


def service_checks(config: Config) -> list[Check]:
    """Backends, model, the backend auto picks, folders and disk, for this configuration."""
    checks = [backends_check()]
    settings = config.backend_settings
    try:
        bundle = load_bundle(config.model.ref or DEFAULT_MODEL)
    except BundleError as exc:
        checks.append(Check(FAIL, "model", str(exc)))
    else:
        checks += [model_check(bundle), *engine_checks(bundle, EngineOptions.from_table(settings["tensorrt"]))]
        checks += backend_checks(bundle, config.model.backend, config.model.batch, settings)
    checks += [watch_check(config), data_check(config.data.dir), disk_check(config.data.dir)]
    return checks


def machine_checks() -> list[Check]:
    cores = f"{os.cpu_count()} logical, {physical_cores()} physical"
    return [
        Check(INFO, "gpu", gpu_summary()),
        Check(INFO, "cpu", f"{cores} cores, {platform.machine()}"),
        Check(INFO, "user", getpass.getuser()),
        Check(INFO, "python", f"{platform.python_version()} ({sys.executable})"),
        Check(INFO, "packages", ", ".join(f"{name} {package_version(name)}" for name in PACKAGES)),
    ]


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def backends_check() -> Check:
    import onnxruntime as ort

    native = "tensorrt " + ("importable" if importlib.util.find_spec("tensorrt") else "not installed")
    cuda = "cuda.bindings " + ("importable" if _importable("cuda.bindings") else "not installed")
    providers = ", ".join(ort.get_available_providers())
    return Check(INFO, "backends", f"onnxruntime {ort.__version__} providers: {providers}; {native}; {cuda}")


def _importable(name: str) -> bool:
    try:  # find_spec of a dotted name imports its parent, which may be missing
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def model_check(bundle: Bundle) -> Check:
    classes = ", ".join(f"{c.id} {c.name} ({c.role})" for c in bundle.classes)
    sha = "ONNX sha256 ok" if bundle.onnx_sha256 else "no ONNX sha256 in the manifest (not verified)"
    return Check(OK, "model", f"{bundle.name} at {bundle.path}: {bundle.channels}-channel input, tile {bundle.tile}, "
                              f"halo {bundle.halo}, scale {bundle.scale}, {sha}; classes: {classes}")


def engine_checks(bundle: Bundle, options: EngineOptions) -> list[Check]:
    """Where TensorRT engines are kept, and whether one built for this GPU, TensorRT and ONNX is there."""
    kept, legacy = engine_folders(options.root, bundle)
    checks = [Check(INFO, "engine", f"engines are kept in {kept} (build-engine writes there; {legacy} is read too)")]
    if importlib.util.find_spec("tensorrt") is None:
        return [*checks, Check(INFO, "engine", "no TensorRT engine check: tensorrt is not installed")]
    from phasewatch.backends.tensorrt import find_engine, machine_stamps, read_sidecar, sidecar_path

    try:
        engine = find_engine(bundle, machine_stamps(bundle), options.root)
    except BackendError as exc:
        return [*checks, Check(INFO, "engine", str(exc))]
    gate = (read_sidecar(sidecar_path(engine)) or {}).get("gate", {})
    passed = "; ".join(f"{side} x {side}: {record.get('argmax_agreement', 0) * 100:.3f} % argmax agreement"
                       for side, record in gate.items())
    return [*checks, Check(INFO, "engine", f"matching TensorRT engine: {engine} (gate: {passed or 'no numbers'})")]


def backend_checks(bundle: Bundle, configured: str, batch: int, settings: Settings | None = None) -> list[Check]:
    """Open the backend ``auto`` picks (and the configured one, when another) as the service would."""
    try:
        backend, passed_over = choose_backend(bundle, "auto", batch, settings=settings)
    except BackendError as exc:
        checks = [Check(FAIL, "auto", str(exc))]
    else:
        backend.close()
        checks = [Check(OK, "auto", f"picked {backend.name}")]
        checks += [Check(INFO, "auto", f"passed over {kind}: {why}") for kind, why in passed_over.items()]
        if configured == "auto":
            checks.append(gate_check(backend.name))
    if configured != "auto":
        try:
            choose_backend(bundle, configured, batch, settings=settings).backend.close()
        except BackendError as exc:
            checks.append(Check(FAIL, "backend", str(exc)))
        else:
            checks.append(Check(OK, "backend", f"{configured} (configured) opens"))
        checks.append(gate_check(configured))
    return checks


def gate_check(kind: str) -> Check:
    return Check(INFO, "fp16 gate", f"{kind}: {GATES.get(kind, 'not known for this kind')}")


def watch_check(config: Config) -> Check:
    folder = config.watch.dir
    if not folder.exists():
        return Check(FAIL, "watch", f"{folder}: does not exist")
    if not folder.is_dir():
        return Check(FAIL, "watch", f"{folder}: not a folder")
    if not os.access(folder, os.R_OK | os.X_OK):
        return Check(FAIL, "watch", f"{folder}: not readable by {getpass.getuser()}")
    try:
        entries = len(os.listdir(folder))
    except OSError as exc:
        return Check(FAIL, "watch", f"{folder}: cannot list it: {exc.strerror or exc}")
    fs = filesystem_type(folder) or "unknown file system"
    observer = choose_observer(folder, config.watch.observer)
    return Check(OK, "watch", f"{folder}: readable, {entries} entries, {fs}, {observer} observer "
                              f"(setting '{config.watch.observer}'), settle {config.watch.settle_s} s")


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def data_check(folder: Path) -> Check:
    if folder.exists() and not folder.is_dir():
        return Check(FAIL, "data", f"{folder}: not a folder")
    base = _existing_ancestor(folder)
    if not base.is_dir():
        return Check(FAIL, "data", f"{folder}: cannot be created: {base} is not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=base, prefix=".phasewatch-doctor-"):
            pass
    except OSError as exc:
        return Check(FAIL, "data", f"{folder}: {base} is not writable: {exc.strerror or exc}")
    if base == folder.absolute():
        return Check(OK, "data", f"{folder}: exists, writable")
    return Check(OK, "data", f"{folder}: missing, will be created (in writable {base})")


def disk_check(folder: Path) -> Check:
    base = _existing_ancestor(folder)
    free = shutil.disk_usage(base).free
    detail = f"{free / 2**30:.1f} GiB free at {base}"
    if free < MIN_FREE_DISK_BYTES:
        return Check(FAIL, "disk", f"{detail}, below the {MIN_FREE_DISK_BYTES // 2**20} MiB the service needs")
    return Check(OK, "disk", detail)


def gpu_summary() -> str:
    if shutil.which(NVIDIA_SMI_QUERY[0]):
        try:
            out = subprocess.run(NVIDIA_SMI_QUERY, capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"nvidia-smi failed: {exc}"
        if out.returncode != 0:
            first_line = next(iter((out.stderr or out.stdout).strip().splitlines()), "no output")
            return f"nvidia-smi failed (exit status {out.returncode}): {first_line}"
        return "; ".join(line.strip() for line in out.stdout.splitlines() if line.strip()) or "none"
    if JETSON_RELEASE.is_file():  # Jetsons have no nvidia-smi
        return f"Jetson: {JETSON_RELEASE.read_text(errors='replace').splitlines()[0].lstrip('# ')}"
    return "none (no nvidia-smi)"
