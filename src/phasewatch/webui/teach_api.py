"""The JSON API of teaching, models and re-analysis (issue 22's interface; the labels and
materials routes are :mod:`.labels_api`):

- ``POST /api/teach`` ``{"material", "base", "fields": [ids], "budget_min", "name"?, "who"}`` -> 202
  ``{"job": id}``; ``GET /api/teach`` (every job, newest first); ``GET /api/teach/{job}`` ->
  ``{"state", "progress", "model", "gate", "error", "stage", "message", "eta_s", ...}``;
  ``DELETE /api/teach/{job}`` cancels. Each change of a job is also a ``teach`` event on ``/events``.
- ``GET /api/models`` -> ``{"models": [...], "active": name|null}``: bundled and taught models with
  material, parent and gate; ``GET /api/models/{name}``; ``POST /api/models/{name}/activate``
  ``{"who", "reason"?}`` (a taught model only when its gate passed): the daemon measures new fields
  with it (a new specimen starts, as on any model change); ``POST /api/models/rollback`` ``{"who"}``
  returns to the model in force before the last change.
- ``POST /api/models/{name}/reanalyse`` ``{"specimen": id, "who"}`` -> 202 ``{"job"}``: the model over
  the specimen's files; ``GET /api/reanalyses/{job}`` -> ``{"state", "progress", "comparison"}``:
  ``reanalyse-compare``'s numbers (old against new per class, paired difference and CI) and the
  fields the old model flagged that the new one trusts.

The web app never imports the service: the daemon's side comes in through :class:`Teaching`,
which ``app/wiring.py`` hands over (``service/teach_jobs.py``). Without it (a web app on its own)
these routes answer 503. Activation and rollback are written to the audit record by the store.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, jsonify

from phasewatch.bundle import Bundle, BundleError, bundled_model_names, load_bundle, taught_model_names
from phasewatch.store import StoreError
from phasewatch.webui.context import Teaching, current_context
from phasewatch.webui.rest import MAX_ID, MAX_NAME, MAX_TEXT, ApiError, checked_id, json_body, text_field

blueprint = Blueprint("teach_api", __name__)

MAX_BUDGET_MIN = 24 * 60.0
MAX_FIELDS = 10_000


def _teaching() -> Teaching:
    teaching: Teaching | None = current_context().teach
    if teaching is None:
        raise ApiError(503, "teaching is not available here: this web app runs without the service")
    return teaching


def models_dir() -> Path:
    return current_context().data_dir / "models"


def _bundle(name: str) -> Bundle:
    try:
        return load_bundle(name, verify_hash=False, models_dir=models_dir())
    except BundleError as exc:
        raise ApiError(404, f"no model {name!r}") from exc


def model_json(bundle: Bundle, source: str) -> dict[str, Any]:
    manifest = bundle.manifest
    taught = manifest.get("taught") or {}
    parent = manifest.get("parent") or {}
    return {"name": bundle.name, "source": source, "material": manifest.get("material", bundle.name),
            "parent": parent.get("name"), "parent_onnx_sha256": parent.get("onnx_sha256"),
            "onnx_sha256": bundle.onnx_sha256, "architecture": bundle.architecture,
            "classes": [{"id": c.id, "name": c.name, "colour": "#{:02x}{:02x}{:02x}".format(*c.colour),
                         "role": c.role} for c in bundle.classes],
            "gate": manifest.get("gate"), "fields": taught.get("fields"), "budget_min": taught.get("budget_min"),
            "taught_by": taught.get("who"), "warnings": taught.get("warnings", []),
            "created": bundle.onnx_path.stat().st_mtime if source == "taught" else None}


def _models() -> list[dict[str, Any]]:
    found = []
    for source, names in (("bundled", bundled_model_names()), ("taught", taught_model_names(models_dir()))):
        for name in names:
            try:
                found.append(model_json(load_bundle(name, verify_hash=False, models_dir=models_dir()), source))
            except (BundleError, OSError):
                continue  # a broken bundle is doctor's to report; it cannot be chosen
    return found


def _active() -> str | None:
    active = current_context().store.active_model()
    return active["name"] if active else None


def _who(body: dict[str, Any]) -> str:
    return text_field(body, "who", MAX_NAME, required=True)


def _id_list(raw: Any) -> list[int] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or len(raw) > MAX_FIELDS or not all(
            isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_ID for v in raw):
        raise ApiError(400, "fields must be a list of image ids")
    return list(dict.fromkeys(raw))


# -- teach jobs ---------------------------------------------------------------------------------


@blueprint.post("/api/teach")
def start_teach() -> tuple[Response, int]:
    body = json_body()
    store = current_context().store
    material = text_field(body, "material", MAX_NAME, required=True)
    base = text_field(body, "base", MAX_NAME, required=True)
    name = text_field(body, "name", MAX_NAME) or None
    who = _who(body)
    budget = body.get("budget_min")
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not math.isfinite(budget) \
            or not 0 < budget <= MAX_BUDGET_MIN:
        raise ApiError(400, f"budget_min must be minutes, more than 0 and at most {MAX_BUDGET_MIN:.0f}")
    fields = _id_list(body.get("fields"))
    if store.material(material) is None:
        raise ApiError(404, f"no material {material!r}: create it first (POST /api/materials)")
    _bundle(base)
    try:
        labelled = store.labelled_fields(material, fields)
    except StoreError as exc:  # a field without labels of the material
        raise ApiError(400, str(exc)) from exc
    if not labelled:
        raise ApiError(409, f"too few labels: no field is labelled with {material!r}")
    job = _teaching().start(material, base, fields, float(budget), name, who)
    return jsonify(job=job), 202


@blueprint.get("/api/teach")
def teach_jobs() -> Response:
    return jsonify(jobs=_teaching().jobs())


@blueprint.get("/api/teach/<job>")
def teach_job(job: str) -> Response:
    found = _teaching().job(job)
    if found is None:
        raise ApiError(404, f"no teach job {job!r}")
    return jsonify(found)


@blueprint.delete("/api/teach/<job>")
def cancel_teach(job: str) -> Response:
    who = text_field(json_body(optional=True), "who", MAX_NAME) or "web page"
    found = _teaching().cancel(job, who)
    if found is None:
        raise ApiError(404, f"no teach job {job!r}")
    return jsonify(found)


# -- models ---------------------------------------------------------------------------------------


@blueprint.get("/api/models")
def models() -> Response:
    return jsonify(models=_models(), active=_active())


@blueprint.get("/api/models/<name>")
def model(name: str) -> Response:
    bundle = _bundle(name)
    return jsonify(model_json(bundle, "taught" if bundle.path.parent == models_dir() else "bundled"))


@blueprint.post("/api/models/<name>/activate")
def activate(name: str) -> Response:
    body = json_body()
    who, reason = _who(body), text_field(body, "reason", MAX_TEXT)
    bundle = _bundle(name)
    gate = bundle.manifest.get("gate")
    if isinstance(gate, dict) and not gate.get("passed"):
        raise ApiError(409, f"{name}: its gate failed ({'; '.join(gate.get('reasons', []))}); it cannot measure")
    try:
        load_bundle(name, verify_hash=True, models_dir=models_dir())
    except BundleError as exc:
        raise ApiError(409, str(exc)) from exc
    teaching = _teaching()
    current_context().store.activate_model(name, who, reason)
    teaching.reload_model()
    return jsonify(active=name)


@blueprint.post("/api/models/rollback")
def rollback() -> Response:
    body = json_body()
    teaching = _teaching()
    try:
        active = current_context().store.rollback_model(_who(body), text_field(body, "reason", MAX_TEXT))
    except StoreError as exc:  # nothing to roll back
        raise ApiError(409, str(exc)) from exc
    teaching.reload_model()
    return jsonify(active=active["name"])


# -- re-analysis ---------------------------------------------------------------------------------


@blueprint.post("/api/models/<name>/reanalyse")
def reanalyse(name: str) -> tuple[Response, int]:
    body = json_body()
    specimen = body.get("specimen")
    if isinstance(specimen, bool) or not isinstance(specimen, int):
        raise ApiError(400, "specimen must be a specimen id")
    specimen = checked_id("specimen", specimen)
    if current_context().store.get_specimen(specimen) is None:
        raise ApiError(404, f"no specimen {specimen}")
    _bundle(name)
    who = text_field(body, "who", MAX_NAME) or "web page"
    return jsonify(job=_teaching().reanalyse(name, specimen, who)), 202


@blueprint.get("/api/reanalyses/<job>")
def reanalysis(job: str) -> Response:
    found = _teaching().reanalysis(job)
    if found is None:
        raise ApiError(404, f"no re-analysis {job!r}")
    return jsonify(found)
