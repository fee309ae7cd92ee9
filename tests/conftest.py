"""Shared fixtures: where the real micrographs live, and tiny ONNX bundles."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chromium import launched_chromium

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
