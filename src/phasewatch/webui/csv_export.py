"""``/export.csv``'s table: one row per field, oldest first, one area % column per class;
a specimen report's CSV is the same table with provenance columns (:func:`provenance_csv`).

The trust columns are empty for a field without a trust record (not measured, or
measured before the record existed); ``trust_reasons`` are joined with "; ". Each row also
carries its specimen's verdict and limits (:data:`SPECIMEN_COLUMNS`; empty for a specimen
without limits), so that a table opened on its own says what the numbers were judged
against: the same verdict the pages and the report show (:func:`.verdict.judge`).
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from phasewatch.core.records import TrustRecord
from phasewatch.core.stats import specimen_statistics
from phasewatch.core.verdict import LIMIT_UNITS, MEASURES, judge
from phasewatch.store import Store, display_text
from phasewatch.store.rows import ImageRow
from phasewatch.webui.payloads import trust_json
from phasewatch.webui.report_data import FieldEntry, class_names

_EXPORT_PAGE = 1000  # rows per store query: the memory of a page, not a limit on the table


def _iso(timestamp: float | None) -> str:
    if timestamp is None:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def _trust_cells(trust: TrustRecord | None) -> list[str]:
    """``trust_ok``, ``trust_score``, ``trust_reasons``."""
    shown = trust_json(trust)
    if shown is None:
        return ["", "", ""]
    score = "" if shown["score"] is None else f"{shown['score']:.4g}"
    return [str(int(shown["ok"])), score, "; ".join(shown["reasons"])]


# Per row, its specimen's: the verdict (pass, fail, undecided) and each limit with its own.
SPECIMEN_COLUMNS = ["specimen_verdict", "specimen_limits"]
Verdicts = Mapping[int, Sequence[str]]  # specimen id -> the SPECIMEN_COLUMNS cells


def _check_text(check: Mapping[str, Any]) -> str:
    """One judged limit: "carbide area % 20 – 40 at 10 % RA: undecided (why)"."""
    unit = LIMIT_UNITS[check["measure"]]
    scale = "" if unit == "area %" else f" {unit}"
    why = "" if check["verdict"] == "pass" else f" ({check['why']})"
    return (f"{check['class']} {MEASURES[check['measure']]} {check['range']}{scale} "
            f"at {check['target_ra_pct']:g} % RA: {check['verdict']}{why}")


def verdict_cells(verdict: Mapping[str, Any]) -> list[str]:
    """The :data:`SPECIMEN_COLUMNS` of :func:`.verdict.judge`'s answer; limits joined by " | "
    (a check's reason may itself hold "; ")."""
    return [verdict["verdict"] or "", " | ".join(_text(_check_text(c)) for c in verdict["checks"])]


def store_verdicts(store: Store, specimens: Iterable[int], target_ra: float,
                   count_flagged: bool) -> dict[int, list[str]]:
    """:func:`verdict_cells` of each specimen, judged as the pages judge it."""
    out = {}
    for specimen_id in set(specimens):
        limits = store.limits(specimen_id)  # none: no statistics to compute for an empty verdict
        out[specimen_id] = verdict_cells(judge(specimen_statistics(store, specimen_id, target_ra, count_flagged),
                                               limits)) if limits else ["", ""]
    return out


def fields_csv(rows: Sequence[ImageRow], verdicts: Verdicts) -> str:
    """The CSV of store image ``rows`` (in the order given) with their specimens'
    ``verdicts``; the class columns are every class any row has, in the order they first appear."""
    classes = class_names(rows)
    return _table([_header(classes), *(_cells(row, classes, verdicts) for row in rows)])


def store_csv(store: Store, specimen: int | None = None, target_ra: float = 0.10, count_flagged: bool = False) -> str:
    """:func:`fields_csv` of every image of ``store`` (of one specimen when given), oldest
    first as fields were taken, verdicts judged at ``target_ra`` and ``count_flagged`` (the
    service's): ``/export.csv``, and ``reanalyse``'s ``fields.csv``."""
    rows: list[ImageRow] = []
    before = None
    while page := store.list_images(_EXPORT_PAGE, specimen, before):
        rows.extend(page)
        before = page[-1]["id"]
    verdicts = store_verdicts(store, (r["specimen_id"] for r in rows), target_ra, count_flagged)
    return fields_csv(rows[::-1], verdicts)


# A report's CSV adds what a QA record needs to trace each number back to its origin.
PROVENANCE_COLUMNS = ["counted", "status", "file_sha256", "model", "model_onnx_sha256", "backend",
                      "pixel_size_um", "pixel_size_source", "accepted_at"]


def provenance_csv(fields: Sequence[FieldEntry], model_hashes: Mapping[str, str], verdict: Mapping[str, Any]) -> str:
    """:func:`fields_csv` of a report's fields, with the report's ``verdict``, plus
    :data:`PROVENANCE_COLUMNS`: whether the field counts in the statistics and its status,
    the file's sha256, the model by name and ONNX sha256 (``model_hashes``), backend,
    pixel size with its source, when accepted."""
    classes = class_names([f.row for f in fields])
    cells = verdict_cells(verdict)
    verdicts = {f.row["specimen_id"]: cells for f in fields}
    lines: list[list[Any]] = [[*_header(classes), *PROVENANCE_COLUMNS]]
    for entry in fields:
        row = entry.row
        record: Mapping[str, Any] = row.get("measurement") or {}  # older versions' records lack keys
        model = record.get("model") or ""
        pixel_size = record.get("pixel_size_um")
        lines.append([
            *_cells(row, classes, verdicts), int(entry.counted), entry.status, row["sha256"], _text(model),
            model_hashes.get(model, ""), _text(record.get("backend")),
            "" if pixel_size is None else f"{pixel_size:.6g}", _text(record.get("pixel_size_source")),
            _iso(row["accepted_at"]),
        ])
    return _table(lines)


def _header(classes: Sequence[str]) -> list[str]:
    return ["id", "file", "specimen", "state", "processed", *(f"{name}_area_pct" for name in classes), "excluded",
            "reason", "trust_ok", "trust_score", "trust_reasons", "accepted", "accepted_by", "accept_reason",
            "error", "path", *SPECIMEN_COLUMNS]


def _cells(row: ImageRow, classes: Sequence[str], verdicts: Verdicts) -> list[Any]:
    fractions = row.get("fractions") or {}
    return [
        row["id"], _text(Path(row["path"]).name), _text(row["specimen"]), row["state"], _iso(row["processed"]),
        *(f"{100.0 * fractions[c]:.4f}" if c in fractions else "" for c in classes),
        int(bool(row["excluded"])), _text(row["exclude_reason"]),
        *_trust_cells(row.get("trust")), int(bool(row["accepted"])), _text(row["accepted_by"]),
        _text(row["accept_reason"]), _text(row["error"]), _text(row["path"]), *verdicts[row["specimen_id"]],
    ]


def _table(lines: Sequence[Sequence[Any]]) -> str:
    out = io.StringIO()
    csv.writer(out).writerows(lines)
    return out.getvalue()


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _text(value: str | None) -> str:
    """A text cell as a spreadsheet will take it: file names shown with U+FFFD for bytes
    that are not UTF-8, and a leading = + - @ neutralised with a quote so that a specimen
    name or file name is never run as a formula (CSV injection)."""
    text = display_text(value or "")
    return "'" + text if text.startswith(FORMULA_STARTS) else text
