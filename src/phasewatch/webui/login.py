"""``/login`` and ``/logout``: a browser trades the token for a cookie once, so the page's
own requests (fetch, EventSource, pictures) carry it without the script ever holding the
token; signing out ends that session.

The cookie is HttpOnly (no script can read it) and SameSite=Strict, and holds a signed
time of issue (:mod:`.sessions`), not the token: the server refuses it after
``[web] session_hours``. Wrong tokens count against the client's address, which past a
few must wait (429, :mod:`.throttle`). ``next`` (a path of this service: a deep link
opened before signing in) is where the browser goes afterwards; anything else goes to ``/``.

``POST /logout`` is a state-changing request like any other (same origin, JSON: the
page's sign-out button sends it with ``fetch``); it revokes the session and deletes the
cookie.
"""

from __future__ import annotations

import math

from flask import Blueprint, Response, redirect, render_template, request
from werkzeug.wrappers import Response as BaseResponse

from phasewatch.webui.context import current_context
from phasewatch.webui.security import COOKIE, judge_token, request_authorised, sign_in_state, wait_message

blueprint = Blueprint("login", __name__)


@blueprint.app_context_processor
def _sign_out_control() -> dict[str, bool]:
    """Every page offers to sign out when there is a token to sign in with."""
    return {"can_sign_out": bool(current_context().access.token)}


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
    if request_authorised():
        return redirect(_next(), 303)
    return _form("")


@blueprint.post("/login")
def login() -> BaseResponse | tuple[Response, int]:
    token = current_context().access.token
    if not token:
        return redirect("/", 303)
    ok, wait = judge_token(request.form.get("token", ""), token)
    if wait > 0:
        form, status = _form(wait_message(wait).capitalize() + ".", 429)
        form.headers["Retry-After"] = str(math.ceil(wait))
        return form, status
    if not ok:
        return _form("That is not the token of this service.", 401)
    sessions = sign_in_state().sessions
    response = redirect(_next(), 303)
    response.set_cookie(COOKIE, sessions.issue(token), max_age=int(sessions.lifetime_s), path="/",
                        httponly=True, samesite="Strict", secure=request.is_secure)
    return response


@blueprint.post("/logout")
def logout() -> Response:
    token = current_context().access.token
    cookie = request.cookies.get(COOKIE)
    if token and cookie is not None:
        sign_in_state().sessions.revoke(cookie, token)
    response = Response(status=204)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="Strict", secure=request.is_secure)
    return response
