"""The report's chart: the main phase's area % field by field with the running mean and
its 95 % confidence band (``stats.phase_trend``), laid out here once so that the page's
SVG and the PDF's drawing are the same picture.

A layout is in the caller's units: the plot spans ``x0..x1`` and the value axis runs from
``y_low`` (where the axis minimum lies) to ``y_high``; SVG, whose y grows downwards, passes
``y_low > y_high``, a PDF canvas the other way round.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

Point = tuple[float, float]
MAX_X_LABELS = 12


@dataclass(frozen=True)
class ChartLayout:
    phase: str
    values: list[Point]  # one dot per counted field
    mean: list[Point]  # the running mean
    band: list[Point]  # polygon: upper CI edge forwards, lower edge back (fields 2..n)
    y_ticks: list[tuple[float, str]]  # (y, label)
    x_ticks: list[tuple[float, str]]  # (x, "#field id"), as the field list names them


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering ``low..high`` with a step of 1, 2 or 5 x 10^k."""
    raw = (high - low) / max(1, count)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    return [first + i * step for i in range(math.ceil((high - first) / step - 1e-9) + 1)]


def _tick_label(value: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step))) if step < 1 else 0
    return f"{value:.{decimals}f}"


def layout_trend(trend: dict[str, Any], x0: float, x1: float, y_low: float, y_high: float) -> ChartLayout | None:
    """The chart of ``trend`` (``specimen_statistics``' ``trend``); None without fields."""
    values: list[float] = trend["values"]
    if not values:
        return None
    bands = [(m - c, m + c) for m, c in zip(trend["mean"], trend["ci95"], strict=True) if c is not None]
    # An area % lies in 0..100 whatever a wide early CI says; the axis need not go further.
    low = max(0.0, min([*values, *(b[0] for b in bands)]))
    high = min(100.0, max([*values, *(b[1] for b in bands)]))
    if high - low < 1.0:
        low, high = max(0.0, low - 0.5), min(100.0, high + 0.5)
    ticks = nice_ticks(low, high)
    low, high = ticks[0], ticks[-1]
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0

    def y(value: float) -> float:
        clamped = min(high, max(low, value))
        return y_low + (clamped - low) / (high - low) * (y_high - y_low)

    def x(index: int) -> float:
        return (x0 + x1) / 2 if len(values) == 1 else x0 + index / (len(values) - 1) * (x1 - x0)

    first_band = len(values) - len(bands)  # the CI starts at the second field
    upper = [(x(first_band + i), y(b[1])) for i, b in enumerate(bands)]
    lower = [(x(first_band + i), y(b[0])) for i, b in enumerate(bands)]
    every = math.ceil(len(values) / MAX_X_LABELS)
    return ChartLayout(
        phase=str(trend["class"]),
        values=[(x(i), y(v)) for i, v in enumerate(values)],
        mean=[(x(i), y(m)) for i, m in enumerate(trend["mean"])],
        band=upper + lower[::-1],
        y_ticks=[(y(t), _tick_label(t, step)) for t in ticks],
        x_ticks=[(x(i), f"#{trend['ids'][i]}") for i in range(0, len(values), every)],
    )
