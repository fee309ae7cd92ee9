"""The JSON API of materials and a field's labels (issue 22's interface):

- ``GET /api/materials``: ``{"materials": [...]}``, bundled models' class sets first;
- ``POST /api/materials`` ``{"name", "classes": [{"name", "colour", "role"}], "who"}`` -> 201;
- ``PUT /api/images/ID/labels`` ``{"material", "png": BASE64, "who"}``: a new version of the
  field's labels (a one-channel PNG of class ids at the field's size, 255 = not labelled);
- ``GET /api/images/ID/labels?material=NAME``: the newest version's PNG (404: none);
- ``GET /api/materials/NAME/fields``: the fields labelled with a material (the teach page's list).

The store checks everything and keeps who and when (``store/labels.py``); a labels body
may be larger than the app's usual cap (:data:`MAX_LABELS_BODY_BYTES`).
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from flask import Blueprint, Response, jsonify, request

from phasewatch.store import display_text
from phasewatch.webui.context import current_context
from phasewatch.webui.rest import MAX_NAME, ApiError, checked_id, json_body, text_field

blueprint = Blueprint("labels_api", __name__)

# A 4096 x 4096 field's labels as a PNG are small unless they are noise; base64 of the
# worst case (16 MiB, stored) is about 22 MiB.
MAX_LABELS_BODY_BYTES = 32 << 20


def _material_name() -> str:
    name = request.args.get("material", "").strip()
    if not name:
        raise ApiError(400, "say which material: ?material=NAME")
    return name


@blueprint.get("/api/materials")
def materials() -> Response:
    return jsonify(materials=current_context().store.materials())


@blueprint.post("/api/materials")
def create_material() -> tuple[Response, int]:
    body = json_body()
    name = text_field(body, "name", MAX_NAME, required=True)
    who = text_field(body, "who", MAX_NAME, required=True)
    material = current_context().store.create_material(name, body.get("classes"), who)
    return jsonify(material), 201


@blueprint.get("/api/materials/<name>/fields")
def labelled_fields(name: str) -> Response:
    store = current_context().store
    if store.material(name) is None:
        raise ApiError(404, f"no material {name!r}")
    fields = [{**row, "file": Path(display_text(row["path"])).name} for row in store.labelled_fields(name)]
    for row in fields:
        row.pop("path", None)
    return jsonify(fields=fields)


@blueprint.put("/api/images/<int:file_id>/labels")
def put_labels(file_id: int) -> tuple[Response, int]:
    request.max_content_length = MAX_LABELS_BODY_BYTES
    body = json_body()
    material = text_field(body, "material", MAX_NAME, required=True)
    who = text_field(body, "who", MAX_NAME, required=True)
    encoded = body.get("png")
    if not isinstance(encoded, str) or not encoded:
        raise ApiError(400, "png must be the labels PNG in base64")
    try:
        png = base64.b64decode(encoded, validate=True)
    except binascii.Error as exc:
        raise ApiError(400, f"png is not base64: {exc}") from None
    version = current_context().store.save_labels(checked_id("image", file_id), material, png, who)
    return jsonify(version), 201


@blueprint.get("/api/images/<int:file_id>/labels")
def get_labels(file_id: int) -> Response:
    material = _material_name()
    labels = current_context().store.labels(checked_id("image", file_id), material)
    if labels is None:
        raise ApiError(404, f"field {file_id} has no labels of {material!r}")
    response = Response(labels["png"], mimetype="image/png")
    response.headers["Cache-Control"] = "no-store"  # a new version may come at any time
    return response
