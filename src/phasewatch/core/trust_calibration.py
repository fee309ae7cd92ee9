"""Calibrating a bundle's trust record on the fields the model was made from.

The model's training and validation images are its experience: their intensity and
texture measures and the model's hesitation on them set the reference and limits
(``trust.calibrate``) that every later field is compared with, and the result is
stored in the bundle manifest under ``trust``. A 2.5D bundle (``slices`` > 1) reads a
multi-page file as a volume, each page with its neighbours, as ``segment`` feeds it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from phasewatch.bundle import write_manifest
from phasewatch.core.pipeline import Model, decode_file, segment_files, segment_images
from phasewatch.core.trust import InputFeatures, calibrate, unsure_fraction
from phasewatch.errors import PhasewatchError


class CalibrationError(PhasewatchError):
    """Trust calibration that cannot be done; the message is one line."""


def calibrate_bundle(model: Model, images: Sequence[Path], source: str,
                     progress: Callable[[Path], None] | None = None) -> dict[str, Any]:
    """Measure every field of ``images`` with ``model`` and store the calibration in its
    bundle's manifest; returns the manifest's new ``trust`` block."""
    excluded = [c.id for c in model.bundle.classes if c.role == "excluded"]
    features: list[InputFeatures] = []
    unsure: list[float] = []
    names: list[str] = []
    for path in images:
        if model.bundle.slices > 1:
            fields = decode_file(path).fields
            maps = list(segment_images((f.image for f in fields), model.bundle, model.backend, plan=model.plan,
                                       volume=True))
        else:
            (segmented,) = segment_files([decode_file(path)], model)
            maps = segmented.maps
        for page, image in enumerate(maps):
            names.append(path.name if len(maps) == 1 else f"{path.name} page {page}")
            features.append(image.features)
            unsure.append(unsure_fraction(image.margin, ~np.isin(image.classes, excluded) if excluded else None))
        if progress is not None:
            progress(path)
    try:
        block = calibrate(features, unsure, names, source)
    except ValueError as exc:
        raise CalibrationError(f"{model.bundle.path}: {exc}") from exc
    manifest = {**model.bundle.manifest, "trust": block}
    try:
        write_manifest(model.bundle.path, manifest)
    except OSError as exc:
        raise CalibrationError(f"{model.bundle.path}: cannot write the manifest: {exc.strerror or exc}") from exc
    return block
