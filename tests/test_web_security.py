"""The web app is safe to expose (issue 9): token, CSRF, Host, body size, headers, odd
parameters, the OpenAPI description, and ``serve``'s refusal to listen openly without a
token. Through Flask's test client over a real Store; the server-level limits are in
``test_web_security_load.py`` and the browser's view in ``test_web_security_browser.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from phasewatch.app import wiring
from phasewatch.app.commands import serve
from phasewatch.service import config as cfg
from phasewatch.store import Store
from phasewatch.webui.access import Access, exposure_problem, split_host
from phasewatch.webui.app import AppContext, create_app
from phasewatch.webui.events import EventBroker
from phasewatch.webui.security import COOKIE, MAX_BODY_BYTES
from phasewatch.webui.sessions import cookie_parts

TOKEN = "s3cret-token-for-tests-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
BIG_ID = 2**63  # one past SQLite's largest integer
TEMPLATES = Path(__file__).resolve().parents[1] / "src" / "phasewatch" / "webui" / "templates"


def measurement() -> dict:
    return {"fractions": {"matrix": 0.8, "carbide": 0.2}, "particles": {}, "valid_area_px": 1000,
            "valid_area_um2": None, "pixel_size_um": None}


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "data" / "phasewatch.sqlite3")
    file_id = store.enqueue("/watch/a.tif", 100, 1, "sha-a")["id"]
    store.claim_next()
    store.mark_done(file_id, measurement(), {})
    yield store
    store.close()


def make_app(store: Store, tmp_path: Path, access: Access | None = None, events: EventBroker | None = None):
    ctx = AppContext(
        store=store, events=events or EventBroker(keepalive_s=0.05),
        status=lambda: {"queued": 0, "processing": 0, "done": 1, "failed": 0, "backend": "cpu", "model": "toy",
                        "uptime_s": 1.0},
        health=lambda: (True, {"reasons": []}), metrics=lambda: (b"# none\n", "text/plain"),
        target_ra=0.1, data_dir=tmp_path / "data", access=access or Access(),
    )
    return create_app(ctx)


@pytest.fixture
def client(store, tmp_path):
    return make_app(store, tmp_path).test_client()


@pytest.fixture
def locked(store, tmp_path):
    """A client of an app with a token."""
    return make_app(store, tmp_path, Access(token=TOKEN)).test_client()


def specimen_names(store: Store) -> list[str]:
    return [s["name"] for s in store.list_specimens()]


def api_rules(app) -> list:
    return [r for r in app.url_map.iter_rules() if r.endpoint != "static"]


# -- 1. access control -----------------------------------------------------------------


def test_with_a_token_every_route_but_healthz_and_login_needs_it(locked, store):
    image_id = store.list_images(1)[0]["id"]
    urls = ["/api/status", "/api/images", f"/api/images/{image_id}", f"/api/images/{image_id}/overlay.png",
            "/api/specimens", "/api/specimens/1/stats", "/api/openapi.json", "/export.csv", "/metrics",
            "/events", "/static/app.js"]
    for url in urls:
        response = locked.get(url)
        assert response.status_code == 401, url
        assert response.get_json() == {
            "error": "authentication required: send Authorization: Bearer TOKEN, or sign in at /login"}, url
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="phasewatch"'
    changed = locked.post("/api/specimens", json={"name": "S-2"})
    assert changed.status_code == 401 and specimen_names(store) == ["default"]
    page = locked.get("/")
    assert (page.status_code, page.headers["Location"]) == (303, "/login")
    assert locked.get("/healthz").status_code == 200
    assert locked.get("/login").status_code == 200


def test_every_registered_route_is_covered_by_the_token(store, tmp_path, locked):
    app = make_app(store, tmp_path, Access(token=TOKEN))
    for rule in api_rules(app):
        url = re.sub(r"<(?:\w+:)?(\w+)>", "1", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            status = locked.open(url, method=method, json={}).status_code
            expected = {"/healthz": 200, "/login": 200 if method == "GET" else 401, "/": 303}.get(rule.rule, 401)
            assert status == expected, f"{method} {rule.rule}"


def test_the_bearer_token_opens_the_api(locked):
    assert locked.get("/api/status", headers=BEARER).status_code == 200
    assert locked.get("/", headers=BEARER).status_code == 200
    assert locked.get("/api/status", headers={"Authorization": f"bearer   {TOKEN}"}).status_code == 200
    for wrong in (f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN, "Bearer", "Bearer é"):
        assert locked.get("/api/status", headers={"Authorization": wrong}).status_code == 401, wrong


def test_login_sets_a_strict_httponly_cookie_signed_with_the_token_not_holding_it(locked, store):
    form = locked.get("/login")
    assert 'name="token"' in form.get_data(as_text=True) and 'type="password"' in form.get_data(as_text=True)
    wrong = locked.post("/login", data={"token": "not-the-token-at-all"})
    assert wrong.status_code == 401 and "Set-Cookie" not in wrong.headers
    assert "not the token" in wrong.get_data(as_text=True)

    signed_in = locked.post("/login", data={"token": TOKEN})
    assert (signed_in.status_code, signed_in.headers["Location"]) == (303, "/")
    cookie = signed_in.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    value = re.match(rf"{COOKIE}=([^;]*)", cookie).group(1)
    assert TOKEN not in cookie
    assert cookie_parts(value, TOKEN) is not None and cookie_parts(value, "another-token-0123456789") is None
    assert f"Max-Age={12 * 3600}" in cookie  # the default lifetime; the server enforces it (test_web_security_signin)
    # The test client keeps the cookie, as a browser does.
    assert locked.get("/api/status").status_code == 200
    assert locked.post("/api/specimens", json={"name": "S-2"}).status_code == 201
    assert locked.get("/login").headers["Location"] == "/"  # already signed in


def test_a_cookie_for_another_token_or_a_forged_one_is_refused(store, tmp_path, locked):
    other = make_app(store, tmp_path, Access(token="another-token-0123456789")).test_client()
    other.post("/login", data={"token": "another-token-0123456789"})
    stolen = other.get_cookie(COOKIE).value
    for value in (stolen, TOKEN, "", "x" * 64):
        locked.set_cookie(COOKIE, value)
        assert locked.get("/api/status").status_code == 401, value


def test_without_a_token_there_is_nothing_to_sign_in_to(client):
    assert client.get("/api/status").status_code == 200
    assert client.get("/login").headers["Location"] == "/"


@pytest.mark.parametrize(("host", "token", "refused"), [
    ("127.0.0.1", "", False), ("::1", "", False), ("localhost", "", False), ("127.0.0.2", "", False),
    ("0.0.0.0", "", True), ("::", "", True), ("10.0.4.17", "", True), ("microscope-7.lab", "", True),
    ("0.0.0.0", TOKEN, False),
])
def test_exposure_needs_a_token_beyond_loopback(host, token, refused):
    assert (exposure_problem(host, token) is not None) == refused


def test_serve_refuses_to_listen_openly_without_a_token_in_one_line(tmp_path):
    command = [sys.executable, "-m", "phasewatch.app.cli", "serve", "--host", "0.0.0.0",
               "--watch", str(tmp_path / "watch"), "--data", str(tmp_path / "data"), "--model", "superalloy"]
    env = {k: v for k, v in os.environ.items() if k != cfg.TOKEN_ENV}
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "phasewatch serve: refusing to listen on 0.0.0.0 without a web token: set [web] token, "
        "PHASEWATCH_TOKEN or --token, or listen on 127.0.0.1"]
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert not (tmp_path / "data").exists()  # refused before opening anything


def serve_config(argv: list[str]) -> cfg.Config:
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    return cfg.config_from_args(parser.parse_args(["--config", str(argv[0]), *argv[1:]]))


def test_the_token_comes_from_the_flag_else_the_variable_else_the_file(tmp_path, monkeypatch):
    path = tmp_path / "phasewatch.toml"
    path.write_text('[web]\ntoken = "from-the-file-0123456789"\n')
    monkeypatch.delenv(cfg.TOKEN_ENV, raising=False)
    assert serve_config([path]).web.token == "from-the-file-0123456789"
    monkeypatch.setenv(cfg.TOKEN_ENV, "from-the-variable-0123456789")
    assert serve_config([path]).web.token == "from-the-variable-0123456789"
    assert serve_config([path, "--token", "from-the-flag-0123456789"]).web.token == "from-the-flag-0123456789"
    monkeypatch.setenv(cfg.TOKEN_ENV, "")  # set but empty: the file's token stays
    assert serve_config([path]).web.token == "from-the-file-0123456789"


def test_a_short_token_is_refused_without_repeating_it(tmp_path):
    path = tmp_path / "phasewatch.toml"
    path.write_text('[web]\ntoken = "hunter2"\n')
    with pytest.raises(cfg.ConfigError) as caught:
        cfg.load_config(path)
    assert caught.value.errors == [f"{path}: 'web.token' must be empty or at least 16 characters long"]
    assert "hunter2" not in str(caught.value)


def test_web_keys_are_read(tmp_path):
    path = tmp_path / "phasewatch.toml"
    path.write_text('[web]\nallowed_hosts = ["scope.lab"]\nmax_streams = 3\nmax_streams_per_client = 2\n'
                    'idle_timeout_s = 5\nmax_connections = 50\n')
    web = cfg.load_config(path).web
    assert (web.allowed_hosts, web.max_streams, web.max_streams_per_client, web.idle_timeout_s,
            web.max_connections) == (("scope.lab",), 3, 2, 5, 50)


# -- 2. CSRF -------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "content_type"), [
    ('{"name": "evil"}', "text/plain"),
    ("name=evil", "application/x-www-form-urlencoded"),
    ('{"name": "evil"}', "multipart/form-data; boundary=x"),
    ('{"name": "evil"}', None),
])
def test_a_change_must_be_sent_as_json(client, store, body, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post("/api/specimens", data=body, headers=headers)
    assert response.status_code == 415
    assert response.get_json()["error"].startswith("send the request as Content-Type: application/json")
    assert specimen_names(store) == ["default"]


def test_a_change_without_a_body_must_still_be_json(client, store):
    image_id = store.list_images(1)[0]["id"]
    assert client.post(f"/api/images/{image_id}/exclude").status_code == 415
    assert client.post(f"/api/images/{image_id}/exclude", content_type="text/plain").status_code == 415
    assert store.get_image(image_id)["excluded"] == 0
    assert client.post(f"/api/images/{image_id}/exclude", json={}).status_code == 200
    assert client.post(f"/api/images/{image_id}/include", content_type="application/json").status_code == 200


@pytest.mark.parametrize("headers", [
    {"Origin": "http://localhost:9999"},  # same site, another port: SameSite cookies would go along
    {"Origin": "http://evil.example"},
    {"Origin": "https://localhost"},  # another scheme
    {"Origin": "null"},  # a sandboxed frame, a file: page
    {"Referer": "http://evil.example/page.html"},
    {"Origin": "http://localhost:9999", "Referer": "http://localhost/"},  # Origin wins
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
])
def test_a_change_from_another_origin_is_refused(client, store, headers):
    response = client.post("/api/specimens", json={"name": "evil"}, headers=headers)
    assert response.status_code == 403
    assert response.get_json()["error"].startswith("refused:")
    assert specimen_names(store) == ["default"]


@pytest.mark.parametrize("headers", [
    {},  # curl and scripts send neither
    {"Origin": "http://localhost"},
    {"Origin": "http://LOCALHOST:80"},
    {"Referer": "http://localhost/?x=1"},
    {"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"},
])
def test_a_change_from_the_own_origin_is_accepted(client, store, headers):
    assert client.post("/api/specimens", json={"name": "S-2"}, headers=headers).status_code == 201
    assert specimen_names(store) == ["S-2", "default"]


def store_state(store: Store) -> tuple:
    images = [(i["excluded"], i["accepted"]) for i in store.list_images(100)]
    return specimen_names(store), images


def test_state_changes_never_happen_on_get(store, tmp_path):
    app = make_app(store, tmp_path)
    client = app.test_client()
    changing = [r for r in api_rules(app) if r.methods & {"POST", "PUT", "PATCH", "DELETE"}
                and r.rule not in ("/login", "/logout")]
    # Every route that changes state is listed here, so that a new one is looked at (and tried with GET below).
    assert sorted(r.endpoint for r in changing) == [
        "api.accept", "api.exclude", "api.include", "api.unaccept",
        "labels_api.create_material", "labels_api.put_labels",
        "specimens_api.close", "specimens_api.make_current", "specimens_api.reopen", "specimens_api.save_template",
        "specimens_api.set_limits", "specimens_api.start_specimen", "specimens_api.update_specimen",
        "teach_api.activate", "teach_api.cancel_teach", "teach_api.reanalyse", "teach_api.rollback",
        "teach_api.start_teach",
    ]
    before = store_state(store)
    for rule in changing:
        assert "GET" not in rule.methods, rule.rule
        client.get(re.sub(r"<(?:\w+:)?(\w+)>", "1", rule.rule), query_string={"name": "evil", "reason": "x"})
    assert store_state(store) == before


def test_a_login_from_another_origin_is_refused(locked):
    response = locked.post("/login", data={"token": TOKEN}, headers={"Origin": "http://localhost:9999"})
    assert response.status_code == 403 and "Set-Cookie" not in response.headers


# -- 3. Host ----------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8650", "localhost.evil.example", "127.0.0.1.nip.io",
                                  "", "localhost:abc", "[::1", "a:b:c"])
def test_an_unknown_host_is_400_everywhere(client, host):
    for url in ("/api/status", "/healthz", "/"):
        response = client.get(url, headers={"Host": host})
        assert response.status_code == 400, (url, host)
        assert "does not answer to host" in response.get_json()["error"]


@pytest.mark.parametrize("host", ["localhost", "localhost:8650", "LOCALHOST.", "127.0.0.1:8650", "[::1]:8650", "[::1]"])
def test_loopback_names_are_always_served(client, host):
    assert client.get("/api/status", headers={"Host": host}).status_code == 200


def test_configured_names_and_the_bind_address_are_served(store, tmp_path):
    access = Access.for_service("", "10.0.4.17", ("Microscope-7.lab", "scope.lab:8650", "[fd00::7]"))
    client = make_app(store, tmp_path, access).test_client()
    for host in ("10.0.4.17:8650", "microscope-7.lab", "microscope-7.lab:8650", "localhost", "scope.lab:8650",
                 "[fd00::7]:8650"):
        assert client.get("/api/status", headers={"Host": host}).status_code == 200, host
    assert client.get("/api/status", headers={"Host": "10.0.4.18"}).status_code == 400


def test_host_parsing():
    assert split_host("[::1]:8650") == ("::1", 8650)
    assert split_host("Example.COM.:80") == ("example.com", 80)
    assert split_host("example.com") == ("example.com", None)
    assert split_host("example.com:999999") is None
    assert split_host("[::1]x") is None
    assert split_host(None) is None


# -- 4. body cap and headers ------------------------------------------------------------------


def test_a_body_over_the_cap_is_413(client, store):
    body = json.dumps({"name": "S", "notes": "x" * MAX_BODY_BYTES})
    response = client.post("/api/specimens", data=body, content_type="application/json")
    assert response.status_code == 413 and "error" in response.get_json()
    assert specimen_names(store) == ["default"]
    # Just under the cap: read and judged by the API (notes are limited to 2000 characters).
    under = json.dumps({"name": "S", "notes": "x" * (MAX_BODY_BYTES - 100)})
    response = client.post("/api/specimens", data=under, content_type="application/json")
    assert (response.status_code, response.get_json()) == (400, {"error": "notes is longer than 2000 characters"})


EXPECTED_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def test_security_headers_on_every_kind_of_response(client, locked, store):
    image_id = store.list_images(1)[0]["id"]
    responses = [client.get(url) for url in ("/", "/api/status", "/healthz", "/static/app.js", "/api/nothing",
                                             f"/api/images/{image_id}/overlay.png", "/export.csv", "/metrics")]
    responses += [client.post("/api/specimens", data="x"), client.get("/api/status", headers={"Host": "evil"}),
                  locked.get("/api/status"), locked.get("/"), client.get(f"/api/images/{BIG_ID}")]
    for response in responses:
        for name, value in EXPECTED_HEADERS.items():
            assert response.headers.get(name) == value, (response.request.path, name)
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp


def test_the_login_page_sends_its_origin_with_its_form(locked):
    # With no-referrer a browser's form post says "Origin: null", which the CSRF check
    # refuses; the login page alone asks for same-origin referrers.
    response = locked.get("/login")
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]


class _InlineFinder(HTMLParser):
    """What a CSP of default-src 'self' would block: inline scripts, styles, handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag, attrs):
        names = dict(attrs)
        if tag == "script" and "src" not in names:
            self.found.append("inline <script>")
        if tag == "style":
            self.found.append("<style>")
        self.found += [f"{tag} {n}=" for n in names if n == "style" or n.startswith("on")]
        self.found += [f"{tag} {n}={v}" for n, v in names.items() if v and v.strip().startswith("javascript:")]
        if tag in ("script", "link", "img") and re.match(r"(https?:)?//", names.get("src") or names.get("href") or ""):
            self.found.append(f"{tag} from another origin")


