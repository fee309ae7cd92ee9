"""``phasewatch segment IMAGE... --model M --out DIR``: one-off segmentation of files.

A volume (``src/phasewatch/core/volume.py``: a Z stack by its metadata, or with ``--volume`` any
multi-page TIFF or folder of numbered slices) is segmented as one, into ``NAME.classes.tif``
and ``NAME.volume.json``, with one line on stdout giving its slice throughput.
Every file gets one line on stdout with its fractions (:func:`fractions_line`), so that a
one-off check needs no JSON reader.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path

from tqdm import tqdm

from phasewatch.app.common import add_backend_arguments, backend_settings, expand_inputs, parse_spacing
from phasewatch.backends.tta import MODES
from phasewatch.core.pipeline import Model, open_model, process_file
from phasewatch.core.volume import Spacing, open_volume, says_volume, segment_volume, summary_line
from phasewatch.errors import PhasewatchError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", type=Path,
                        help="micrograph files, or folders whose images are all segmented")
    parser.add_argument("--model", required=True, help="bundle folder or bundled model name")
    parser.add_argument("--out", required=True, type=Path, help="folder for the outputs")
    add_backend_arguments(parser)
    parser.add_argument("--batch", type=int, default=8, help="tiles per inference batch")
    parser.add_argument("--overlap", type=int, default=None,
                        help="tile overlap in pixels (default: from the model's halo)")
    parser.add_argument("--tta", choices=MODES, default="none",
                        help="test-time augmentation: average probabilities over flips (4 passes) or d4 (8)")
    parser.add_argument("--pixel-size", type=float, default=None, metavar="UM",
                        help="pixel size in µm, overriding what the files say")
    parser.add_argument("--volume", action="store_true",
                        help="each multi-page TIFF and each folder given is one volume (a folder: its "
                             "numbered slices); Z stacks by their ImageJ/OME metadata are volumes anyway")
    parser.add_argument("--spacing", metavar="Z,Y,X",
                        help="voxel size of volumes in µm (default: from the file's ImageJ or OME metadata; "
                             "--pixel-size is for fields)")


def plan_inputs(paths: list[Path], volume: bool) -> list[tuple[Path, bool]]:
    """(input, is a volume) in order: with ``volume`` every input given is one; otherwise
    folders are expanded and a file is a volume when its metadata say it is a Z stack."""
    if volume:
        return [(path, True) for path in paths]
    return [(path, says_volume(path)) for path in expand_inputs(paths)]


def fractions_line(name: str, fractions: Mapping[str, float], unit: str, flagged: bool) -> str:
    """One file's fractions as a person reads them: "a.tif: area % matrix 47.1, carbide 52.9"
    (``unit``: "area %" or "volume %"), flagged when the model found it unlike its training."""
    shares = ", ".join(f"{name_} {100 * share:.1f}" for name_, share in fractions.items())
    return f"{name}: {unit} {shares}" + (" (outside the model's experience: see its JSON)" if flagged else "")


def segment_one(path: Path, is_volume: bool, model: Model, args: argparse.Namespace,
                spacing: Spacing | None) -> None:
    if not is_volume:
        record = process_file(path, model, args.out, args.pixel_size, args.overlap, args.batch).record
        trust = record.get("trust")
        tqdm.write(fractions_line(path.name, record["fractions"], "area %", trust is not None and not trust["ok"]))
        return
    volume = segment_volume(open_volume(path, spacing), model, args.out, args.overlap, args.batch)
    measured = volume["measurements_3d"]["classes"]
    tqdm.write(fractions_line(path.name, {name: c["volume_fraction"] for name, c in measured.items()}, "volume %",
                              not volume["trust"]["ok"]))
    tqdm.write(summary_line(volume))


def run(args: argparse.Namespace) -> int:
    try:
        spacing = parse_spacing(args.spacing) if args.spacing else None
        model = open_model(args.model, args.backend, args.batch, tta=args.tta, settings=backend_settings(args))
    except PhasewatchError as exc:
        print(f"phasewatch segment: {exc}", file=sys.stderr)
        return 2
    files = plan_inputs(args.images, args.volume)
    failures = 0
    try:
        for path, is_volume in tqdm(files, unit="file", disable=len(files) < 2, file=sys.stderr):
            try:
                segment_one(path, is_volume, model, args, spacing)
            except PhasewatchError as exc:
                failures += 1
                tqdm.write(f"error: {exc}", file=sys.stderr)
    finally:
        model.close()
    done = len(files) - failures
    print(f"{done} of {len(files)} file(s) segmented with {model.bundle.name} on {model.backend.name}; "
          f"outputs in {args.out}", file=sys.stderr)
    return 1 if failures else 0
