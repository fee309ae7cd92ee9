"""Signing in (issue 21, also-found 6): wrong tokens make their address wait, the session
cookie expires on the server's clock, and signing out ends the session. Through Flask's
test client over a real Store, with the sign-in state on a clock the test moves.
"""

from __future__ import annotations

import logging
import re

import pytest
from test_web_security import BEARER, TOKEN, make_app

from phasewatch.service import config as cfg
from phasewatch.store import Store
from phasewatch.webui.access import Access
from phasewatch.webui.security import _SIGN_IN, COOKIE, SignIn
from phasewatch.webui.sessions import Sessions, cookie_parts, issue_cookie
from phasewatch.webui.throttle import MAX_WAIT_S, WrongTokenThrottle, client_key

WRONG = "not-the-token-0123456789"
HOUR = 3600.0


class Clock:
    def __init__(self, now: float = 1_750_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "data" / "phasewatch.sqlite3")
    yield store
    store.close()


@pytest.fixture
def clock():
    return Clock()


def locked_app(store, tmp_path, clock, lifetime_s: float = 12 * HOUR):
    app = make_app(store, tmp_path, Access(token=TOKEN, session_lifetime_s=lifetime_s))
    app.extensions[_SIGN_IN] = SignIn(Sessions(lifetime_s, clock=clock), WrongTokenThrottle(clock=clock))
    return app


def sign_in(client, token: str = TOKEN, address: str = "127.0.0.1"):
    return client.post("/login", data={"token": token}, environ_base={"REMOTE_ADDR": address})


# -- wrong tokens ---------------------------------------------------------------------------


def test_a_burst_of_wrong_tokens_gets_six_judged_and_the_rest_refused(store, tmp_path, clock, caplog):
    client = locked_app(store, tmp_path, clock).test_client()
    with caplog.at_level(logging.WARNING, logger="phasewatch.webui.security"):
        statuses = [sign_in(client, f"{WRONG}{n}").status_code for n in range(300)]
    assert statuses[:6] == [401] * 6  # five mistakes are free; the sixth starts the wait
    assert statuses[6:] == [429] * 294
    assert len(caplog.records) == 6  # a refused attempt is not even logged: the log cannot be flooded
    assert caplog.records[-1].getMessage() == "web: wrong token from 127.0.0.1; it must wait 1 s before the next"
    refused = sign_in(client)  # even the right token waits: it is not compared
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
    assert "Too many wrong tokens from your address: try again in 1 s." in refused.get_data(as_text=True)
    assert "Set-Cookie" not in refused.headers


def test_the_wait_doubles_up_to_five_minutes_and_the_token_resets_it(store, tmp_path, clock):
    client = locked_app(store, tmp_path, clock).test_client()
    for _ in range(5):
        assert sign_in(client, WRONG).status_code == 401
    waits = []
    for _ in range(12):
        assert sign_in(client, WRONG).status_code == 401
        waits.append(int(sign_in(client, WRONG).headers["Retry-After"]))
        clock.now += waits[-1]
    assert waits == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]
    assert waits[-1] == MAX_WAIT_S
    assert sign_in(client).status_code == 303  # the right token, once the wait is over
    for _ in range(5):  # and the count starts again
        assert sign_in(client, WRONG).status_code == 401


def test_one_address_waiting_does_not_lock_out_another(store, tmp_path, clock):
    client = locked_app(store, tmp_path, clock).test_client()
    for _ in range(7):
        sign_in(client, WRONG, address="10.0.0.66")
    assert sign_in(client, address="10.0.0.66").status_code == 429
    assert sign_in(client, address="10.0.0.7").status_code == 303


def test_wrong_bearer_tokens_count_too(store, tmp_path, clock):
    client = locked_app(store, tmp_path, clock).test_client()
    wrong = {"Authorization": f"Bearer {WRONG}"}
    assert [client.get("/api/status", headers=wrong).status_code for _ in range(6)] == [401] * 6
    refused = client.get("/api/status", headers=BEARER)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
    assert refused.get_json() == {"error": "too many wrong tokens from your address: try again in 1 s"}
    # /healthz judges a bearer token too (it shows more with it): no way around the wait there.
    assert client.get("/healthz", headers=BEARER).status_code == 429
    assert sign_in(client).status_code == 429  # the form shares the count
    clock.now += 1
    assert client.get("/api/status", headers=BEARER).status_code == 200


def test_the_throttle_remembers_a_bounded_number_of_addresses():
    clock = Clock()
    throttle = WrongTokenThrottle(max_clients=100, clock=clock)
    for _ in range(7):
        throttle.wrong("10.9.9.9")
    for n in range(5000):
        throttle.wrong(f"10.0.{n // 256}.{n % 256}")
        assert len(throttle) <= 100
    assert throttle.wait_s("10.0.19.135") == 0  # the last ones are kept, counting
    assert throttle.wrong("10.0.19.135") == 0


