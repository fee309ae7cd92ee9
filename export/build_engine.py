"""A validated FP16 TensorRT engine for this machine's GPU (``phasewatch build-engine``).

Precision comes from the bundle's FP16 ONNX (float16 weights and compute, float32 I/O, written
by ``phasewatch export``), built as a STRONGLY TYPED network: no builder precision flags, which
TensorRT 11 removes. One optimisation profile covers batches 1..max of tile-sized inputs. The
timing cache (``engines/timing.cache`` unless ``--timing-cache``) makes rebuilds fast.

The new engine is kept only if it passes the gate against FP32 ONNX on the bundle's reference
tiles (:mod:`phasewatch.export.engine_gate`); otherwise it is deleted and the build refused.
A kept engine is named after its :class:`~phasewatch.runtime.tensorrt_backend.EngineStamp`
and has a JSON sidecar with the stamp, the build settings and the gate numbers.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from phasewatch.export.engine_gate import (
    GateResult,
    compare_logits,
    fp32_logits,
    load_reference_tiles,
)
from phasewatch.runtime.bundle import Bundle, sha256_file
from phasewatch.runtime.errors import PhasewatchError
from phasewatch.runtime.outputs import write_bytes_atomic, write_json_atomic
from phasewatch.runtime.tensorrt_backend import (
    SIDECAR_FORMAT,
    EngineStamp,
    TensorRTBackend,
    current_stamp,
    import_tensorrt,
    sidecar_path,
)

DEFAULT_MAX_BATCH = 8
DEFAULT_WORKSPACE_MB = 1024
TIMING_CACHE_NAME = "timing.cache"


class EngineBuildError(PhasewatchError):
    """A build that failed or was refused; ``details`` are extra lines (e.g. parser errors)."""

    def __init__(self, message: str, details: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.details = list(details)


def build_engine(
    bundle: Bundle,
    max_batch: int = DEFAULT_MAX_BATCH,
    opt_batch: int | None = None,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    timing_cache: Path | None = None,
    force: bool = False,
    progress: Callable[[str], None] = lambda message: None,
) -> Path:
    """Build, validate and keep the engine for ``bundle`` on GPU 0; returns its path."""
    opt_batch = max_batch if opt_batch is None else opt_batch
    if not 1 <= opt_batch <= max_batch:
        raise EngineBuildError(f"{bundle.path}: need 1 <= opt batch ({opt_batch}) <= max batch "
                               f"({max_batch})")
    if workspace_mb < 1:
        raise EngineBuildError(f"{bundle.path}: workspace must be at least 1 MB, got {workspace_mb}")
    stamp = current_stamp(bundle)
    engine_path = bundle.engines_dir / stamp.file_name()
    if not force and engine_path.is_file() and sidecar_path(engine_path).is_file():
        progress(f"{engine_path.name} already built for {stamp.describe()} (--force rebuilds)")
        return engine_path
    tiles = load_reference_tiles(bundle)
    bundle.engines_dir.mkdir(parents=True, exist_ok=True)
    cache_path = timing_cache or bundle.engines_dir / TIMING_CACHE_NAME
    progress(f"building for {stamp.describe()}, batch 1..{max_batch} (opt {opt_batch})")
    plan = build_plan(bundle, opt_batch, max_batch, workspace_mb, cache_path, progress)
    fd, tmp_name = tempfile.mkstemp(dir=bundle.engines_dir, prefix=f".{engine_path.name}.",
                                    suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(plan)
        progress(f"validating against FP32 ONNX on {len(tiles)} reference tiles")
        result = run_gate(tmp, bundle, tiles, max_batch)
        if not result.passed:
            raise EngineBuildError(f"{bundle.onnx_fp16_path}: FP16 engine refused: {result.reason()}")
        os.replace(tmp, engine_path)
        write_json_atomic(sidecar_path(engine_path), sidecar_record(
            bundle, stamp, engine_path, (1, opt_batch, max_batch), workspace_mb, result))
    finally:
        tmp.unlink(missing_ok=True)
    progress(f"kept {engine_path.name}: {result.reason()}")
    return engine_path


def build_plan(bundle: Bundle, opt_batch: int, max_batch: int, workspace_mb: int,
               cache_path: Path, progress: Callable[[str], None] = lambda message: None) -> bytes:
    """The serialized engine; loads and saves the timing cache at ``cache_path``."""
    trt, _ = import_tensorrt()
    onnx_path = bundle.onnx_fp16_path
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes(), str(onnx_path)):
        details = [f"{onnx_path}: {parser.get_error(i)}" for i in range(parser.num_errors)]
        raise EngineBuildError(
            f"{onnx_path}: TensorRT cannot parse the FP16 ONNX ({parser.num_errors} error(s))", details)
    if network.num_inputs != 1:
        raise EngineBuildError(f"{onnx_path}: expected one input, the network has {network.num_inputs}")
    name = network.get_input(0).name
    tile = (bundle.channels, bundle.tile, bundle.tile)
    profile = builder.create_optimization_profile()
    profile.set_shape(name, (1, *tile), (opt_batch, *tile), (max_batch, *tile))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if config.add_optimization_profile(profile) < 0:
        raise EngineBuildError(f"{onnx_path}: TensorRT rejected the profile for '{name}' "
                               f"(batch 1..{max_batch} of {tile})")
    config.set_timing_cache(load_timing_cache(config, cache_path, progress), False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(f"{onnx_path}: TensorRT could not build an engine (its log above "
                               "says why)")
    write_bytes_atomic(cache_path, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


def load_timing_cache(config: Any, cache_path: Path,
                      progress: Callable[[str], None] = lambda message: None) -> Any:
    """The saved timing cache, or an empty one when there is none or it cannot be read."""
    blob = b""
    if cache_path.is_file():
        blob = cache_path.read_bytes()
    try:
        cache = config.create_timing_cache(blob)
    except (TypeError, RuntimeError):
        cache = None
    if cache is None:
        progress(f"{cache_path}: unreadable timing cache, starting afresh")
        cache = config.create_timing_cache(b"")
    return cache


def run_gate(engine_path: Path, bundle: Bundle, tiles: np.ndarray, max_batch: int) -> GateResult:
    """Engine vs FP32 ONNX on the same tiles."""
    backend = TensorRTBackend(engine_path, max_batch)
    try:
        candidate = backend.run(tiles)
    finally:
        backend.close()
    return compare_logits(fp32_logits(bundle.onnx_path, tiles), candidate)


def sidecar_record(bundle: Bundle, stamp: EngineStamp, engine_path: Path,
                   batches: tuple[int, int, int], workspace_mb: int, gate: GateResult) -> dict[str, Any]:
    return {
        "format": SIDECAR_FORMAT,
        "engine": engine_path.name,
        "engine_sha256": sha256_file(engine_path),
        "gpu": stamp.gpu,
        "compute_capability": stamp.compute_capability,
        "tensorrt": stamp.tensorrt,
        "onnx": bundle.onnx_fp16_path.name,
        "onnx_sha256": stamp.onnx_sha256,
        "model": bundle.name,
        "precision": "fp16 from the ONNX, strongly typed network",
        "input": {"channels": bundle.channels, "tile": bundle.tile},
        "batch": dict(zip(("min", "opt", "max"), batches, strict=True)),
        "workspace_mb": workspace_mb,
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "gate": gate.record(),
    }
