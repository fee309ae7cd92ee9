"""What the web app knows about the daemon, and how a view reaches it.

Everything comes through :class:`AppContext`, so the app is built the same way by the
daemon and by the tests; :func:`install` stores it in the app and
:func:`current_context` gives it to the view of the current request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from flask import Flask, current_app

from phasewatch.store import Store
from phasewatch.webui.access import Access
from phasewatch.webui.events import EventBroker

_EXTENSION = "phasewatch"


class Teaching(Protocol):
    """What the service does for the teach routes (:mod:`.teach_api`; ``service/teach_jobs.py``)."""

    def start(self, material: str, base: str, fields: list[int] | None, budget_min: float, name: str | None,
              who: str) -> str: ...

    def job(self, job_id: str) -> dict[str, Any] | None: ...

    def jobs(self) -> list[dict[str, Any]]: ...

    def cancel(self, job_id: str, who: str) -> dict[str, Any] | None: ...

    def reload_model(self) -> None:
        """Make the daemon open the (newly) active model for its next fields."""

    def reanalyse(self, model: str, specimen_id: int, who: str) -> str: ...

    def reanalysis(self, job_id: str) -> dict[str, Any] | None: ...


@dataclass
class AppContext:
    """What the app reads from the daemon.

    ``status()`` returns the queue counts and the backend (``queued``, ``processing``,
    ``done``, ``failed``, ``backend``, ``model``, ``uptime_s``); ``health()`` returns
    ``(ok, details)``, details being JSON-able (e.g. ``{"reasons": [...]}``);
    ``metrics()`` returns the Prometheus exposition and its content type;
    ``count_flagged``: fields the model flagged count in the statistics before an
    operator accepts them (``[specimen] count_flagged``); ``access``: the token and the
    host names requests may address (:mod:`.access`; by default no token, loopback names);
    ``teach``: the service's teach jobs and model switch (:class:`Teaching`).
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
    teach: Teaching | None = None  # teach jobs, activation, re-analysis; None: a web app without the service


def install(app: Flask, ctx: AppContext) -> None:
    app.extensions[_EXTENSION] = ctx


def current_context() -> AppContext:
    """The context of the app serving the current request."""
    ctx: AppContext = current_app.extensions[_EXTENSION]
    return ctx
