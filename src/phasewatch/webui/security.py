"""The guards every request passes before its view, and the headers on every response.

In order (:func:`install_guards` registers them so):

1. ``Host`` must be one of the service's names, else 400 (DNS rebinding).
2. A state-changing request (any method but GET, HEAD, OPTIONS) that says where it
   comes from must come from this service's own origin (``Origin``, else ``Referer``;
   a browser's ``Sec-Fetch-Site`` too), else 403 (CSRF; another port on localhost is
   another origin but the *same site*, so SameSite cookies alone would not stop it).
3. With a token configured, every route but ``/healthz`` and ``/login`` needs it:
   ``Authorization: Bearer TOKEN`` or the login cookie. Otherwise a browser opening a
   page is sent to ``/login`` (which brings it back to that page) and everything else
   answers 401 JSON (:func:`signs_in`).
4. A state-changing request must carry ``Content-Type: application/json``, else 415: a
   cross-origin page can send a form or ``text/plain`` without asking, but JSON only
   after a CORS preflight, which this app never grants.

Bodies are capped at :data:`MAX_BODY_BYTES` (413). The Content-Security-Policy allows
only the app's own files: the templates have no inline script or style, and the page's
script builds its SVG with attributes and classes, not ``style``.
"""

from __future__ import annotations

import logging
from urllib.parse import urlencode

from flask import Flask, Response, jsonify, redirect, request
from werkzeug.wrappers import Response as BaseResponse

from phasewatch.webui.access import same_origin, session_matches, token_matches
from phasewatch.webui.context import current_context
from phasewatch.webui.rest import ApiError, require_json

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20
COOKIE = "phasewatch_session"
COOKIE_MAX_AGE_S = 30 * 24 * 3600  # an appliance's browser stays signed in for a month
# Answer without the token: health, the sign-in form and what it shows (nothing of the data).
OPEN_PATHS = frozenset({"/healthz", "/login", "/static/app.css", "/static/favicon.svg"})
PAGE_BLUEPRINTS = frozenset({"pages", "report"})  # HTML a person opens: webui/pages.py, webui/report.py
FORM_PATHS = frozenset({"/login"})  # the one state-changing route that takes a form
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SAME_SITE_FETCH = frozenset({"same-origin", "none"})  # "none": the user typed or bookmarked it

SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; img-src 'self'; object-src 'none'; base-uri 'none'; "
                                "form-action 'self'; frame-ancestors 'none'"),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Another origin's page may not even embed the pictures or the CSV (<img>, <script>).
    "Cross-Origin-Resource-Policy": "same-origin",
}


def install_guards(app: Flask) -> None:
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    for guard in (check_host, check_origin, check_token, check_json):
        app.before_request(guard)
    app.after_request(add_security_headers)


def check_host() -> None:
    host = request.headers.get("Host")
    if not current_context().access.host_allowed(host):
        log.warning("web: refused request for host %r from %s", host, request.remote_addr)
        raise ApiError(400, f"this service does not answer to host {host!r}; add it to [web] allowed_hosts")


def check_origin() -> None:
    if request.method in SAFE_METHODS:
        return
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in SAME_SITE_FETCH:
        raise ApiError(403, f"refused: a {site} request may not change anything here")
    claimed = request.headers.get("Origin") or request.headers.get("Referer")
    if claimed is not None and not same_origin(claimed, request.scheme, request.headers.get("Host")):
        log.warning("web: refused %s %s from origin %r", request.method, request.path, claimed)
        raise ApiError(403, "refused: the request comes from another origin")


def authorised(token: str) -> bool:
    """Whether the request carries ``token`` (bearer header) or the login cookie."""
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token_matches(presented.strip(), token):
        return True
    cookie = request.cookies.get(COOKIE)
    return cookie is not None and session_matches(cookie, token)


def signs_in() -> bool:
    """Whether a request without the token is sent to sign in rather than answered 401:
    a page opened by a browser, i.e. asking for HTML (``/`` always). A script that
    fetches a page without saying it wants HTML gets the 401 it can act on."""
    if request.blueprint not in PAGE_BLUEPRINTS or request.method not in ("GET", "HEAD"):
        return False
    return request.path == "/" or "text/html" in request.headers.get("Accept", "")


def sign_in_url(path: str) -> str:
    """``/login``, bringing the browser back to ``path`` (a path of this service) after."""
    return "/login" if path == "/" else "/login?" + urlencode({"next": path})


def check_token() -> BaseResponse | None:
    token = current_context().access.token
    if not token or request.path in OPEN_PATHS or authorised(token):
        return None
    if signs_in():
        return redirect(sign_in_url(request.full_path.rstrip("?")), 303)
    response = jsonify(error="authentication required: send Authorization: Bearer TOKEN, or sign in at /login")
    response.status_code = 401
    response.headers["WWW-Authenticate"] = 'Bearer realm="phasewatch"'
    return response


def check_json() -> None:
    # A route that does not exist or takes another method keeps its 404 / 405.
    if request.method in SAFE_METHODS or request.path in FORM_PATHS or request.routing_exception is not None:
        return
    require_json()


def add_security_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response
