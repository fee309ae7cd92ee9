"""Specimen statistics over fields, after ASTM E562 (point count / area fraction) and
E1245 (image analysis of inclusions and second phases).

For a quantity measured on ``n`` fields (``x_i``): the mean, the sample standard
deviation ``s`` (n - 1), the 95 % confidence half-width ``CI = t(0.975, n - 1) * s /
sqrt(n)`` and the relative accuracy ``%RA = CI / mean * 100``. When the fields' valid
areas ``a_i`` differ, the area-weighted ratio estimator ``sum(a_i x_i) / sum(a_i)`` is
given beside the plain mean (E1245 practice: a field mostly covered by a data bar
should not weigh as much as a whole one).

Units. :func:`field_statistics` keeps the unit of its input: mean, std and CI are in
the unit of ``values``; ``ra_pct`` is always a percentage; ``target_ra`` is a fraction
(0.10 = 10 %). :func:`specimen_statistics` reports phase fractions in area percent.

Fields needed. The number of fields that reaches the target is the smallest ``m``
with ``t(0.975, m - 1) * s / sqrt(m) <= RA * mean``, i.e. ``m >= (t * s / (RA *
mean))^2``; as ``t`` itself depends on ``m``, it is found by stepping ``m`` up from a
lower bound that uses the normal quantile (t > z always). ``s`` and the mean are the
current estimates, so the answer is an estimate too; ``fields_needed`` is ``m - n``,
never negative.

Trend. :func:`specimen_statistics` also follows every class field by field: its area %
per field and :func:`field_statistics` after each one (the running mean and CI), so that
an operator sees the estimate settle as fields come in; ``trend`` is the main phase's.

Particle sizes. Each field's ECD histogram (``measure``: bin edges a geometric series of
ratio sqrt(2)) is summed over the specimen's fields per class (:func:`ecd_histogram`),
in µm when every field has a pixel size, else in pixels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from phasewatch.core.measure import HISTOGRAM_RATIO

# t(0.975, df): two-sided 95 % quantiles of Student's t (checked against an
# arbitrary-precision inverse of the t distribution to 10 digits).
T_975 = {
    1: 12.706204736, 2: 4.302652730, 3: 3.182446305, 4: 2.776445105, 5: 2.570581836,
    6: 2.446911851, 7: 2.364624252, 8: 2.306004135, 9: 2.262157163, 10: 2.228138852,
    11: 2.200985160, 12: 2.178812830, 13: 2.160368656, 14: 2.144786688, 15: 2.131449546,
    16: 2.119905299, 17: 2.109815578, 18: 2.100922040, 19: 2.093024054, 20: 2.085963447,
    21: 2.079613845, 22: 2.073873068, 23: 2.068657610, 24: 2.063898562, 25: 2.059538553,
    26: 2.055529439, 27: 2.051830516, 28: 2.048407142, 29: 2.045229642, 30: 2.042272456,
    40: 2.021075390, 60: 2.000297822, 120: 1.979930405,
}
Z_975 = 1.959963985  # df = infinity
_TABLE_DFS = sorted(T_975)


def t_975(df: int) -> float:
    """t(0.975, df). Between table entries, linear in 1/df (the classic rule for t
    tables; within 1e-4 of the exact quantile above df 30)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df in T_975:
        return T_975[df]
    upper = next((d for d in _TABLE_DFS if d > df), None)
    lower = max(d for d in _TABLE_DFS if d < df)
    t_low, t_high = T_975[lower], (T_975[upper] if upper else Z_975)
    inv_high = 1.0 / upper if upper else 0.0
    weight = (1.0 / df - inv_high) / (1.0 / lower - inv_high)
    return t_high + weight * (t_low - t_high)


def fields_required(std: float, mean: float, target_ra: float) -> int:
    """The smallest number of fields whose 95 % CI is within ``target_ra * mean``."""
    if target_ra <= 0 or mean <= 0:
        raise ValueError("fields_required needs a positive mean and target relative accuracy")
    ratio = std / (target_ra * mean)
    m = max(2, math.ceil((Z_975 * ratio) ** 2))
    while m < (t_975(m - 1) * ratio) ** 2:
        m += 1
    return m