def test_a_count_is_forgotten_after_an_hour_without_wrong_tokens():
    clock = Clock()
    throttle = WrongTokenThrottle(clock=clock)
    for _ in range(5):
        throttle.wrong("10.0.0.1")
    clock.now += HOUR + 1
    assert throttle.wrong("10.0.0.1") == 0  # one free mistake again, not the sixth


def test_ipv6_clients_count_per_64_and_mapped_ipv4_as_ipv4():
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:10.0.0.5") == "10.0.0.5"
    assert client_key(None) == "unknown"


# -- the session cookie ---------------------------------------------------------------------


def cookie_of(response) -> str:
    return re.match(rf"{COOKIE}=([^;]*)", response.headers["Set-Cookie"]).group(1)


def test_the_server_refuses_a_cookie_past_its_lifetime(store, tmp_path, clock):
    client = locked_app(store, tmp_path, clock, lifetime_s=2 * HOUR).test_client()
    signed_in = sign_in(client)
    assert "Max-Age=7200" in signed_in.headers["Set-Cookie"]
    clock.now += 2 * HOUR - 1
    assert client.get("/api/status").status_code == 200
    clock.now += 2
    # The browser would still send it (it kept it, or its clock is wrong): the server says no.
    assert client.get("/api/status").status_code == 401
    page = client.get("/fields", headers={"Accept": "text/html"})
    assert (page.status_code, page.headers["Location"]) == (303, "/login?next=%2Ffields")


def test_a_cookie_with_a_changed_time_or_the_old_format_is_refused(store, tmp_path, clock):
    client = locked_app(store, tmp_path, clock).test_client()
    value = cookie_of(sign_in(client))
    version, issued, nonce, mac = value.split(".")
    import hashlib
    import hmac

    old_format = hmac.new(TOKEN.encode(), b"phasewatch web session v1", hashlib.sha256).hexdigest()
    later = f"{version}.{int(issued) + 10 * 24 * 3600}.{nonce}.{mac}"  # made younger by hand
    future = issue_cookie(TOKEN, int(clock.now) + 3600, nonce)  # signed, but issued in an hour
    for forged in (later, old_format, future, f"{value}x", "v2.1.2.3", ""):
        client.set_cookie(COOKIE, forged)
        assert client.get("/api/status").status_code == 401, forged
    client.set_cookie(COOKIE, value)
    assert client.get("/api/status").status_code == 200


def test_session_hours_is_read_from_the_config(tmp_path):
    path = tmp_path / "phasewatch.toml"
    path.write_text("[web]\nsession_hours = 2.5\n")
    assert cfg.load_config(path).web.session_hours == 2.5
    assert cfg.WebConfig().session_hours == 12.0
    path.write_text("[web]\nsession_hours = 0\n")
    with pytest.raises(cfg.ConfigError):
        cfg.load_config(path)


def test_cookie_parts_refuses_what_it_did_not_sign():
    good = issue_cookie(TOKEN, 1_700_000_000, "ab" * 16)
    assert cookie_parts(good, TOKEN) == (1_700_000_000, "ab" * 16)
    mac = good.rsplit(".", 1)[1]
    for other in (good.replace("v2.", "v3."), good + "0", f"v2.-5.x.{mac}", "v2." + "9" * 40 + ".x.y"):
        assert cookie_parts(other, TOKEN) is None
    assert cookie_parts(good, "") is None


# -- signing out ------------------------------------------------------------------------------


def test_signing_out_revokes_the_session_on_the_server(store, tmp_path, clock):
    client = locked_app(store, tmp_path, clock).test_client()
    value = cookie_of(sign_in(client))
    out = client.post("/logout", json={})
    assert out.status_code == 204
    assert re.search(rf"{COOKIE}=;.*Max-Age=0", out.headers["Set-Cookie"])
    assert client.get("/api/status").status_code == 401
    client.set_cookie(COOKIE, value)  # a copy of the cookie taken before: ended too
    assert client.get("/api/status").status_code == 401
    again = cookie_of(sign_in(client))  # signing in again gives a new session
    assert again != value and client.get("/api/status").status_code == 200


def test_signing_out_follows_the_rules_of_every_change(store, tmp_path, clock):
    client = locked_app(store, tmp_path, clock).test_client()
    sign_in(client)
    assert client.post("/logout", data="x", content_type="text/plain").status_code == 415
    assert client.post("/logout", json={}, headers={"Origin": "http://localhost:9999"}).status_code == 403
    assert client.get("/logout").status_code == 405
    assert client.get("/api/status").status_code == 200  # none of those signed out
    assert locked_app(store, tmp_path, clock).test_client().post("/logout", json={}).status_code == 401


def test_the_page_offers_to_sign_out_only_when_there_is_a_token(store, tmp_path, clock):
    locked = locked_app(store, tmp_path, clock).test_client()
    sign_in(locked)
    for url in ("/", "/fields", "/specimens"):
        assert 'id="sign-out"' in locked.get(url).get_data(as_text=True), url
    open_page = make_app(store, tmp_path).test_client().get("/").get_data(as_text=True)
    assert 'id="sign-out"' not in open_page
