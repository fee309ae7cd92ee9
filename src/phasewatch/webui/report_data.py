"""What a specimen's report says, gathered once for its three forms: the printable page
(:mod:`.report`), the PDF (:mod:`.report_pdf`) and the per-specimen CSV (:mod:`.csv_export`).

The statistics are :func:`runtime.stats.specimen_statistics` itself, so the report shows
the numbers the page and ``/api/specimens/ID/stats`` show. Every field of the specimen is
listed with whether it counts and, when it does not, why (excluded with the operator's
reason, flagged by the model and not accepted, failed, a duplicate, not yet measured).

Models. A field's record names the bundle that measured it; the report reads that bundle's
manifest for its version, ONNX hash and held-out evaluation (``evaluations``), verifying the
hash against ``model.onnx`` as :func:`runtime.bundle.load_bundle` does. Records keep the
name only, so this is the bundle installed under that name now; a bundle that cannot be
read is said so in the report rather than left out.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phasewatch.bundle import BundleError, load_bundle
from phasewatch.core.provenance import software_version
from phasewatch.core.stats import specimen_statistics
from phasewatch.core.verdict import MEASURES, judge
from phasewatch.store import Store, awaits_acceptance, display_text, flagged, same_pixels_pending
from phasewatch.store.rows import ImageRow, SpecimenRow
from phasewatch.webui.names import display_name

_PAGE = 1000
THUMBNAIL_KINDS = ("overlay", "preview")  # the segmentation is what is signed off; else the micrograph
SIGN_OFF = "Reviewed and released by"
FIELDS_NOTE = ("Every file of the specimen, oldest first: the model's overlay, the area % of each class, and why "
               "a field is not counted.")

# (stats key, heading, number format): each quantity of specimen_statistics the report tabulates.
QUANTITIES = (
    ("fractions", "Area fraction", ".2f"),
    ("number_density", "Number density", ".4g"),
    ("mean_ecd", "Mean equivalent circle diameter", ".3g"),
)
# specimen_statistics' unit names, as a person reads them.
UNITS = {"area %": "area %", "1/mm2": "1/mm²", "1/Mpx": "1/Mpx", "um": "µm", "px": "px"}
UNCALIBRATED = "uncalibrated: sizes in pixels"
# Where a field's pixel size came from (imageio/formats.py's sources, the service's config);
# static/format.js has the same words for the pages.
PIXEL_SIZE_SOURCES = {
    "user": "given by the user", "imagej": "ImageJ metadata in the file", "ome": "OME metadata in the file",
    "fei": "FEI metadata in the file", "zeiss": "Zeiss metadata in the file",
    "tiff-resolution": "the TIFF's resolution tags", "config": "the service's [calibration] for its folder",
}


def number(value: float | None, spec: str = ".2f") -> str:
    """A statistic as the report prints it; an en dash where it cannot be computed."""
    return "–" if value is None else format(value, spec)


def pct(fraction: float | None) -> str:
    """A 0..1 score (accuracy, IoU) as a percentage."""
    return "–" if fraction is None else f"{100 * fraction:.1f} %"


def when(timestamp: float | None) -> str:
    """A time in the appliance's local zone, with its offset: what the lab's clock said."""
    return "" if timestamp is None else time.strftime("%Y-%m-%d %H:%M %z", time.localtime(timestamp))


@dataclass(frozen=True)
class Evaluation:
    """One held-out evaluation from a manifest's ``evaluations``."""

    dataset: str
    images: int | None
    pixel_accuracy: float | None
    mean_iou: float | None
    per_class_iou: dict[str, float]
    flagged: int | None  # fields the trust record flagged, of ``images``
    evaluated_at: str


