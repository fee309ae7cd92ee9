"""A validated FP16 TensorRT engine for this machine's GPU (``phasewatch build-engine``).

Precision comes from the bundle's FP16 ONNX (float16 weights and compute, float32 I/O, written
by ``phasewatch export``), built as a STRONGLY TYPED network: no builder precision flags, which
TensorRT 11 removes. On a GPU without fast FP16 (``Builder.platform_has_fast_fp16`` False: the
consumer Pascals, whose FP16 runs at 1/64 of the FP32 rate) it is built from the FP32 ONNX
instead, and says so. One optimisation profile covers batches 1..max; its height and width are
the bundle's tile, or, for a bundle exported with dynamic height and width (``spatial_multiple``
in its manifest), any multiple of that from the multiple itself up to ``max_side``, tuned for
what the tile planner sends such an engine: one field of ``opt_side`` (default ``max_side``).
Engines go to the data folder's ``engines/<model>/`` (``engines``), never into the bundle. The
timing cache (``engines/<gpu>.<smXY>.trt<version>.timing.cache`` unless ``--timing-cache``)
makes rebuilds fast; timings hold only for the GPU they were measured on, so each GPU has its
own file, and a cache TensorRT refuses is replaced by a fresh one.

The new engine is kept only if it passes the gate against FP32 ONNX on the bundle's reference
tiles (:mod:`phasewatch.export.engine_gate`), at the tile size and, for a spatial profile, at
the smallest and the largest side too; otherwise it is deleted and the build refused.
A kept engine is named after its :class:`~phasewatch.backends.tensorrt.EngineStamp`
and has a JSON sidecar with the stamp, the build settings and the gate numbers.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from phasewatch.atomic_files import write_bytes_atomic, write_json_atomic
from phasewatch.backends.engines import EngineOptions, engine_folder, sanitise
from phasewatch.backends.tensorrt import (
    SIDECAR_FORMAT,
    EngineStamp,
    TensorRTBackend,
    current_stamp,
    import_tensorrt,
    sidecar_path,
)
from phasewatch.bundle import Bundle, sha256_file
from phasewatch.errors import PhasewatchError
from phasewatch.export.engine_gate import (
    GateResult,
    compare_logits,
    fp32_logits,
    load_reference_tiles,
    resize_tiles,
)

DEFAULT_MAX_BATCH = 8
DEFAULT_WORKSPACE_MB = 1024
DEFAULT_MAX_SIDE = 1024  # TensorRT sizes activation memory for max batch x max side squared
TIMING_CACHE_SUFFIX = ".timing.cache"


def timing_cache_name(stamp: EngineStamp) -> str:
    """One timing cache per GPU and TensorRT version: TensorRT refuses another GPU's timings."""
    return f"{sanitise(stamp.gpu)}.{stamp.compute_capability}.trt{sanitise(stamp.tensorrt)}{TIMING_CACHE_SUFFIX}"


