"""The sign-in cookie: a session the server can expire and end, with nothing stored per
session while it lasts (plain functions and one small class; no Flask here).

A cookie is ``v2.ISSUED.NONCE.MAC``: when it was issued (epoch seconds), a random nonce,
and an HMAC-SHA256 of both keyed by the token. So

* it never holds the token, and a new token invalidates every cookie of the old one;
* the server decides its age from ``ISSUED``, which nobody can change without the token:
  past ``lifetime_s`` it is refused, whatever the browser kept (``Max-Age`` only asks
  the browser to forget it);
* signing out revokes its nonce until the cookie would have expired anyway, so a copy of
  the cookie taken before does not outlive the sign-out. Revocations are kept in memory:
  a restart forgets them, and the lifetime bounds what that can cost.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable

_VERSION = "v2"
_MESSAGE = b"phasewatch web session v2"
CLOCK_SKEW_S = 60.0  # a cookie "issued" this far in the future still counts (clock steps)


def _mac(token: str, issued: int, nonce: str) -> str:
    message = b"|".join((_MESSAGE, str(issued).encode(), nonce.encode()))
    return hmac.new(token.encode("utf-8"), message, hashlib.sha256).hexdigest()


def issue_cookie(token: str, issued: int, nonce: str) -> str:
    return f"{_VERSION}.{issued}.{nonce}.{_mac(token, issued, nonce)}"


def cookie_parts(cookie: str, token: str) -> tuple[int, str] | None:
    """(issued, nonce) of a cookie signed with ``token``; None for anything else."""
    version, _, rest = cookie.partition(".")
    issued_text, _, rest = rest.partition(".")
    nonce, _, mac = rest.partition(".")
    if version != _VERSION or not issued_text.isascii() or not issued_text.isdigit() or len(issued_text) > 12:
        return None
    issued = int(issued_text)
    if not token or not hmac.compare_digest(mac.encode("utf-8", "replace"), _mac(token, issued, nonce).encode()):
        return None
    return issued, nonce


class Sessions:
    """Issues, checks and revokes the cookies of one token; ``clock`` is wall time, as
    cookies outlive a restart."""

    def __init__(self, lifetime_s: float, clock: Callable[[], float] = time.time) -> None:
        if lifetime_s <= 0:
            raise ValueError(f"a session lifetime must be positive, got {lifetime_s}")
        self.lifetime_s = lifetime_s
        self._clock = clock
        self._lock = threading.Lock()
        self._revoked: dict[str, float] = {}  # nonce -> when the cookie expires anyway

    def issue(self, token: str) -> str:
        return issue_cookie(token, int(self._clock()), secrets.token_hex(16))

    def valid(self, cookie: str, token: str) -> bool:
        parts = cookie_parts(cookie, token)
        if parts is None:
            return False
        issued, nonce = parts
        age = self._clock() - issued
        if not -CLOCK_SKEW_S <= age <= self.lifetime_s:
            return False
        with self._lock:
            return nonce not in self._revoked

    def revoke(self, cookie: str, token: str) -> None:
        """End the session of ``cookie`` (a valid one; anything else is ignored)."""
        parts = cookie_parts(cookie, token)
        if parts is None:
            return
        issued, nonce = parts
        now = self._clock()
        with self._lock:
            # Only sessions that could still be used are kept: bounded by the sign-ins of one lifetime.
            for old in [n for n, until in self._revoked.items() if until < now]:
                del self._revoked[old]
            self._revoked[nonce] = issued + self.lifetime_s
