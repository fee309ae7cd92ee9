"""``/login``: a browser trades the token for a cookie once, so the page's own requests
(fetch, EventSource, pictures) carry it without the script ever holding the token.

The cookie is HttpOnly (no script can read it) and SameSite=Strict, and holds an HMAC of
the token (:func:`phasewatch.webui.access.session_value`), not the token. ``next`` (a
path of this service: a deep link opened before signing in) is where the browser goes
afterwards; anything else goes to ``/``.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, redirect, render_template, request
from werkzeug.wrappers import Response as BaseResponse

from phasewatch.webui.access import session_value, token_matches
from phasewatch.webui.context import current_context
from phasewatch.webui.security import COOKIE, COOKIE_MAX_AGE_S, authorised

log = logging.getLogger(__name__)

blueprint = Blueprint("login", __name__)


def _next() -> str:
    """Where to go after signing in: ``next`` when it is a path here, else ``/``. A
    scheme, ``//host`` or a backslash (which browsers read as a slash) would leave the
    service: an open redirect."""
    target = request.values.get("next", "")
    if not target.startswith("/") or target.startswith("//") or "\\" in target or any(c < " " for c in target):
        return "/"
    return target


def _form(error: str, status: int = 200) -> tuple[Response, int]:
    response = Response(render_template("login.html", error=error, next=_next()))
    # This page's form must carry its Origin: with "no-referrer" a browser sends
    # "Origin: null" for a form post, which the CSRF check refuses.
    response.headers["Referrer-Policy"] = "same-origin"
    return response, status


@blueprint.get("/login")
def login_form() -> BaseResponse | tuple[Response, int]:
    token = current_context().access.token
    if not token or authorised(token):
        return redirect(_next(), 303)
    return _form("")


@blueprint.post("/login")
def login() -> BaseResponse | tuple[Response, int]:
    token = current_context().access.token
    if not token:
        return redirect("/", 303)
    if not token_matches(request.form.get("token", ""), token):
        log.warning("web: wrong token from %s", request.remote_addr)
        return _form("That is not the token of this service.", 401)
    response = redirect(_next(), 303)
    response.set_cookie(COOKIE, session_value(token), max_age=COOKIE_MAX_AGE_S, path="/",
                        httponly=True, samesite="Strict", secure=request.is_secure)
    return response
