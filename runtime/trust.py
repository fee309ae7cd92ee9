"""The trust record of a field: can the model's numbers be believed on it?

Computed at inference time, without labels, from three measures, each compared with
what the model's own training and validation fields gave (its *calibration*, stored in
the bundle manifest under ``trust`` by ``phasewatch calibrate-trust``):

``intensity``  how far the field's distribution of normalised intensities lies from the
               calibration fields' (mean absolute difference of the cumulative
               histograms over [0, 1], i.e. the 1-D Wasserstein distance): another
               material, another detector or a saturated image move it;
``texture``    how far the field's mean edge strength (Sobel gradient of the normalised
               image at the model's scale) lies from the calibration median, as
               ``|ln(ratio)|``: another magnification, defocus or noise level move it;
``unsure``     the share of the field's pixels whose softmax margin between the two
               most probable classes is under 0.5: where the model itself hesitates.

A field whose pixel size is known, of a model that records the pixel size it was trained
at, is also flagged when the two differ by more than PIXEL_SIZE_TOLERANCE: the model
would see its structures at a size it never learnt.

Each measure has a limit (``limits``); a field is ``ok`` when every measure is within
its limit, ``score`` is the largest measure / limit ratio (<= 1 is ok), and each measure
over its limit gives one reason in words. A bundle without a calibration cannot vouch for
any field: every field is flagged, saying so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from phasewatch.runtime.bundle import Bundle
from phasewatch.runtime.normalise import ModelInput

FEATURE_CROP = 768  # centre crop (at the model's scale) the input measures are taken on
HISTOGRAM_BINS = 32
UNSURE_MARGIN = 128  # a margin under 0.5 (of 255) is a pixel the model hesitates on
MEASURES = ("intensity", "texture", "unsure")
# Limits are the largest calibration value times this factor, but at least the floor:
# with a dozen calibration fields the largest one understates the spread of new fields.
LIMIT_FACTOR = 1.5
LIMIT_FLOORS = {"intensity": 0.03, "texture": math.log(1.3), "unsure": 0.05}
PIXEL_SIZE_TOLERANCE = 1.25  # the training's scale jitter covers 0.8-1.25


@dataclass(frozen=True)
class InputFeatures:
    """What the trust record needs from a field's model input (before inference)."""

    cdf: tuple[float, ...]  # cumulative histogram of normalised intensities, HISTOGRAM_BINS values
    edge: float  # mean Sobel gradient magnitude of the normalised intensities


def input_features(inp: ModelInput) -> InputFeatures:
    """Intensity and texture measures of a prepared image, on a bounded centre crop."""
    height, width = min(inp.height, FEATURE_CROP), min(inp.width, FEATURE_CROP)
    y0, x0 = (inp.height - height) // 2, (inp.width - width) // 2
    values = inp.region(y0, y0 + height, x0, x0 + width)
    mean = np.asarray(inp.mean, np.float32)[:, None, None]
    std = np.asarray(inp.std, np.float32)[:, None, None]
    unit = (values * std + mean).mean(axis=0)  # back to the [0, 1] scale of the stretch
    counts, _ = np.histogram(np.clip(unit, 0.0, 1.0), bins=HISTOGRAM_BINS, range=(0.0, 1.0))
    cdf = np.cumsum(counts) / max(1, unit.size)
    gx = cv2.Sobel(unit, cv2.CV_32F, 1, 0, ksize=3) / 8
    gy = cv2.Sobel(unit, cv2.CV_32F, 0, 1, ksize=3) / 8
    edge = float(np.mean(np.hypot(gx, gy)))
    return InputFeatures(tuple(float(v) for v in cdf), edge)


