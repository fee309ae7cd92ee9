"""Per-image measurements on a class map: phase fractions and particle statistics.

Rules, stated once here and echoed in every result so that a JSON file explains itself:

* **Valid area.** Pixels of classes with role ``excluded`` (a data bar, "not
  microstructure") are not part of the specimen: they leave the denominator of every
  fraction and of every number density. Excluded classes get *no* entry in
  ``fractions``; the remaining fractions sum to 1. When no valid pixel is left, every
  fraction and number density is 0 and ``valid_area_empty`` is true.
* **Particles.** For every class with role ``phase``, a particle is an 8-connected
  component of that class (``cv2.connectedComponents``, connectivity 8; areas by
  ``np.bincount`` of the labels).
  Components smaller than :data:`MIN_PARTICLE_AREA_PX` pixels are segmentation noise
  and are ignored as particles (neither counted nor measured; their pixels still count
  in the fractions).
* **Border rule** (guard-frame practice of ASTM E1245 / E1382). A particle that touches
  the image edge, or is 8-adjacent to an excluded pixel, is cut by the field boundary:
  its true size is unknown. Such *border particles* are left out of every size
  statistic and count as one half in the number density, so
  ``density = (count + 0.5 * border_count) / valid area``.
* **Sizes.** ECD (equivalent circle diameter) = sqrt(4 * area / pi), in micrometres
  when the pixel size is known, else in pixels (``unit`` says which). ``std_ecd`` is
  the sample standard deviation (n - 1); it is null below two particles, and every
  size statistic is null when there is no whole particle.
* **Histogram.** ECD bin edges are a geometric series of ratio sqrt(2) that starts at
  the ECD of the minimum particle area and grows until the largest particle is
  covered; images with the same pixel size therefore share edges and their counts
  can be summed bin by bin.
* **Densities.** ``number_per_mpx`` (per million valid pixels) is always given;
  ``number_per_mm2`` is null when the pixel size is unknown. Likewise ``valid_area_um2``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from phasewatch.bundle import ClassInfo
from phasewatch.core.records import (
    EcdHistogram,
    FieldRecord,
    Measurement,
    PhaseParticles,
    SizeStatistics,
    TrustRecord,
)

CONNECTIVITY = 8
MIN_PARTICLE_AREA_PX = 3
HISTOGRAM_RATIO = math.sqrt(2.0)
BORDER_RULE = (
    "particles touching the image edge or 8-adjacent to an excluded class are border "
    "particles: left out of size statistics, counted as 1/2 in number density"
)

_GUARD_KERNEL = np.ones((3, 3), np.uint8)  # 8-adjacency


def _ecd(area: np.ndarray | float) -> np.ndarray:
    """Equivalent circle diameter of an area (element-wise)."""
    return np.sqrt(4.0 * np.asarray(area, np.float64) / np.pi)


def _histogram(ecd: np.ndarray, first_edge: float) -> EcdHistogram:
    if ecd.size == 0:
        return {"edges": [], "counts": []}
    # The tolerance keeps a particle that sits exactly on a power of the ratio inside
    # the last bin despite rounding in the logarithm.
    bins = int(math.floor(math.log(float(ecd.max()) / first_edge, HISTOGRAM_RATIO) + 1e-9)) + 1
    edges = first_edge * HISTOGRAM_RATIO ** np.arange(bins + 1)
    counts, _ = np.histogram(ecd, bins=edges)
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def _size_statistics(ecd: np.ndarray) -> SizeStatistics:
    if ecd.size == 0:
        return {"mean_ecd": None, "median_ecd": None, "std_ecd": None, "ecd_percentiles": None}
    p10, p50, p90 = (float(v) for v in np.percentile(ecd, (10, 50, 90)))
    return {
        "mean_ecd": float(ecd.mean()),
        "median_ecd": p50,
        "std_ecd": float(ecd.std(ddof=1)) if ecd.size > 1 else None,
        "ecd_percentiles": {"p10": p10, "p50": p50, "p90": p90},
    }


def _guard_mask(classes: np.ndarray, excluded_ids: list[int]) -> np.ndarray:
    """Pixels a particle may not touch and stay whole: the image edge and 8-neighbours
    of excluded pixels (excluded pixels themselves never belong to a particle)."""
    excluded = np.isin(classes, excluded_ids).view(np.uint8)
    guard = cv2.dilate(excluded, _GUARD_KERNEL).view(bool)
    guard[[0, -1], :] = True
    guard[:, [0, -1]] = True
    return guard


def _particles(
    mask: np.ndarray,
    guard: np.ndarray,
    length_per_px: float,
    valid_area_px: int,
    pixel_size_um: float | None,
) -> PhaseParticles:
    """Particle statistics of one phase given as a boolean ``mask``."""
    # Labels alone and bincounts for the areas: several times faster than OpenCV's
    # per-pixel statistics (bounding boxes, centroids) which nothing here needs.
    n, labels = cv2.connectedComponents(
        mask.view(np.uint8), connectivity=CONNECTIVITY, ltype=cv2.CV_32S
    )
    area = np.bincount(labels[mask], minlength=n)[1:]
    on_border = np.bincount(labels[guard], minlength=n)[1:] > 0
    kept = area >= MIN_PARTICLE_AREA_PX
    whole_area = area[kept & ~on_border]
    border_count = int(np.count_nonzero(kept & on_border))

    ecd = _ecd(whole_area) * length_per_px
    weighted = whole_area.size + 0.5 * border_count
    per_px = weighted / valid_area_px if valid_area_px else 0.0
    return {
        "count": int(whole_area.size),
        "border_count": border_count,
        "number_per_mm2": per_px / (pixel_size_um * 1e-3) ** 2 if pixel_size_um else None,
        "number_per_mpx": per_px * 1e6,
        **_size_statistics(ecd),
        "ecd_histogram": _histogram(ecd, float(_ecd(MIN_PARTICLE_AREA_PX)) * length_per_px),
        "unit": "um" if pixel_size_um else "px",
    }


def measure(
    classes: np.ndarray,
    class_infos: Sequence[ClassInfo],
    pixel_size_um: float | None,
) -> Measurement:
    """Fractions over the valid area and particle statistics per phase class (module doc)."""
    if classes.ndim != 2 or classes.dtype != np.uint8 or classes.size == 0:
        raise ValueError(
            f"class map must be non-empty 2-D uint8, got {classes.dtype} {classes.shape}"
        )
    if pixel_size_um is not None and not pixel_size_um > 0:
        raise ValueError(f"pixel size must be positive, got {pixel_size_um}")
    if int(classes.max()) >= len(class_infos):
        raise ValueError(
            f"class map holds class id {int(classes.max())}, "
            f"the model has {len(class_infos)} classes"
        )
    # One count per class: cheaper than np.bincount over the whole map for few classes.
    areas = {c.id: int(np.count_nonzero(classes == c.id)) for c in class_infos}
    excluded_ids = [c.id for c in class_infos if c.role == "excluded"]
    excluded_area_px = sum(areas[i] for i in excluded_ids)
    valid_area_px = int(classes.size) - excluded_area_px
    fractions = {
        c.name: areas[c.id] / valid_area_px if valid_area_px else 0.0
        for c in class_infos
        if c.role != "excluded"
    }

    guard = _guard_mask(classes, excluded_ids)
    length_per_px = pixel_size_um or 1.0
    particles = {
        c.name: _particles(classes == c.id, guard, length_per_px, valid_area_px, pixel_size_um)
        for c in class_infos
        if c.role == "phase"
    }
    return {
        "pixel_size_um": pixel_size_um,
        "valid_area_px": valid_area_px,
        "valid_area_um2": valid_area_px * pixel_size_um**2 if pixel_size_um else None,
        "excluded_area_px": excluded_area_px,
        "valid_area_empty": valid_area_px == 0,
        "fractions": fractions,
        "particles": particles,
        "connectivity": CONNECTIVITY,
        "min_particle_area_px": MIN_PARTICLE_AREA_PX,
        "border_rule": BORDER_RULE,
    }


def combine_pages(records: list[FieldRecord]) -> FieldRecord:
    """One field's measurement from the pages of a stack: fractions weighted by valid area.

    A multi-page file is one field of a specimen, so its fractions are those of all its
    valid pixels together; the per-page records are kept under ``pages``.
    """
    if len(records) == 1:
        return records[0]
    areas = np.array([r["valid_area_px"] for r in records], float)
    weights = areas / areas.sum() if areas.sum() > 0 else np.full(len(records), 1 / len(records))
    names = records[0]["fractions"].keys()
    fractions = {n: float(sum(w * r["fractions"][n] for w, r in zip(weights, records, strict=True)))
                 for n in names}
    combined: FieldRecord = {**records[0], "page": None, "fractions": fractions,
                "valid_area_px": int(areas.sum()), "pages": records}
    if all("trust" in r for r in records):
        combined["trust"] = combine_trust([r["trust"] for r in records])
    return combined


def combine_trust(pages: list[TrustRecord]) -> TrustRecord:
    """A stack is trusted only if every page is: the worst score, every page's reasons."""
    scores = [score for p in pages if (score := p.get("score")) is not None]
    return {"ok": all(p["ok"] for p in pages), "score": max(scores) if scores else None,
            "reasons": [f"page {i}: {reason}" for i, p in enumerate(pages) for reason in p["reasons"]]}
