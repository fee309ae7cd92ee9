"""``phasewatch quantise BUNDLE --calibrate DIR --check DIR``: add an INT8 model for the CPU to a
bundle, kept only if it agrees with FP32 on the reference tiles and on every check field
(``cpu-int8`` backend)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from phasewatch.errors import PhasewatchError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", help="bundle folder (a bundled name quantises the installed copy)")
    parser.add_argument("--calibrate", nargs="*", type=Path, default=[], metavar="DIR_OR_IMAGE",
                        help="fields (e.g. the validation images) whose activations set the INT8 ranges")
    parser.add_argument("--check", nargs="*", type=Path, default=[], metavar="DIR_OR_IMAGE",
                        help="held-out fields the INT8 model must also agree with FP32 on, whole")


def run(args: argparse.Namespace) -> int:
    from phasewatch.bundle import load_bundle
    from phasewatch.export.onnx_export import image_files
    from phasewatch.export.quantise import quantise

    try:
        block = quantise(load_bundle(args.bundle), image_files(args.calibrate) if args.calibrate else [],
                         image_files(args.check) if args.check else [])
    except PhasewatchError as exc:
        print(f"phasewatch quantise: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(block["worst"], indent=2))
    return 0
