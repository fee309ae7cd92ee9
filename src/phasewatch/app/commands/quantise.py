"""``phasewatch quantise BUNDLE --samples DIR --check DIR``: add an INT8 model for the CPU to a
bundle, kept only if it agrees with FP32 on the reference tiles and on every check field
(``cpu-int8`` backend). The quantisation samples set the INT8 ranges; ``--calibrate`` is their
old name, still taken (hidden, with a warning): "calibration" now means trust calibration only."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from phasewatch.errors import PhasewatchError


class _OldName(argparse.Action):
    """``--calibrate``, the 0.1 name of ``--samples``: the same values, and a warning."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        print(f"phasewatch quantise: {option_string} is deprecated; use --samples", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", help="bundle folder (a bundled name quantises the installed copy)")
    parser.add_argument("--samples", nargs="*", type=Path, default=[], metavar="DIR_OR_IMAGE",
                        help="quantisation samples: fields (e.g. the validation images) whose activations set "
                             "the INT8 ranges")
    parser.add_argument("--calibrate", dest="samples", nargs="*", type=Path, action=_OldName, help=argparse.SUPPRESS)
    parser.add_argument("--check", nargs="*", type=Path, default=[], metavar="DIR_OR_IMAGE",
                        help="held-out fields the INT8 model must also agree with FP32 on, whole")


def run(args: argparse.Namespace) -> int:
    from phasewatch.bundle import load_bundle
    from phasewatch.export.onnx_export import image_files
    from phasewatch.export.quantise import quantise

    try:
        block = quantise(load_bundle(args.bundle), image_files(args.samples) if args.samples else [],
                         image_files(args.check) if args.check else [])
    except PhasewatchError as exc:
        print(f"phasewatch quantise: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(block["worst"], indent=2))
    return 0