def field_statistics(
    values: Sequence[float],
    areas: Sequence[float] | None = None,
    target_ra: float = 0.10,
) -> dict[str, Any]:
    """Statistics of one quantity over fields (module doc for the formulas and units).

    Keys: ``n``, ``mean``, ``std``, ``t``, ``ci95``, ``ra_pct``, ``weighted_mean``
    (only when ``areas`` are given), ``target_ra_pct``, ``fields_required`` and
    ``fields_needed``. What cannot be computed is None: std, CI and the fields needed
    below two fields; ``ra_pct`` when the mean is 0.
    """
    n = len(values)
    if areas is not None and len(areas) != n:
        raise ValueError(f"{n} values but {len(areas)} areas")
    mean = math.fsum(values) / n if n else None
    std = t = ci = ra = required = needed = weighted = None
    if mean is not None and n >= 2:
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
        t = t_975(n - 1)
        ci = t * std / math.sqrt(n)
        if mean > 0:
            ra = ci / mean * 100.0
            required = fields_required(std, mean, target_ra)
            needed = max(0, required - n)
    if areas is not None and n:
        if any(a < 0 for a in areas) or math.fsum(areas) <= 0:
            raise ValueError("field areas must be >= 0 with a positive sum")
        weighted = math.fsum(a * v for a, v in zip(areas, values, strict=True)) / math.fsum(areas)
    return {
        "n": n,
        "mean": mean,
        "std": std,
        "t": t,
        "ci95": ci,
        "ra_pct": ra,
        "weighted_mean": weighted,
        "target_ra_pct": target_ra * 100.0,
        "fields_required": required,
        "fields_needed": needed,
    }


def _per_class(
    samples: dict[str, tuple[list[float], list[float]]], target_ra: float, unit: str
) -> dict[str, dict[str, Any]]:
    return {
        name: {**field_statistics(values, weights, target_ra), "unit": unit}
        for name, (values, weights) in samples.items()
    }


def main_phase(fields: Iterable[Mapping[str, Any]]) -> str | None:
    """The phase class (a class with particle statistics) with the largest summed
    fraction over ``fields``; None when no field has a phase."""
    totals: dict[str, float] = {}
    for f in fields:
        for name in f.get("particles") or {}:
            totals[name] = totals.get(name, 0.0) + f["fractions"].get(name, 0.0)
    return max(totals, key=totals.__getitem__) if totals else None


def running_statistics(values: Sequence[float], target_ra: float = 0.10) -> list[dict[str, Any]]:
    """:func:`field_statistics` of the first 1, 2, ..., n ``values``."""
    return [field_statistics(values[:n], target_ra=target_ra) for n in range(1, len(values) + 1)]


def phase_trend(fields: Sequence[Mapping[str, Any]], name: str, target_ra: float = 0.10) -> dict[str, Any]:
    """Area % of class ``name`` per field (``class``, field ``ids`` and ``values``, in
    the order of ``fields``), with the running ``mean`` and its 95 % half-width
    ``ci95`` after each field (None below two fields)."""
    values = [100.0 * f["fractions"].get(name, 0.0) for f in fields]
    running = running_statistics(values, target_ra)
    return {
        "class": name,
        "ids": [f["id"] for f in fields],
        "values": values,
        "mean": [s["mean"] for s in running],
        "ci95": [s["ci95"] for s in running],
    }


def ecd_histogram(fields: Sequence[Mapping[str, Any]], name: str, physical: bool) -> dict[str, Any] | None:
    """The ECD histogram of class ``name`` summed over ``fields`` (``edges``, ``counts``,
    ``unit`` "um" when ``physical``, else "px"); None when no field has a whole particle
    of it.

    Fields with the same pixel size share their bin edges and are summed bin by bin; a
    bin of another field goes to the bin of the common series (ratio sqrt(2) from the
    smallest first edge) that holds its geometric centre.
    """
    bins: list[tuple[float, float, int]] = []
    for f in fields:
        particles = (f.get("particles") or {}).get(name)
        if not particles or not particles.get("ecd_histogram", {}).get("counts"):
            continue
        histogram = particles["ecd_histogram"]
        to_unit = 1.0 / f["pixel_size_um"] if particles["unit"] == "um" and not physical else 1.0
        edges = [e * to_unit for e in histogram["edges"]]
        bins.extend(zip(edges[:-1], edges[1:], histogram["counts"], strict=True))
    if not bins:
        return None
    first = min(low for low, _, _ in bins)
    step = math.log(HISTOGRAM_RATIO)
    counts: dict[int, int] = {}
    for low, high, count in bins:
        # The tolerance keeps a centre that sits on an edge (rounding aside) in the bin above it.
        index = math.floor(math.log(math.sqrt(low * high) / first) / step + 1e-9)
        counts[index] = counts.get(index, 0) + count
    size = max(counts) + 1
    return {
        "edges": [first * HISTOGRAM_RATIO**i for i in range(size + 1)],
        "counts": [counts.get(i, 0) for i in range(size)],
        "unit": "um" if physical else "px",
    }


