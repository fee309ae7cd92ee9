"""What the routes share: :class:`ApiError` (a refused request), the request parsing
that raises it (:class:`JsonRequest`, :class:`JsonProvider`: any body that is not JSON is a
400 with one line), and the JSON answers for every error (the app registers the handlers).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from flask import Request, Response, jsonify, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException

from phasewatch.errors import PhasewatchError, one_line
from phasewatch.store import Refused, StoreError

log = logging.getLogger(__name__)


class ApiError(PhasewatchError):
    """A request the API refuses: ``status``, a one-line message for the client and any
    headers the answer needs (``Retry-After``)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class JsonProvider(DefaultJSONProvider):
    """Flask's JSON, keys in the order the API builds them (id first), and a body nested
    deeper than the parser's recursion allows (``[`` x 100000) is invalid JSON like any
    other, a ValueError (a 400), not a RecursionError (a 500 and a traceback)."""

    sort_keys = False

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("nested too deeply") from None


class JsonRequest(Request):
    """Flask's request, saying why a body is not JSON (``request.get_json()`` in any route):
    Flask's own 400 says only that the request was not understood."""

    def on_json_loading_failed(self, e: ValueError | None) -> Any:
        if e is None:  # not sent as JSON: Flask's 415
            return super().on_json_loading_failed(e)
        raise ApiError(400, f"the request body is not valid JSON: {one_line(e)}") from None


# Longest names (who, a specimen) and texts (reasons, notes) a request may set.
MAX_NAME = 200
MAX_TEXT = 2000

# The largest id SQLite stores: a larger one in a URL or query is refused with 400 before
# it reaches the store, whose driver would fail on it (a 500).
MAX_ID = 2**63 - 1


def query_int(name: str, default: int | None, low: int, high: int = MAX_ID) -> int | None:
    """Query argument ``name`` as an int within ``low``..``high``; ``default`` when absent or empty."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ApiError(400, f"{name} must be an integer, got {raw!r}") from exc
    if value < low or value > high:
        bound = f"{low}..{high}" if high != MAX_ID else f">= {low}"
        raise ApiError(400, f"{name} must be {bound}, got {value}")
    return value


def query_float(name: str) -> float | None:
    """Query argument ``name`` as a finite number; None when absent or empty."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError as exc:
        raise ApiError(400, f"{name} must be a number, got {raw[:40]!r}") from exc
    if not math.isfinite(value):
        raise ApiError(400, f"{name} must be a finite number, got {raw[:40]!r}")
    return value


def checked_id(kind: str, value: int) -> int:
    """A database id from a URL; 400 when no row could have it."""
    if not 1 <= value <= MAX_ID:
        raise ApiError(400, f"{kind} id must be 1..{MAX_ID}, got {value}")
    return value


def require_json() -> None:
    """415 unless the request is sent as ``application/json``: a form or ``text/plain`` is
    what another origin's page can send without a CORS preflight."""
    if request.mimetype != "application/json":
        raise ApiError(415, f"send the request as Content-Type: application/json, not {request.mimetype or 'none'}")


def json_body(optional: bool = False) -> dict[str, Any]:
    """The request's JSON object (sent as ``application/json``); ``{}`` for an empty body
    when ``optional``."""
    require_json()
    if not request.get_data():
        if optional:
            return {}
        raise ApiError(400, "the request body must be a JSON object")
    body = request.get_json()  # malformed, not UTF-8 or nested too deeply: 400 (JsonRequest)
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def text_field(body: dict[str, Any], name: str, limit: int, required: bool = False) -> str:
    """String ``name`` of ``body``, stripped, at most ``limit`` characters; "" when absent."""
    value = body.get(name, "")
    if not isinstance(value, str):
        raise ApiError(400, f"{name} must be a string")
    value = value.strip()
    if required and not value:
        raise ApiError(400, f"{name} is required")
    if len(value) > limit:
        raise ApiError(400, f"{name} is longer than {limit} characters")
    return value


def api_error(exc: ApiError) -> tuple[Response, int]:
    response = jsonify(error=exc.message)
    response.headers.update(exc.headers)
    return response, exc.status


def http_error(exc: HTTPException) -> tuple[Response, int]:
    # Flask hands only exceptions with a code to a handler; the fallback is for the type.
    response = jsonify(error=exc.description)
    # e.g. a 405's Allow (RFC 9110); the exception's own Content-Type is its HTML page's
    response.headers.extend((k, v) for k, v in exc.get_headers() if k.lower() != "content-type")
    return response, exc.code or 500


def store_error(exc: StoreError) -> tuple[Response, int]:
    if isinstance(exc, Refused):  # the request's fault (a label that does not fit its field, ...)
        return jsonify(error=str(exc)), 400
    log.error("web: %s", exc)
    return jsonify(error=str(exc)), 500
