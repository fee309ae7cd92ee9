"""Server-Sent Events from the daemon to every open page.

:meth:`EventBroker.publish` is called by the daemon's worker; it must never wait for a
browser. Each subscriber therefore has its own bounded queue, and a subscriber whose
queue is full (a stalled client) is dropped instead: its stream ends, the browser's
``EventSource`` reconnects by itself with ``Last-Event-ID``, and the recent events it
missed are replayed from a small ring buffer.

Every open stream holds one thread of the WSGI server for as long as it lasts, so the
number of streams is capped, in total (``max_subscribers``) and per client address
(``max_per_client``, so that one machine cannot take every slot);
:meth:`EventBroker.subscribe` raises :class:`StreamRefused` beyond either, and the page
falls back to retrying.

A browser that goes away (a page closed or left for another) frees its stream within
:data:`GONE_POLL_S` when the server can tell (``gone``: waitress's
``client_disconnected``), not only at the next keep-alive write: a page that moves from
view to view would otherwise hold a slot per view for up to a keep-alive period and soon
be refused.

Event ids count up from 1 for the life of a broker (one daemon run). A
``Last-Event-ID`` from an earlier run is at or above the newest id only by chance;
then nothing is replayed, and the page reloads its data on every (re)connection anyway.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from phasewatch.errors import PhasewatchError

KEEPALIVE_S = 15.0
GONE_POLL_S = 1.0  # how often a stream checks whether its client went away
# Stream threads kept below the server's thread count, so the API always has some left
# (``[web] max_streams`` and ``max_streams_per_client``).
MAX_SUBSCRIBERS = 16
MAX_PER_CLIENT = 4
QUEUE_SIZE = 256
HISTORY = 256
RETRY_MS = 3000  # how soon a browser reconnects after a stream ends


class StreamRefused(PhasewatchError):
    """No stream now: every slot is taken, or the broker is closed."""


def format_event(event_id: int, event: str, data: Mapping[str, Any]) -> str:
    """One SSE message; the JSON is on one line, so a single ``data:`` field holds it."""
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


class _Subscriber:
    def __init__(self, client: str) -> None:
        self.queue: queue.Queue[str | None] = queue.Queue(QUEUE_SIZE)
        self.client = client
        self.ended = False


class EventBroker:
    """Fan-out of events to SSE streams; thread-safe."""

    def __init__(
        self,
        max_subscribers: int = MAX_SUBSCRIBERS,
        keepalive_s: float = KEEPALIVE_S,
        history: int = HISTORY,
        max_per_client: int = MAX_PER_CLIENT,
    ) -> None:
        self.max_subscribers = max_subscribers
        self.max_per_client = max_per_client
        self.keepalive_s = keepalive_s
        self._lock = threading.Lock()
        self._subscribers: set[_Subscriber] = set()
        self._history: deque[tuple[int, str]] = deque(maxlen=history)
        self._last_id = 0
        self._closed = False

    @property
    def subscriber_count(self) -> int:
        with self._lock:
            return len(self._subscribers)

    def publish(self, event: str, data: Mapping[str, Any]) -> int:
        """Send ``data`` (JSON-able) as ``event`` to every stream; returns the event id."""
        with self._lock:
            self._last_id += 1
            message = format_event(self._last_id, event, data)
            self._history.append((self._last_id, message))
            for sub in list(self._subscribers):
                try:
                    sub.queue.put_nowait(message)
                except queue.Full:
                    self._end(sub)
            return self._last_id

    def subscribe(
        self, last_event_id: int | None = None, client: str = "", gone: Callable[[], bool] | None = None
    ) -> Iterator[str]:
        """A stream of SSE text for ``client`` (its address): first the events after
        ``last_event_id`` still in the history, then live events and keep-alive comments
        until the client goes away (``gone()`` turns true, or a write fails), falls too
        far behind, or the broker closes.

        The subscription starts here, not at the first ``next()``: nothing published
        after this call is missed.
        """
        sub = _Subscriber(client)
        with self._lock:
            self._check_room(client)
            self._subscribers.add(sub)
            missed = (
                [m for i, m in self._history if i > last_event_id]
                if last_event_id is not None and last_event_id < self._last_id
                else []
            )
        return self._stream(sub, missed, gone or (lambda: False))

    def _check_room(self, client: str) -> None:
        """Raise :class:`StreamRefused` unless a stream for ``client`` fits (lock held)."""
        if self._closed:
            raise StreamRefused("the event broker is closed")
        if len(self._subscribers) >= self.max_subscribers:
            raise StreamRefused(f"all {self.max_subscribers} event streams are in use; try again later")
        if sum(s.client == client for s in self._subscribers) >= self.max_per_client:
            raise StreamRefused(
                f"{client or 'this client'} already has {self.max_per_client} event streams open; "
                "close a page or try again later"
            )

    def _stream(self, sub: _Subscriber, missed: list[str], gone: Callable[[], bool]) -> Iterator[str]:
        try:
            yield f"retry: {RETRY_MS}\n\n"
            yield from missed
            written = time.monotonic()
            while True:
                try:
                    message = sub.queue.get(timeout=min(self.keepalive_s, GONE_POLL_S))
                except queue.Empty:
                    if gone():
                        return
                    if time.monotonic() - written < self.keepalive_s:
                        continue
                    # A comment line: keeps proxies from closing the connection and makes the
                    # server notice a vanished client at the next write.
                    message = ": keep-alive\n\n"
                if sub.ended or message is None:
                    return
                yield message
                written = time.monotonic()
        finally:
            with self._lock:
                self._subscribers.discard(sub)

    def _end(self, sub: _Subscriber) -> None:
        """Drop a stream (lock held); its generator returns at its next wake-up."""
        sub.ended = True
        self._subscribers.discard(sub)
        # A full queue wakes its reader anyway; otherwise the sentinel does.
        with contextlib.suppress(queue.Full):
            sub.queue.put_nowait(None)

    def close(self) -> None:
        """End every stream (at shutdown, so that no server thread waits on one)."""
        with self._lock:
            self._closed = True
            for sub in list(self._subscribers):
                self._end(sub)
