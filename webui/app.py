"""The Flask app of ``phasewatch serve``: the live page, the JSON API, SSE, metrics, health.

Everything the app knows about the daemon comes through :class:`AppContext`, so the app
is built the same way by the daemon and by the tests (:func:`create_app`).

Events. The daemon publishes ``field`` with :func:`image_json` of a field that has just
ended ``done`` or ``failed``; the app itself publishes ``specimen`` (``{"id": ...}``)
when a specimen starts or a field is excluded or put back, so that every open page
refreshes its statistics.

Files. Output pictures are served only from the paths the store recorded for a field
(``mark_done``'s ``outputs``: ``overlay``, ``classes``, ``preview``), and only when
they lie inside the data folder.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, render_template, request, send_file
from werkzeug.exceptions import HTTPException

from phasewatch.runtime.errors import PhasewatchError
from phasewatch.runtime.service.store import Store, StoreError
from phasewatch.runtime.stats import specimen_statistics, t_975
from phasewatch.webui.events import EventBroker, StreamRefused

log = logging.getLogger(__name__)

PICTURES = ("overlay", "classes", "preview")
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
MAX_NAME = 200
MAX_TEXT = 2000
_EXPORT_PAGE = 1000


@dataclass
class AppContext:
    """What the app reads from the daemon.

    ``status()`` returns the queue counts and the backend (``queued``, ``processing``,
    ``done``, ``failed``, ``backend``, ``model``, ``uptime_s``); ``health()`` returns
    ``(ok, details)``, details being JSON-able (e.g. ``{"reasons": [...]}``);
    ``metrics()`` returns the Prometheus exposition and its content type.
    """

    store: Store
    events: EventBroker
    status: Callable[[], dict[str, Any]]
    health: Callable[[], tuple[bool, dict[str, Any]]]
    metrics: Callable[[], tuple[bytes, str]]
    target_ra: float
    data_dir: Path


class ApiError(PhasewatchError):
    """A request the API refuses: ``status`` and a one-line message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def image_json(image: dict[str, Any]) -> dict[str, Any]:
    """A store image row as the API and the ``field`` event show it."""
    outputs = image.get("outputs") or {}
    return {
        "id": image["id"],
        "file": Path(image["path"]).name,
        "path": image["path"],
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
        "pictures": {
            kind: f"/api/images/{image['id']}/{kind}.png" for kind in PICTURES if kind in outputs
        },
    }


def main_phase(fields: Iterable[dict[str, Any]]) -> str | None:
    """The phase class (a class with particle statistics) with the largest summed
    fraction over ``fields``: the one the page's trend and thumbnails follow."""
    totals: dict[str, float] = {}
    for f in fields:
        for name in f.get("particles") or {}:
            totals[name] = totals.get(name, 0.0) + f["fractions"].get(name, 0.0)
    return max(totals, key=totals.get) if totals else None


