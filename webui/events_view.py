"""``/events``: the Server-Sent Events stream of :mod:`phasewatch.webui.events`."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from phasewatch.webui.context import current_context
from phasewatch.webui.events import StreamRefused

blueprint = Blueprint("events", __name__)


@blueprint.get("/events")
def events() -> Response | tuple[Response, int, dict[str, str]]:
    last = request.headers.get("Last-Event-ID", "")
    try:
        stream = current_context().events.subscribe(int(last) if last.isdigit() else None)
    except StreamRefused as exc:
        return jsonify(error=str(exc)), 503, {"Retry-After": "10"}
    return Response(
        stream, mimetype="text/event-stream",
        # No caching, and no buffering in a reverse proxy (nginx) in front of the appliance.
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
