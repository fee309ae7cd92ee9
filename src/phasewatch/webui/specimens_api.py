"""The specimens' JSON API: list, start, rename and annotate, make current, close and
reopen (``/api/specimens/...``), a specimen's statistics with the verdict of its limits, its
specification limits and the templates of them, its audit rows (JSON and CSV), and the
reports served, by hash (``/api/reports/SHA256``).

Signatures. Closing (``{"who", "meaning", "next_name"?, "token"?}``) and reopening
(``{"who", "reason", "token"?}``) are signed acts: when access control is on, the body must
carry the token again (a signed-in browser's cookie is not enough: the signer re-enters
it), compared in constant time. Closing the
current specimen starts the next one (``next`` in the answer).

Who. Every change takes an optional ``who`` (the person, for the audit record; "web page"
when the page names nobody).

Every change publishes ``specimen`` (``{"id": ...}``) so that every open page refreshes.
A specimen row is the store's (``src/phasewatch/store/``): ``operator`` is who prepared
and imaged it ("" when nobody said), ``model_name`` and ``model_sha256`` name the one model
whose fields it holds (None until its first measured field), ``derived_from`` the specimen
it was started from when the model changed, ``closed`` when it was signed off (None while
open).
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response, jsonify

from phasewatch.core.stats import specimen_statistics
from phasewatch.core.verdict import judge, limits_json
from phasewatch.store import MEANINGS, ImageFilter
from phasewatch.store.rows import SpecimenRow
from phasewatch.webui.access import token_matches
from phasewatch.webui.audit_csv import audit_csv
from phasewatch.webui.context import current_context
from phasewatch.webui.payloads import ClassJson, classes_json
from phasewatch.webui.rest import MAX_NAME, MAX_TEXT, ApiError, checked_id, json_body, text_field

blueprint = Blueprint("specimens_api", __name__)


def _specimen(specimen_id: int) -> SpecimenRow:
    specimen = current_context().store.get_specimen(checked_id("specimen", specimen_id))
    if specimen is None:
        raise ApiError(404, f"no specimen {specimen_id}")
    return specimen


def who(body: dict[str, Any]) -> str:
    """The person a change is audited as (module doc)."""
    return text_field(body, "who", MAX_NAME) or "web page"


def _signer(body: dict[str, Any]) -> str:
    """The signer's name, after the token is re-entered when access control is on."""
    token = current_context().access.token
    if token:
        presented = body.get("token", "")
        if not isinstance(presented, str) or not token_matches(presented, token):
            raise ApiError(403, "a signature needs the access token entered again")
    return text_field(body, "who", MAX_NAME, required=True)


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
    specimen_id = current_context().store.start_specimen(name, notes, operator, who(body))
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
    current_context().store.update_specimen(specimen_id, name, notes, operator, who(body))
    return _changed(specimen_id)


@blueprint.post("/api/specimens/<int:specimen_id>/current")
def make_current(specimen_id: int) -> Response:
    if _specimen(specimen_id)["closed"] is not None:
        raise ApiError(409, f"specimen {specimen_id} is closed; reopen it first")
    current_context().store.make_current(specimen_id, who(json_body(optional=True)))
    return _changed(specimen_id)


@blueprint.post("/api/specimens/<int:specimen_id>/close")
def close(specimen_id: int) -> Response:
    if _specimen(specimen_id)["closed"] is not None:
        raise ApiError(409, f"specimen {specimen_id} is closed already")
    body = json_body()
    signer = _signer(body)
    meaning = text_field(body, "meaning", MAX_NAME, required=True)
    if meaning not in MEANINGS:
        raise ApiError(400, f"meaning must be one of {', '.join(MEANINGS)}, got {meaning!r}")
    ctx = current_context()
    following = ctx.store.close_specimen(specimen_id, signer, meaning, text_field(body, "next_name", MAX_NAME))
    if following is not None:
        ctx.events.publish("specimen", {"id": following})
    return jsonify({**_changed(specimen_id).get_json(), "next": following})


