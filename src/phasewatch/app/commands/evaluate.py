"""``phasewatch evaluate``: score a model bundle on full-size labelled micrographs.

Prints a report (``--json``: one JSON object) and exits 1 when any pair failed or none was
scored. How labels and palettes are read: :mod:`phasewatch.export.evaluate`.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import closing
from pathlib import Path

from phasewatch.backends.registry import KINDS
from phasewatch.backends.tta import MODES
from phasewatch.bundle import load_bundle
from phasewatch.core.pipeline import open_model
from phasewatch.errors import PhasewatchError
from phasewatch.export import seg_scores
from phasewatch.export.datasets import find_pairs
from phasewatch.export.evaluate import (
    LABEL_FORMATS,
    format_report,
    label_palette,
    record_evaluation,
    report,
    score_pairs,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="bundle folder or bundled model name")
    parser.add_argument("--images", required=True, type=Path, help="folder of micrographs")
    parser.add_argument("--labels", required=True, type=Path, help="folder of labels (same stems)")
    parser.add_argument("--palette", help='JSON {"R,G,B": class id} inline or a .json file')
    parser.add_argument("--label-format", choices=LABEL_FORMATS, help="default: from the manifest")
    parser.add_argument("--backend", choices=KINDS, default="auto")
    parser.add_argument("--batch", type=int, default=8, help="tiles per inference batch")
    parser.add_argument("--tta", choices=MODES, default="none",
                        help="test-time augmentation: average probabilities over flips (4 passes), d4 (8) or "
                             "scales 0.75/1/1.25 (3; dynamic-size bundles)")
    parser.add_argument("--ignore", type=int, help="label value left out of every metric")
    parser.add_argument(
        "--bf-tolerance",
        type=float,
        default=seg_scores.DEFAULT_BF_TOLERANCE_PX,
        help="boundary F1 distance tolerance in pixels (default %(default)s)",
    )
    parser.add_argument("--pixel-size", type=_positive, metavar="UM",
                        help="micrometres per pixel where an image file does not say (sizes in µm, not px)")
    parser.add_argument("--error-maps", type=Path, help="write STEM.errors.png here")
    parser.add_argument(
        "--error-class", type=int, help="error maps one-vs-rest for this class id (default: all)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--record", metavar="NAME",
                        help="also store the summary in the bundle's manifest under evaluations.NAME")


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _print_error(message: str) -> None:
    print(message, file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    try:
        bundle = load_bundle(args.model)
        palette = label_palette(bundle, args.label_format, args.palette)
        pairs = find_pairs(args.images, args.labels)
        with closing(open_model(bundle.path, args.backend, args.batch, tta=args.tta)) as model:
            scores = score_pairs(pairs, model, palette, batch=args.batch, ignore=args.ignore,
                                 bf_tolerance_px=args.bf_tolerance, error_maps=args.error_maps,
                                 error_class=args.error_class, pixel_size_um=args.pixel_size,
                                 report_failure=_print_error)
        result = report(bundle, model.backend.name, scores)
        print(json.dumps(result, indent=2) if args.json else format_report(result))
        if args.record and scores.images and not scores.failures:
            record_evaluation(bundle, args.record, result)
    except PhasewatchError as exc:
        print(f"phasewatch evaluate: {exc}", file=sys.stderr)
        return 1
    if scores.failures:
        print(f"phasewatch evaluate: {scores.failures} of {len(pairs)} pairs failed", file=sys.stderr)
    return 1 if scores.failures or not scores.images else 0