def unsure_fraction(margin: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Share of (valid) pixels whose softmax margin is under 0.5."""
    unsure = margin < UNSURE_MARGIN
    if valid is not None:
        count = int(np.count_nonzero(valid))
        return float(np.count_nonzero(unsure & valid)) / count if count else 0.0
    return float(np.mean(unsure))


def measures(features: InputFeatures, unsure: float, reference: dict[str, Any]) -> dict[str, float]:
    """The three measures of a field against a calibration reference."""
    cdf = np.asarray(features.cdf)
    return {
        "intensity": float(np.mean(np.abs(cdf - np.asarray(reference["cdf"])))),
        "texture": abs(math.log(max(features.edge, 1e-9) / max(float(reference["edge"]), 1e-9))),
        "unsure": unsure,
    }


_REASONS = {
    "intensity": "intensity distribution unlike this model's training images",
    "texture": "texture or scale unlike this model's training images (magnification, focus or noise?)",
    "unsure": "the model is unsure on much of the field",
}


def pixel_size_reason(pixel_size_um: float | None, bundle: Bundle) -> str | None:
    """Why a field's pixel size is too far from the model's training pixel size, or None."""
    if not pixel_size_um or not bundle.pixel_size_um:
        return None
    ratio = pixel_size_um / bundle.pixel_size_um
    if max(ratio, 1 / ratio) <= PIXEL_SIZE_TOLERANCE:
        return None
    return (f"pixel size {pixel_size_um:.4g} µm is {ratio:.2f}x the {bundle.pixel_size_um:.4g} µm this model "
            f"was trained at (tolerance {PIXEL_SIZE_TOLERANCE}x)")


def assess(
    features: InputFeatures, unsure: float, bundle: Bundle, pixel_size_um: float | None = None
) -> dict[str, Any]:
    """The trust record ``{"ok", "score", "reasons", "measures"}`` of one field."""
    scale_reason = pixel_size_reason(pixel_size_um, bundle)
    reference = bundle.manifest.get("trust")
    if not reference:
        reasons = [f"model {bundle.name} has no trust calibration "
                   "(phasewatch calibrate-trust): its numbers cannot be vouched for"]
        return {"ok": False, "score": None, "measures": {"unsure": round(unsure, 4)},
                "reasons": reasons + ([scale_reason] if scale_reason else [])}
    found = measures(features, unsure, reference)
    limits = reference["limits"]
    ratios = {name: found[name] / limits[name] for name in MEASURES}
    reasons = [f"{_REASONS[name]} ({name} {found[name]:.3g} > limit {limits[name]:.3g})"
               for name in MEASURES if ratios[name] > 1]
    if scale_reason:
        reasons.append(scale_reason)
    return {"ok": not reasons, "score": round(max(ratios.values()), 3),
            "measures": {k: round(v, 4) for k, v in found.items()}, "reasons": reasons}


def calibrate(features: Sequence[InputFeatures], unsure: Sequence[float], source: str) -> dict[str, Any]:
    """The manifest's ``trust`` block from calibration fields (the model's training and
    validation images): reference distribution, limits, and what they were set for."""
    if len(features) < 2:
        raise ValueError("trust calibration needs at least two fields")
    reference: dict[str, Any] = {
        "cdf": [round(float(v), 5) for v in np.mean([f.cdf for f in features], axis=0)],
        "edge": float(np.median([f.edge for f in features])),
    }
    found = [measures(f, u, reference) for f, u in zip(features, unsure, strict=True)]
    limits = {name: max(LIMIT_FLOORS[name], LIMIT_FACTOR * max(m[name] for m in found)) for name in MEASURES}
    flagged = sum(any(m[name] > limits[name] for name in MEASURES) for m in found)
    return {**reference, "limits": {k: round(v, 5) for k, v in limits.items()},
            "calibration": {"fields": len(found), "source": source,
                            "rule": f"limit = max({LIMIT_FACTOR} x largest calibration value, floor)",
                            "floors": {k: round(v, 4) for k, v in LIMIT_FLOORS.items()},
                            "false_alarm_rate_on_calibration": flagged / len(found)}}
