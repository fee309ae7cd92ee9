"""The specimens' JSON API: list, start, rename and annotate, make current, close and
reopen (``/api/specimens/...``), and a specimen's statistics.

Every change publishes ``specimen`` (``{"id": ...}``) so that every open page refreshes.
A specimen row is the store's (``src/phasewatch/store/``): ``operator`` is who prepared
and imaged it ("" when nobody said), ``model_name`` and ``model_sha256`` name the one model
whose fields it holds (None until its first measured field), ``derived_from`` the specimen
it was started from when the model changed, ``closed`` when it was signed off (None while
open).
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from phasewatch.core.stats import specimen_statistics
from phasewatch.store import ImageFilter
from phasewatch.store.rows import SpecimenRow
from phasewatch.webui.context import current_context
from phasewatch.webui.payloads import ClassJson, classes_json
from phasewatch.webui.rest import MAX_NAME, MAX_TEXT, ApiError, checked_id, json_body, text_field

blueprint = Blueprint("specimens_api", __name__)


def _specimen(specimen_id: int) -> SpecimenRow:
    specimen = current_context().store.get_specimen(checked_id("specimen", specimen_id))
    if specimen is None:
        raise ApiError(404, f"no specimen {specimen_id}")
    return specimen


def _changed(specimen_id: int) -> Response:
    """Tell every page; the specimen as it is now."""
    current_context().events.publish("specimen", {"id": specimen_id})
    return jsonify(_specimen(specimen_id))


@blueprint.get("/api/specimens")
def specimens() -> Response:
    store = current_context().store
    return jsonify({"current": store.current_specimen(), "specimens": store.list_specimens()})


@blueprint.post("/api/specimens")
def start_specimen() -> tuple[Response, int]:
    body = json_body()
    name = text_field(body, "name", MAX_NAME, required=True)
    notes = text_field(body, "notes", MAX_TEXT)
    operator = text_field(body, "operator", MAX_NAME)
    specimen_id = current_context().store.start_specimen(name, notes, operator)
    return _changed(specimen_id), 201


@blueprint.get("/api/specimens/<int:specimen_id>")
def specimen(specimen_id: int) -> Response:
    return jsonify(_specimen(specimen_id))


@blueprint.patch("/api/specimens/<int:specimen_id>")
def update_specimen(specimen_id: int) -> Response:
    _specimen(specimen_id)
    body = json_body()
    name = text_field(body, "name", MAX_NAME, required=True) if "name" in body else None
    notes = text_field(body, "notes", MAX_TEXT) if "notes" in body else None
    operator = text_field(body, "operator", MAX_NAME) if "operator" in body else None
    if name is None and notes is None and operator is None:
        raise ApiError(400, "send name, notes, operator or several of them")
    current_context().store.update_specimen(specimen_id, name, notes, operator)
    return _changed(specimen_id)


@blueprint.post("/api/specimens/<int:specimen_id>/current")
def make_current(specimen_id: int) -> Response:
    if _specimen(specimen_id)["closed"] is not None:
        raise ApiError(409, f"specimen {specimen_id} is closed; reopen it first")
    json_body(optional=True)
    current_context().store.make_current(specimen_id)
    return _changed(specimen_id)


@blueprint.post("/api/specimens/<int:specimen_id>/close")
def close(specimen_id: int) -> Response:
    if _specimen(specimen_id)["is_current"]:
        raise ApiError(409, f"specimen {specimen_id} is the current one: start or switch to another before "
                            "closing it")
    json_body(optional=True)
    current_context().store.close_specimen(specimen_id)
    return _changed(specimen_id)


@blueprint.post("/api/specimens/<int:specimen_id>/reopen")
def reopen(specimen_id: int) -> Response:
    _specimen(specimen_id)
    json_body(optional=True)
    current_context().store.reopen_specimen(specimen_id)
    return _changed(specimen_id)


def specimen_classes(specimen_id: int, names: list[str]) -> list[ClassJson]:
    """The legend of a specimen: the classes of the model its measured fields share."""
    measured = current_context().store.list_images(1, specimen_id, only=ImageFilter(state="done"))
    return classes_json(measured[0].get("model") if measured else None, names)


@blueprint.get("/api/specimens/<int:specimen_id>/stats")
def specimen_stats(specimen_id: int) -> Response:
    ctx = current_context()
    found = _specimen(specimen_id)
    stats = specimen_statistics(ctx.store, specimen_id, ctx.target_ra, ctx.count_flagged)
    return jsonify({**stats, "specimen": found, "classes": specimen_classes(specimen_id, list(stats["fractions"]))})
