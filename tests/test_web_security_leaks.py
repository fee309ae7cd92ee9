"""What a request can make the service say (issue 21, also-found 3-5): a body nested
too deeply is a 400 with one line, not a 500 and a traceback; a refused ``Host`` is logged
capped and escaped; ``/healthz`` tells anyone the state, and only a holder of the token
the reasons (paths, library errors). Through Flask's test client over a real Store.
"""

from __future__ import annotations

import json
import logging
import re

import pytest
from test_web_security import BEARER, TOKEN, api_rules, make_app, specimen_names

from phasewatch.store import Store
from phasewatch.webui.access import Access
from phasewatch.webui.security import LOGGED_CHARS

DEEP = "[" * 100_000
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "data" / "phasewatch.sqlite3")
    file_id = store.enqueue("/watch/a.tif", 100, 1, "sha-a")["id"]
    store.claim_next()
    store.mark_done(file_id, {"fractions": {"matrix": 0.8, "carbide": 0.2}, "particles": {}, "valid_area_px": 1000,
                              "valid_area_um2": None, "pixel_size_um": None}, {})
    yield store
    store.close()


def errors_logged(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


# -- 3. deeply nested JSON -----------------------------------------------------------------


def test_a_body_nested_too_deeply_is_400_in_one_line(store, tmp_path, caplog):
    client = make_app(store, tmp_path).test_client()
    with caplog.at_level(logging.DEBUG):
        response = client.post("/api/specimens", data=DEEP, content_type="application/json")
    assert (response.status_code, response.get_json()) == (
        400, {"error": "the request body is not valid JSON: nested too deeply"})
    assert errors_logged(caplog) == [] and "Recursion" not in caplog.text
    assert specimen_names(store) == ["default"]


def test_no_json_route_answers_500_to_a_deep_or_broken_body(store, tmp_path, caplog):
    app = make_app(store, tmp_path)
    client = app.test_client()
    changing = [r for r in api_rules(app) if r.methods & {"POST", "PUT", "PATCH", "DELETE"} and r.rule != "/login"]
    assert changing
    for rule in changing:
        url = re.sub(r"<(?:\w+:)?(\w+)>", "1", rule.rule)
        for method in sorted(rule.methods & {"POST", "PUT", "PATCH", "DELETE"}):
            for body in (DEEP, '{"name": ', "\xff"):
                response = client.open(url, method=method, data=body, content_type="application/json")
                assert response.status_code < 500, (method, rule.rule, body[:5])
                if response.status_code == 400:
                    assert "\n" not in response.get_json()["error"]
    assert errors_logged(caplog) == []


def test_request_get_json_in_a_route_also_answers_400(store, tmp_path):
    # A route that reads the body with Flask's own request.get_json() (as new routes may).
    from flask import request

    app = make_app(store, tmp_path)
    app.add_url_rule("/api/echo", "echo", lambda: {"got": request.get_json()}, methods=["POST"])
    response = app.test_client().post("/api/echo", data=DEEP, content_type="application/json")
    assert response.status_code == 400 and "nested too deeply" in response.get_json()["error"]


def test_valid_json_that_is_not_an_object_keeps_its_message(store, tmp_path):
    client = make_app(store, tmp_path).test_client()
    for body in ("[1, 2]", "null", json.dumps([[[[1]]]])):
        response = client.post("/api/specimens", data=body, content_type="application/json")
        assert response.get_json() == {"error": "the request body must be a JSON object"}, body
    broken = client.post("/api/specimens", data='{"name": ', content_type="application/json")
    assert broken.get_json()["error"].startswith("the request body is not valid JSON: Expecting value")


# -- 4. what a refused Host leaves in the log ----------------------------------------------


def test_a_refused_host_is_logged_capped_and_escaped(store, tmp_path, caplog):
    client = make_app(store, tmp_path).test_client()
    host = "evil\x1b[31m\x00\x7f\x85" + "a" * 250_000 + "\u2028end"
    with caplog.at_level(logging.WARNING, logger="phasewatch.webui.security"):
        response = client.get("/api/status", headers={"Host": host})
    assert response.status_code == 400
    [line] = [r.getMessage() for r in caplog.records]
    assert len(line) < LOGGED_CHARS + 200, len(line)
    assert not CONTROL.search(line) and "\u2028" not in line
    assert line.startswith(r"web: refused request for host 'evil\x1b[31m\x00\x7f\x85aaa")
    assert f"... ({len(host)} characters)" in line
    error = response.get_json()["error"]
    assert len(error) < LOGGED_CHARS + 200 and not CONTROL.search(error)


def test_a_short_host_is_logged_whole(store, tmp_path, caplog):
    client = make_app(store, tmp_path).test_client()
    with caplog.at_level(logging.WARNING, logger="phasewatch.webui.security"):
        client.get("/api/status", headers={"Host": "evil.example:8650"})
    assert [r.getMessage() for r in caplog.records] == [
        "web: refused request for host 'evil.example:8650' from 127.0.0.1"]


def test_a_refused_origin_is_logged_capped_and_escaped(store, tmp_path, caplog):
    client = make_app(store, tmp_path).test_client()
    origin = "http://evil.example/\x1b[2J" + "b" * 100_000
    with caplog.at_level(logging.WARNING, logger="phasewatch.webui.security"):
        response = client.post("/api/specimens", json={"name": "x"}, headers={"Referer": origin})
    assert response.status_code == 403
    [line] = [r.getMessage() for r in caplog.records]
    assert len(line) < LOGGED_CHARS + 200 and not CONTROL.search(line)


# -- 5. /healthz without the token ---------------------------------------------------------

PROBLEMS = {"disk": "/srv/phasewatch/data: only 12 MiB free",
            "worker": "backend rejected the batch: image must be H x W or H x W x 3, got (556, 518, 2, 3)"}


def sick_app(store, tmp_path, access):
    app = make_app(store, tmp_path, access)
    from phasewatch.webui.context import current_context

    with app.app_context():
        current_context().health = lambda: (False, {"reasons": list(PROBLEMS.values()), "problems": PROBLEMS})
    return app


def test_healthz_without_the_token_shows_the_state_and_no_paths_or_errors(store, tmp_path):
    client = sick_app(store, tmp_path, Access(token=TOKEN)).test_client()
    response = client.get("/healthz")
    assert (response.status_code, response.get_json()) == (503, {"ok": False, "failing": ["disk", "worker"]})
    text = response.get_data(as_text=True)
    assert "/srv" not in text and "556" not in text and "rejected" not in text
    wrong = client.get("/healthz", headers={"Authorization": "Bearer not-the-token-0123456789"})
    assert wrong.get_json() == {"ok": False, "failing": ["disk", "worker"]}


def test_healthz_with_the_token_shows_the_reasons(store, tmp_path):
    client = sick_app(store, tmp_path, Access(token=TOKEN)).test_client()
    response = client.get("/healthz", headers=BEARER)
    assert response.status_code == 503
    assert response.get_json() == {"ok": False, "reasons": list(PROBLEMS.values()), "problems": PROBLEMS}
    client.post("/login", data={"token": TOKEN})  # the browser's cookie counts as the token too
    assert client.get("/healthz").get_json()["problems"] == PROBLEMS


def test_healthz_of_a_service_without_a_token_shows_the_reasons(store, tmp_path):
    # No token: the whole API (and /api/status with the same reasons) is open to this machine anyway.
    client = sick_app(store, tmp_path, Access()).test_client()
    assert client.get("/healthz").get_json()["problems"] == PROBLEMS


def test_healthy_healthz_without_the_token(store, tmp_path):
    client = make_app(store, tmp_path, Access(token=TOKEN)).test_client()
    response = client.get("/healthz")
    assert (response.status_code, response.get_json()) == (200, {"ok": True, "failing": []})