def trend(fields: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """Area % of class ``name`` per field, oldest first, with the running mean and its
    95 % CI half-width after each field (null below two fields)."""
    values = [100.0 * f["fractions"].get(name, 0.0) for f in fields]
    means, cis = [], []
    total = total_sq = 0.0
    for n, value in enumerate(values, start=1):
        total += value
        total_sq += value * value
        mean = total / n
        means.append(mean)
        if n < 2:
            cis.append(None)
            continue
        std = math.sqrt(max(0.0, (total_sq - n * mean * mean) / (n - 1)))
        cis.append(t_975(n - 1) * std / math.sqrt(n))
    return {"class": name, "ids": [f["id"] for f in fields], "values": values, "mean": means, "ci95": cis}


def _query_int(name: str, default: int | None, low: int, high: int | None = None) -> int | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ApiError(400, f"{name} must be an integer, got {raw!r}") from exc
    if value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise ApiError(400, f"{name} must be {bound}, got {value}")
    return value


def _json_body(optional: bool = False) -> dict[str, Any]:
    if optional and not request.get_data():
        return {}
    body = request.get_json(force=True, silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def _text_field(body: dict[str, Any], name: str, limit: int, required: bool = False) -> str:
    value = body.get(name, "")
    if not isinstance(value, str):
        raise ApiError(400, f"{name} must be a string")
    value = value.strip()
    if required and not value:
        raise ApiError(400, f"{name} is required")
    if len(value) > limit:
        raise ApiError(400, f"{name} is longer than {limit} characters")
    return value


def _iso(timestamp: float | None) -> str:
    if timestamp is None:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def create_app(ctx: AppContext) -> Flask:
    """The web app over ``ctx`` (module doc for events and files)."""
    app = Flask(__name__)
    app.json.sort_keys = False
    data_root = Path(ctx.data_dir).resolve()
    store = ctx.store

    def get_image(file_id: int) -> dict[str, Any]:
        image = store.get_image(file_id)
        if image is None:
            raise ApiError(404, f"no image {file_id}")
        return image

    def get_specimen(specimen_id: int) -> dict[str, Any]:
        specimen = store.get_specimen(specimen_id)
        if specimen is None:
            raise ApiError(404, f"no specimen {specimen_id}")
        return specimen

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError):
        return jsonify(error=exc.message), exc.status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return jsonify(error=exc.description), exc.code

    @app.errorhandler(StoreError)
    def store_error(exc: StoreError):
        log.error("web: %s", exc)
        return jsonify(error=str(exc)), 500

    @app.get("/")
    def index():
        return render_template("index.html", target_ra_pct=ctx.target_ra * 100.0)

    @app.get("/api/status")
    def status():
        ok, details = ctx.health()
        return jsonify({**ctx.status(), "health": {"ok": ok, **details}})

    @app.get("/healthz")
    def healthz():
        ok, details = ctx.health()
        return jsonify({"ok": ok, **details}), 200 if ok else 503

    @app.get("/metrics")
    def metrics():
        body, content_type = ctx.metrics()
        return Response(body, content_type=content_type)

    @app.get("/api/images")
    def images():
        limit = _query_int("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        specimen = _query_int("specimen", None, 1)
        before = _query_int("before", None, 1)
        return jsonify([image_json(i) for i in store.list_images(limit, specimen, before)])

    @app.get("/api/images/<int:file_id>")
    def image(file_id: int):
        found = get_image(file_id)
        return jsonify({**image_json(found), "measurement": found.get("measurement")})

    @app.get("/api/images/<int:file_id>/<kind>.png")
    def picture(file_id: int, kind: str):
        if kind not in PICTURES:
            raise ApiError(404, f"no picture kind {kind!r}; kinds: {', '.join(PICTURES)}")
        recorded = (get_image(file_id).get("outputs") or {}).get(kind)
        if recorded is None:
            raise ApiError(404, f"image {file_id} has no {kind} picture")
        path = Path(recorded).resolve()
        if not path.is_relative_to(data_root):
            log.warning("web: refused %s of image %d: %s is outside %s", kind, file_id, path, data_root)
            raise ApiError(403, f"image {file_id}: the {kind} picture is outside the data folder")
        if not path.is_file():
            raise ApiError(404, f"image {file_id}: the {kind} picture is missing on disk")
        return send_file(path, mimetype="image/png")

    def set_excluded(file_id: int, exclude: bool):
        found = get_image(file_id)
        if found["state"] != "done":
            raise ApiError(409, f"image {file_id} is {found['state']}: only a measured field counts")
        if exclude:
            store.exclude_field(file_id, _text_field(_json_body(optional=True), "reason", MAX_TEXT))
        else:
            store.include_field(file_id)
        ctx.events.publish("specimen", {"id": found["specimen_id"]})
        return jsonify(image_json(get_image(file_id)))

    @app.post("/api/images/<int:file_id>/exclude")
    def exclude(file_id: int):
        return set_excluded(file_id, True)

    @app.post("/api/images/<int:file_id>/include")
    def include(file_id: int):
        return set_excluded(file_id, False)

    @app.get("/api/specimens")
    def specimens():
        return jsonify({"current": store.current_specimen(), "specimens": store.list_specimens()})

    @app.post("/api/specimens")
    def start_specimen():
        body = _json_body()
        name = _text_field(body, "name", MAX_NAME, required=True)
        notes = _text_field(body, "notes", MAX_TEXT)
        specimen_id = store.start_specimen(name, notes)
        ctx.events.publish("specimen", {"id": specimen_id})
        return jsonify(get_specimen(specimen_id)), 201

    @app.get("/api/specimens/<int:specimen_id>/stats")
    def specimen_stats(specimen_id: int):
        specimen = get_specimen(specimen_id)
        stats = specimen_statistics(store, specimen_id, ctx.target_ra)
        # The same fields as the statistics: measured, not excluded, with a valid area.
        fields = [f for f in store.field_results(specimen_id) if f["valid_area_px"]]
        phase = main_phase(fields)
        return jsonify({
            **stats,
            "specimen": specimen,
            "main_phase": phase,
            "trend": trend(fields, phase) if phase else None,
        })

    @app.get("/export.csv")
    def export_csv():
        specimen = _query_int("specimen", None, 1)
        rows, before = [], None
        while page := store.list_images(_EXPORT_PAGE, specimen, before):
            rows.extend(page)
            before = page[-1]["id"]
        rows.reverse()  # oldest first, as fields were taken
        classes: dict[str, None] = {}
        for row in rows:
            classes.update(dict.fromkeys(row.get("fractions") or {}))
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["id", "file", "specimen", "state", "processed",
                         *(f"{name}_area_pct" for name in classes), "excluded", "reason", "error", "path"])
        for row in rows:
            fractions = row.get("fractions") or {}
            writer.writerow([
                row["id"], Path(row["path"]).name, row["specimen"], row["state"], _iso(row["processed"]),
                *(f"{100.0 * fractions[c]:.4f}" if c in fractions else "" for c in classes),
                int(bool(row["excluded"])), row["exclude_reason"] or "", row["error"] or "", row["path"],
            ])
        return Response(
            out.getvalue(), mimetype="text/csv",
            headers={"Content-Disposition": "attachment; filename=phasewatch.csv"},
        )

    @app.get("/events")
    def events():
        last = request.headers.get("Last-Event-ID", "")
        try:
            stream = ctx.events.subscribe(int(last) if last.isdigit() else None)
        except StreamRefused as exc:
            return jsonify(error=str(exc)), 503, {"Retry-After": "10"}
        return Response(
            stream, mimetype="text/event-stream",
            # No caching, and no buffering in a reverse proxy (nginx) in front of the appliance.
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return app
