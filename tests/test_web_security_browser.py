"""Issue 9 in a real browser (Debian's chromium driven by Playwright) against the real
waitress server: a page on another origin cannot change anything, even when the
operator's browser is signed in (another port of 127.0.0.1 is the *same site*, so the
SameSite=Strict cookie goes along and only the Origin and JSON checks stop it); a
service with a token answers 401 without it, and its page signs in through /login and
goes back there when the cookie is gone.

Needs ``apt-get install -y chromium`` and ``pip install playwright``; never downloads a
browser (Playwright is pointed at /usr/bin/chromium).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from chromium import needs_chromium

from phasewatch.store import Store
from phasewatch.webui.access import Access
from phasewatch.webui.app import AppContext, create_app
from phasewatch.webui.events import EventBroker
from phasewatch.webui.security import COOKIE
from phasewatch.webui.server import serve_in_thread

TOKEN = "browser-test-token-0123456789"
WAIT_MS = 15_000

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytestmark = needs_chromium

# The attacker's page: every way a page can send a POST to another origin without asking.
EVIL_PAGE = """<!doctype html>
<html><body>
<iframe name="sink1"></iframe><iframe name="sink2"></iframe><iframe name="sink3"></iframe>
<form id="urlencoded" method="post" action="{target}/api/specimens" target="sink1">
  <input name="name" value="evil-form"></form>
<form id="plain" method="post" enctype="text/plain" action="{target}/api/specimens" target="sink2">
  <input name='{{"name":"evil-plain","x":"' value='"}}'></form>
<form id="exclude" method="post" action="{target}/api/images/{image}/exclude" target="sink3">
  <input name="reason" value="evil"></form>
<script>
const T = "{target}";
async function attempt(name, url, options) {{
  try {{
    const response = await fetch(url, {{credentials: "include", ...options}});
    window.results[name] = response.type === "opaque" ? "opaque" : response.status;
  }} catch (err) {{
    window.results[name] = "blocked";
  }}
}}
window.results = {{}};
(async () => {{
  const body = JSON.stringify({{name: "evil-fetch"}});
  await attempt("no_cors_text", T + "/api/specimens",
                {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}}, body}});
  await attempt("cors_json", T + "/api/specimens",
                {{method: "POST", headers: {{"Content-Type": "application/json"}}, body}});
  await attempt("no_cors_exclude", T + "/api/images/{image}/exclude",
                {{method: "POST", mode: "no-cors", body: "{{}}"}});
  await attempt("read_status", T + "/api/status", {{}});
  for (const id of ["urlencoded", "plain", "exclude"]) document.getElementById(id).submit();
  window.done = true;
}})();
</script>
</body></html>
"""


class Recorder:
    """WSGI middleware that notes what reached the server and how it was answered."""

    def __init__(self, app: Callable) -> None:
        self.app = app
        self.seen: list[dict[str, Any]] = []

    def __call__(self, environ: dict, start_response: Callable) -> Any:
        entry = {"method": environ["REQUEST_METHOD"], "path": environ["PATH_INFO"],
                 "origin": environ.get("HTTP_ORIGIN"), "cookie": COOKIE in environ.get("HTTP_COOKIE", ""),
                 "type": environ.get("CONTENT_TYPE", "")}
        self.seen.append(entry)

        def noting(status: str, headers: list, exc_info: Any = None) -> Any:
            entry["status"] = int(status.split()[0])
            return start_response(status, headers, exc_info)

        return self.app(environ, noting)

    def posts(self) -> list[dict[str, Any]]:
        return [e for e in self.seen if e["method"] == "POST"]


@contextmanager
def service(tmp_path: Path, token: str) -> Iterator[tuple[str, Store, Recorder, int]]:
    """The real server over a store with one measured field; its URL, the store, the
    recorder and the field's id."""
    store = Store(tmp_path / "data" / "phasewatch.sqlite3")
    image = store.enqueue("/watch/a.tif", 100, 1, "sha-a")["id"]
    store.claim_next()
    store.mark_done(image, {"fractions": {"matrix": 0.8, "carbide": 0.2}, "particles": {}, "valid_area_px": 1000,
                            "valid_area_um2": None, "pixel_size_um": None}, {})
    events = EventBroker()
    ctx = AppContext(store=store, events=events,
                     status=lambda: {"queued": 0, "processing": 0, "done": 1, "failed": 0, "backend": "cpu",
                                     "model": "toy", "uptime_s": 1.0},
                     health=lambda: (True, {"reasons": []}), metrics=lambda: (b"", "text/plain"),
                     target_ra=0.1, data_dir=tmp_path / "data", access=Access(token=token))
    recorder = Recorder(create_app(ctx))
    handle = serve_in_thread(recorder, "127.0.0.1", 0)
    try:
        yield handle.url, store, recorder, image
    finally:
        events.close()
        handle.stop()
        store.close()


@contextmanager
def evil_site(target: str, image: int) -> Iterator[str]:
    """Another origin: the same address, another port."""
    page = EVIL_PAGE.format(target=target, image=image).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()



def sign_in(page: Any, url: str) -> None:
    page.goto(url + "/")
    sync_api.expect(page).to_have_url(url + "/login", timeout=WAIT_MS)
    page.locator('input[name="token"]').fill(TOKEN)
    page.locator('button[type="submit"]').click()
    sync_api.expect(page).to_have_url(url + "/", timeout=WAIT_MS)
    sync_api.expect(page.locator("#status")).to_contain_text("live", timeout=WAIT_MS)


