"""Debian's Chromium for the browser tests: where it is, how it starts, and the skip where it is absent.

Started as the machine's probe starts it: headless, no sandbox (CI runs as root), and no
background networking, which this machine's closed network would refuse many times a second.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
needs_chromium = pytest.mark.skipif(not CHROMIUM.is_file(),
                                    reason=f"{CHROMIUM} is absent (apt-get install -y chromium)")


@contextmanager
def launched_chromium() -> Iterator[Any]:
    """A Playwright browser on Debian's Chromium, closed on the way out."""
    from playwright import sync_api

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
