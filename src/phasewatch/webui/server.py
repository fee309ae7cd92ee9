"""The production WSGI server (waitress) for the web app, in a thread of the daemon.

Threads. waitress reads and writes every socket from one loop thread and runs each
request on one of ``streams + API_THREADS`` worker threads (:class:`ServerLimits`); an
SSE stream is a request that lasts as long as the page is open. The event broker caps
the streams at ``streams`` (in total, and fewer per client address) with the same
number, so that :data:`API_THREADS` threads always remain for the JSON API, images,
``/healthz`` and ``/metrics``: however many pages try to stream, the next one is refused
with 503 and its page retries.

Sockets. A socket costs no thread until a whole request has arrived (waitress buffers
it in the loop thread), so idle or slow sockets starve nothing but descriptors and the
``connection_limit`` (past which waitress stops accepting, /healthz included). Three
things keep that limit for real clients: it is high (``[web] max_connections``, with
the process's descriptor limit raised to match); a socket with no traffic for
``idle_timeout_s`` is closed (waitress's ``channel_timeout``; a live stream is never
idle: it writes a keep-alive comment every 15 s); and a request still arriving after
``idle_timeout_s`` is closed too (:func:`_reap_slow_requests`; a client trickling a
byte now and then is never idle). Bodies larger than twice the app's cap are refused by
waitress before it buffers them; the app answers 413 for the rest.

Channel options. ``channel_request_lookahead`` = 1 keeps reading a connection while its
request runs, so waitress sees a closed page's end of stream at once and the stream's next write
(at most a keep-alive period later) ends it, instead of only after a write fails;
``asyncore_use_poll`` avoids ``select``'s 1024-descriptor limit in a long-running
daemon; ``ident`` names the product in the ``Server`` header.

Shutdown order: close the event broker first (its streams end and free their threads),
then :meth:`ServerHandle.stop`.
"""

from __future__ import annotations

import logging
import resource
import threading
import weakref
from dataclasses import dataclass
from typing import Any

from waitress import create_server

from phasewatch.webui.events import MAX_SUBSCRIBERS
from phasewatch.webui.security import MAX_BODY_BYTES

log = logging.getLogger(__name__)

API_THREADS = 4
IDLE_TIMEOUT_S = 30
CONNECTION_LIMIT = 1000
SPARE_DESCRIPTORS = 256  # the database, model, images and logs need some too
LOOP_TIMEOUT_S = 0.25  # how soon the serving loop notices stop()
STOP_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ServerLimits:
    """The server's bounds (``[web]`` keys): ``streams`` must be the event broker's
    ``max_subscribers``, as each stream holds a worker thread."""

    streams: int = MAX_SUBSCRIBERS
    connection_limit: int = CONNECTION_LIMIT
    idle_timeout_s: int = IDLE_TIMEOUT_S

    @property
    def threads(self) -> int:
        return self.streams + API_THREADS

    @property
    def cleanup_interval_s(self) -> int:
        # waitress looks for idle sockets this often; a fraction of the timeout keeps an
        # idle socket's life close to the timeout.
        return max(1, self.idle_timeout_s // 4)


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


class _DisconnectsAtDebug(logging.Filter):
    """waitress logs every closed browser tab at INFO ("Client disconnected while serving
    /events"): a page left open and closed is no news, so such a line is DEBUG here."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and record.getMessage().startswith("Client disconnected while serving"):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return WAITRESS_LOG.isEnabledFor(logging.DEBUG)
        return True


WAITRESS_LOG = logging.getLogger("waitress")
_DISCONNECTS_AT_DEBUG = _DisconnectsAtDebug()


def _reap_slow_requests(server: Any, timeout_s: float) -> None:
    """Make waitress's periodic sweep also close a connection whose request has been
    arriving for longer than ``timeout_s`` (slowloris): waitress only closes sockets with
    no traffic at all."""
    first_seen: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
    sweep = server.maintenance

    def maintenance(now: float) -> None:
        sweep(now)
        for channel in list(server.active_channels.values()):
            partial = channel.request  # the request being read; None between requests
            if partial is not None and not channel.requests and now - first_seen.setdefault(partial, now) > timeout_s:
                channel.will_close = True

    server.maintenance = maintenance


def _descriptors_for(connections: int) -> int:
    """Raise the soft descriptor limit so that ``connections`` sockets fit (systemd's
    default soft limit is 1024); the number of connections that fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + SPARE_DESCRIPTORS
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
        soft = raised
    fits = connections if soft == resource.RLIM_INFINITY else min(connections, soft - SPARE_DESCRIPTORS)
    if fits < connections:
        log.warning("web: descriptor limit %d allows only %d connections, not %d", soft, fits, connections)
    return max(fits, 1)


def serve_in_thread(app, host: str = "127.0.0.1", port: int = 0, limits: ServerLimits | None = None) -> ServerHandle:
    """Serve the WSGI ``app`` on ``host``:``port`` (0 picks a free port) from a daemon thread."""
    limits = limits or ServerLimits()
    WAITRESS_LOG.addFilter(_DISCONNECTS_AT_DEBUG)  # the same filter object is added once
    server = create_server(
        app,
        host=host,
        port=port,
        threads=limits.threads,
        channel_timeout=limits.idle_timeout_s,
        cleanup_interval=limits.cleanup_interval_s,
        connection_limit=_descriptors_for(limits.connection_limit),
        max_request_body_size=2 * MAX_BODY_BYTES,
        asyncore_use_poll=True,
        channel_request_lookahead=1,
        ident="phasewatch",
    )
    if not hasattr(server, "effective_port"):  # waitress listens on each address of a name
        server.close()
        raise ValueError(f"{host}: resolves to several addresses; give one address, e.g. 0.0.0.0")
    _reap_slow_requests(server, limits.idle_timeout_s)
    stopping = threading.Event()
    thread = threading.Thread(target=_serve, args=(server, stopping), name="phasewatch-web", daemon=True)
    thread.start()
    return ServerHandle(server, thread, stopping)
