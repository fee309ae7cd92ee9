"""How the API and the ``field`` event show a store image row, a field's classes and
its provenance.

The shapes are typed here (:class:`ImageJson`, :class:`ImageDetailJson`, ...) from the store's
(``src/phasewatch/store/rows.py``) and the records' (``src/phasewatch/core/records.py``);
``tests/test_record_schema.py`` holds ``webui/openapi.py`` to them, and says which keys of a
row the API drops or renames on the way.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypedDict

from phasewatch.core.records import FieldRecord, ModelIdentity, ModelTiling, TrustRecord
from phasewatch.store import display_text
from phasewatch.store.rows import ImageRow
from phasewatch.webui.names import display_name
from phasewatch.webui.thumbs import thumbnail_url

PICTURES = ("overlay", "classes", "preview")
# A picture is served under the suffix of the file recorded for it: the class map is a PNG,
# overlay and preview are JPEGs, or PNGs in results recorded before they were.
PICTURE_TYPES = {"png": "image/png", "jpg": "image/jpeg"}


class TrustJson(TypedDict):
    """A record's trust as the API shows it: its verdict and reasons, not its measures."""

    ok: bool
    score: float | None
    reasons: list[str]


class ImageJson(TypedDict):
    """An image in a list, in a change's answer and in the ``field`` event."""

    id: int
    file: str  # the path's last part
    path: str
    state: str
    error: str | None
    specimen: str
    specimen_id: int
    fractions: dict[str, float] | None
    labels: dict[str, str]  # class name -> display name, for each class in fractions
    phases: list[str]  # the phase classes that have particles
    created: float
    processed: float | None
    duplicate_of: int | None
    same_pixels_as: int | None  # likely the same field as this older one: not counted until accepted
    excluded: bool
    exclude_reason: str | None
    trust: TrustJson | None
    accepted: bool
    accepted_by: str | None
    accept_reason: str | None
    accepted_at: float | None
    pictures: dict[str, str]  # picture kind -> URL
    thumbnail: str | None
    slices: int | None  # a volume's depth; None for a field


class ClassJson(TypedDict):
    id: int | None
    name: str
    label: str
    colour: str | None  # #rrggbb
    role: str | None


class ProvenanceJson(TypedDict):
    file: str
    path: str
    sha256: str
    size: int
    captured: float
    arrived: float
    processed: float | None
    model: str | None
    onnx_sha256: str | None
    architecture: str | None
    exported_at: str | None
    backend: str | None
    tiling: ModelTiling | None
    software: str | None
    width: int | None
    height: int | None
    page: int | None
    pages: int
    slices: int | None
    pixel_size_um: float | None
    pixel_size_source: str | None


class ImageDetailJson(ImageJson):
    """One image with its whole record, legend and provenance (``GET /api/images/ID``)."""

    measurement: FieldRecord | None
    classes: list[ClassJson]
    provenance: ProvenanceJson


def trust_json(trust: TrustRecord | None) -> TrustJson | None:
    """A record's trust as ``{ok, score, reasons}``; None for records made before it."""
    if trust is None:
        return None
    return {"ok": bool(trust.get("ok", True)), "score": trust.get("score"),
            "reasons": [str(r) for r in trust.get("reasons") or []]}


def slices(image: ImageRow) -> int | None:
    """A volume's number of slices (``volume.field_like_record``); None for a field."""
    record = image.get("measurement")
    volume = record.get("volume") if record else None
    return int(volume["slices"]) if volume else None


def picture_url(image_id: int, kind: str, recorded: str) -> str:
    """The URL of a field's picture, ending in the suffix of the file recorded for it."""
    return f"/api/images/{image_id}/{kind}{Path(recorded).suffix}"


