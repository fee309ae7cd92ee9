"""The guards every request passes before its view, and the headers on every response.

In order (:func:`install_guards` registers them so):

1. ``Host`` must be one of the service's names, else 400 (DNS rebinding).
2. A state-changing request (any method but GET, HEAD, OPTIONS) that says where it
   comes from must come from this service's own origin (``Origin``, else ``Referer``;
   a browser's ``Sec-Fetch-Site`` too), else 403 (CSRF; another port on localhost is
   another origin but the *same site*, so SameSite cookies alone would not stop it).
3. With a token configured, every route but ``/healthz`` and ``/login`` needs it:
   ``Authorization: Bearer TOKEN`` or the login cookie (:mod:`.sessions`: it expires).
   Otherwise a browser opening a page is sent to ``/login`` (which brings it back to
   that page) and everything else answers 401 JSON (:func:`signs_in`). A wrong token,
   wherever presented (bearer or sign-in form), counts against the client's address,
   which past a few must wait (429, :mod:`.throttle`); :func:`request_authorised` tells
   a view whether the request carried the token (``/healthz`` shows details only then).
4. A state-changing request must carry ``Content-Type: application/json``, else 415: a
   cross-origin page can send a form or ``text/plain`` without asking, but JSON only
   after a CORS preflight, which this app never grants.

Bodies are capped at :data:`MAX_BODY_BYTES` (413). What a client sent is logged only
through :func:`shown` (capped and escaped), so that no request can flood the log or
write control characters into it. The Content-Security-Policy allows
only the app's own files: the templates have no inline script or style, and the page's
script builds its SVG with attributes and classes, not ``style``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from urllib.parse import urlencode

from flask import Flask, Response, current_app, g, jsonify, redirect, request
from werkzeug.wrappers import Response as BaseResponse

from phasewatch.webui.access import Access, same_origin, token_matches
from phasewatch.webui.context import current_context
from phasewatch.webui.rest import ApiError, require_json
from phasewatch.webui.sessions import Sessions
from phasewatch.webui.throttle import WrongTokenThrottle

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20
COOKIE = "phasewatch_session"
LOGGED_CHARS = 100  # of a header value a client sent, in a log line or an error message
_SIGN_IN = "phasewatch.sign_in"
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


@dataclass(frozen=True)
class SignIn:
    """The app's sign-in state: its sessions and the wrong-token counts."""

    sessions: Sessions
    throttle: WrongTokenThrottle


def install_guards(app: Flask, access: Access) -> None:
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.extensions[_SIGN_IN] = SignIn(Sessions(access.session_lifetime_s), WrongTokenThrottle())
    for guard in (check_host, check_origin, check_token, check_json):
        app.before_request(guard)
    app.after_request(add_security_headers)


def sign_in_state() -> SignIn:
    state: SignIn = current_app.extensions[_SIGN_IN]
    return state


def shown(value: str | None) -> str:
    """A value a client sent, as a log line or error message may quote it: escaped (no
    control characters or line breaks: ``repr``) and at most :data:`LOGGED_CHARS` of it."""
    if value is None:
        return "none"
    if len(value) <= LOGGED_CHARS:
        return repr(value)
    return f"{value[:LOGGED_CHARS]!r}... ({len(value)} characters)"


def check_host() -> None:
    host = request.headers.get("Host")
    if not current_context().access.host_allowed(host):
        log.warning("web: refused request for host %s from %s", shown(host), request.remote_addr)
        raise ApiError(400, f"this service does not answer to host {shown(host)}; add it to [web] allowed_hosts")


def check_origin() -> None:
    if request.method in SAFE_METHODS:
        return
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in SAME_SITE_FETCH:
        raise ApiError(403, f"refused: a {site} request may not change anything here")
    claimed = request.headers.get("Origin") or request.headers.get("Referer")
    if claimed is not None and not same_origin(claimed, request.scheme, request.headers.get("Host")):
        log.warning("web: refused %s %s from origin %s", request.method, shown(request.path), shown(claimed))
        raise ApiError(403, "refused: the request comes from another origin")


def judge_token(presented: str, token: str) -> tuple[bool, float]:
    """Whether ``presented`` is ``token``, and the seconds the client must wait first (then
    the token was not even compared). A wrong one counts against the client's address."""
    throttle, address = sign_in_state().throttle, request.remote_addr
    wait = throttle.wait_s(address)
    if wait > 0:
        return False, wait
    if token_matches(presented, token):
        throttle.right(address)
        return True, 0.0
    wait = throttle.wrong(address)
    log.warning("web: wrong token from %s%s", address, f"; it must wait {wait:.0f} s before the next" if wait else "")
    return False, 0.0


def wait_message(wait_s: float) -> str:
    return f"too many wrong tokens from your address: try again in {math.ceil(wait_s)} s"


def _authorise(token: str) -> bool:
    """Whether the request carries ``token`` (bearer header) or a live login cookie. A
    bearer header is judged alone, and raises 429 while its address must wait."""
    if not token:
        return True
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        ok, wait = judge_token(presented.strip(), token)
        if wait > 0:
            raise ApiError(429, wait_message(wait), {"Retry-After": str(math.ceil(wait))})
        return ok
    cookie = request.cookies.get(COOKIE)
    return cookie is not None and sign_in_state().sessions.valid(cookie, token)


def request_authorised() -> bool:
    """Whether the request carried the token (always, when none is configured); set by
    :func:`check_token` for every request."""
    return bool(g.get("authorised", False))


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
    g.authorised = _authorise(current_context().access.token)
    if g.authorised or request.path in OPEN_PATHS:
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
