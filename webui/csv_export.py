"""``/export.csv``'s table: one row per field, oldest first, one area % column per class.

The trust columns are empty for a field without a trust record (not measured, or
measured before the record existed); ``trust_reasons`` are joined with "; ".
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from phasewatch.runtime.service.store import display_text
from phasewatch.webui.payloads import trust_json


def _iso(timestamp: float | None) -> str:
    if timestamp is None:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def _trust_cells(trust: dict[str, Any] | None) -> list[str]:
    """``trust_ok``, ``trust_score``, ``trust_reasons``."""
    shown = trust_json(trust)
    if shown is None:
        return ["", "", ""]
    score = "" if shown["score"] is None else f"{shown['score']:.4g}"
    return [str(int(shown["ok"])), score, "; ".join(shown["reasons"])]


def fields_csv(rows: Sequence[dict[str, Any]]) -> str:
    """The CSV of store image ``rows`` (in the order given); the class columns are
    every class any row has, in the order they first appear."""
    classes: dict[str, None] = {}
    for row in rows:
        classes.update(dict.fromkeys(row.get("fractions") or {}))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["id", "file", "specimen", "state", "processed",
                     *(f"{name}_area_pct" for name in classes), "excluded", "reason",
                     "trust_ok", "trust_score", "trust_reasons", "accepted", "accepted_by", "accept_reason",
                     "error", "path"])
    for row in rows:
        fractions = row.get("fractions") or {}
        writer.writerow([
            row["id"], _text(Path(row["path"]).name), _text(row["specimen"]), row["state"], _iso(row["processed"]),
            *(f"{100.0 * fractions[c]:.4f}" if c in fractions else "" for c in classes),
            int(bool(row["excluded"])), _text(row["exclude_reason"]),
            *_trust_cells(row.get("trust")), int(bool(row["accepted"])), _text(row["accepted_by"]),
            _text(row["accept_reason"]), _text(row["error"]), _text(row["path"]),
        ])
    return out.getvalue()


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _text(value: str | None) -> str:
    """A text cell as a spreadsheet will take it: file names shown with U+FFFD for bytes
    that are not UTF-8, and a leading = + - @ neutralised with a quote so that a specimen
    name or file name is never run as a formula (CSV injection)."""
    text = display_text(value or "")
    return "'" + text if text.startswith(FORMULA_STARTS) else text
