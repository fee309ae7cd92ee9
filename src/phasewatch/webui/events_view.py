"""``/events``: the Server-Sent Events stream of :mod:`phasewatch.webui.events`."""

from __future__ import annotations

import re

from flask import Blueprint, Response, jsonify, request

from phasewatch.webui.context import current_context
from phasewatch.webui.events import StreamRefused
from phasewatch.webui.rest import MAX_ID

blueprint = Blueprint("events", __name__)

# ASCII digits only: str.isdigit() also takes "²" (which int() refuses) and int() of
# thousands of digits raises; either would be a 500 for what a client may send.
_EVENT_ID = re.compile(r"[0-9]{1,19}")


def last_event_id(raw: str | None) -> int | None:
    """The ``Last-Event-ID`` a browser sends back; None (replay nothing) unless it is an
    id this server could have given."""
    if raw is None or not _EVENT_ID.fullmatch(raw.strip()):
        return None
    value = int(raw)
    return value if value <= MAX_ID else None


@blueprint.get("/events")
def events() -> Response | tuple[Response, int, dict[str, str]]:
    last = last_event_id(request.headers.get("Last-Event-ID"))
    # waitress tells whether the browser has gone (it reads ahead on the connection).
    gone = request.environ.get("waitress.client_disconnected")
    try:
        stream = current_context().events.subscribe(last, client=request.remote_addr or "", gone=gone)
    except StreamRefused as exc:
        return jsonify(error=str(exc)), 503, {"Retry-After": "10"}
    return Response(
        stream, mimetype="text/event-stream",
        # No caching, and no buffering in a reverse proxy (nginx) in front of the appliance.
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
