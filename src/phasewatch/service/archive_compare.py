"""Old model against new on the same archive: fractions per specimen side by side, with the
difference and its 95 % confidence interval.

Both sides are data folders of ``reanalyse`` (or the daemon's): a field of the new run is
paired with the old field of the same content (sha256), wherever either file lay, so that a
daemon's data folder can be the old side of an archive re-analysis. A specimen is the new
run's (the archive's sub-folder). Only fields both sides count go in (measured, not excluded,
with valid area, and not flagged by the model unless accepted or ``count_flagged``: the
specimen statistics' rule, ``Store.field_results``), so each specimen's old and new figures
are over the same fields.

Statistics are ``stats.field_statistics``'s, in area %: ``old`` and ``new`` are the mean over
the paired fields with its CI (and the area-weighted mean beside it); ``difference`` is the
mean of the per-field differences new - old with its CI, a paired interval: the field-to-field
spread that both models see cancels out, so a small systematic change shows with few fields.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from phasewatch.core.stats import field_statistics
from phasewatch.store import Store
from phasewatch.store.rows import ImageRow


def counted_fields(store: Store, count_flagged: bool) -> dict[int, list[ImageRow]]:
    """Specimen id -> the fields its statistics count (with valid area), oldest first."""
    return {s["id"]: [f for f in store.field_results(s["id"], count_flagged) if f["valid_area_px"]]
            for s in store.list_specimens()}


def compare(old: Store, new: Store, count_flagged: bool = False) -> dict[str, Any]:
    """``specimens``: per specimen of the new run with paired fields, its ``name``, ``fields``
    (paired), ``new_only`` (fields of the new run without an old one) and per class in both
    models ``classes[name] = {old, new, difference}`` (module doc); ``old_only``: old fields
    no new field pairs with."""
    old_fields = {f["sha256"]: f for fields in counted_fields(old, count_flagged).values() for f in fields}
    paired_shas: set[str] = set()
    specimens = []
    names = {s["id"]: s["name"] for s in new.list_specimens()}
    for specimen_id, fields in sorted(counted_fields(new, count_flagged).items(), key=lambda i: names[i[0]]):
        if not fields:
            continue
        pairs = [(old_fields[f["sha256"]], f) for f in fields if f["sha256"] in old_fields]
        paired_shas.update(n["sha256"] for _, n in pairs)
        specimens.append({"name": names[specimen_id], "fields": len(pairs), "new_only": len(fields) - len(pairs),
                          "classes": _classes(pairs)})
    return {"specimens": specimens, "old_only": len(old_fields.keys() - paired_shas)}


def _classes(pairs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    # counted fields (old, new): measured, so every result key is there
    if not pairs:
        return {}
    shared = [c for c in pairs[0][1]["fractions"] if c in pairs[0][0]["fractions"]]
    result = {}
    for name in shared:
        old = [100.0 * o["fractions"][name] for o, _ in pairs]
        new = [100.0 * n["fractions"][name] for _, n in pairs]
        result[name] = {
            "old": field_statistics(old, [o["valid_area_px"] for o, _ in pairs]),
            "new": field_statistics(new, [n["valid_area_px"] for _, n in pairs]),
            "difference": field_statistics([b - a for a, b in zip(old, new, strict=True)]),
        }
    return result


def _estimate(stats: dict[str, Any]) -> str:
    ci = "" if stats["ci95"] is None else f" ± {stats['ci95']:.2f}"
    return f"{stats['mean']:.2f}{ci}"


COLUMNS = ["specimen", "class", "fields", "old_pct", "old_ci95", "new_pct", "new_ci95", "difference_pct",
           "difference_ci95", "old_weighted_pct", "new_weighted_pct"]


def rows(report: dict[str, Any]) -> Iterable[list[Any]]:
    """One row per specimen and class, as :data:`COLUMNS` (None where there is no CI)."""
    for specimen in report["specimens"]:
        for name, s in specimen["classes"].items():
            old, new, diff = s["old"], s["new"], s["difference"]
            yield [specimen["name"], name, specimen["fields"], old["mean"], old["ci95"], new["mean"], new["ci95"],
                   diff["mean"], diff["ci95"], old["weighted_mean"], new["weighted_mean"]]


def table(report: dict[str, Any]) -> str:
    """The report as text: area % mean ± 95 % CI half-width over the paired fields; ``*`` marks
    a difference whose interval leaves out 0."""
    lines = [f"{'specimen':<24} {'class':<28} {'fields':>6}  {'old %':>15}  {'new %':>15}  {'new - old':>15}"]
    for specimen in report["specimens"]:
        for name, s in specimen["classes"].items():
            diff = s["difference"]
            changed = diff["ci95"] is not None and abs(diff["mean"]) > diff["ci95"]
            lines.append(f"{specimen['name']:<24} {name:<28} {specimen['fields']:>6}  {_estimate(s['old']):>15}  "
                         f"{_estimate(s['new']):>15}  {_estimate(diff):>15}{' *' if changed else ''}")
        if specimen["new_only"]:
            lines.append(f"{specimen['name']:<24} ({specimen['new_only']} field(s) without an old result)")
    lines.append(f"{report['old_only']} old field(s) without a new result; CI: 95 %, Student's t over the fields; "
                 "* the difference's interval leaves out 0")
    return "\n".join(lines)
