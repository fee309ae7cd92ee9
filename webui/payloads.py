"""How the API and the ``field`` event show a store image row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from phasewatch.runtime.service.store import display_text

PICTURES = ("overlay", "classes", "preview")


def trust_json(trust: dict[str, Any] | None) -> dict[str, Any] | None:
    """A record's trust as ``{ok, score, reasons}``; None for records made before it."""
    if trust is None:
        return None
    return {"ok": bool(trust.get("ok", True)), "score": trust.get("score"),
            "reasons": [str(r) for r in trust.get("reasons") or []]}


def image_json(image: dict[str, Any]) -> dict[str, Any]:
    """A store image row as the API and the ``field`` event show it; a path whose name is
    not UTF-8 is shown with U+FFFD for each byte that is not (JSON has no other way)."""
    outputs = image.get("outputs") or {}
    path = display_text(image["path"])
    return {
        "id": image["id"],
        "file": Path(path).name,
        "path": path,
        "state": image["state"],
        "error": image["error"],
        "specimen": image["specimen"],
        "specimen_id": image["specimen_id"],
        "fractions": image.get("fractions"),
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
    }