@pytest.mark.parametrize("name", ["index.html", "login.html"])
def test_templates_use_nothing_the_csp_blocks(name):
    finder = _InlineFinder()
    finder.feed((TEMPLATES / name).read_text())
    assert finder.found == []


def test_the_page_script_sets_no_inline_style():
    script = (TEMPLATES.parent / "static" / "app.js").read_text()
    assert not re.search(r"\.style\b|setAttribute\(\s*['\"]style|innerHTML|eval\(|new Function", script)


# -- 5. odd parameters ----------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    f"/api/images/{BIG_ID}", f"/api/images/{BIG_ID}/overlay.png", f"/api/specimens/{BIG_ID}/stats",
    f"/api/images?before={BIG_ID}", f"/api/images?specimen={BIG_ID}", f"/export.csv?specimen={BIG_ID}",
    f"/api/images/{10**30}", "/api/images/0", "/api/images?before=" + "9" * 5000,
])
def test_ids_no_row_can_have_are_400(client, url):
    response = client.get(url)
    assert response.status_code == 400, url
    assert "error" in response.get_json()


def test_changing_an_id_no_row_can_have_is_400(client):
    for action, body in (("exclude", {}), ("include", {}), ("accept", {"who": "A", "reason": "r"}), ("unaccept", {})):
        assert client.post(f"/api/images/{BIG_ID}/{action}", json=body).status_code == 400, action
    assert client.post(f"/api/images/{2**63 - 1}/exclude", json={}).status_code == 404  # the largest id is fine


