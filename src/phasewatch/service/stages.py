"""A daemon stage: one worker thread with one lifecycle, a heartbeat, and one way to wait.

Every stage of the daemon is a :class:`Stage` built from two functions: ``take(timeout)``
returns the next item of work or None when there is none yet, and ``handle(item)``
does the work. The lifecycle is the same for all of them:

``start``  the thread runs ``take``/``handle`` until asked to stop;
``stop``   the stage stops once ``take`` has nothing more (it drains what is already
           in its inbox; ``take`` may refuse new work once :attr:`Stage.stopping`),
           then the thread is joined.

The stage records a heartbeat every time it comes back for work and while an item is
in hand (:meth:`Stage.beat`, which long work such as inference calls per batch), so
that :meth:`Stage.problem` can tell a stage that is slow from one that is stuck: an item
in hand with no heartbeat for longer than the stall limit is a hung backend call or a
wedged decoder, and the daemon then reports itself unhealthy so that systemd's watchdog
restarts it. Waiting goes through :meth:`Stage.pause`, which a stop request (or
:meth:`Stage.wake`) cuts short.

Transient faults. ``take`` or ``handle`` raise :class:`TransientFault` for a fault that
is not the item's (a full disk, a read-only results folder, a database another process
holds locked, a failing backend). The stage then keeps the item, shows the fault as
:attr:`Stage.fault` (the daemon's health), and calls the same function with the same
item again after an exponential backoff, until it succeeds: nothing fails, nothing is
dropped, and no thread dies of it. A stop request during a fault hands the item to
``abandon`` (the daemon puts its file back in the queue) instead of waiting for the cause
to go. Any other exception is a bug: it is logged and the thread lives on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
POLL_S = 0.5  # how long ``take`` may block: bounds how late a stop request is seen
BACKGROUND_NICENESS = 10
BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 60.0


class TransientFault(Exception):
    """A fault outside the item in hand; ``component`` names what failed (``disk``,
    ``database``, ``backend``) and ``reason`` is one line (module doc)."""

    def __init__(self, component: str, reason: str) -> None:
        super().__init__(reason)
        self.component, self.reason = component, reason


class Backoff:
    """Exponential backoff for a failing resource (disk, backend)."""

    def __init__(self) -> None:
        self.delay = 0.0

    def failed(self) -> float:
        self.delay = min(BACKOFF_MAX_S, max(BACKOFF_INITIAL_S, self.delay * 2))
        return self.delay

    def succeeded(self) -> None:
        self.delay = 0.0


def lower_priority() -> None:
    """Run the calling thread at a lower CPU priority than inference.

    On a CPU backend the inference threads work in lock-step: a core taken by hashing,
    decoding or PNG writing stalls every operator. Nice threads run in inference's gaps
    instead, which keeps a burst's throughput close to bare inference's (bench/daemon_burst.py).
    """
    with contextlib.suppress(AttributeError, OSError):  # not Linux: same priority, still correct
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICENESS)


class Stage(Generic[T]):
    """One worker thread of the daemon (module doc)."""

    def __init__(
        self,
        name: str,
        take: Callable[[float], T | None],
        handle: Callable[[T], None],
        niced: bool = False,
        abandon: Callable[[T], None] | None = None,
    ) -> None:
        self.name = name
        self._take = take
        self._handle = handle
        self._abandon = abandon or (lambda item: None)
        self._niced = niced
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"phasewatch-{name}", daemon=True)
        self._backoff = Backoff()
        self.heartbeat = time.monotonic()
        self.busy_since: float | None = None
        self.fault: TransientFault | None = None  # while one lasts

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Drain what ``take`` still gives, then end the thread and wait for it."""
        self._stop.set()
        self._wake.set()
        if self._thread.ident is not None:
            self._thread.join()

    def beat(self) -> None:
        """Record progress; long work calls this between its steps."""
        self.heartbeat = time.monotonic()

    def pause(self, seconds: float) -> None:
        """Wait (backoff); a stop request or :meth:`wake` ends the wait at once."""
        self._wake.wait(seconds)
        if not self._stop.is_set():
            self._wake.clear()

    def wake(self) -> None:
        """End the current or the next pause now (e.g. a reload that may cure the fault)."""
        self._wake.set()

    def problem(self, stall_s: float) -> str | None:
        """Why this stage is not working, or None: its thread died, or it has had an item
        in hand with no progress for longer than ``stall_s``."""
        if self._thread.ident is not None and not self._thread.is_alive() and not self.stopping:
            return f"{self.name} stage stopped"
        if self.busy_since is not None:
            quiet = time.monotonic() - self.heartbeat
            if quiet > stall_s:
                return f"{self.name} stage stuck: no progress for {quiet:.0f} s (limit {stall_s:g} s)"
        return None

    def _run(self) -> None:
        if self._niced:
            lower_priority()
        while True:
            self.beat()
            item = self._next()
            if item is None:
                if self._stop.is_set():
                    return
                continue
            self.beat()
            self.busy_since = self.heartbeat
            try:
                self._work_on(item)
            finally:
                self.busy_since = None

    def _next(self) -> T | None:
        try:
            item = self._take(POLL_S)
        except TransientFault as fault:
            self._faulted(fault)
            return None
        except Exception:  # a bug: keep the stage alive, and do not spin on it
            log.exception("%s stage: unexpected error while taking work", self.name)
            self.pause(POLL_S)
            return None
        self._cleared()
        return item

    def _work_on(self, item: T) -> None:
        """``handle(item)``, again after each transient fault, until it is done or the
        stage stops (then ``abandon(item)``)."""
        while True:
            try:
                self._handle(item)
            except TransientFault as fault:
                if self.stopping:
                    log.warning("%s stage: stopping during a fault, giving its item back: %s", self.name, fault)
                    self._abandon(item)
                    return
                self._faulted(fault)
                self.beat()  # retrying is progress, not a stall
                continue
            except Exception:  # a stage handles its own faults; this is a bug, keep the stage alive
                log.exception("%s stage: unexpected error", self.name)
            self._cleared()
            return

    def _faulted(self, fault: TransientFault) -> None:
        delay = self._backoff.failed()
        if self.fault is None or self.fault.reason != fault.reason:
            log.error("%s: %s (retrying with backoff, %.0f s now)", fault.component, fault.reason, delay)
        else:
            log.debug("%s: %s (retrying in %.0f s)", fault.component, fault.reason, delay)
        self.fault = fault
        self.pause(delay)

    def _cleared(self) -> None:
        if self.fault is not None:
            log.info("%s: recovered from: %s", self.fault.component, self.fault.reason)
        self.fault = None
        self._backoff.succeeded()
