"""What the web app knows about the daemon, and how a view reaches it.

Everything comes through :class:`AppContext`, so the app is built the same way by the
daemon and by the tests; :func:`install` stores it in the app and
:func:`current_context` gives it to the view of the current request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask, current_app

from phasewatch.store import Store
from phasewatch.webui.access import Access
from phasewatch.webui.events import EventBroker

_EXTENSION = "phasewatch"


@dataclass
class AppContext:
    """What the app reads from the daemon.

    ``status()`` returns the queue counts and the backend (``queued``, ``processing``,
    ``done``, ``failed``, ``backend``, ``model``, ``uptime_s``); ``health()`` returns
    ``(ok, details)``, details being JSON-able (e.g. ``{"reasons": [...]}``);
    ``metrics()`` returns the Prometheus exposition and its content type;
    ``count_flagged``: fields the model flagged count in the statistics before an
    operator accepts them (``[specimen] count_flagged``); ``access``: the token and the
    host names requests may address (:mod:`.access`; by default no token, loopback names).
    """

    store: Store
    events: EventBroker
    status: Callable[[], dict[str, Any]]
    health: Callable[[], tuple[bool, dict[str, Any]]]
    metrics: Callable[[], tuple[bytes, str]]
    target_ra: float
    data_dir: Path
    count_flagged: bool = False
    access: Access = field(default_factory=Access)


def install(app: Flask, ctx: AppContext) -> None:
    app.extensions[_EXTENSION] = ctx


def current_context() -> AppContext:
    """The context of the app serving the current request."""
    ctx: AppContext = current_app.extensions[_EXTENSION]
    return ctx
