"""``phasewatch segment IMAGE... --model M --out DIR``: one-off segmentation of files."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tqdm import tqdm

from phasewatch.runtime.backends import KINDS, Backend, open_backend
from phasewatch.runtime.bundle import Bundle, load_bundle
from phasewatch.runtime.errors import PhasewatchError
from phasewatch.runtime.imageio import images_in, read_fields
from phasewatch.runtime.pipeline import field_record, field_stem, segment_images, write_field


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", type=Path,
                        help="micrograph files, or folders whose images are all segmented")
    parser.add_argument("--model", required=True, help="bundle folder or bundled model name")
    parser.add_argument("--out", required=True, type=Path, help="folder for the outputs")
    parser.add_argument("--backend", choices=KINDS, default="auto")
    parser.add_argument("--batch", type=int, default=8, help="tiles per inference batch")
    parser.add_argument("--overlap", type=int, default=None,
                        help="tile overlap in pixels (default: from the model's halo)")
    parser.add_argument("--pixel-size", type=float, default=None, metavar="UM",
                        help="pixel size in µm, overriding what the files say")


def expand_inputs(paths: list[Path]) -> list[Path]:
    """Files as given; folders replaced by the images they hold (sorted, not recursive)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += images_in(path)
        else:
            files.append(path)
    return files


def run(args: argparse.Namespace) -> int:
    try:
        bundle = load_bundle(args.model)
        backend = open_backend(bundle, args.backend, args.batch)
    except PhasewatchError as exc:
        print(f"phasewatch segment: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    files = expand_inputs(args.images)
    failures = 0
    try:
        for path in tqdm(files, unit="file", disable=len(files) < 2, file=sys.stderr):
            try:
                segment_file(path, args.out, bundle, backend, args.pixel_size, args.overlap, args.batch)
            except PhasewatchError as exc:
                failures += 1
                tqdm.write(f"error: {exc}", file=sys.stderr)
    finally:
        backend.close()
    done = len(files) - failures
    print(f"{done} of {len(files)} file(s) segmented with {bundle.name} on {backend.name}; "
          f"outputs in {args.out}", file=sys.stderr)
    return 1 if failures else 0


def segment_file(
    path: Path,
    out_dir: Path,
    bundle: Bundle,
    backend: Backend,
    pixel_size_um: float | None = None,
    overlap: int | None = None,
    batch: int | None = None,
) -> list[dict]:
    """Segment every field of one file, write its outputs, return the records."""
    started = time.perf_counter()
    fields = read_fields(path, pixel_size_um=pixel_size_um)
    decode_ms = (time.perf_counter() - started) * 1000 / len(fields)
    maps = segment_images((f.image for f in fields), bundle, backend, overlap, batch)
    records = []
    for field in fields:
        started = time.perf_counter()
        classes = next(maps)
        segment_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        record = field_record(path, field, classes, bundle, backend.name)
        measure_ms = (time.perf_counter() - started) * 1000
        record["timing_ms"] = {"decode": round(decode_ms, 2), "segment": round(segment_ms, 2),
                               "measure": round(measure_ms, 2)}
        write_field(out_dir, field_stem(path, field, len(fields)), field, classes, bundle, record)
        records.append(record)
    return records
