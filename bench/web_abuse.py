"""What an abusive client gets from the web page (issue 21, also-found 3-6), against the real
waitress server with a token, over a real Store; prints one line per probe:

- 300 wrong tokens at the sign-in form as fast as one client sends them: how many are
  judged (401) and how many refused unjudged (429); the right token at once, and again
  after the ``Retry-After`` it was given (which signs in and starts the count again);
- an authenticated POST of ``[`` x 100000 to ``/api/specimens``;
- a 250 kB ``Host`` header: the answer and the size of the log line it leaves;
- ``/healthz`` without and with the token while the disk is short (the reason names a path);
- the log as a whole: lines, and whether a traceback or a RecursionError is in it.

``python bench/web_abuse.py`` (about a second).
"""

from __future__ import annotations

import http.client
import io
import tempfile
import time
from pathlib import Path

from phasewatch.service.logs import setup_logging
from phasewatch.store import Store
from phasewatch.webui.access import Access
from phasewatch.webui.app import AppContext, create_app
from phasewatch.webui.events import EventBroker
from phasewatch.webui.server import serve_in_thread

TOKEN = "bench-token-0123456789"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
JSON = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


def main() -> None:
    log = io.StringIO()
    setup_logging("INFO", stream=log)
    data = Path(tempfile.mkdtemp(prefix="web-abuse-")) / "data"
    store = Store(data / "phasewatch.sqlite3")
    problems = {"disk": f"{data}: only 12 MiB free"}
    events = EventBroker()
    ctx = AppContext(store=store, events=events, status=lambda: {},
                     health=lambda: (False, {"reasons": list(problems.values()), "problems": problems}),
                     metrics=lambda: (b"", "text/plain"), target_ra=0.1, data_dir=data, access=Access(token=TOKEN))
    server = serve_in_thread(create_app(ctx), "127.0.0.1", 0)

    def call(method: str, path: str, body: str | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, bytes, str | None]:
        connection = http.client.HTTPConnection(server.host, server.port, timeout=30)
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        answer = response.status, response.read(), response.getheader("Retry-After")
        connection.close()
        return answer

    try:
        started = time.perf_counter()
        statuses = [call("POST", "/login", f"token=wrong-{n:04d}-0123456789", FORM)[0] for n in range(300)]
        print(f"300 wrong tokens in {time.perf_counter() - started:.2f} s: 401 x {statuses.count(401)}, "
              f"429 x {statuses.count(429)}")
        status, _, retry_after = call("POST", "/login", f"token={TOKEN}", FORM)
        print(f"the right token at once: {status} (Retry-After: {retry_after} s)")
        time.sleep(float(retry_after or 0) + 0.05)
        print(f"the right token {retry_after} s later:", call("POST", "/login", f"token={TOKEN}", FORM)[0])
        print("[ x 100000 to /api/specimens:", *call("POST", "/api/specimens", "[" * 100_000, JSON)[:2])
        before = len(log.getvalue())
        status = call("GET", "/api/status", headers={"Host": "evil.\x85" + "a" * 250_000})[0]
        print(f"250 kB Host: {status}, log line of {len(log.getvalue()) - before} bytes")
        print("/healthz without the token:", *call("GET", "/healthz")[:2])
        print("/healthz with the token:", *call("GET", "/healthz", headers=JSON)[:2])
        text = log.getvalue()
        print(f"log: {len(text.splitlines())} lines, traceback: {'Traceback' in text}, "
              f"RecursionError: {'RecursionError' in text}")
    finally:
        events.close()
        server.stop()
        store.close()


if __name__ == "__main__":
    main()