@pytest.mark.parametrize("last_id", ["²", "9" * 5000, "-1", "1e3", "0x10", str(BIG_ID), "18446744073709551616",
                                     "١٢", " ", "1.5"])
def test_odd_last_event_ids_are_ignored(store, tmp_path, last_id):
    events = EventBroker(keepalive_s=0.05)
    events.publish("field", {"id": 1})
    client = make_app(store, tmp_path, events=events).test_client()
    response = client.get("/events", headers={"Last-Event-ID": last_id}, buffered=False)
    try:
        assert response.status_code == 200
        stream = response.response
        assert next(iter(stream)).startswith(b"retry:")
        assert next(iter(stream)) == b": keep-alive\n\n"  # nothing replayed
    finally:
        response.close()


def test_a_valid_last_event_id_still_replays(store, tmp_path):
    events = EventBroker(keepalive_s=0.05)
    for n in range(3):
        events.publish("field", {"n": n})
    client = make_app(store, tmp_path, events=events).test_client()
    response = client.get("/events", headers={"Last-Event-ID": " 2 "}, buffered=False)
    try:
        chunks = iter(response.response)
        assert next(chunks).startswith(b"retry:")
        assert next(chunks) == b'id: 3\nevent: field\ndata: {"n":2}\n\n'
    finally:
        response.close()


