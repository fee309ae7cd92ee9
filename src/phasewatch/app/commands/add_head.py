"""``phasewatch add-head BUNDLE...``: write ``model.head.onnx``, the bundle's network with its
post-processing (softmax margin, argmax) in the graph, checked on the reference tiles and named in
the manifest (``export/head.py``). Needs the ``onnx`` package, not torch."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from phasewatch.errors import PhasewatchError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundles", nargs="+", type=Path, help="bundle folders")


def run(args: argparse.Namespace) -> int:
    from phasewatch.export.head import write_head

    try:
        for path in args.bundles:
            block = write_head(path)
            print(f"{path}: {block['file']} sha256 {block['sha256'][:12]} parity {block['parity']}")
    except PhasewatchError as exc:
        print(f"phasewatch add-head: {exc}", file=sys.stderr)
        return 1
    return 0
