"""``phasewatch calibrate-trust BUNDLE IMAGES...``: set a bundle's trust calibration.

Give the images the model was trained and validated on (its experience); every later
field's trust record is measured against them (``src/phasewatch/core/trust.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from phasewatch.app.common import expand_inputs
from phasewatch.backends.registry import KINDS
from phasewatch.core.pipeline import open_model
from phasewatch.core.trust_calibration import calibrate_bundle
from phasewatch.errors import PhasewatchError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", help="bundle folder or bundled model name")
    parser.add_argument("images", nargs="+", type=Path, help="the model's training and validation images, or folders")
    parser.add_argument("--backend", choices=KINDS, default="auto")


def run(args: argparse.Namespace) -> int:
    files = expand_inputs(args.images)
    try:
        model = open_model(args.bundle, args.backend)
        with tqdm(total=len(files), unit="image", file=sys.stderr) as bar:
            try:
                source = ", ".join(sorted({str(p.parent) for p in files}))
                block = calibrate_bundle(model, files, source, progress=lambda _: bar.update())
            finally:
                model.close()
    except PhasewatchError as exc:
        print(f"phasewatch calibrate-trust: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"limits": block["limits"], "calibration": block["calibration"]}, indent=2))
    return 0