def image_json(image: ImageRow) -> ImageJson:
    """A store image row as the API and the ``field`` event show it; a path whose name is
    not UTF-8 is shown with U+FFFD for each byte that is not (JSON has no other way).
    ``labels`` gives the display name (:mod:`.names`) of every class in ``fractions``;
    ``slices`` is a volume's depth (its pictures are then its middle slice's), else None."""
    outputs = image.get("outputs") or {}
    path = display_text(image["path"])
    fractions = image.get("fractions")
    return {
        "id": image["id"],
        "file": Path(path).name,
        "path": path,
        "state": image["state"],
        "error": image["error"],
        "specimen": image["specimen"],
        "specimen_id": image["specimen_id"],
        "fractions": fractions,
        "labels": {name: display_name(name) for name in fractions or {}},
        "phases": sorted(image.get("particles") or {}),
        "created": image["created"],
        "processed": image["processed"],
        "duplicate_of": image["duplicate_of"],
        "same_pixels_as": image["same_pixels_as"],
        "excluded": bool(image["excluded"]),
        "exclude_reason": image["exclude_reason"],
        "trust": trust_json(image.get("trust")),
        "accepted": bool(image["accepted"]),
        "accepted_by": image["accepted_by"],
        "accept_reason": image["accept_reason"],
        "accepted_at": image["accepted_at"],
        "pictures": {kind: picture_url(image["id"], kind, outputs[kind]) for kind in PICTURES if kind in outputs},
        "thumbnail": thumbnail_url(image),
        "slices": slices(image),
    }


def _hex(colour: list[int] | tuple[int, ...]) -> str:
    return "#" + "".join(f"{int(c):02x}" for c in colour)


def classes_json(model: ModelIdentity | None, names: list[str]) -> list[ClassJson]:
    """A legend: every class of the model that measured a field (id, manifest ``name``,
    display ``label``, ``colour`` as #rrggbb, ``role``); for a result recorded before the
    model identity was, only the ``names`` it measured, without ids or colours."""
    if model and model.get("classes"):
        return [{"id": c["id"], "name": c["name"], "label": display_name(c["name"]), "colour": _hex(c["colour"]),
                 "role": c["role"]} for c in model["classes"]]
    return [{"id": None, "name": n, "label": display_name(n), "colour": None, "role": None} for n in names]


def provenance_json(image: ImageRow) -> ProvenanceJson:
    """Where a field's numbers come from: the file (name, sha256, size, when it was
    captured, i.e. its modification time, arrived and processed), the model that measured
    it and its pixel size. Model keys are None for a result recorded before the model
    identity was (or a field not measured)."""
    # Records and identities stored by older versions may lack any key: read them as mappings.
    record: Mapping[str, Any] = image.get("measurement") or {}
    model: Mapping[str, Any] = image.get("model") or {}
    return {
        "file": Path(display_text(image["path"])).name,
        "path": display_text(image["path"]),
        "sha256": image["sha256"],
        "size": image["size"],
        "captured": image["mtime_ns"] / 1e9,
        "arrived": image["created"],
        "processed": image["processed"],
        "model": model.get("name") or record.get("model"),
        "onnx_sha256": model.get("onnx_sha256"),
        "architecture": model.get("architecture"),
        "exported_at": model.get("exported_at"),
        "backend": model.get("backend") or record.get("backend"),
        "tiling": model.get("tiling"),
        "software": model.get("software"),
        "width": record.get("width"),
        "height": record.get("height"),
        "page": record.get("page"),
        "pages": len(record["pages"]) if record.get("pages") else 1,
        "slices": slices(image),
        "pixel_size_um": record.get("pixel_size_um"),
        "pixel_size_source": record.get("pixel_size_source"),
    }


def image_detail_json(image: ImageRow) -> ImageDetailJson:
    """One field as ``GET /api/images/ID`` shows it: :func:`image_json`, the whole
    record (``measurement``), its ``classes`` (:func:`classes_json`) and ``provenance``."""
    names = list(image.get("fractions") or {})
    return {**image_json(image), "measurement": image.get("measurement"),
            "classes": classes_json(image.get("model"), names), "provenance": provenance_json(image)}
