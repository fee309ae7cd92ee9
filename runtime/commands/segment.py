"""``phasewatch segment IMAGE... --model M --out DIR``: one-off segmentation of files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from phasewatch.runtime.backends import KINDS
from phasewatch.runtime.errors import PhasewatchError
from phasewatch.runtime.imageio import images_in
from phasewatch.runtime.pipeline import open_model, process_file
from phasewatch.runtime.tta import MODES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", type=Path,
                        help="micrograph files, or folders whose images are all segmented")
    parser.add_argument("--model", required=True, help="bundle folder or bundled model name")
    parser.add_argument("--out", required=True, type=Path, help="folder for the outputs")
    parser.add_argument("--backend", choices=KINDS, default="auto")
    parser.add_argument("--batch", type=int, default=8, help="tiles per inference batch")
    parser.add_argument("--overlap", type=int, default=None,
                        help="tile overlap in pixels (default: from the model's halo)")
    parser.add_argument("--tta", choices=MODES, default="none",
                        help="test-time augmentation: average probabilities over flips (4 passes) or d4 (8)")
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
        model = open_model(args.model, args.backend, args.batch, tta=args.tta)
    except PhasewatchError as exc:
        print(f"phasewatch segment: {exc}", file=sys.stderr)
        return 2
    files = expand_inputs(args.images)
    failures = 0
    try:
        for path in tqdm(files, unit="file", disable=len(files) < 2, file=sys.stderr):
            try:
                process_file(path, model, args.out, args.pixel_size, args.overlap, args.batch)
            except PhasewatchError as exc:
                failures += 1
                tqdm.write(f"error: {exc}", file=sys.stderr)
    finally:
        model.close()
    done = len(files) - failures
    print(f"{done} of {len(files)} file(s) segmented with {model.bundle.name} on {model.backend.name}; "
          f"outputs in {args.out}", file=sys.stderr)
    return 1 if failures else 0
