"""How the API and the ``field`` event show a store image row, a field's classes and
its provenance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from phasewatch.store import display_text
from phasewatch.webui.names import display_name
from phasewatch.webui.thumbs import thumbnail_url

PICTURES = ("overlay", "classes", "preview")


def trust_json(trust: dict[str, Any] | None) -> dict[str, Any] | None:
    """A record's trust as ``{ok, score, reasons}``; None for records made before it."""
    if trust is None:
        return None
    return {"ok": bool(trust.get("ok", True)), "score": trust.get("score"),
            "reasons": [str(r) for r in trust.get("reasons") or []]}


def slices(image: dict[str, Any]) -> int | None:
    """A volume's number of slices (``volume.field_like_record``); None for a field."""
    volume = (image.get("measurement") or {}).get("volume")
    return int(volume["slices"]) if volume else None


def image_json(image: dict[str, Any]) -> dict[str, Any]:
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
        "excluded": bool(image["excluded"]),
        "exclude_reason": image["exclude_reason"],
        "trust": trust_json(image.get("trust")),
        "accepted": bool(image["accepted"]),
        "accepted_by": image["accepted_by"],
        "accept_reason": image["accept_reason"],
        "accepted_at": image["accepted_at"],
        "pictures": {
            kind: f"/api/images/{image['id']}/{kind}.png" for kind in PICTURES if kind in outputs
        },
        "thumbnail": thumbnail_url(image),
        "slices": slices(image),
    }


def _hex(colour: list[int] | tuple[int, ...]) -> str:
    return "#" + "".join(f"{int(c):02x}" for c in colour)


def classes_json(model: dict[str, Any] | None, names: list[str]) -> list[dict[str, Any]]:
    """A legend: every class of the model that measured a field (id, manifest ``name``,
    display ``label``, ``colour`` as #rrggbb, ``role``); for a result recorded before the
    model identity was, only the ``names`` it measured, without ids or colours."""
    if model and model.get("classes"):
        return [{"id": c["id"], "name": c["name"], "label": display_name(c["name"]), "colour": _hex(c["colour"]),
                 "role": c["role"]} for c in model["classes"]]
    return [{"id": None, "name": n, "label": display_name(n), "colour": None, "role": None} for n in names]


def provenance_json(image: dict[str, Any]) -> dict[str, Any]:
    """Where a field's numbers come from: the file (name, sha256, size, when it was
    captured, i.e. its modification time, arrived and processed), the model that measured
    it and the calibration. Model keys are None for a result recorded before the model
    identity was (or a field not measured)."""
    record = image.get("measurement") or {}
    model = image.get("model") or {}
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


def image_detail_json(image: dict[str, Any]) -> dict[str, Any]:
    """One field as ``GET /api/images/ID`` shows it: :func:`image_json`, the whole
    record (``measurement``), its ``classes`` (:func:`classes_json`) and ``provenance``."""
    names = list(image.get("fractions") or {})
    return {**image_json(image), "measurement": image.get("measurement"),
            "classes": classes_json(image.get("model"), names), "provenance": provenance_json(image)}
