"""Measurement agreement: the numbers QA signs (phase fractions, particle counts, mean sizes),
measured on the prediction and on the label of each image.

The label is measured by the daemon's own code (:func:`phasewatch.core.measure.measure`) at the
pixel size the prediction's record used, so both sides follow the same rules: fractions of the
valid area, 8-connected particles of at least the minimum area, the border rule, ECD in µm where
the image is calibrated and in pixels otherwise. Every error is prediction minus truth:

- **fraction**: per class that is not excluded, as a fraction (x 100 = percentage points);
- **count**: particles per phase class as the number density counts them, whole particles plus
  half of the border particles (the guard-frame rule of ASTM E1245);
- **mean ECD**: of the whole particles; null when either side has none.

The summary gives, per class, the mean and the worst absolute error over the images (and which
image was worst); ``fraction_error_mean`` / ``_worst`` pool the phase classes (role ``phase``, or
every class when none has that role).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from phasewatch.bundle import ClassInfo
from phasewatch.core.measure import measure
from phasewatch.core.records import FieldRecord, PhaseParticles


def particle_count(particles: PhaseParticles) -> float:
    """Whole particles plus half the border particles, as the number density counts them."""
    return particles["count"] + 0.5 * particles["border_count"]


def image_agreement(truth: np.ndarray, predicted: FieldRecord, classes: Sequence[ClassInfo]) -> dict[str, Any]:
    """Truth, prediction and error of every fraction and phase's particles for one image;
    ``predicted`` is the image's field record (fractions and particles from the daemon's code)."""
    true = measure(truth.astype(np.uint8), classes, predicted["pixel_size_um"])
    fractions = {
        name: {"true": value, "predicted": predicted["fractions"][name],
               "error": predicted["fractions"][name] - value}
        for name, value in true["fractions"].items()
    }
    particles = {}
    for name, true_p in true["particles"].items():
        pred_p = predicted["particles"][name]
        true_ecd, pred_ecd = true_p["mean_ecd"], pred_p["mean_ecd"]
        particles[name] = {
            "true_count": particle_count(true_p), "predicted_count": particle_count(pred_p),
            "count_error": particle_count(pred_p) - particle_count(true_p),
            "true_mean_ecd": true_ecd, "predicted_mean_ecd": pred_ecd,
            "mean_ecd_error": None if true_ecd is None or pred_ecd is None else pred_ecd - true_ecd,
            "unit": true_p["unit"],
        }
    return {"pixel_size_um": predicted["pixel_size_um"], "fractions": fractions, "particles": particles}


def _spread(values: list[tuple[str, float]]) -> dict[str, Any]:
    """Mean and worst absolute value over (image, value) pairs, and the worst image."""
    if not values:
        return {"mean": None, "worst": None, "worst_image": None}
    image, worst = max(values, key=lambda pair: abs(pair[1]))
    return {"mean": float(np.mean([abs(v) for _, v in values])), "worst": abs(float(worst)), "worst_image": image}


def summarise(per_image: list[tuple[str, dict[str, Any]]], classes: Sequence[ClassInfo]) -> dict[str, Any]:
    """The agreement over images: ``per_image`` is (image name, :func:`image_agreement`)."""
    names = [c.name for c in classes if c.role != "excluded"]
    phases = [c.name for c in classes if c.role == "phase"] or names
    per_class: dict[str, dict[str, Any]] = {}
    for name in names:
        row: dict[str, Any] = {"fraction_error": _spread([(i, a["fractions"][name]["error"]) for i, a in per_image])}
        if name in phases and all(name in a["particles"] for _, a in per_image):
            row["count_error"] = _spread([(i, a["particles"][name]["count_error"]) for i, a in per_image])
            units = {a["particles"][name]["unit"] for _, a in per_image}
            sizes = [(i, a["particles"][name]["mean_ecd_error"]) for i, a in per_image
                     if a["particles"][name]["mean_ecd_error"] is not None]
            # A mean over images in µm and in pixels together would mean nothing.
            row["mean_ecd_error"] = _spread(sizes) if len(units) == 1 else _spread([])
            row["unit"] = units.pop() if len(units) == 1 else "mixed"
        per_class[name] = row
    pooled = [(f"{i} ({name})", a["fractions"][name]["error"]) for i, a in per_image for name in phases]
    pooled_spread = _spread(pooled)
    return {
        "images": len(per_image),
        "fraction_error_mean": pooled_spread["mean"],
        "fraction_error_worst": pooled_spread["worst"],
        "fraction_error_worst_at": pooled_spread["worst_image"],
        "pooled_classes": phases,
        "per_class": per_class,
    }


def _cell(spread: dict[str, Any] | None, scale: float, digits: int) -> str:
    if not spread or spread["mean"] is None:
        return "-"
    return f"{scale * spread['mean']:.{digits}f} / {scale * spread['worst']:.{digits}f}"


def format_agreement(summary: dict[str, Any]) -> list[str]:
    """The short text table: per class, mean / worst absolute error over the images."""
    rows = summary["per_class"]
    width = max(12, *(len(n) for n in rows))
    lines = [f"measurement agreement over {summary['images']} images, |prediction - truth| mean / worst:",
             f"{'class':<{width}}  {'fraction, points':>17}  {'count':>13}  {'mean ECD':>15}"]
    for name, row in rows.items():
        unit = f" {row['unit']}" if "unit" in row else ""
        lines.append(f"{name:<{width}}  {_cell(row['fraction_error'], 100, 2):>17}  "
                     f"{_cell(row.get('count_error'), 1, 1):>13}  {_cell(row.get('mean_ecd_error'), 1, 3) + unit:>15}")
    if summary["fraction_error_mean"] is not None:
        lines.append(f"phase fractions ({', '.join(summary['pooled_classes'])}): mean error "
                     f"{100 * summary['fraction_error_mean']:.2f} points, worst "
                     f"{100 * summary['fraction_error_worst']:.2f} ({summary['fraction_error_worst_at']})")
    return lines