@dataclass(frozen=True)
class Profile:
    """The engine's optimisation profile: batches and, per side, the smallest, tuned and
    largest height and width (all equal for an engine of one tile size)."""

    batches: tuple[int, int, int]
    sides: tuple[int, int, int]
    channels: int = 1

    @property
    def spatial(self) -> bool:
        return self.sides[0] != self.sides[2]

    def shapes(self) -> tuple[tuple[int, ...], ...]:
        return tuple((n, self.channels, side, side) for n, side in zip(self.batches, self.sides, strict=True))

    def gate_sides(self) -> list[int]:
        """Sizes the gate checks the engine at: each end of the profile and the tuned size."""
        return sorted(set(self.sides))


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
    max_side: int = DEFAULT_MAX_SIDE,
    opt_side: int | None = None,
    engines: Path | None = None,
) -> Path:
    """Build, validate and keep the engine for ``bundle`` on GPU 0 under ``engines`` (default
    the default data folder's); returns its path. ``max_side`` / ``opt_side`` matter only for a bundle with
    dynamic height and width; ``opt_batch`` defaults to ``max_batch`` for a bundle of one tile
    size (batches of tiles) and to 1 for one of any size (one field per call)."""
    opt_batch = (1 if bundle.spatial_multiple else max_batch) if opt_batch is None else opt_batch
    if not 1 <= opt_batch <= max_batch:
        raise EngineBuildError(f"{bundle.path}: need 1 <= opt batch ({opt_batch}) <= max batch "
                               f"({max_batch})")
    if workspace_mb < 1:
        raise EngineBuildError(f"{bundle.path}: workspace must be at least 1 MB, got {workspace_mb}")
    profile = plan_profile(bundle, opt_batch, max_batch, max_side, opt_side)
    onnx = engine_onnx(bundle, progress)
    stamp = current_stamp(bundle, onnx=onnx)
    engines = engines or EngineOptions().root
    folder = engine_folder(engines, bundle)
    engine_path = folder / stamp.file_name()
    if not force and engine_path.is_file() and sidecar_path(engine_path).is_file():
        progress(f"{engine_path.name} already built for {stamp.describe()} (--force rebuilds)")
        return engine_path
    tiles = load_reference_tiles(bundle)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EngineBuildError(f"{folder}: cannot create the engine folder: {exc.strerror or exc} (run "
                               "build-engine as the service's user, or give --data)") from exc
    cache_path = timing_cache or engines / timing_cache_name(stamp)
    progress(f"building for {stamp.describe()} from {onnx.name}, batch 1..{max_batch} (opt {opt_batch}), "
             f"sides {'/'.join(map(str, profile.sides))} (min/opt/max), into {folder}")
    plan = build_plan(onnx, profile, workspace_mb, cache_path, progress)
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{engine_path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(plan)
        progress(f"validating against FP32 ONNX on {len(tiles)} reference tiles at sides "
                 f"{', '.join(map(str, profile.gate_sides()))}")
        results = run_gate(tmp, bundle, tiles, profile)
        failed = {side: result for side, result in results.items() if not result.passed}
        if failed:
            side, result = next(iter(failed.items()))
            raise EngineBuildError(f"{onnx}: engine refused at {side} x {side}: {result.reason()}")
        os.replace(tmp, engine_path)
        write_json_atomic(sidecar_path(engine_path), sidecar_record(
            bundle, stamp, onnx, engine_path, profile, workspace_mb, results))
    finally:
        tmp.unlink(missing_ok=True)
    progress(f"kept {engine_path.name}: " + "; ".join(
        f"{side} x {side}: {result.reason()}" for side, result in results.items()))
    return engine_path


def engine_onnx(bundle: Bundle, progress: Callable[[str], None] = lambda message: None) -> Path:
    """The ONNX to build from: the FP16 one, or the FP32 one where TensorRT says this GPU has
    no fast FP16 (an FP16 engine there is slower than FP32)."""
    trt, _ = import_tensorrt()
    if trt.Builder(trt.Logger(trt.Logger.WARNING)).platform_has_fast_fp16:
        return bundle.onnx_fp16_path
    progress("this GPU has no fast FP16 (TensorRT's platform_has_fast_fp16 is False): building FP32 from "
             f"{bundle.onnx_path.name}")
    return bundle.onnx_path


def plan_profile(bundle: Bundle, opt_batch: int, max_batch: int, max_side: int,
                 opt_side: int | None) -> Profile:
    """The bundle's tile for a fixed-size bundle; else multiples of its ``spatial_multiple``,
    tuned for ``opt_side`` (default ``max_side``: the planner sends a field as one tile up to it)."""
    batches = (1, opt_batch, max_batch)
    multiple = bundle.spatial_multiple
    if not multiple:
        return Profile(batches, (bundle.tile,) * 3, bundle.input_channels)
    opt_side = max_side if opt_side is None else opt_side
    if max_side % multiple or (opt_side % multiple) or not multiple <= opt_side <= max_side:
        raise EngineBuildError(f"{bundle.path}: need sides that are multiples of {multiple} with "
                               f"{multiple} <= opt side ({opt_side}) <= max side ({max_side})")
    return Profile(batches, (multiple, opt_side, max_side), bundle.input_channels)


def build_plan(onnx_path: Path, profile: Profile, workspace_mb: int, cache_path: Path,
               progress: Callable[[str], None] = lambda message: None) -> bytes:
    """The serialized engine of ``onnx_path``; loads and saves the timing cache at ``cache_path``."""
    trt, _ = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes(), str(onnx_path)):
        details = [f"{onnx_path}: {parser.get_error(i)}" for i in range(parser.num_errors)]
        raise EngineBuildError(
            f"{onnx_path}: TensorRT cannot parse the ONNX ({parser.num_errors} error(s))", details)
    if network.num_inputs != 1:
        raise EngineBuildError(f"{onnx_path}: expected one input, the network has {network.num_inputs}")
    tensor = network.get_input(0)
    if profile.spatial and any(int(d) >= 0 for d in tuple(tensor.shape)[2:]):
        raise EngineBuildError(f"{onnx_path}: the manifest gives spatial_multiple but the ONNX input "
                               f"has a fixed height and width {tuple(tensor.shape)}; re-export it")
    shapes = profile.shapes()
    trt_profile = builder.create_optimization_profile()
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    try:
        trt_profile.set_shape(tensor.name, *shapes)
    except (ValueError, RuntimeError) as exc:  # pyCore's set_shape raises on a refused shape
        raise EngineBuildError(f"{onnx_path}: TensorRT refused the profile {shapes}: {exc}") from exc
    if config.add_optimization_profile(trt_profile) < 0:
        raise EngineBuildError(f"{onnx_path}: TensorRT rejected the profile for '{tensor.name}' {shapes}")
    use_timing_cache(config, cache_path, progress)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(f"{onnx_path}: TensorRT could not build an engine (its log above "
                               "says why)")
    save_timing_cache(config, cache_path, progress)
    return bytes(plan)