@blueprint.post("/api/specimens/<int:specimen_id>/reopen")
def reopen(specimen_id: int) -> Response:
    if _specimen(specimen_id)["closed"] is None:
        raise ApiError(409, f"specimen {specimen_id} is not closed")
    body = json_body()
    signer = _signer(body)
    current_context().store.reopen_specimen(specimen_id, signer, text_field(body, "reason", MAX_TEXT, required=True))
    return _changed(specimen_id)


def _limits(specimen_id: int) -> dict[str, Any]:
    return {"specimen_id": specimen_id, "limits": limits_json(current_context().store.limits(specimen_id))}


@blueprint.get("/api/specimens/<int:specimen_id>/limits")
def limits(specimen_id: int) -> Response:
    _specimen(specimen_id)
    return jsonify(_limits(specimen_id))


@blueprint.put("/api/specimens/<int:specimen_id>/limits")
def set_limits(specimen_id: int) -> Response:
    """``{"limits": [...]}`` or ``{"template": NAME}``, with ``who`` and a ``reason``."""
    if _specimen(specimen_id)["closed"] is not None:
        raise ApiError(409, f"specimen {specimen_id} is closed: its limits cannot change")
    body = json_body()
    store = current_context().store
    if "template" in body:
        store.apply_template(specimen_id, text_field(body, "template", MAX_NAME, required=True), who(body))
    elif "limits" in body:
        store.set_limits(specimen_id, body["limits"], who(body), text_field(body, "reason", MAX_TEXT))
    else:
        raise ApiError(400, "send limits (a list) or a template's name")
    current_context().events.publish("specimen", {"id": specimen_id})
    return jsonify(_limits(specimen_id))


@blueprint.get("/api/limit-templates")
def templates() -> Response:
    return jsonify(current_context().store.templates())


@blueprint.put("/api/limit-templates")
def save_template() -> Response:
    """``{"name", "limits": [...], "who"}``: make or replace a template."""
    body = json_body()
    name = text_field(body, "name", MAX_NAME, required=True)
    current_context().store.save_template(name, body.get("limits"), who(body))
    return jsonify(current_context().store.template(name))


@blueprint.get("/api/specimens/<int:specimen_id>/audit")
def audit(specimen_id: int) -> Response:
    """The audit rows of the specimen and its fields, oldest first."""
    _specimen(specimen_id)
    return jsonify(current_context().store.audit.specimen_rows(specimen_id))


@blueprint.get("/api/specimens/<int:specimen_id>/audit.csv")
def audit_as_csv(specimen_id: int) -> Response:
    _specimen(specimen_id)
    return Response(audit_csv(current_context().store.audit.specimen_rows(specimen_id)), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="specimen-{specimen_id}-audit.csv"'})


@blueprint.get("/api/reports/<sha256>")
def report_by_hash(sha256: str) -> Response:
    """What the appliance recorded when it served the report with this sha256 (module doc)."""
    if not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise ApiError(400, "a report's sha256 is 64 hexadecimal digits")
    found = current_context().store.report(sha256)
    if found is None:
        raise ApiError(404, f"no report with sha256 {sha256.lower()} was served by this appliance")
    return jsonify(found)


def specimen_classes(specimen_id: int, names: list[str]) -> list[ClassJson]:
    """The legend of a specimen: the classes of the model its measured fields share."""
    measured = current_context().store.list_images(1, specimen_id, only=ImageFilter(state="done"))
    return classes_json(measured[0].get("model") if measured else None, names)


@blueprint.get("/api/specimens/<int:specimen_id>/stats")
def specimen_stats(specimen_id: int) -> Response:
    ctx = current_context()
    found = _specimen(specimen_id)
    stats = specimen_statistics(ctx.store, specimen_id, ctx.target_ra, ctx.count_flagged)
    return jsonify({**stats, "specimen": found, "classes": specimen_classes(specimen_id, list(stats["fractions"])),
                    "verdict": judge(stats, ctx.store.limits(specimen_id))})
