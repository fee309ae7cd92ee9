"""Checkpoint -> model bundle: ONNX, FP16 ONNX, parity report, manifest.

The bundle is assembled in a hidden temporary folder beside ``out_dir`` and renamed
into place only when every gate passed, so a refused export leaves nothing behind.

Gates, on real (normalised) tiles:

- FP32 ONNX vs PyTorch: argmax agreement >= 99.99 % and max |logit difference| <=
  ``1e-3 * max(1, max |logit|)`` (both run float32; anything larger is a broken
  export, not rounding).
- FP16 ONNX vs FP32 ONNX: the FP16 gate of :mod:`phasewatch.export.engine_gate` (argmax
  agreement >= 99.9 %, the DESIGN quality bar), the same one a TensorRT engine must pass.

The ONNX graph is opset 18 from the dynamo exporter: input ``input`` [batch, C, T, T]
and output ``logits`` [batch, K, T, T] with only the batch dynamic. (Opset 17 would need
the exporter's down-conversion, which fails on ReduceMean; TensorRT 10 reads 18.)
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import logging
import platform
import shutil
import sys
import tempfile
import warnings
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from phasewatch.bundle import (
    MANIFEST_FORMAT,
    BundleError,
    Normalisation,
    sha256_file,
    write_manifest,
)
from phasewatch.errors import PhasewatchError, one_line
from phasewatch.export.engine_gate import REFERENCE_TILES_FILE, compare_logits
from phasewatch.imageio.formats import SUPPORTED_SUFFIXES, images_in

OPSET = 18
ARGMAX_AGREEMENT_MIN = 0.9999
LOGIT_TOLERANCE = 1e-3
REFERENCE_TILES_MAX_BYTES = 1_500_000
BATCHNORM_FILE = "batchnorm.npy"
BATCHNORM_ROWS = ("weight", "bias", "running_mean", "running_var")
CONFIG_KEYS = ("architecture", "model_kwargs", "in_channels", "classes", "tile", "normalisation")


class ExportError(PhasewatchError):
    """An export that cannot proceed or was refused; the message is one line."""


# --------------------------------------------------------------------------- checkpoint


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a training checkpoint and check it has what the export needs."""
    import torch

    try:
        # weights_only: a checkpoint is data; never run pickled code from it.
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise ExportError(f"{path}: checkpoint not found") from exc
    except Exception as exc:  # torch raises many types for a bad file
        raise ExportError(f"{path}: cannot read checkpoint: {one_line(exc)}") from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise ExportError(f"{path}: not a phasewatch checkpoint (needs the keys 'model' and 'config')")
    missing = [key for key in CONFIG_KEYS if key not in ckpt["config"]]
    if missing:
        raise ExportError(f"{path}: checkpoint config lacks {', '.join(missing)}")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any], where: Path):
    """The trained model in eval mode."""
    from phasewatch.export.models import build_model

    config = ckpt["config"]
    try:
        model = build_model(
            config["architecture"],
            int(config["in_channels"]),
            len(config["classes"]),
            **config["model_kwargs"],
        )
        model.load_state_dict(ckpt["model"])
    except (ValueError, RuntimeError) as exc:
        raise ExportError(f"{where}: cannot rebuild the model: {' '.join(str(exc).split())}") from exc
    return model.eval()


# --------------------------------------------------------------------------- ONNX


