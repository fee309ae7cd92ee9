"""The live page in a real browser (Debian's chromium driven by Playwright) against the
real waitress server: a field finished by the daemon appears without a reload.

Needs ``apt-get install -y chromium`` and ``pip install playwright``; never downloads a
browser (Playwright is pointed at /usr/bin/chromium).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from phasewatch.runtime.bundle import ClassInfo
from phasewatch.runtime.measure import measure
from phasewatch.runtime.outputs import preview, write_outputs, write_png_atomic
from phasewatch.runtime.service.store import Store
from phasewatch.runtime.synthetic import superalloy_micrograph
from phasewatch.webui.app import AppContext, create_app, image_json
from phasewatch.webui.events import EventBroker
from phasewatch.webui.server import serve_in_thread

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CLASSES = (
    ClassInfo(0, "gamma", (0, 0, 0), "background"),
    ClassInfo(1, "secondary", (30, 144, 255), "phase"),
    ClassInfo(2, "tertiary", (255, 80, 60), "phase"),
)
WAIT_MS = 15_000

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(), reason=f"{CHROMIUM} is absent (apt-get install -y chromium)"
)


def finish_field(store: Store, out_dir: Path, seed: int) -> int:
    """A synthetic superalloy field measured and written like the daemon does; its id."""
    image, labels = superalloy_micrograph(240, 320, seed=seed)
    record = measure(labels, CLASSES, pixel_size_um=0.01)
    stem = f"field{seed:02d}"
    paths = write_outputs(out_dir, stem, image, labels, [c.colour for c in CLASSES], record, skip={0})
    paths["preview"] = out_dir / f"{stem}.preview.png"
    write_png_atomic(paths["preview"], preview(image, 160))
    file_id = store.enqueue(f"/watch/{stem}.tif", 1, seed, f"sha{seed}")["id"]
    store.claim_next()
    store.mark_done(file_id, record, {k: str(v) for k, v in paths.items()})
    return file_id


@pytest.fixture
def served(tmp_path):
    data = tmp_path / "data"
    store = Store(data / "phasewatch.sqlite3")
    events = EventBroker()
    ctx = AppContext(
        store=store, events=events,
        status=lambda: {"queued": 0, "processing": 0, "done": 2, "failed": 0, "backend": "cpu",
                        "model": "superalloy", "uptime_s": 1.0},
        health=lambda: (True, {"reasons": []}),
        metrics=lambda: (b"", "text/plain"),
        target_ra=0.10, data_dir=data,
    )
    handle = serve_in_thread(create_app(ctx), "127.0.0.1", 0)
    yield store, events, data / "results", handle.url
    events.close()
    handle.stop()
    store.close()


def test_a_finished_field_appears_live(served, tmp_path):
    store, events, out_dir, url = served
    for seed in (1, 2):
        finish_field(store, out_dir, seed)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(url)
            n_cell = page.locator('#stats tr[data-class="secondary"] td.n')
            sync_api.expect(n_cell).to_have_text("2", timeout=WAIT_MS)
            sync_api.expect(page.locator("#status")).to_contain_text("live", timeout=WAIT_MS)

            new_id = finish_field(store, out_dir, 3)
            events.publish("field", image_json(store.get_image(new_id)))

            overlay = page.locator("#overlay")
            sync_api.expect(overlay).to_have_attribute(
                "src", re.compile(rf"/api/images/{new_id}/overlay\.png$"), timeout=WAIT_MS
            )
            sync_api.expect(n_cell).to_have_text("3", timeout=WAIT_MS)
            sync_api.expect(page.locator("#strip li")).to_have_count(3, timeout=WAIT_MS)
            # The overlay really loaded (a broken image has no natural width).
            page.wait_for_function("document.getElementById('overlay').naturalWidth === 320", timeout=WAIT_MS)
            shot = tmp_path / "webui.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 0
