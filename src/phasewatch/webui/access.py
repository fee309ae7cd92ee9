"""Who may talk to the web app, as plain functions of header values (no Flask here).

:class:`Access` holds the shared token and the host names the service answers to.
The checks are small and separate so that each one can be tested alone:

* :func:`host_name` / :meth:`Access.host_allowed`: the ``Host`` header must name this
  service, so a page on a rebound DNS name (``evil.example`` resolving to 127.0.0.1)
  cannot read the API through the victim's browser.
* :func:`origin_of` / :func:`same_origin`: a state-changing request that says where it
  comes from (``Origin``, else ``Referer``) must come from this service's own origin.
* :func:`token_matches`: the token is compared in constant time. The browser's cookie
  (:mod:`.sessions`) holds an HMAC keyed by the token, never the token itself, and
  expires after :attr:`Access.session_lifetime_s`; wrong tokens are throttled per client
  address (:mod:`.throttle`).
* :func:`exposure_problem`: listening beyond loopback without a token is refused.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass, field
from urllib.parse import urlsplit

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
SESSION_LIFETIME_S = 12 * 3600.0  # a shift; [web] session_hours


def normal_host(name: str) -> str:
    """A host name as compared: lower case, no brackets, no trailing dot."""
    return name.strip().strip("[]").rstrip(".").lower()


@dataclass(frozen=True)
class Access:
    """The token (empty: none), the host names a request may be addressed to, and how
    long a browser's sign-in lasts."""

    token: str = ""
    allowed_hosts: frozenset[str] = field(default_factory=lambda: LOOPBACK_NAMES)
    session_lifetime_s: float = SESSION_LIFETIME_S

    @classmethod
    def for_service(cls, token: str, bind_host: str, extra_hosts: tuple[str, ...] = (),
                    session_lifetime_s: float = SESSION_LIFETIME_S) -> Access:
        """The loopback names, the address the service binds and the configured names."""
        # A configured "name:port" or "[v6]" counts by its name: ports are not compared here.
        names = {*LOOPBACK_NAMES, normal_host(bind_host), *(host_name(h) or normal_host(h) for h in extra_hosts)}
        return cls(token=token, allowed_hosts=frozenset(n for n in names if n), session_lifetime_s=session_lifetime_s)

    def host_allowed(self, host_header: str | None) -> bool:
        name = host_name(host_header)
        return name is not None and name in self.allowed_hosts


def split_host(host_header: str | None) -> tuple[str, int | None] | None:
    """``Host`` as (name, port or None); None when absent or malformed."""
    if not host_header:
        return None
    value = host_header.strip()
    if value.startswith("["):  # [v6]:port
        name, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:]
    elif value.count(":") == 1:
        name, _, port_text = value.partition(":")
    else:  # a name, or a bare IPv6 address (not valid in Host, but unambiguous)
        name, port_text = value, ""
    if port_text and not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
        return None
    name = normal_host(name)
    return (name, int(port_text) if port_text else None) if name else None


def host_name(host_header: str | None) -> str | None:
    parts = split_host(host_header)
    return parts[0] if parts else None


def origin_of(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an ``Origin`` or ``Referer`` value; None if it has none
    (``null``, an opaque or malformed URL)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, normal_host(parts.hostname), port or _DEFAULT_PORTS[scheme]


def own_origin(scheme: str, host_header: str | None) -> tuple[str, str, int] | None:
    """This service's origin as the request addressed it."""
    parts = split_host(host_header)
    if parts is None or scheme not in _DEFAULT_PORTS:
        return None
    name, port = parts
    return scheme, name, port or _DEFAULT_PORTS[scheme]


def same_origin(claimed: str, scheme: str, host_header: str | None) -> bool:
    """Whether an ``Origin``/``Referer`` value is this service's own origin."""
    mine = own_origin(scheme, host_header)
    return mine is not None and origin_of(claimed) == mine


def token_matches(presented: str, token: str) -> bool:
    """Constant-time comparison; an empty token never matches."""
    return bool(token) and hmac.compare_digest(presented.encode("utf-8"), token.encode("utf-8"))


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the service on this machine. A name other than
    ``localhost`` is taken as reaching further: it may resolve to anything."""
    name = normal_host(host)
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def exposure_problem(host: str, token: str) -> str | None:
    """Why the service must not listen on ``host`` with ``token``; None when it may."""
    if token or is_loopback(host):
        return None
    return (f"refusing to listen on {host} without a web token: set [web] token, PHASEWATCH_TOKEN "
            f"or --token, or listen on 127.0.0.1")
