"""The JSON API (``/api/...``), the CSV export, health and metrics.

Events. A specimen started here, or a field excluded, put back, accepted or
un-accepted, publishes ``specimen`` (``{"id": ...}``) so that every open page refreshes
its statistics.

Acceptance. A field the model flagged as outside its experience counts in the
statistics only once an operator accepts it, naming who and why (the store keeps both);
only a flagged field can be accepted.

Ids. An id in a URL or query beyond what SQLite stores (2^63 - 1) is a 400, never a
store error.

Files. Output pictures are served only from the paths the store recorded for a field
(``mark_done``'s ``outputs``: ``overlay``, ``classes``, ``preview``), and only when
they lie inside the data folder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, jsonify, send_file

from phasewatch.runtime.service.store import flagged
from phasewatch.runtime.stats import specimen_statistics
from phasewatch.webui.context import current_context
from phasewatch.webui.csv_export import fields_csv
from phasewatch.webui.payloads import PICTURES, image_json
from phasewatch.webui.rest import ApiError, checked_id, json_body, query_int, text_field

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
MAX_NAME = 200
MAX_TEXT = 2000
_EXPORT_PAGE = 1000

blueprint = Blueprint("api", __name__)


def _image(file_id: int) -> dict[str, Any]:
    image = current_context().store.get_image(checked_id("image", file_id))
    if image is None:
        raise ApiError(404, f"no image {file_id}")
    return image


def _specimen(specimen_id: int) -> dict[str, Any]:
    specimen = current_context().store.get_specimen(checked_id("specimen", specimen_id))
    if specimen is None:
        raise ApiError(404, f"no specimen {specimen_id}")
    return specimen


@blueprint.get("/api/status")
def status() -> Response:
    ctx = current_context()
    ok, details = ctx.health()
    return jsonify({**ctx.status(), "health": {"ok": ok, **details}})


@blueprint.get("/healthz")
def healthz() -> tuple[Response, int]:
    ok, details = current_context().health()
    return jsonify({"ok": ok, **details}), 200 if ok else 503


@blueprint.get("/metrics")
def metrics() -> Response:
    body, content_type = current_context().metrics()
    return Response(body, content_type=content_type)


@blueprint.get("/api/images")
def images() -> Response:
    limit = query_int("limit", DEFAULT_LIMIT, 1, MAX_LIMIT) or DEFAULT_LIMIT
    specimen = query_int("specimen", None, 1)
    before = query_int("before", None, 1)
    return jsonify([image_json(i) for i in current_context().store.list_images(limit, specimen, before)])


@blueprint.get("/api/images/<int:file_id>")
def image(file_id: int) -> Response:
    found = _image(file_id)
    return jsonify({**image_json(found), "measurement": found.get("measurement")})


@blueprint.get("/api/images/<int:file_id>/<kind>.png")
def picture(file_id: int, kind: str) -> Response:
    if kind not in PICTURES:
        raise ApiError(404, f"no picture kind {kind!r}; kinds: {', '.join(PICTURES)}")
    recorded = (_image(file_id).get("outputs") or {}).get(kind)
    if recorded is None:
        raise ApiError(404, f"image {file_id} has no {kind} picture")
    path = Path(recorded).resolve()
    data_root = current_context().data_dir  # resolved by create_app
    if not path.is_relative_to(data_root):
        log.warning("web: refused %s of image %d: %s is outside %s", kind, file_id, path, data_root)
        raise ApiError(403, f"image {file_id}: the {kind} picture is outside the data folder")
    if not path.is_file():
        raise ApiError(404, f"image {file_id}: the {kind} picture is missing on disk")
    return send_file(path, mimetype="image/png")


def _measured(file_id: int) -> dict[str, Any]:
    """The image row of a measured field, the only kind whose counting can change."""
    found = _image(file_id)
    if found["state"] != "done":
        raise ApiError(409, f"image {file_id} is {found['state']}: only a measured field counts")
    return found


def _changed(found: dict[str, Any]) -> Response:
    """Tell every page that the field's specimen counts differently; the field as it is now."""
    current_context().events.publish("specimen", {"id": found["specimen_id"]})
    return jsonify(image_json(_image(found["id"])))


def _set_excluded(file_id: int, exclude: bool) -> Response:
    store = current_context().store
    found = _measured(file_id)
    if exclude:
        store.exclude_field(file_id, text_field(json_body(optional=True), "reason", MAX_TEXT))
    else:
        store.include_field(file_id)
    return _changed(found)


@blueprint.post("/api/images/<int:file_id>/exclude")
def exclude(file_id: int) -> Response:
    return _set_excluded(file_id, True)


@blueprint.post("/api/images/<int:file_id>/include")
def include(file_id: int) -> Response:
    return _set_excluded(file_id, False)


@blueprint.post("/api/images/<int:file_id>/accept")
def accept(file_id: int) -> Response:
    found = _measured(file_id)
    if not flagged(found):
        raise ApiError(409, f"image {file_id} is not flagged: it counts without acceptance")
    body = json_body()
    who = text_field(body, "who", MAX_NAME, required=True)
    reason = text_field(body, "reason", MAX_TEXT, required=True)
    current_context().store.accept_field(file_id, who, reason)
    return _changed(found)


@blueprint.post("/api/images/<int:file_id>/unaccept")
def unaccept(file_id: int) -> Response:
    found = _measured(file_id)
    current_context().store.unaccept_field(file_id)
    return _changed(found)


@blueprint.get("/api/specimens")
def specimens() -> Response:
    store = current_context().store
    return jsonify({"current": store.current_specimen(), "specimens": store.list_specimens()})


@blueprint.post("/api/specimens")
def start_specimen() -> tuple[Response, int]:
    ctx = current_context()
    body = json_body()
    name = text_field(body, "name", MAX_NAME, required=True)
    notes = text_field(body, "notes", MAX_TEXT)
    specimen_id = ctx.store.start_specimen(name, notes)
    ctx.events.publish("specimen", {"id": specimen_id})
    return jsonify(_specimen(specimen_id)), 201


@blueprint.get("/api/specimens/<int:specimen_id>/stats")
def specimen_stats(specimen_id: int) -> Response:
    ctx = current_context()
    specimen = _specimen(specimen_id)
    stats = specimen_statistics(ctx.store, specimen_id, ctx.target_ra, ctx.count_flagged)
    return jsonify({**stats, "specimen": specimen})


@blueprint.get("/export.csv")
def export_csv() -> Response:
    store = current_context().store
    specimen = query_int("specimen", None, 1)
    rows: list[dict[str, Any]] = []
    before = None
    while page := store.list_images(_EXPORT_PAGE, specimen, before):
        rows.extend(page)
        before = page[-1]["id"]
    rows.reverse()  # oldest first, as fields were taken
    return Response(
        fields_csv(rows), mimetype="text/csv",
        headers={"Content-Disposition": "attachment; filename=phasewatch.csv"},
    )