def use_timing_cache(config: Any, cache_path: Path,
                     progress: Callable[[str], None] = lambda message: None) -> None:
    """Give the build the saved timing cache, or a fresh one when there is none, it cannot be
    read, or TensorRT refuses it (``set_timing_cache`` is False for another GPU's timings)."""
    blob = cache_path.read_bytes() if cache_path.is_file() else b""
    cache = config.create_timing_cache(blob) if blob else None
    if cache is not None and config.set_timing_cache(cache, False):
        return
    if blob:
        progress(f"{cache_path}: timing cache unreadable or from another GPU, starting afresh")
    fresh = config.create_timing_cache(b"")
    if fresh is None or not config.set_timing_cache(fresh, False):
        raise EngineBuildError(f"{cache_path}: TensorRT refused even an empty timing cache")


def save_timing_cache(config: Any, cache_path: Path, progress: Callable[[str], None]) -> None:
    """Save the build's timings; a failure costs the next build time, never this engine."""
    cache = config.get_timing_cache()
    if cache is None:
        progress(f"{cache_path}: TensorRT returned no timing cache; not saved")
        return
    try:
        write_bytes_atomic(cache_path, bytes(cache.serialize()))
    except OSError as exc:
        progress(f"{cache_path}: cannot save the timing cache: {exc}")


def run_gate(engine_path: Path, bundle: Bundle, tiles: np.ndarray, profile: Profile) -> dict[int, GateResult]:
    """Engine vs FP32 ONNX on the reference tiles, at each of the profile's sizes."""
    backend = TensorRTBackend(engine_path, profile.batches[2])
    try:
        results = {}
        for side in profile.gate_sides():
            sized = resize_tiles(tiles, side)
            results[side] = compare_logits(fp32_logits(bundle.onnx_path, sized), backend.run(sized))
    finally:
        backend.close()
    return results


def sidecar_record(bundle: Bundle, stamp: EngineStamp, onnx: Path, engine_path: Path, profile: Profile,
                   workspace_mb: int, gate: dict[int, GateResult]) -> dict[str, Any]:
    precision = "fp16" if onnx == bundle.onnx_fp16_path else "fp32 (no fast FP16 on this GPU)"
    return {
        "format": SIDECAR_FORMAT,
        "engine": engine_path.name,
        "engine_sha256": sha256_file(engine_path),
        "gpu": stamp.gpu,
        "compute_capability": stamp.compute_capability,
        "multiprocessors": stamp.multiprocessors,
        "memory_gib": stamp.memory_gib,
        "tensorrt": stamp.tensorrt,
        "onnx": onnx.name,
        "onnx_sha256": stamp.onnx_sha256,
        "model": bundle.name,
        "precision": f"{precision} from the ONNX, strongly typed network",
        "input": {"channels": bundle.input_channels, "tile": bundle.tile},
        "batch": dict(zip(("min", "opt", "max"), profile.batches, strict=True)),
        "side": dict(zip(("min", "opt", "max"), profile.sides, strict=True)),
        "workspace_mb": workspace_mb,
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "gate": {str(side): result.record() for side, result in gate.items()},
    }
