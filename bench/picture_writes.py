"""What the write stage's pictures cost per field: overlay and preview as PNG (before issue 25)
against JPEG (now), on real fields of the bundled superalloy (512²) and EBC (1024²) models.

Each real test field is segmented once by its bundled model; then, in this process, in turns
(PNG, JPEG, PNG, ... so that the load of the machine falls on both alike), ``--repeats`` times:

- ``overlay``: encoding the overlay (``outputs.overlay``) as PNG vs JPEG (``outputs.encode_picture``);
- ``preview``: encoding the preview (``outputs.preview``) as PNG vs JPEG;
- ``field``: the whole write of a field as ``pipeline.measure_and_write`` does it, files
  included (class map PNG, overlay, JSON, unsure map PNG, preview; atomic: fsync and rename),
  into a temporary folder, with the PNG pictures (before) or as the pipeline writes now.

Each is timed in CPU seconds of this process (``time.process_time``: the time taken from
inference; waiting for the disk in fsync is not in it) and wall seconds; the best of the
repeats is printed per material (its fields are alike in size) with the ratio PNG / JPEG.
OpenCV runs on one thread, as on a core shared with inference.

Run: ``python bench/picture_writes.py [--repeats 7] [--json]`` (needs the shared data;
``$PHASEWATCH_DATA`` or ``../shared/data``).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from phasewatch.atomic_files import write_json_atomic
from phasewatch.core.outputs import encode_picture, overlay, preview, write_png_atomic, write_preview
from phasewatch.core.pipeline import Model, decode_file, measure_and_write, open_model, segment_files, write_field
from phasewatch.core.records import FieldRecord
from phasewatch.imageio.formats import SUPPORTED_SUFFIXES

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MATERIALS = ("superalloy", "ebc")  # each bundled model's name is its material's
KINDS: dict[Literal["PNG", "JPEG"], str] = {"PNG": "png", "JPEG": "jpg"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("PHASEWATCH_DATA", PROJECT_ROOT.parent
                                                                         / "shared" / "data")))
    parser.add_argument("--repeats", type=int, default=7, help="turns of each way; the best is printed")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    return parser.parse_args()


def timed(work: Callable[..., object], *args: Any) -> tuple[float, float]:
    """(CPU ms, wall ms) of one call."""
    cpu, wall = time.process_time(), time.perf_counter()
    work(*args)
    return (time.process_time() - cpu) * 1000, (time.perf_counter() - wall) * 1000


def write_field_before(out_dir: Path, stem: str, image: np.ndarray, classes: np.ndarray, margin: np.ndarray,
                       record: FieldRecord, palette: list[tuple[int, int, int]], skip: set[int]) -> None:
    """The field's files as the pipeline wrote them before issue 25 (all PNG)."""
    write_png_atomic(out_dir / f"{stem}.classes.png", classes)
    write_png_atomic(out_dir / f"{stem}.overlay.png", overlay(image, classes, palette, skip=skip))
    write_json_atomic(out_dir / f"{stem}.json", record)
    write_png_atomic(out_dir / f"{stem}.unsure.png", 255 - margin)
    write_png_atomic(out_dir / f"{stem}.preview.png", preview(image))


def write_field_now(out_dir: Path, stem: str, image: np.ndarray, classes: np.ndarray, margin: np.ndarray,
                    record: FieldRecord, model: Model) -> None:
    """The field's files as ``pipeline.measure_and_write`` writes them now."""
    write_field(out_dir, stem, image, classes, record, model.bundle)
    write_png_atomic(out_dir / f"{stem}.unsure.png", 255 - margin)
    write_preview(out_dir, stem, image)


def bench_material(material: str, data: Path, repeats: int) -> dict[str, Any]:
    images = sorted(p for p in (data / material / "test" / "images").iterdir()
                    if p.suffix.lower() in SUPPORTED_SUFFIXES)
    model = open_model(material, threads=1)
    palette = model.bundle.palette()
    skip = {c.id for c in model.bundle.classes if c.role == "background"}
    best: dict[str, tuple[float, float]] = {}
    result: dict[str, Any] = {"material": material, "fields": len(images), "repeats": repeats}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for path in images:
            (segmented,) = segment_files([decode_file(path)], model)
            image = segmented.decoded.fields[0].image
            classes, margin = segmented.maps[0].classes, segmented.maps[0].margin
            record = measure_and_write(segmented, None).fields[0].record  # the real JSON, not written here
            result["shape"] = f"{image.shape[0]}x{image.shape[1]}"
            pictures = {"overlay": overlay(image, classes, palette, skip=skip), "preview": preview(image)}
            turns: dict[str, tuple[Callable[..., object], tuple[Any, ...]]] = {}
            for part, picture in pictures.items():
                for kind, suffix in KINDS.items():
                    turns[f"{part}_{suffix}"] = (encode_picture, (picture, kind))
            turns["field_png"] = (write_field_before, (out, "a", image, classes, margin, record, palette, skip))
            turns["field_jpg"] = (write_field_now, (out, "a", image, classes, margin, record, model))
            for _ in range(repeats):
                for key, (work, args) in turns.items():  # in turns: the machine's load falls on all alike
                    cpu, wall = timed(work, *args)
                    old_cpu, old_wall = best.get(key, (float("inf"), float("inf")))
                    best[key] = (min(old_cpu, cpu), min(old_wall, wall))
            for kind, suffix in KINDS.items():
                result[f"overlay_{suffix}_bytes"] = len(encode_picture(pictures["overlay"], kind))
    for key, (cpu, wall) in best.items():
        result[f"{key}_cpu_ms"], result[f"{key}_wall_ms"] = round(cpu, 2), round(wall, 2)
    for part in ("overlay", "preview", "field"):
        result[f"{part}_png_over_jpg_cpu"] = round(best[f"{part}_png"][0] / best[f"{part}_jpg"][0], 1)
    return result


def main() -> None:
    args = parse_args()
    cv2.setNumThreads(1)
    results = [bench_material(m, args.data, args.repeats) for m in MATERIALS]
    if args.json:
        print(json.dumps(results))
        return
    for r in results:
        print(f"{r['material']} ({r['fields']} fields {r['shape']}, best of {r['repeats']}, CPU ms / wall ms):")
        for part in ("overlay", "preview", "field"):
            print(f"  {part:8s} PNG {r[f'{part}_png_cpu_ms']:7.2f} / {r[f'{part}_png_wall_ms']:7.2f}   "
                  f"JPEG {r[f'{part}_jpg_cpu_ms']:7.2f} / {r[f'{part}_jpg_wall_ms']:7.2f}   "
                  f"PNG/JPEG (CPU) {r[f'{part}_png_over_jpg_cpu']}")
        print(f"  overlay bytes (last field): PNG {r['overlay_png_bytes']}, JPEG {r['overlay_jpg_bytes']}")


if __name__ == "__main__":
    main()