# -- 7. OpenAPI --------------------------------------------------------------------------------

NOT_API = {"/", "/login", "/logout"}  # the page and its sign-in and sign-out are not API


def app_operations(app) -> set[tuple[str, str]]:
    operations = set()
    for rule in api_rules(app):
        if rule.rule in NOT_API:
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        operations |= {(path, m.lower()) for m in rule.methods - {"HEAD", "OPTIONS"}}
    return operations


def test_openapi_lists_exactly_the_routes_of_the_app(client, store, tmp_path):
    document = client.get("/api/openapi.json").get_json()
    assert document["openapi"].startswith("3.")
    documented = {(path, method) for path, ops in document["paths"].items() for method in ops}
    app = make_app(store, tmp_path)
    assert documented == app_operations(app)
    api_routes = {p for p, _ in app_operations(app) if p.startswith("/api/")}
    assert len(api_routes) >= 10 and api_routes <= set(document["paths"])


def test_openapi_operations_declare_their_parameters_and_responses(client):
    document = client.get("/api/openapi.json").get_json()
    schemas = document["components"]["schemas"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            where = f"{method.upper()} {path}"
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == set(re.findall(r"{(\w+)}", path)), where
            assert operation["responses"] and operation["summary"], where
            if method == "post":
                assert "application/json" in operation["requestBody"]["content"], where
                assert {"403", "415"} <= set(operation["responses"]), where
            assert ("401" in operation["responses"]) == (path != "/healthz"), where
    for ref in re.findall(r'"#/components/schemas/(\w+)"', json.dumps(document)):
        assert ref in schemas


def test_openapi_needs_the_token_like_the_rest(locked):
    assert locked.get("/api/openapi.json").status_code == 401
    assert locked.get("/api/openapi.json", headers=BEARER).get_json()["paths"]


def test_openapi_is_a_copy(client):
    from phasewatch.webui.openapi import openapi_document

    openapi_document()["paths"].clear()
    assert client.get("/api/openapi.json").get_json()["paths"]


def test_by_default_there_is_no_token_and_only_loopback_names():
    assert Access() == Access(token="", allowed_hosts=frozenset({"localhost", "127.0.0.1", "::1"}))


def test_serve_reports_a_web_page_that_cannot_start_in_one_line(tmp_path, monkeypatch, caplog):
    class Daemon:
        status = staticmethod(lambda: {})
        health_report = staticmethod(lambda: (True, {}))
        reload_model = staticmethod(lambda: None)
        metrics = type("Metrics", (), {"render": staticmethod(lambda: (b"", "text/plain"))})()

    opened = Store(tmp_path / "data" / "phasewatch.sqlite3")
    closed = []
    close = opened.close
    monkeypatch.setattr(opened, "close", lambda: closed.append(close()))
    monkeypatch.setattr(wiring, "_open_service", lambda config, events: (opened, Daemon()))
    monkeypatch.setattr(serve, "setup_logging", lambda level: None)

    def taken(*args, **kwargs):
        raise OSError(98, "Address already in use")

    monkeypatch.setattr(wiring, "serve_in_thread", taken)
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    args = parser.parse_args(["--config", str(tmp_path / "none.toml"), "--data", str(tmp_path / "data")])
    (tmp_path / "none.toml").write_text("")
    with caplog.at_level("ERROR", logger="phasewatch.app.commands.serve"):
        assert serve.run(args) == 1
    assert [r.getMessage() for r in caplog.records] == [
        "cannot start the web page on 127.0.0.1:8650: [Errno 98] Address already in use"]
    assert closed == [None]  # the store is closed before the exit
