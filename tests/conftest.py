"""Shared fixtures: where the real micrographs live, and tiny ONNX bundles."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chromium import launched_chromium

from phasewatch.store import Store
from phasewatch.webui.app import AppContext, create_app
from phasewatch.webui.events import EventBroker
from phasewatch.webui.server import serve_in_thread

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """The real annotated micrographs: $PHASEWATCH_DATA, else ../shared/data beside the project."""
    env = os.environ.get("PHASEWATCH_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(PROJECT_ROOT.parent / "shared" / "data")
    for path in candidates:
        if (path / "README.md").is_file():
            return path
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("real micrographs not found: set PHASEWATCH_DATA or provide ../shared/data")
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium per test module (each test opens its own pages, so its own cookies)."""
    with launched_chromium() as launched:
        yield launched


@pytest.fixture
def served(tmp_path):
    """The web app alone on a real store and a real waitress server (no daemon): (store, events, data, url)."""
    data = tmp_path / "data"
    store = Store(data / "phasewatch.sqlite3")
    events = EventBroker()
    ctx = AppContext(store=store, events=events, status=lambda: {"queued": 0, "processing": 0, "done": 0,
                     "failed": 0, "backend": "cpu", "model": "superalloy", "uptime_s": 1.0},
                     health=lambda: (True, {"reasons": []}), metrics=lambda: (b"", "text/plain"),
                     target_ra=0.10, data_dir=data)
    handle = serve_in_thread(create_app(ctx), "127.0.0.1", 0)
    yield store, events, data, handle.url
    events.close()
    handle.stop()
    store.close()