def export_onnx(model, in_channels: int, tile: int, path: Path, multiple: int = 0) -> None:
    """Write ``model`` as ONNX with a dynamic batch and either a fixed ``tile`` x ``tile``
    input or (``multiple`` > 0) any height and width that are multiples of ``multiple``."""
    import torch

    example = torch.zeros(1, in_channels, tile, tile)
    batch = torch.export.Dim("batch", min=1, max=1024)
    shapes: dict[int, Any] = {0: batch}
    if multiple:
        # Up to 16384 px a side; the sliding window keeps within its memory budget far below that.
        shapes[2] = multiple * torch.export.Dim("height_steps", min=1, max=16384 // multiple)
        shapes[3] = multiple * torch.export.Dim("width_steps", min=1, max=16384 // multiple)
    # The exporter prints progress, warns, and logs about absent torchvision ops: noise here.
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                str(path),
                input_names=["input"],
                output_names=["logits"],
                opset_version=OPSET,
                dynamo=True,
                dynamic_shapes=(shapes,),
                external_data=False,
            )
    except Exception as exc:  # the exporter raises many types; all mean the same here
        raise ExportError(f"{path}: ONNX export failed: {one_line(exc)}") from exc
    finally:
        exporter_log.setLevel(level)


def convert_fp16(src: Path, dst: Path) -> None:
    """FP16 weights and compute with float32 input and output."""
    import onnx
    from onnxconverter_common import float16

    with warnings.catch_warnings():
        # It warns for every tiny weight it rounds to the float16 minimum: expected.
        warnings.simplefilter("ignore", UserWarning)
        model = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    _float32_outputs(model)
    onnx.save(model, str(dst))


def _float32_outputs(model) -> None:
    """Cast any float16 graph output back to float32.

    onnxconverter-common leaves an output float16 when the op producing it is one it
    keeps in float32 (e.g. the final Resize), despite ``keep_io_types``.
    """
    from onnx import TensorProto, helper

    for output in model.graph.output:
        tensor_type = output.type.tensor_type
        if tensor_type.elem_type != TensorProto.FLOAT16:
            continue
        inner = f"{output.name}_fp16"
        for node in model.graph.node:
            node.output[:] = [inner if name == output.name else name for name in node.output]
        model.graph.node.append(helper.make_node("Cast", [inner], [output.name], to=TensorProto.FLOAT))
        tensor_type.elem_type = TensorProto.FLOAT


def onnx_logits(path: Path, tiles: np.ndarray) -> np.ndarray:
    """Logits of an ONNX model on the CPU, one tile per run (any batch size must work)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(["logits"], {"input": tile[None]})[0] for tile in tiles])


def torch_logits(model, tiles: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(tile[None])).numpy() for tile in tiles])


# --------------------------------------------------------------------------- tiles


def cut_reference_tiles(
    images: Sequence[Path], config: dict[str, Any], count: int = 4, tile: int | None = None
) -> np.ndarray:
    """``count`` normalised tiles (float32 N x C x T x T) cut from micrographs, as the runtime
    sees them.

    Tiles go round-robin over the images, at the centre first, then the corners, and
    each image is normalised once, whole, exactly like the runtime does.
    """
    from phasewatch.core.normalise import ModelInput, StackInput, prepare, prepare_stack, window_indices
    from phasewatch.export.datasets import read_volume
    from phasewatch.export.models import input_slices
    from phasewatch.imageio.formats import read_pages

    tile, channels = export_tile(config, tile), int(config["in_channels"])
    normalisation = normalisation_from_config(config["normalisation"], channels)
    scale = float(config.get("scale", 1.0))
    slices = input_slices(config["architecture"], **config["model_kwargs"])
    inputs: list[ModelInput | StackInput] = []
    for path in images:
        try:
            if slices > 1:  # a volume: the stack about its middle slice, as the runtime feeds it
                volume = read_volume(path)
                window = window_indices(len(volume) // 2, len(volume), slices)
                inputs.append(prepare_stack([volume[z] for z in window], channels, normalisation, scale))
            else:
                inputs.append(prepare(read_pages(path)[0].image, channels, normalisation, scale))
        except ValueError as exc:
            raise ExportError(f"{path}: cannot normalise: {exc}") from exc
    if not inputs:
        raise ExportError("no micrographs given to cut reference tiles from")
    tiles = []
    for i in range(count):
        inp = inputs[i % len(inputs)]
        tiles.append(_tile_at(inp, tile, i // len(inputs)))
    return np.stack(tiles).astype(np.float32)


def _tile_at(inp, tile: int, which: int) -> np.ndarray:
    """Tile number ``which`` of an image: centre, then the four corners, cycling."""
    h, w = inp.height, inp.width
    spots = [(0.5, 0.5), (0.0, 0.0), (1.0, 1.0), (0.0, 1.0), (1.0, 0.0)]
    fy, fx = spots[which % len(spots)]
    y0 = int(round(fy * max(h - tile, 0)))
    x0 = int(round(fx * max(w - tile, 0)))
    region = inp.region(y0, min(y0 + tile, h), x0, min(x0 + tile, w))
    pad_y, pad_x = tile - region.shape[1], tile - region.shape[2]
    # An image smaller than a tile is mirrored out to it, as the runtime pads its borders.
    return np.pad(region, ((0, 0), (0, pad_y), (0, pad_x)), mode="symmetric")


def image_files(paths: Sequence[Path]) -> list[Path]:
    """Files named directly, plus the image files inside named folders (sorted)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            inside = images_in(path)
            if not inside:
                raise ExportError(f"{path}: no image files ({', '.join(SUPPORTED_SUFFIXES)}) in this folder")
            found += inside
        elif path.is_file():
            found.append(path)
        else:
            raise ExportError(f"{path}: no such file or folder")
    return found


def synthetic_tiles(channels: int, tile: int, count: int = 4, seed: int = 0) -> np.ndarray:
    """Smooth random tiles for when no micrographs are given (recorded as such)."""
    import cv2

    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((count * channels, tile, tile)).astype(np.float32)
    smooth = np.stack([cv2.GaussianBlur(plane, (0, 0), tile / 32) for plane in noise])
    smooth /= smooth.std() + 1e-6
    return smooth.reshape(count, channels, tile, tile)


def normalisation_from_config(raw: dict[str, Any], channels: int) -> Normalisation:
    percentiles = tuple(float(v) for v in raw.get("percentiles", (0.5, 99.5)))
    if len(percentiles) != 2:
        raise ExportError(f"normalisation percentiles must be two numbers (low, high), got {list(percentiles)}")
    return Normalisation(
        mean=tuple(float(v) for v in raw.get("mean", [0.5] * channels)),
        std=tuple(float(v) for v in raw.get("std", [0.25] * channels)),
        sixteen_bit=str(raw.get("sixteen_bit", "percentile")),
        percentiles=(percentiles[0], percentiles[1]),
        rule=str(raw.get("rule", "bit-depth")),
    )


def save_batchnorm(model, path: Path) -> dict[str, Any]:
    """Write the model's BatchNorm parameters and statistics to ``path``; the manifest entry.

    The exporter folds every BatchNorm into the conv before it, exact for inference but
    lossy for training: fine-tuning from the bundle (``finetune.py``) unfolds the convs
    with these. One float32 array, a row per :data:`BATCHNORM_ROWS`, a column per channel
    of each layer in turn (a few KB, beside MB of ONNX).
    """
    import torch

    layers = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    columns = [np.stack([getattr(m, row).detach().cpu().numpy() for row in BATCHNORM_ROWS]) for m in layers.values()]
    np.save(path, np.concatenate(columns, axis=1).astype(np.float32))
    return {"file": path.name, "sha256": sha256_file(path), "layers": {n: m.num_features for n, m in layers.items()}}


def _reference_subset(tiles: np.ndarray) -> np.ndarray:
    """At most as many tiles as fit REFERENCE_TILES_MAX_BYTES, but at least one."""
    per_tile = tiles[0].nbytes
    return np.ascontiguousarray(tiles[: max(1, REFERENCE_TILES_MAX_BYTES // per_tile)], dtype=np.float32)


# --------------------------------------------------------------------------- bundle


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in (
        "phasewatch",
        "torch",
        "onnx",
        "onnxruntime",
        "onnxscript",
        "onnxconverter-common",
        "numpy",
    ):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    return versions


def _plain(value: Any) -> Any:
    """A JSON-safe copy (checkpoint info may hold paths or numpy scalars)."""
    return json.loads(json.dumps(value, default=str))


def other_sizes(tiles: np.ndarray, multiple: int) -> list[np.ndarray]:
    """Inputs of other sizes for the parity gates of a dynamic-size export, made from the
    first reference tile (mirrored out, or cut): taller-than-wide, wider-than-tall and small."""
    tile = tiles.shape[-1]
    first = tiles[:1]
    tall = np.pad(first, ((0, 0), (0, 0), (0, multiple), (0, 0)), mode="reflect")[..., : tile - multiple]
    wide = np.pad(first, ((0, 0), (0, 0), (0, 0), (0, tile - multiple)), mode="reflect")
    small = first[..., : 3 * multiple, : 5 * multiple]
    return [np.ascontiguousarray(a) for a in (tall, wide, small)]


def sized_parity(model, onnx_path: Path, fp16_path: Path | None, inputs: list[np.ndarray],
                 where: Path) -> list[dict[str, Any]]:
    """FP32 ONNX against PyTorch (and the FP16 copy against FP32) at each input's size; an
    export whose graph only holds at the tile it was traced at is refused here."""
    records = []
    for inp in inputs:
        reference, fp32 = torch_logits(model, inp), onnx_logits(onnx_path, inp)
        parity = compare_logits(reference, fp32)
        tolerance = LOGIT_TOLERANCE * max(1.0, float(np.abs(reference).max()))
        if parity.argmax_agreement < ARGMAX_AGREEMENT_MIN or parity.max_abs_logit_diff > tolerance:
            raise ExportError(f"{where}: ONNX differs from PyTorch at {inp.shape[2]} x {inp.shape[3]} (argmax "
                              f"agreement {parity.argmax_agreement:.6f}, max |logit diff| "
                              f"{parity.max_abs_logit_diff:.3g}); export refused")
        record: dict[str, Any] = {"size": [int(inp.shape[2]), int(inp.shape[3])],
                                  "argmax_agreement": parity.argmax_agreement,
                                  "max_abs_logit_diff": parity.max_abs_logit_diff}
        if fp16_path is not None:
            fp16 = compare_logits(fp32, onnx_logits(fp16_path, inp))
            if not fp16.passed:
                raise ExportError(f"{where}: FP16 ONNX refused at {inp.shape[2]} x {inp.shape[3]}: {fp16.reason()}")
            record["fp16_argmax_agreement"] = fp16.argmax_agreement
        records.append(record)
    return records


def _check_tiles(tiles: np.ndarray, channels: int, tile: int) -> np.ndarray:
    if tiles.ndim != 4 or tiles.shape[1:] != (channels, tile, tile) or len(tiles) == 0:
        raise ExportError(f"reference tiles must be N x {channels} x {tile} x {tile}, got {tiles.shape}")
    if not np.isfinite(tiles).all():
        raise ExportError("reference tiles contain NaN or infinite values")
    return np.ascontiguousarray(tiles, dtype=np.float32)


def export_tile(config: dict[str, Any], override: int | None = None) -> int:
    """The tile the bundle runs at: ``override``, else the config's ``export_tile``, else the
    training tile. A fully convolutional net may run at a larger tile than it was trained on,
    which keeps its halo (the context a pixel needs) a small part of every tile."""
    return int(override or config.get("export_tile") or config["tile"])


def export_bundle(
    checkpoint_path: str | Path,
    out_dir: str | Path,
    tiles: np.ndarray | None,
    name: str | None = None,
    tiles_source: str | None = None,
    tile: int | None = None,
) -> Path:
    """Export a checkpoint to a bundle folder ``out_dir``; returns its path.

    ``tiles``: normalised real tiles (N x C x T x T) for the parity gates, e.g. from
    :func:`cut_reference_tiles`; ``None`` uses synthetic tiles and says so in the
    manifest. ``tiles_source`` describes where the tiles came from, for the manifest.
    ``tile`` overrides the tile the bundle runs at (see :func:`export_tile`).
    Raises :class:`ExportError` (and leaves nothing at ``out_dir``) on any failure.
    """
    from tqdm import tqdm

    from phasewatch.export.models import input_slices, spatial_multiple
    from phasewatch.export.receptive_field import DEFAULT_THRESHOLD, measure_halo

    checkpoint_path, out_dir = Path(checkpoint_path), Path(out_dir)
    if out_dir.exists():
        raise ExportError(f"{out_dir}: already exists; remove it or choose another --out")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    steps = ["checkpoint", "halo", "onnx", "parity", "fp16", "manifest"]
    try:
        with tqdm(total=len(steps), desc="export", unit="step", file=sys.stderr) as bar:
            bar.set_postfix_str(steps[0])
            ckpt = load_checkpoint(checkpoint_path)
            config = ckpt["config"]
            channels, tile = int(config["in_channels"]), export_tile(config, tile)
            # 2.5D: ``channels`` per slice, ``slices`` neighbours stacked: the network's input channels
            slices = input_slices(config["architecture"], **config["model_kwargs"])
            per_slice, channels = channels, channels * slices
            if config["architecture"] == "pspnet" and tile != int(config["tile"]):
                raise ExportError(f"{checkpoint_path}: PSPNet's pooling is fixed to its training tile "
                                  f"{config['tile']}; it cannot be exported at tile {tile}")
            model = model_from_checkpoint(ckpt, checkpoint_path)
            multiple = spatial_multiple(config["architecture"], **config["model_kwargs"])
            if multiple and tile % multiple:
                raise ExportError(f"{checkpoint_path}: tile {tile} is not a multiple of the network's stride "
                                  f"{multiple}")
            if tiles is None:
                tiles, tiles_source = (
                    synthetic_tiles(channels, tile),
                    "synthetic (no micrographs given)",
                )
            tiles = _check_tiles(tiles, channels, tile)
            bar.update()

            bar.set_postfix_str(steps[1])
            halo = measure_halo(model, channels, tile, DEFAULT_THRESHOLD)
            bar.update()

            bar.set_postfix_str(steps[2])
            onnx_path = work / "model.onnx"
            export_onnx(model, channels, tile, onnx_path, multiple)
            bar.update()

            bar.set_postfix_str(steps[3])
            reference = torch_logits(model, tiles)
            fp32 = onnx_logits(onnx_path, tiles)
            fp32_parity = compare_logits(reference, fp32)
            tolerance = LOGIT_TOLERANCE * max(1.0, float(np.abs(reference).max()))
            if (fp32_parity.argmax_agreement < ARGMAX_AGREEMENT_MIN
                    or fp32_parity.max_abs_logit_diff > tolerance):
                raise ExportError(
                    f"{checkpoint_path}: ONNX differs from PyTorch (argmax agreement "
                    f"{fp32_parity.argmax_agreement:.6f}, need {ARGMAX_AGREEMENT_MIN}; max |logit "
                    f"diff| {fp32_parity.max_abs_logit_diff:.3g}, allowed {tolerance:.3g}); "
                    "export refused"
                )
            parity = {
                "max_abs_logit_diff": fp32_parity.max_abs_logit_diff,
                "argmax_agreement": fp32_parity.argmax_agreement,
                "tolerance": tolerance,
                "tiles": len(tiles),
                "tiles_source": tiles_source or "given",
            }
            bar.update()

            bar.set_postfix_str(steps[4])
            fp16_path = work / "model.fp16.onnx"
            convert_fp16(onnx_path, fp16_path)
            fp16_parity = compare_logits(fp32, onnx_logits(fp16_path, tiles))
            if not fp16_parity.passed:
                raise ExportError(f"{checkpoint_path}: FP16 ONNX refused: {fp16_parity.reason()}")
            if multiple:
                parity["sizes"] = sized_parity(model, onnx_path, fp16_path, other_sizes(tiles, multiple),
                                               checkpoint_path)
            bar.update()

            bar.set_postfix_str(steps[5])
            np.save(work / REFERENCE_TILES_FILE, _reference_subset(tiles))
            manifest = {
                "format": MANIFEST_FORMAT,
                "name": name or out_dir.name,
                "architecture": config["architecture"],
                "model_kwargs": _plain(config["model_kwargs"]),
                "classes": _plain(config["classes"]),
                "input": {
                    "name": "input",
                    "channels": per_slice,
                    **({"slices": slices} if slices > 1 else {}),
                    "dtype": "float32",
                    "layout": "NCHW",
                    "shape": ["batch", channels, *(("height", "width") if multiple else (tile, tile))],
                    **({"spatial_multiple": multiple} if multiple else {}),
                },
                "normalisation": _plain(config["normalisation"]),
                "tile": tile,
                "training_tile": int(config["tile"]),
                "halo": halo,
                "halo_threshold": DEFAULT_THRESHOLD,
                "scale": float(config.get("scale", 1.0)),
                "pixel_size_um": config.get("pixel_size_um"),
                "output": {
                    "name": "logits",
                    "kind": "logits",
                    "layout": "NKHW",
                    "shape": ["batch", len(config["classes"]), *(("height", "width") if multiple else (tile, tile))],
                },
                "onnx_opset": OPSET,
                "onnx_sha256": sha256_file(onnx_path),
                "fp16": {
                    "file": fp16_path.name,
                    "sha256": sha256_file(fp16_path),
                    "parity": fp16_parity.record(),
                },
                "parity": parity,
                "reference_tiles": REFERENCE_TILES_FILE,
                "batchnorm": save_batchnorm(model, work / BATCHNORM_FILE),
                "training": _plain(ckpt.get("training", {})),
                "metrics": _plain(ckpt.get("metrics", {})),
                "checkpoint": {
                    "file": checkpoint_path.name,
                    "sha256": sha256_file(checkpoint_path),
                },
                "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "versions": _versions(),
            }
            if "data" in ckpt:
                manifest["data"] = _plain(ckpt["data"])
            try:
                write_manifest(work, manifest)
            except BundleError as exc:  # the checkpoint config does not make a valid bundle
                raise ExportError(str(exc)) from exc
            bar.update()
        work.rename(out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out_dir
