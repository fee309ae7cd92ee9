"""The trust record of a field: can the model's numbers be believed on it?

Computed at inference time, without labels, and compared with the model's *calibration*:
its own training and validation fields, measured the same way and stored in the bundle
manifest under ``trust`` (``phasewatch calibrate-trust``; ``train`` does it after export).

``novelty``  how unlike the field is to the *nearest* calibration field, in units of how
             unlike calibration fields typically are to each other (median pairwise
             distance): the mean of an intensity distance (1-D Wasserstein between the
             cumulative histograms of normalised intensities) and a texture distance (mean
             absolute difference of log edge strength at 1, 2 and 4 px: magnification,
             focus, noise), each over its typical value. The nearest field, not the
             mean, since a model's experience can hold several kinds of image;
``unsure``   the share of the field's pixels whose softmax margin between the two most
             probable classes is under 0.5: where the model itself hesitates.

Each measure has a limit: LIMIT_FACTOR times the LIMIT_QUANTILE quantile of its values over
the calibration fields (for novelty, each calibration field against the others), but at
least a floor. A quantile, not the largest value: a data set often holds one image unlike
all the others (measured: novelty 9.2 for one superalloy training image, the next 0.7),
and that one must not widen the limit for every field; it is the calibration's own false
alarm, stated in the manifest. A
field is ``ok`` when every measure is within its limit; ``score`` is the largest
measure / limit ratio; each measure over its limit gives one reason in words. A field
whose pixel size is known, of a model that records the pixel size it was trained at, is
also flagged when the two differ by more than PIXEL_SIZE_TOLERANCE. A bundle without a
calibration cannot vouch for any field: every field is flagged, saying so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from phasewatch.bundle import Bundle
from phasewatch.core.normalise import ModelInput
from phasewatch.core.records import TrustMeasures, TrustRecord

FEATURE_CROP = 768  # centre crop (at the model's scale) the input measures are taken on
HISTOGRAM_BINS = 32
EDGE_SCALES = (1, 2, 4)  # px: the texture measure looks at fine and coarse structure
UNSURE_MARGIN = 128  # a margin under 0.5 (of 255) is a pixel the model hesitates on
MEASURES = ("novelty", "unsure")
LIMIT_QUANTILE = 0.9
LIMIT_FACTOR = 1.5  # a dozen calibration fields understate the spread of new fields of the same kind
# novelty 1: as far from the nearest calibration field as two typical calibration fields are apart
LIMIT_FLOORS = {"novelty": 1.0, "unsure": 0.05}
TYPICAL_FLOORS = (0.01, 0.05)  # smallest typical intensity and texture distances
PIXEL_SIZE_TOLERANCE = 1.25  # the training's scale jitter covers 0.8-1.25


@dataclass(frozen=True)
class InputFeatures:
    """What the trust record needs from a field's model input (before inference)."""

    cdf: tuple[float, ...]  # cumulative histogram of normalised intensities, HISTOGRAM_BINS values
    edges: tuple[float, ...]  # ln mean Sobel gradient magnitude at each of EDGE_SCALES


