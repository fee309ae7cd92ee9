"""The systemd notify protocol (sd_notify(3)) without a dependency: one datagram per message.

Under ``Type=notify`` systemd sets ``$NOTIFY_SOCKET`` to an AF_UNIX datagram socket (a path,
or an abstract name written with a leading ``@``); outside systemd it is unset and every
call here is a harmless no-op, so the daemon runs the same from a terminal.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


def _socket_address() -> str | None:
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return None
    if address.startswith("@"):
        return "\0" + address[1:]  # Linux abstract namespace
    return address


def notify(state: str) -> bool:
    """Send ``state`` (newline-separated ``KEY=VALUE`` lines); False when not under systemd."""
    address = _socket_address()
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        # A failed notification must never take the service down; systemd's own timeouts
        # (start, watchdog) report the consequence.
        log.warning("sd_notify to %s failed: %s", os.environ.get("NOTIFY_SOCKET"), exc)
        return False
    return True


def ready() -> bool:
    """Start-up finished: ``Type=notify`` units count as started only now."""
    return notify("READY=1")


def stopping() -> bool:
    return notify("STOPPING=1")


def reloading() -> bool:
    """A reload (SIGHUP) began; follow with :func:`ready` when it has finished."""
    return notify("RELOADING=1")


def status(text: str) -> bool:
    """One-line status shown by ``systemctl status``."""
    return notify("STATUS=" + " ".join(text.splitlines()))


def watchdog_ping() -> bool:
    return notify("WATCHDOG=1")


def watchdog_interval_s() -> float | None:
    """The watchdog timeout systemd expects pings within, or None when there is none for us.

    ``$WATCHDOG_PID``, when set, names the process the watchdog is meant for; a child that
    inherited the environment must not ping on its parent's behalf.
    """
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 else None


class Watchdog(threading.Thread):
    """Pings systemd's watchdog at half its interval while ``healthy()`` returns True.

    When the service wedges (``healthy()`` goes False or raises), the pings stop and systemd
    kills and restarts the unit after ``WatchdogSec`` — that is the point of it.
    """

    def __init__(self, healthy: Callable[[], bool], interval_s: float | None = None) -> None:
        super().__init__(name="sd-watchdog", daemon=True)
        self._healthy = healthy
        timeout = interval_s if interval_s is not None else watchdog_interval_s()
        self.period_s = timeout / 2 if timeout else None
        self._stop_event = threading.Event()

    @property
    def enabled(self) -> bool:
        return self.period_s is not None

    def start(self) -> None:
        """Start pinging; does nothing when systemd asked for no watchdog."""
        if self.enabled:
            super().start()

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join()

    def run(self) -> None:
        assert self.period_s is not None
        was_healthy = True
        while not self._stop_event.is_set():
            healthy = self._is_healthy()
            if healthy:
                watchdog_ping()
            elif was_healthy:
                log.warning("service unhealthy: watchdog pings withheld, systemd will restart it")
            was_healthy = healthy
            self._stop_event.wait(self.period_s)

    def _is_healthy(self) -> bool:
        try:
            return bool(self._healthy())
        except Exception:
            log.exception("health check failed; withholding the watchdog ping")
            return False