def run_attack(context: Any, url: str, recorder: Recorder, image: int) -> tuple[dict[str, Any], str]:
    """Open the attacker's page in ``context``; what its script saw, and its origin."""
    with evil_site(url, image) as evil:
        page = context.new_page()
        page.goto(evil)
        page.wait_for_function("window.done === true", timeout=WAIT_MS)
        # The three form posts reach the server after the script has ended.
        waited_ms = 0
        while len(recorder.posts()) < 5:
            assert waited_ms < WAIT_MS, recorder.seen
            page.wait_for_timeout(100)
            waited_ms += 100
        return page.evaluate("window.results"), evil.rstrip("/")


def assert_nothing_changed(store: Store, image: int) -> None:
    assert [s["name"] for s in store.list_specimens()] == ["default"]
    assert store.get_image(image)["excluded"] == 0


@pytest.mark.parametrize("token", ["", TOKEN], ids=["open", "signed-in"])
def test_another_origin_cannot_change_anything(tmp_path, browser, token):
    with service(tmp_path, token) as (url, store, recorder, image):
        context = browser.new_context()
        if token:
            sign_in(context.new_page(), url)
        recorder.seen.clear()  # what the attacker's page sends, only
        results, evil_origin = run_attack(context, url, recorder, image)
        assert_nothing_changed(store, image)
        # The JSON POST needs a CORS preflight, which is never granted: it is never sent;
        # neither can the other origin read anything.
        assert results["cors_json"] == "blocked" and results["read_status"] == "blocked"
        assert not [p for p in recorder.posts() if p["type"] == "application/json"]
        posts = recorder.posts()
        assert len(posts) == 5  # two no-cors fetches, three forms
        for post in posts:
            assert (post["origin"], post["status"]) == (evil_origin, 403), post
        if token:
            # Same site: the browser sent the sign-in cookie along; the origin check held.
            assert all(p["cookie"] for p in posts)
        # The service's own page still works in the same browser.
        own = context.new_page()
        own.goto(url + "/")
        sync_api.expect(own.locator("#status")).to_contain_text("live", timeout=WAIT_MS)
        own.locator('#new-specimen input[name="name"]').fill("S-2")
        own.locator('#new-specimen button[type="submit"]').click()
        sync_api.expect(own.locator("#specimen-name")).to_contain_text("S-2", timeout=WAIT_MS)
        assert [s["name"] for s in store.list_specimens()] == ["S-2", "default"]
        context.close()


def test_a_service_with_a_token_wants_it_and_its_page_signs_in(tmp_path, browser):
    with service(tmp_path, TOKEN) as (url, store, recorder, _):
        context = browser.new_context()
        page = context.new_page()
        response = page.goto(url + "/api/status")
        assert response.status == 401
        assert "authentication required" in page.content()
        assert page.goto(url + "/healthz").status == 200

        page.goto(url + "/")
        sync_api.expect(page).to_have_url(url + "/login", timeout=WAIT_MS)
        page.locator('input[name="token"]').fill("not-the-token-0123456789")
        page.locator('button[type="submit"]').click()
        sync_api.expect(page.locator("#login-error")).to_have_text("That is not the token of this service.")
        sign_in(page, url)
        cookie = next(c for c in context.cookies() if c["name"] == COOKIE)
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and TOKEN not in cookie["value"]
        assert page.evaluate("document.cookie") == ""  # no script can read it
        login_post = next(e for e in recorder.seen if e["method"] == "POST" and e["path"] == "/login"
                          and e["status"] == 303)
        assert login_post["origin"] == url  # the sign-in form carries its own origin

        # The cookie is gone (expired, token changed): the page's next request sends it back to /login.
        context.clear_cookies()
        sync_api.expect(page).to_have_url(url + "/login", timeout=WAIT_MS)

        # Signing out from the page ends the session on the server: a copy of the cookie is refused.
        sign_in(page, url)
        kept = next(c for c in context.cookies() if c["name"] == COOKIE)
        page.locator("#sign-out").click()
        sync_api.expect(page).to_have_url(url + "/login", timeout=WAIT_MS)
        assert [c for c in context.cookies() if c["name"] == COOKIE] == []
        logout = next(e for e in recorder.seen if e["path"] == "/logout")
        assert (logout["method"], logout["status"], logout["origin"], logout["type"]) == (
            "POST", 204, url, "application/json")
        context.add_cookies([kept])
        assert page.goto(url + "/api/status").status == 401
        context.close()


def test_the_sign_in_form_makes_a_guessing_address_wait(tmp_path, browser):
    with service(tmp_path, TOKEN) as (url, _, recorder, _):
        page = browser.new_page()
        page.goto(url + "/login")
        for n in range(6):
            page.locator('input[name="token"]').fill(f"wrong-token-{n:02d}-0123456789")
            page.locator('button[type="submit"]').click()
            sync_api.expect(page.locator("#login-error")).to_have_text("That is not the token of this service.")
        page.locator('input[name="token"]').fill(TOKEN)  # the right one, too soon: not even compared
        page.locator('button[type="submit"]').click()
        sync_api.expect(page.locator("#login-error")).to_have_text(
            "Too many wrong tokens from your address: try again in 1 s.")
        assert [e["status"] for e in recorder.posts()] == [401] * 6 + [429]
        page.wait_for_timeout(1100)
        page.locator('input[name="token"]').fill(TOKEN)
        page.locator('button[type="submit"]').click()
        sync_api.expect(page).to_have_url(url + "/", timeout=WAIT_MS)
