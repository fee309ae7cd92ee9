"""The JSON API of fields (``/api/status``, ``/api/images/...``), the CSV export, health
and metrics; the specimens' routes are in :mod:`.specimens_api`.

Events. A field excluded, put back, accepted or un-accepted publishes ``specimen``
(``{"id": ...}``) so that every open page refreshes its statistics.

Acceptance. A field the model flagged as outside its experience counts in the
statistics only once an operator accepts it, naming who and why (the store keeps both);
only a flagged field can be accepted.

Ids. An id in a URL or query beyond what SQLite stores (2^63 - 1) is a 400, never a
store error.

Files. Output pictures are served only from the paths the store recorded for a field
(``mark_done``'s ``outputs``: ``overlay``, ``classes``, ``preview``), and only when
they lie inside the data folder, as ``KIND.jpg`` or ``KIND.png`` after the recorded file's
suffix (a URL with the other suffix, as a client of results recorded before overlays and
previews were JPEGs would ask, is redirected there); so are thumbnails (:mod:`.thumbs`), which are cached
for good under a versioned URL, and a volume's slices (``/api/images/ID/slices/Z/KIND.png``,
KIND ``classes`` or ``preview``), read one page at a time from its recorded stacks
(``src/phasewatch/core/volume_views.py``).

History. ``/api/images`` narrows the list by file name (``q``), state or kind
(``state``: a store state, ``excluded``, ``flagged``, ``duplicate``), arrival time
(``since`` .. ``until``, epoch seconds) and specimen, and pages by id both ways
(``before``, ``after``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
from flask import Blueprint, Response, jsonify, redirect, request, send_file
from werkzeug.wrappers import Response as BaseResponse

from phasewatch.core.volume_views import SLICE_PICTURES
from phasewatch.imageio.stacks import StackReadError, open_label_stack
from phasewatch.store import IMAGE_KINDS, STATES, ImageFilter, flagged
from phasewatch.store.rows import ImageRow
from phasewatch.webui.context import current_context
from phasewatch.webui.csv_export import store_csv
from phasewatch.webui.payloads import PICTURE_TYPES, PICTURES, image_detail_json, image_json, picture_url
from phasewatch.webui.rest import (
    MAX_NAME,
    MAX_TEXT,
    ApiError,
    checked_id,
    json_body,
    query_float,
    query_int,
    text_field,
)
from phasewatch.webui.security import request_authorised
from phasewatch.webui.specimens_api import who
from phasewatch.webui.thumbs import CACHE_FOREVER, thumbnail_bytes, thumbnail_source, thumbnail_version

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
MAX_QUERY = 200
IMAGE_STATES = (*STATES, *IMAGE_KINDS)

blueprint = Blueprint("api", __name__)


def _image(file_id: int) -> ImageRow:
    image = current_context().store.get_image(checked_id("image", file_id))
    if image is None:
        raise ApiError(404, f"no image {file_id}")
    return image


@blueprint.get("/api/status")
def status() -> Response:
    ctx = current_context()
    ok, details = ctx.health()
    return jsonify({**ctx.status(), "health": {"ok": ok, **details}})


@blueprint.get("/healthz")
def healthz() -> tuple[Response, int]:
    ok, details = current_context().health()
    if not request_authorised():
        # Anyone may ask (monitoring, systemd): the state and what is failing, in words the
        # code chose. The reasons name paths and echo library errors: with the token only.
        details = {"failing": sorted(details.get("problems", {}))}
    return jsonify({"ok": ok, **details}), 200 if ok else 503


@blueprint.get("/metrics")
def metrics() -> Response:
    body, content_type = current_context().metrics()
    return Response(body, content_type=content_type)


def _filter() -> ImageFilter:
    state = request.args.get("state", "")
    if state and state not in IMAGE_STATES:
        raise ApiError(400, f"state must be one of {', '.join(IMAGE_STATES)}, got {state!r}")
    name = request.args.get("q", "").strip()
    if len(name) > MAX_QUERY:
        raise ApiError(400, f"q is longer than {MAX_QUERY} characters")
    return ImageFilter(name=name, state=state, since=query_float("since"), until=query_float("until"))


@blueprint.get("/api/images")
def images() -> Response:
    limit = query_int("limit", DEFAULT_LIMIT, 1, MAX_LIMIT) or DEFAULT_LIMIT
    specimen = query_int("specimen", None, 1)
    before = query_int("before", None, 1)
    after = query_int("after", None, 0)
    rows = current_context().store.list_images(limit, specimen, before, after, _filter())
    return jsonify([image_json(i) for i in rows])


@blueprint.get("/api/images/<int:file_id>")
def image(file_id: int) -> Response:
    return jsonify(image_detail_json(_image(file_id)))


def _recorded_file(file_id: int, kind: str, recorded: str | Path) -> Path:
    """A picture the store recorded for a field, refused unless it lies in the data folder."""
    path = Path(recorded).resolve()
    data_root = current_context().data_dir  # resolved by create_app
    if not path.is_relative_to(data_root):
        log.warning("web: refused %s of image %d: %s is outside %s", kind, file_id, path, data_root)
        raise ApiError(403, f"image {file_id}: the {kind} picture is outside the data folder")
    if not path.is_file():
        raise ApiError(404, f"image {file_id}: the {kind} picture is missing on disk")
    return path


@blueprint.get("/api/images/<int:file_id>/<kind>.<suffix>")
def picture(file_id: int, kind: str, suffix: str) -> BaseResponse:
    if kind not in PICTURES or suffix not in PICTURE_TYPES:
        raise ApiError(404, f"no picture {kind}.{suffix}; kinds: {', '.join(PICTURES)}, "
                            f"as {' or '.join(PICTURE_TYPES)}")
    recorded = (_image(file_id).get("outputs") or {}).get(kind)
    if recorded is None:
        raise ApiError(404, f"image {file_id} has no {kind} picture")
    if Path(recorded).suffix != f".{suffix}":
        # 302, not 301: a field measured again may be recorded under the other suffix.
        return redirect(picture_url(file_id, kind, recorded), 302)
    return send_file(_recorded_file(file_id, kind, recorded), mimetype=PICTURE_TYPES[suffix])


@blueprint.get("/api/images/<int:file_id>/slices/<int:index>/<kind>.png")
def slice_picture(file_id: int, index: int, kind: str) -> Response:
    if kind not in SLICE_PICTURES:
        raise ApiError(404, f"no slice picture kind {kind!r}; kinds: {', '.join(SLICE_PICTURES)}")
    recorded = (_image(file_id).get("outputs") or {}).get(f"{kind}_stack")
    if recorded is None:
        raise ApiError(404, f"image {file_id} is not a volume: it has no slices")
    path = _recorded_file(file_id, kind, recorded)
    try:
        plane = open_label_stack(path).plane(index)
    except StackReadError as exc:  # no such slice, or a stack damaged on disk since
        raise ApiError(404, f"image {file_id}: {exc}") from exc
    if plane.ndim == 3:
        plane = cv2.cvtColor(plane, cv2.COLOR_RGB2BGR)
    return Response(cv2.imencode(".png", plane)[1].tobytes(), mimetype="image/png")


@blueprint.get("/api/images/<int:file_id>/thumb-<version>.jpg")
def thumbnail(file_id: int, version: str) -> Response:
    found = _image(file_id)
    source = thumbnail_source(found)
    if source is None:
        raise ApiError(404, f"image {file_id} has no picture to make a thumbnail of")
    path = _recorded_file(file_id, "thumbnail", source)
    if version != thumbnail_version(found):
        # An old URL: what it named is gone. Never send other bytes under it, they would be kept a year.
        raise ApiError(404, f"image {file_id}: thumbnail {version!r} is not its current one")
    key = f"{found['duplicate_of'] or file_id}-{version}"
    try:
        data = thumbnail_bytes(path, current_context().data_dir / "thumbs", key)
    except OSError as exc:
        log.warning("web: no thumbnail for image %d: %s", file_id, exc)
        raise ApiError(500, f"image {file_id}: cannot make its thumbnail") from exc
    return Response(data, mimetype="image/jpeg", headers={"Cache-Control": CACHE_FOREVER})


def _measured(file_id: int) -> ImageRow:
    """The image row of a measured field, the only kind whose counting can change."""
    found = _image(file_id)
    if found["state"] != "done":
        raise ApiError(409, f"image {file_id} is {found['state']}: only a measured field counts")
    return found


def _changed(found: ImageRow) -> Response:
    """Tell every page that the field's specimen counts differently; the field as it is now."""
    current_context().events.publish("specimen", {"id": found["specimen_id"]})
    return jsonify(image_json(_image(found["id"])))


def _set_excluded(file_id: int, exclude: bool) -> Response:
    store = current_context().store
    found = _measured(file_id)
    body = json_body(optional=True)
    if exclude:
        store.exclude_field(file_id, text_field(body, "reason", MAX_TEXT), who(body))
    else:
        store.include_field(file_id, who(body))
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
    if not flagged(found) and found["same_pixels_as"] is None:
        raise ApiError(409, f"image {file_id} is not flagged: it counts without acceptance")
    body = json_body()
    who = text_field(body, "who", MAX_NAME, required=True)
    reason = text_field(body, "reason", MAX_TEXT, required=True)
    current_context().store.accept_field(file_id, who, reason)
    return _changed(found)


@blueprint.post("/api/images/<int:file_id>/unaccept")
def unaccept(file_id: int) -> Response:
    found = _measured(file_id)
    current_context().store.unaccept_field(file_id, who(json_body(optional=True)))
    return _changed(found)


@blueprint.get("/export.csv")
def export_csv() -> Response:
    ctx = current_context()
    return Response(
        store_csv(ctx.store, query_int("specimen", None, 1), ctx.target_ra, ctx.count_flagged), mimetype="text/csv",
        headers={"Content-Disposition": "attachment; filename=phasewatch.csv"},
    )
