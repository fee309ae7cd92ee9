"""Specification limits and the verdict they give a specimen's statistics.

A limit names a class, a measure of :func:`.stats.specimen_statistics` (``fractions``: area
%, ``number_density``, ``mean_ecd``), a lower and/or an upper bound in that measure's unit
(``LIMIT_UNITS``: area %, 1/mm², µm), and the relative accuracy the estimate must reach
(``target_ra_pct``; None: the service's target). Each limit is judged on the 95 %
confidence interval ``mean ± ci95`` of its quantity:

* **pass**: the CI lies entirely within the limits and its %RA is at most the target;
* **fail**: the CI lies entirely outside them (beyond one bound). More precision cannot
  bring it back inside with 95 % confidence, so the %RA is not required here;
* **undecided**: the CI straddles a bound, or its %RA is above the target, or there are
  fewer than two fields. ``fields_needed`` then estimates how many more fields settle it:
  the larger of the fields the %RA target needs (:func:`.stats.fields_required`) and the
  fields whose CI half-width is smaller than the distance of the mean from the nearest
  bound (the same formula with that distance as the accuracy); None when no number of
  fields can (a mean exactly on a bound, a zero mean).

A specimen's verdict is ``fail`` when any limit fails, else ``undecided`` when any is
undecided, else ``pass``; ``None`` when it has no limits.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from phasewatch.core.stats import fields_required

MEASURES = {"fractions": "area %", "number_density": "number density", "mean_ecd": "mean ECD"}
# The unit a limit is written in: a specimen measured without a pixel size has densities
# and sizes in pixels, which no limit in µm can judge.
LIMIT_UNITS = {"fractions": "area %", "number_density": "1/mm2", "mean_ecd": "um"}
VERDICTS = ("pass", "fail", "undecided")


class LimitError(ValueError):
    """A limit that cannot be judged; one line naming it."""


@dataclass(frozen=True)
class Limit:
    """One specification limit (module doc); bounds in the measure's unit."""

    cls: str
    measure: str
    lower: float | None = None
    upper: float | None = None
    target_ra_pct: float | None = None

    def text(self) -> str:
        """The range as a person writes it: "45 – 55", "≤ 2", "≥ 10"."""
        if self.lower is not None and self.upper is not None:
            return f"{self.lower:g} – {self.upper:g}"
        return f"≤ {self.upper:g}" if self.upper is not None else f"≥ {self.lower:g}"