@dataclass(frozen=True)
class ModelInfo:
    """A model that measured fields of the specimen; ``problem`` says why its bundle could
    not be read (hash and evaluations are then unknown)."""

    name: str
    fields: int
    onnx_sha256: str = ""
    exported_at: str = ""
    architecture: str = ""
    evaluations: tuple[Evaluation, ...] = ()
    problem: str = ""
    trust_calibration: str = ""  # what the trust limits were calibrated on ("" when the manifest has none)
    legend: tuple[tuple[str, str], ...] = ()  # (display name, #rrggbb) of each class the overlay colours


@dataclass(frozen=True)
class FieldEntry:
    """One file of the specimen: its store row, whether it counts, and why not."""

    row: ImageRow
    counted: bool
    status: str  # counted, accepted, excluded, flagged, failed, duplicate, no valid area, pending, processing
    note: str  # the reason behind the status, for a person
    picture: tuple[str, Path] | None  # (kind, file) of the thumbnail, inside the data folder

    @property
    def id(self) -> int:
        return int(self.row["id"])

    @property
    def file(self) -> str:
        return Path(display_text(self.row["path"])).name

    @property
    def measured(self) -> bool:
        """A field with its own measurement (a duplicate shares its original's)."""
        return self.row["state"] == "done" and self.row["duplicate_of"] is None

    @property
    def model(self) -> str:
        record = self.row.get("measurement")
        return str(record.get("model") or "") if record else ""


@dataclass(frozen=True)
class Report:
    specimen: SpecimenRow
    operator: str
    stats: dict[str, Any]
    fields: tuple[FieldEntry, ...]
    models: tuple[ModelInfo, ...]
    software_version: str
    generated: float
    verdict: dict[str, Any]  # core.verdict.judge of the statistics against the specimen's limits
    pixel_size: str  # each pixel size with where it came from, or UNCALIBRATED
    backends: tuple[str, ...]  # the backends that measured its fields
    audit: tuple[dict[str, Any], ...]  # its audit rows and its fields', oldest first

    @property
    def calibrated(self) -> bool:
        return not self.pixel_size.startswith(UNCALIBRATED)

    @property
    def legend(self) -> tuple[tuple[str, str], ...]:
        """The overlay colours of the first model with a legend."""
        return next((m.legend for m in self.models if m.legend), ())

    def checks(self) -> list[dict[str, Any]]:
        """The verdict's checks with the class's display name and the measure's."""
        return [{**c, "label": display_name(c["class"]), "measure_label": MEASURES[c["measure"]],
                 "unit_label": UNITS.get(c["unit"] or "", c["unit"] or "")} for c in self.verdict["checks"]]

    def audit_lines(self) -> list[tuple[str, str, str, str]]:
        """(when, who, what, detail) of each audit row, as the report lists them."""
        out = []
        for row in self.audit:
            detail = "; ".join(f"{k}: {_short(row[k])}" for k in ("before", "after") if row[k] is not None)
            if row["reason"]:
                detail = f"{detail}; why: {row['reason']}" if detail else f"why: {row['reason']}"
            out.append((when(row["at"]), row["actor"], f"{row['action']} {row['subject']}", detail))
        return out

    @property
    def excluded(self) -> list[FieldEntry]:
        return [f for f in self.fields if f.status == "excluded"]

    @property
    def accepted(self) -> list[FieldEntry]:
        return [f for f in self.fields if f.status == "accepted"]

    @property
    def flagged_not_counted(self) -> list[FieldEntry]:
        return [f for f in self.fields if f.status == "flagged"]

    @property
    def classes(self) -> list[str]:
        """Every class any field measured, in the order they first appear."""
        return class_names([f.row for f in self.fields])

    def decision_groups(self) -> tuple[tuple[str, list[FieldEntry], str], ...]:
        """(title, fields, what their note says) of what operators and the model decided."""
        return (("Excluded by an operator", self.excluded, "reason"),
                ("Flagged and accepted", self.accepted, "why flagged; who accepted it and why"),
                ("Flagged, not counted", self.flagged_not_counted, "why the model flagged it"))

    @property
    def flagged_total(self) -> int:
        return sum(flagged(f.row) for f in self.fields if f.measured)

    def tables(self) -> Iterator[tuple[str, str, str, list[tuple[str, dict[str, Any]]]]]:
        """(heading, unit, number format, [(class, statistics)]) per quantity that has classes."""
        for key, heading, spec in QUANTITIES:
            per_class = self.stats[key]
            if per_class:
                unit = next(iter(per_class.values()))["unit"]
                yield heading, UNITS.get(unit, unit), spec, [(display_name(k), v) for k, v in per_class.items()]


