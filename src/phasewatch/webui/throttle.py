"""Wrong tokens cost time: :class:`WrongTokenThrottle` counts them per client address and,
past a few, makes that address wait before it may present a token again, the wait
doubling with each further wrong one (no Flask here).

Why an address must wait rather than each answer being slowed: a delayed answer holds
one of the server's few worker threads, so slowing answers would let a guesser take the
page down for everyone; a refusal (429) costs nothing. Why per address: one guesser
cannot lock out the operator at another machine. IPv6 clients count per /64, the block
one host is usually given, so cycling through its own addresses does not reset the count.
Behind a reverse proxy every client has the proxy's address and shares one count.

Memory is bounded: at most ``max_clients`` addresses are remembered; when full, the one
least recently given a wrong token is forgotten. A count not updated for
``forget_after_s`` starts again.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

FREE_ATTEMPTS = 5  # typing mistakes; the wait starts with the next wrong token
FIRST_WAIT_S = 1.0
MAX_WAIT_S = 300.0
FORGET_AFTER_S = 3600.0
MAX_CLIENTS = 10_000


def client_key(address: str | None) -> str:
    """The address a count is kept for: an IPv6 address's /64, else the address itself."""
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]  # not an address (a unix socket's name): counted as given
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # ::ffff:a.b.c.d is the IPv4 client a.b.c.d
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


@dataclass
class _Record:
    wrong: int = 0
    blocked_until: float = 0.0
    updated: float = 0.0


class WrongTokenThrottle:
    """How long each client address must wait before presenting a token again."""

    def __init__(self, free_attempts: int = FREE_ATTEMPTS, first_wait_s: float = FIRST_WAIT_S,
                 max_wait_s: float = MAX_WAIT_S, forget_after_s: float = FORGET_AFTER_S,
                 max_clients: int = MAX_CLIENTS, clock: Callable[[], float] = time.monotonic) -> None:
        self.free_attempts, self.first_wait_s, self.max_wait_s = free_attempts, first_wait_s, max_wait_s
        self.forget_after_s, self.max_clients = forget_after_s, max_clients
        self._clock = clock
        self._lock = threading.Lock()
        self._records: OrderedDict[str, _Record] = OrderedDict()  # least recently updated first

    def __len__(self) -> int:
        return len(self._records)

    def wait_s(self, address: str | None) -> float:
        """Seconds until ``address`` may present a token again; 0: now."""
        with self._lock:
            record = self._records.get(client_key(address))
            return 0.0 if record is None else max(0.0, record.blocked_until - self._clock())

    def wrong(self, address: str | None) -> float:
        """``address`` presented a wrong token: the seconds it must now wait."""
        key, now = client_key(address), self._clock()
        with self._lock:
            record = self._records.pop(key, None)
            if record is None or now - record.updated > self.forget_after_s:
                record = _Record()
                self._make_room()
            record.wrong += 1
            record.updated = now
            beyond = record.wrong - self.free_attempts
            if beyond > 0:
                record.blocked_until = now + min(self.max_wait_s, self.first_wait_s * 2 ** min(beyond - 1, 32))
            self._records[key] = record
            return max(0.0, record.blocked_until - now)

    def right(self, address: str | None) -> None:
        """``address`` presented the token: its count starts again."""
        with self._lock:
            self._records.pop(client_key(address), None)

    def _make_room(self) -> None:
        # Records are kept in the order they were last updated: stale ones come first.
        while len(self._records) >= self.max_clients:
            self._records.popitem(last=False)