def _bound(raw: Mapping[str, Any], key: str, where: str) -> float | None:
    value = raw.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise LimitError(f"{where}: {key} must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise LimitError(f"{where}: {key} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise LimitError(f"{where}: {key} must be finite, got {value!r}")
    return number


def parse_limits(raw: object) -> list[Limit]:
    """Limits from JSON (a list of ``{"class", "measure", "lower", "upper", "target_ra_pct"}``),
    checked: a known measure, a class name, at least one bound, lower <= upper, a target
    above 0 and at most 100 %, one limit per class and measure."""
    if not isinstance(raw, list):
        raise LimitError("limits must be a list of {class, measure, lower, upper, target_ra_pct}")
    out: list[Limit] = []
    seen: set[tuple[str, str]] = set()
    for i, item in enumerate(raw, 1):
        where = f"limit {i}"
        if not isinstance(item, Mapping):
            raise LimitError(f"{where}: must be an object")
        cls, measure = item.get("class"), item.get("measure", "fractions")
        if not isinstance(cls, str) or not cls.strip():
            raise LimitError(f"{where}: needs a class name")
        cls = cls.strip()
        if measure not in MEASURES:
            raise LimitError(f"{where}: measure must be one of {', '.join(MEASURES)}, got {measure!r}")
        where = f"limit {i} ({cls}, {measure})"
        lower, upper = _bound(item, "lower", where), _bound(item, "upper", where)
        target = _bound(item, "target_ra_pct", where)
        if lower is None and upper is None:
            raise LimitError(f"{where}: needs a lower or an upper bound")
        if lower is not None and upper is not None and lower > upper:
            raise LimitError(f"{where}: lower {lower:g} is above upper {upper:g}")
        if target is not None and not 0 < target <= 100:
            raise LimitError(f"{where}: target_ra_pct must be above 0 and at most 100, got {target:g}")
        if (cls, measure) in seen:
            raise LimitError(f"{where}: given twice")
        seen.add((cls, measure))
        out.append(Limit(cls, measure, lower, upper, target))
    return out


def limits_json(limits: Iterable[Limit]) -> list[dict[str, Any]]:
    """The JSON form :func:`parse_limits` reads."""
    return [{"class": d.pop("cls"), **d} for d in map(asdict, limits)]


def _more_fields(std: float, mean: float, n: int, accuracy: float) -> int | None:
    """Fields beyond ``n`` whose CI half-width reaches ``accuracy`` * mean; None when none can."""
    if mean <= 0 or accuracy <= 0:
        return None
    return max(0, fields_required(std, mean, accuracy) - n)


def judge_limit(limit: Limit, st: Mapping[str, Any] | None, default_target_ra_pct: float) -> dict[str, Any]:
    """One limit against the statistics ``st`` of its class and measure (None: no field
    measured it): the limit, the CI, ``verdict``, ``why`` and ``fields_needed``."""
    target = limit.target_ra_pct if limit.target_ra_pct is not None else default_target_ra_pct
    out: dict[str, Any] = {**limits_json([limit])[0], "target_ra_pct": target, "range": limit.text(),
                           "unit": st["unit"] if st else None, "n": st["n"] if st else 0,
                           "mean": st["mean"] if st else None, "ci95": st["ci95"] if st else None,
                           "ra_pct": st["ra_pct"] if st else None, "low": None, "high": None}
    if st is None or st["ci95"] is None:
        n = st["n"] if st else 0
        return {**out, "verdict": "undecided", "fields_needed": max(0, 2 - n),
                "why": "no field measured it yet" if st is None else "a CI needs two fields"}
    if st["unit"] != LIMIT_UNITS[limit.measure]:
        return {**out, "verdict": "undecided", "fields_needed": None,
                "why": f"uncalibrated: measured in {st['unit']}, the limit is in {LIMIT_UNITS[limit.measure]}"}
    mean, ci, std, n = st["mean"], st["ci95"], st["std"], st["n"]
    low, high = mean - ci, mean + ci
    out.update(low=low, high=high)
    below = limit.lower is not None and high < limit.lower
    above = limit.upper is not None and low > limit.upper
    if below or above:
        side = f"below {limit.lower:g}" if below else f"above {limit.upper:g}"
        return {**out, "verdict": "fail", "fields_needed": 0, "why": f"the 95 % CI lies entirely {side}"}
    inside = (limit.lower is None or low >= limit.lower) and (limit.upper is None or high <= limit.upper)
    precise = st["ra_pct"] is not None and st["ra_pct"] <= target
    if inside and precise:
        return {**out, "verdict": "pass", "fields_needed": 0, "why": "the 95 % CI lies within the limits"}
    needs: list[int | None] = []
    reasons = []
    if not precise:
        reasons.append(f"%RA above the {target:g} % target" if st["ra_pct"] is not None else "mean is 0: no %RA")
        needs.append(_more_fields(std, mean, n, target / 100.0))
    if not inside:
        bounds = [b for b in (limit.lower, limit.upper) if b is not None]
        distance = min(abs(mean - b) for b in bounds)
        reasons.append("the 95 % CI straddles a limit")
        needs.append(_more_fields(std, mean, n, distance / mean) if mean > 0 else None)
    needed = None if any(x is None for x in needs) else max(x for x in needs if x is not None)
    return {**out, "verdict": "undecided", "fields_needed": needed, "why": "; ".join(reasons)}


def judge(stats: Mapping[str, Any], limits: Sequence[Limit]) -> dict[str, Any]:
    """The verdict of ``stats`` (:func:`.stats.specimen_statistics`) against ``limits``:
    ``verdict`` (None without limits), ``checks`` (one :func:`judge_limit` each, in order)
    and ``fields_needed`` (the most any undecided limit needs; None when unknown)."""
    default_target = float(stats["target_ra_pct"])
    checks = [judge_limit(lim, stats[lim.measure].get(lim.cls), default_target) for lim in limits]
    verdicts = {c["verdict"] for c in checks}
    verdict = None if not checks else next(v for v in ("fail", "undecided", "pass") if v in verdicts)
    undecided = [c["fields_needed"] for c in checks if c["verdict"] == "undecided"]
    needed = None if not undecided or None in undecided else max(undecided)
    return {"verdict": verdict, "checks": checks, "fields_needed": needed if verdict == "undecided" else 0}