def class_names(rows: Sequence[ImageRow]) -> list[str]:
    """The classes in the ``fractions`` of store image ``rows``, in the order they first appear."""
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row.get("fractions") or {}))
    return list(names)


def specimen_rows(store: Store, specimen_id: int) -> list[ImageRow]:
    """Every file row of a specimen, oldest first (the store pages newest first)."""
    rows: list[ImageRow] = []
    before = None
    while page := store.list_images(_PAGE, specimen_id, before):
        rows.extend(page)
        before = page[-1]["id"]
    rows.reverse()
    return rows


def picture(row: ImageRow, data_dir: Path) -> tuple[str, Path] | None:
    """The field's thumbnail: the first of :data:`THUMBNAIL_KINDS` recorded, on disk and
    inside the (resolved) data folder, the same rule as the API's picture route."""
    outputs = row.get("outputs") or {}
    for kind in THUMBNAIL_KINDS:
        if kind in outputs:
            path = Path(outputs[kind]).resolve()
            if path.is_relative_to(data_dir) and path.is_file():
                return kind, path
    return None


def _reasons(row: ImageRow) -> str:
    trust = row.get("trust")
    return "; ".join(trust.get("reasons") or [] if trust else []) or "flagged by the model"


def _status(row: ImageRow, counted: bool, count_flagged: bool) -> tuple[str, str]:
    """(status, note) of one row; ``counted`` is what the statistics used."""
    state = row["state"]
    if state != "done":
        return state, row["error"] or ""
    if row["duplicate_of"] is not None:
        return "duplicate", f"same content as field {row['duplicate_of']}: counted once, there"
    if row["excluded"]:
        return "excluded", row["exclude_reason"] or ""
    if not counted:
        if same_pixels_pending(row):
            return "same pixels", (f"likely the same field as #{row['same_pixels_as']} (the same pixels re-saved); "
                                   "not counted until an operator accepts it")
        if awaits_acceptance(row):
            return "flagged", f"{_reasons(row)}; not counted until an operator accepts it"
        return "no valid area", "the whole field is excluded classes (data bar?)"
    if flagged(row) and row["accepted"]:
        return "accepted", f"{_reasons(row)}; accepted by {row['accepted_by']}: {row['accept_reason']}"
    if flagged(row) and count_flagged:
        return "counted", f"{_reasons(row)}; counted unaccepted ([specimen] count_flagged)"
    return "counted", ""