def input_features(inp: ModelInput) -> InputFeatures:
    """Intensity and texture measures of a prepared image, on a bounded centre crop.

    The bundles' calibration references were measured with the same arithmetic: what changed
    for speed (in place where a copy was made, OpenCV's histogram for NumPy's) gives the same
    numbers bit for bit (tests/test_engine_parts.py, on real fields of every data set)."""
    height, width = min(inp.height, FEATURE_CROP), min(inp.width, FEATURE_CROP)
    y0, x0 = (inp.height - height) // 2, (inp.width - width) // 2
    values = inp.region(y0, y0 + height, x0, x0 + width)
    mean = np.asarray(inp.mean, np.float32)[:, None, None]
    std = np.asarray(inp.std, np.float32)[:, None, None]
    values *= std
    values += mean  # back to the [0, 1] scale of the stretch, as the model's input rounded it
    unit = values[0] if len(values) == 1 else np.ascontiguousarray(values.mean(axis=0))
    cdf = np.cumsum(unit_histogram(unit)) / max(1, unit.size)
    edges = []
    for scale in EDGE_SCALES:
        size = (max(1, unit.shape[1] // scale), max(1, unit.shape[0] // scale))
        level = unit if scale == 1 else cv2.resize(unit, size, interpolation=cv2.INTER_AREA)
        # scale 1/8, a power of two: exactly the old Sobel / 8, without another pass
        gx = cv2.Sobel(level, cv2.CV_32F, 1, 0, ksize=3, scale=0.125)
        gy = cv2.Sobel(level, cv2.CV_32F, 0, 1, ksize=3, scale=0.125)
        edges.append(float(np.log(max(float(np.mean(np.hypot(gx, gy, out=gx))), 1e-6))))
    return InputFeatures(tuple(float(v) for v in cdf), tuple(edges))


def unit_histogram(unit: np.ndarray) -> np.ndarray:
    """``np.histogram(np.clip(unit, 0, 1), HISTOGRAM_BINS, (0, 1))``'s counts, from one pass of
    OpenCV instead of NumPy's blocks of float64 copies. With HISTOGRAM_BINS a power of two, both
    put a value v in bin floor(v x bins) exactly, except 1.0, which OpenCV's half-open range
    leaves out and NumPy's closed last bin holds."""
    clipped = np.clip(unit, 0.0, 1.0)
    counts = cv2.calcHist([clipped], [0], None, [HISTOGRAM_BINS], [0.0, 1.0]).reshape(-1).astype(np.int64)
    counts[-1] += clipped.size - int(counts.sum())
    return counts


def distances(a: InputFeatures, b: InputFeatures) -> tuple[float, float]:
    """(intensity, texture) distance between two fields' measures."""
    intensity = float(np.mean(np.abs(np.subtract(a.cdf, b.cdf))))
    texture = float(np.mean(np.abs(np.subtract(a.edges, b.edges))))
    return intensity, texture


def unsure_fraction(margin: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Share of (valid) pixels whose softmax margin is under 0.5."""
    unsure = margin < UNSURE_MARGIN
    if valid is not None:
        count = int(np.count_nonzero(valid))
        return float(np.count_nonzero(unsure & valid)) / count if count else 0.0
    return float(np.mean(unsure))


def _fields(reference: dict[str, Any]) -> list[InputFeatures]:
    return [InputFeatures(tuple(f["cdf"]), tuple(f["edges"])) for f in reference["fields"]]


def novelty(features: InputFeatures, reference: dict[str, Any]) -> tuple[float, str]:
    """Distance to the nearest calibration field in typical units, and that field's name."""
    typical_i, typical_t = reference["typical"]
    best, name = np.inf, ""
    for field, entry in zip(_fields(reference), reference["fields"], strict=True):
        intensity, texture = distances(features, field)
        value = (intensity / typical_i + texture / typical_t) / 2
        if value < best:
            best, name = value, entry["name"]
    return float(best), name


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
) -> TrustRecord:
    """The trust record ``{"ok", "score", "reasons", "measures"}`` of one field."""
    scale_reason = pixel_size_reason(pixel_size_um, bundle)
    reference = bundle.manifest.get("trust")
    if not reference or "fields" not in reference:
        reasons = [f"model {bundle.name} has no trust calibration "
                   "(phasewatch calibrate-trust): its numbers cannot be vouched for"]
        return {"ok": False, "score": None, "measures": {"unsure": round(unsure, 4)},
                "reasons": reasons + ([scale_reason] if scale_reason else [])}
    found_novelty, nearest = novelty(features, reference)
    found = {"novelty": found_novelty, "unsure": unsure}
    limits = reference["limits"]
    ratios = {name: found[name] / limits[name] for name in MEASURES}
    reasons = []
    if ratios["novelty"] > 1:
        reasons.append(f"unlike any of this model's training images (novelty {found_novelty:.2f} > limit "
                       f"{limits['novelty']:.2f}; nearest {nearest}): another material, detector, "
                       "magnification or focus?")
    if ratios["unsure"] > 1:
        reasons.append(f"the model is unsure on {100 * unsure:.0f} % of the field "
                       f"(limit {100 * limits['unsure']:.0f} %)")
    if scale_reason:
        reasons.append(scale_reason)
    measures: TrustMeasures = {"novelty": round(found_novelty, 4), "unsure": round(unsure, 4), "nearest": nearest}
    return {"ok": not reasons, "score": round(max(ratios.values()), 3), "measures": measures, "reasons": reasons}


def calibrate(features: Sequence[InputFeatures], unsure: Sequence[float], names: Sequence[str],
              source: str) -> dict[str, Any]:
    """The manifest's ``trust`` block from calibration fields (the model's training and
    validation images): the fields' measures, typical distances, limits, and what they
    were set for."""
    if len(features) < 3:
        raise ValueError("trust calibration needs at least three fields")
    pairs = [distances(a, b) for i, a in enumerate(features) for b in features[i + 1:]]
    typical = [max(floor, float(np.median([p[k] for p in pairs]))) for k, floor in enumerate(TYPICAL_FLOORS)]
    fields = [{"name": n, "cdf": [round(v, 5) for v in f.cdf], "edges": [round(v, 5) for v in f.edges]}
              for n, f in zip(names, features, strict=True)]
    reference: dict[str, Any] = {"typical": [round(t, 5) for t in typical], "fields": fields}
    # each calibration field against the others: how novel a field of the model's own kind can be
    own = [novelty(f, {**reference, "fields": fields[:i] + fields[i + 1:]})[0] for i, f in enumerate(features)]
    values = {"novelty": own, "unsure": list(unsure)}
    limits = {name: max(LIMIT_FLOORS[name], LIMIT_FACTOR * float(np.quantile(values[name], LIMIT_QUANTILE)))
              for name in MEASURES}
    flagged = sum(n > limits["novelty"] or u > limits["unsure"] for n, u in zip(own, unsure, strict=True))
    return {**reference, "limits": {k: round(v, 5) for k, v in limits.items()},
            "calibration": {"fields": len(features), "source": source,
                            "rule": f"limit = max({LIMIT_FACTOR} x {LIMIT_QUANTILE} quantile of the calibration "
                                    "values (novelty: each field against the others), floor)",
                            "floors": LIMIT_FLOORS,
                            "false_alarm_rate_on_calibration": round(flagged / len(features), 4),
                            "novelty_of_calibration_fields": [round(v, 3) for v in own]}}