class FieldResults(Protocol):
    """Where a specimen's measured fields come from (the store's image rows, ``store/rows.py``,
    which this layer may not import; a list in tests)."""

    def field_results(self, specimen_id: int, count_flagged: bool = False) -> Sequence[Mapping[str, Any]]: ...

    def flagged_pending(self, specimen_id: int) -> int: ...


def specimen_statistics(
    store: FieldResults, specimen_id: int, target_ra: float = 0.10, count_flagged: bool = False
) -> dict[str, Any]:
    """Per class over a specimen's measured, not excluded fields (``store.field_results``,
    results as ``measure.measure`` writes them; fields the model flagged as outside its
    experience only once accepted, or all of them with ``count_flagged``):

    * ``fractions``: area percent, weighted by the fields' valid area;
    * ``number_density``: particles per mm² (per million pixels unless every field has
      a pixel size), weighted by valid area, so that the weighted mean is the ratio
      estimator total count / total area;
    * ``mean_ecd``: the fields' mean ECD in µm (pixels unless every field has a pixel
      size), weighted by the number of whole particles; fields without a whole
      particle of the class do not count;
    * ``main_phase`` (:func:`main_phase`) and its ``trend`` (:func:`phase_trend`; None
      without a main phase); ``trends``: the same for every class;
    * ``ecd_histograms``: per phase class with whole particles, :func:`ecd_histogram`;
    * ``flagged_pending``: how many flagged fields await an operator's acceptance, and
      ``count_flagged``: whether they are counted anyway (else they are left out), so
      that the page can say which.
    """
    # A field without valid area (all data bar) carries no information.
    fields = [f for f in store.field_results(specimen_id, count_flagged) if f["valid_area_px"]]
    physical = bool(fields) and all(f["pixel_size_um"] for f in fields)
    fractions: dict[str, tuple[list[float], list[float]]] = {}
    density: dict[str, tuple[list[float], list[float]]] = {}
    ecd: dict[str, tuple[list[float], list[float]]] = {}
    for f in fields:
        area = f["valid_area_um2"] if physical else f["valid_area_px"]
        for name, fraction in f["fractions"].items():
            values, weights = fractions.setdefault(name, ([], []))
            values.append(100.0 * fraction)
            weights.append(area)
        for name, p in f["particles"].items():
            values, weights = density.setdefault(name, ([], []))
            values.append(p["number_per_mm2"] if physical else p["number_per_mpx"])
            weights.append(area)
            if p["mean_ecd"] is None:
                continue
            size = p["mean_ecd"]
            if p["unit"] == "um" and not physical:
                size /= f["pixel_size_um"]
            values, weights = ecd.setdefault(name, ([], []))
            values.append(size)
            weights.append(p["count"])
    phase = main_phase(fields)
    return {
        "specimen_id": specimen_id,
        "fields": len(fields),
        "target_ra_pct": target_ra * 100.0,
        "fractions": _per_class(fractions, target_ra, "area %"),
        "number_density": _per_class(density, target_ra, "1/mm2" if physical else "1/Mpx"),
        "mean_ecd": _per_class(ecd, target_ra, "um" if physical else "px"),
        "main_phase": phase,
        "trend": phase_trend(fields, phase, target_ra) if phase else None,
        "trends": {name: phase_trend(fields, name, target_ra) for name in fractions},
        "ecd_histograms": {name: h for name in density if (h := ecd_histogram(fields, name, physical))},
        "flagged_pending": store.flagged_pending(specimen_id),
        "count_flagged": count_flagged,
    }