def _short(value: Any) -> str:
    """A before/after value in a line: JSON without quotes around plain words, cut at 160."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    return text if len(text) <= 160 else text[:159] + "…"


def _source_text(source: str) -> str:
    if source == "none":  # a pixel size without its source: a record from before sources were kept
        return "a source not recorded"
    return PIXEL_SIZE_SOURCES.get(source, source)


def pixel_size_text(rows: Sequence[ImageRow]) -> str:
    """The measured fields' pixel sizes and their sources, or :data:`UNCALIBRATED` (with how
    many fields had none, when some had one: the statistics are then in pixels too)."""
    records: list[Mapping[str, Any]] = [r.get("measurement") or {} for r in rows]
    sizes = Counter((rec.get("pixel_size_um"), rec.get("pixel_size_source") or "none") for rec in records)
    missing = sum(n for (size, _), n in sizes.items() if not size)
    if not sizes or missing == len(records):
        return UNCALIBRATED
    if missing:
        return f"{UNCALIBRATED} ({missing} of {len(records)} measured fields have no pixel size)"
    return "; ".join(f"{size:.4g} µm/px from {_source_text(source)}"
                     + (f" ({n} fields)" if len(sizes) > 1 else "") for (size, source), n in sorted(sizes.items()))


def _trust_calibration(manifest: dict[str, Any]) -> str:
    trust = manifest.get("trust") or {}
    calibration = trust.get("calibration") if isinstance(trust, dict) else None
    if not calibration:
        return ""
    limits = ", ".join(f"{k} {v:g}" for k, v in (trust.get("limits") or {}).items())
    rate = calibration.get("false_alarm_rate_on_calibration")
    return (f"calibrated on {calibration.get('fields')} fields ({calibration.get('source', 'unknown source')})"
            + (f"; limits {limits}" if limits else "")
            + (f"; flags {100 * rate:.1f} % of its own calibration fields" if rate is not None else ""))


def _evaluation(dataset: str, raw: dict[str, Any]) -> Evaluation:
    trust = raw.get("trust") or {}
    flagged_fields = None
    if "wrong_flagged" in trust:
        flagged_fields = int(trust["wrong_flagged"]) + int(trust.get("right_flagged", 0))
    return Evaluation(
        dataset=dataset, images=raw.get("images"), pixel_accuracy=raw.get("pixel_accuracy"),
        mean_iou=raw.get("mean_iou"), per_class_iou=dict(raw.get("per_class_iou") or {}),
        flagged=flagged_fields, evaluated_at=str(raw.get("evaluated_at", "")),
    )


def model_info(name: str, fields: int) -> ModelInfo:
    """What the bundle installed under ``name`` says about itself (module doc)."""
    try:
        bundle = load_bundle(name)
    except BundleError as exc:
        return ModelInfo(name, fields, problem=str(exc))
    manifest = bundle.manifest
    evaluations = tuple(_evaluation(k, v) for k, v in (manifest.get("evaluations") or {}).items())
    legend = tuple((display_name(c.name), "#{:02x}{:02x}{:02x}".format(*c.colour))
                   for c in bundle.classes if c.role != "background")
    return ModelInfo(name, fields, bundle.onnx_sha256, str(manifest.get("exported_at", "")),
                     bundle.architecture, evaluations, trust_calibration=_trust_calibration(manifest), legend=legend)


def gather_report(
    store: Store, specimen_id: int, data_dir: Path, target_ra: float = 0.10, count_flagged: bool = False
) -> Report | None:
    """The report of a specimen; None when there is no such specimen. ``data_dir`` must be
    resolved (as ``create_app`` does): thumbnails outside it are not read."""
    specimen = store.get_specimen(specimen_id)
    if specimen is None:
        return None
    stats = specimen_statistics(store, specimen_id, target_ra, count_flagged)
    # specimen_statistics counts these: field_results less the fields without valid area.
    counted = {f["id"] for f in store.field_results(specimen_id, count_flagged) if f["valid_area_px"]}
    entries = []
    for row in specimen_rows(store, specimen_id):
        status, note = _status(row, row["id"] in counted, count_flagged)
        entries.append(FieldEntry(row, row["id"] in counted, status, note, picture(row, data_dir)))
    made_by = Counter(e.model for e in entries if e.measured and e.model)
    measured = [e.row for e in entries if e.measured]
    backends = sorted({str(record.get("backend") or "unknown") if (record := r.get("measurement")) else "unknown"
                       for r in measured})
    return Report(
        specimen=specimen,
        operator=specimen["operator"],
        stats=stats,
        fields=tuple(entries),
        models=tuple(model_info(name, n) for name, n in sorted(made_by.items())),
        software_version=software_version(),
        generated=time.time(),
        verdict=judge(stats, store.limits(specimen_id)),
        pixel_size=pixel_size_text(measured),
        backends=tuple(backends),
        audit=tuple(store.audit.specimen_rows(specimen_id)),
    )
