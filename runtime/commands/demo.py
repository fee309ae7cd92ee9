"""``phasewatch demo``: the whole segment path on a built-in micrograph whose truth is known.

It writes a synthetic γ/γ′ superalloy micrograph (see :mod:`synthetic`) as a TIFF, runs it
through exactly what ``phasewatch segment`` runs, and prints the measured phase fractions
beside the true ones, so a newcomer sees both what the tool produces and how far to trust it
on an image the model never saw.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import tifffile

from phasewatch.runtime.backends import KINDS
from phasewatch.runtime.errors import PhasewatchError
from phasewatch.runtime.pipeline import open_model, process_file
from phasewatch.runtime.synthetic import superalloy_micrograph

DEMO_PIXEL_SIZE_UM = 0.02  # a typical field-emission SEM pixel for γ′ imaging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="superalloy", help="bundle folder or bundled model name")
    parser.add_argument("--out", type=Path, default=Path("phasewatch-demo"), help="folder for the outputs")
    parser.add_argument("--backend", choices=KINDS, default="auto")
    parser.add_argument("--seed", type=int, default=0, help="which synthetic micrograph to draw")


def run(args: argparse.Namespace) -> int:
    try:
        model = open_model(args.model, args.backend)
    except PhasewatchError as exc:
        print(f"phasewatch demo: {exc}", file=sys.stderr)
        return 2
    bundle = model.bundle
    if bundle.num_classes != 3:
        model.close()
        print(f"phasewatch demo: {bundle.name} has {bundle.num_classes} classes; the demo's micrograph "
              "needs a γ / secondary γ′ / tertiary γ′ model such as the bundled 'superalloy'", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    image, truth = superalloy_micrograph(seed=args.seed)
    source = args.out / "synthetic-superalloy.tif"
    # ImageJ metadata carry the pixel size, so the demo also shows it being read from the file.
    scale = 1.0 / DEMO_PIXEL_SIZE_UM
    tifffile.imwrite(source, image, imagej=True, resolution=(scale, scale), metadata={"unit": "um"})
    try:
        result = process_file(source, model, args.out)
    finally:
        model.close()
    record, predicted = result.record, result.fields[0].classes
    print(f"model {bundle.name} on {model.backend.name}: {source} "
          f"({record['width']}x{record['height']}, {record['pixel_size_um']} µm/px from "
          f"{record['pixel_size_source']})")
    print(f"{'class':<24}{'true':>8}{'measured':>10}")
    for info in bundle.classes:
        if info.role == "excluded":
            continue
        print(f"{info.name:<24}{np.mean(truth == info.id):>8.3f}{record['fractions'][info.name]:>10.3f}")
    print(f"pixels agreeing with the truth: {np.mean(predicted == truth):.3f}")
    trust = record["trust"]
    print("trust: " + (f"ok (score {trust['score']})" if trust["ok"] else "FLAGGED: " + "; ".join(trust["reasons"])))
    print(f"outputs: {args.out}/synthetic-superalloy.{{classes.png,overlay.png,unsure.png,preview.png,json}}")
    return 0
