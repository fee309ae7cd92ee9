"""The production WSGI server (waitress) for the web app, in a thread of the daemon.

Threads. waitress runs each request on one of :data:`THREADS` worker threads, and an
SSE stream is a request that lasts as long as the page is open. The event broker caps
the streams at :data:`phasewatch.webui.events.MAX_SUBSCRIBERS` so that
:data:`API_THREADS` threads always remain for the JSON API, images and ``/metrics``:
at most that many pages (browser tabs) get live updates at once; the next one is
refused with 503 and its page retries. Raise both numbers together for more viewers.

Channel options. ``channel_timeout`` closes idle keep-alive connections after a minute
(a live stream is never idle: it writes a keep-alive comment every 15 s);
``connection_limit`` bounds the sockets a misbehaving client can hold;
``channel_request_lookahead`` = 1 keeps reading a connection while its request runs,
so waitress sees a closed page's end of stream at once and the stream's next write
(at most a keep-alive period later) ends it, instead of only after a write fails;
``asyncore_use_poll`` avoids ``select``'s 1024-descriptor limit in a long-running
daemon; ``ident`` names the product in the ``Server`` header.

Shutdown order: close the event broker first (its streams end and free their threads),
then :meth:`ServerHandle.stop`.
"""

from __future__ import annotations

import threading

from waitress import create_server

from phasewatch.webui.events import MAX_SUBSCRIBERS

API_THREADS = 2
THREADS = MAX_SUBSCRIBERS + API_THREADS
CHANNEL_TIMEOUT_S = 60
CONNECTION_LIMIT = 100
LOOP_TIMEOUT_S = 0.25  # how soon the serving loop notices stop()
STOP_TIMEOUT_S = 5.0


class ServerHandle:
    """A running server: its bound ``host`` and ``port``, and :meth:`stop`."""

    def __init__(self, server, thread: threading.Thread, stopping: threading.Event) -> None:
        self._server = server
        self._thread = thread
        self._stopping = stopping

    @property
    def host(self) -> str:
        return str(self._server.effective_host)

    @property
    def port(self) -> int:
        return int(self._server.effective_port)

    @property
    def url(self) -> str:
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        """Stop accepting, close every connection, and wait for the worker threads."""
        if self._stopping.is_set():
            return
        # No pull_trigger() to wake the loop: the loop thread may have closed the trigger's
        # descriptor already, and a write to a reused descriptor would go elsewhere.
        self._stopping.set()
        self._thread.join(STOP_TIMEOUT_S + LOOP_TIMEOUT_S)


def _serve(server, stopping: threading.Event) -> None:
    # waitress's own run() loops until the socket map is empty; stepping the loop lets
    # stop() come from another thread without touching sockets from two threads.
    while not stopping.is_set():
        server.asyncore.loop(
            timeout=LOOP_TIMEOUT_S, map=server._map, use_poll=server.adj.asyncore_use_poll, count=1
        )
    server.task_dispatcher.shutdown(timeout=STOP_TIMEOUT_S)
    server.asyncore.close_all(server._map)


def serve_in_thread(app, host: str = "127.0.0.1", port: int = 0, threads: int = THREADS) -> ServerHandle:
    """Serve the WSGI ``app`` on ``host``:``port`` (0 picks a free port) from a daemon thread."""
    server = create_server(
        app,
        host=host,
        port=port,
        threads=threads,
        channel_timeout=CHANNEL_TIMEOUT_S,
        connection_limit=CONNECTION_LIMIT,
        asyncore_use_poll=True,
        channel_request_lookahead=1,
        ident="phasewatch",
    )
    if not hasattr(server, "effective_port"):  # waitress listens on each address of a name
        server.close()
        raise ValueError(f"{host}: resolves to several addresses; give one address, e.g. 0.0.0.0")
    stopping = threading.Event()
    thread = threading.Thread(target=_serve, args=(server, stopping), name="phasewatch-web", daemon=True)
    thread.start()
    return ServerHandle(server, thread, stopping)
