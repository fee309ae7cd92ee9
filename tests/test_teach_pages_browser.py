"""The teach pages in a real browser, through one real teach job, with screenshots at
1280 and 400 px of the label editor, the teach progress, the gate and the re-analysis
comparison: the daemon runs the superalloy model, four ``tomography/train`` slices come in,
three get a new 2-class material's labels through the API (from their label files, as if
painted), and the page teaches, shows the gate and re-analyses the specimen.

A teach job takes minutes on a CPU, so this runs only when asked:
``PHASEWATCH_TEACH_SHOTS=DIR`` (the screenshots go there; ``docs/img/teach-*.png`` are
from it); it skips, saying so, otherwise. Needs chromium, playwright, torch and the real data.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from chromium import CHROMIUM
from test_page_browser import WAIT_MS, post, save_shot, serve, url

SHOTS = os.environ.get("PHASEWATCH_TEACH_SHOTS")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytest.importorskip("torch", reason="teaching needs torch")
pytestmark = [
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"{CHROMIUM} is absent (apt-get install -y chromium)"),
    pytest.mark.skipif(not SHOTS, reason="a teach job takes minutes: set PHASEWATCH_TEACH_SHOTS=DIR to run it"),
]

MATERIAL = "tomo-2phase"
SLICES = 4
LABELLED = 3
BUDGET_MIN = 1.0
TEACH_DEADLINE_MS = 15 * 60_000


def put_json(port: int, path: str, body: dict[str, Any]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("PUT", path, json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status in (200, 201), response.read()[:300]
        response.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def daemon(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, list[int]]]:
    root = shared_data / "tomography" / "train"
    images = sorted((root / "images").glob("*.png"))[:SLICES]
    service = serve(tmp_path_factory.mktemp("teach-pages"), "superalloy").start()
    try:
        for image in images:
            shutil.copy(image, service.watch / image.name)
        fields = {f["file"]: f["id"] for f in service.wait_idle(len(images))}
        post(service.port, "/api/materials", {"name": MATERIAL, "who": "test", "classes": [
            {"name": "matrix", "colour": "#3b4cc0", "role": "phase"},
            {"name": "second phase", "colour": "#f4a259", "role": "phase"}]})
        labelled = []
        for image in images[:LABELLED]:
            ids = np.load(root / "labels" / f"{image.stem}.npy").astype(np.uint8)
            ok, png = cv2.imencode(".png", ids)
            assert ok
            put_json(service.port, f"/api/images/{fields[image.name]}/labels",
                     {"material": MATERIAL, "png": base64.b64encode(png.tobytes()).decode(), "who": "test"})
            labelled.append(fields[image.name])
        yield service, labelled
    finally:
        service.stop_if_running()



def shoot(page, name: str, show: str) -> None:
    """At 1280 px the part ``show`` (a selector) at the top of the window; at 400 px the whole page."""
    folder = Path(SHOTS or ".")
    folder.mkdir(parents=True, exist_ok=True)
    for width in (1280, 400):
        page.set_viewport_size({"width": width, "height": 900})
        page.wait_for_timeout(300)  # the viewer refits on resize
        page.locator(show).evaluate("(node) => node.scrollIntoView({ block: 'start' })")
        save_shot(page, folder / f"teach-{name}-{width}.png", full_page=width == 400)
        assert page.evaluate("document.documentElement.scrollWidth") <= width, f"{name} scrolls sideways at {width} px"


def test_teach_from_the_page_gate_and_reanalysis(daemon, browser):
    service, labelled = daemon
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))

    # The editor on a labelled field, with the new material's labels loaded.
    page.goto(url(service, f"/images/{labelled[0]}"))
    sync_api.expect(page.locator("#picture")).to_have_attribute("data-field", str(labelled[0]), timeout=WAIT_MS)
    page.evaluate(f"localStorage.setItem('phasewatch.material', '{MATERIAL}')")
    page.click("#label-edit")
    sync_api.expect(page.locator("#picture")).to_have_attribute("data-labels-material", MATERIAL, timeout=WAIT_MS)
    sync_api.expect(page.locator("#label-status")).to_contain_text("% of the field labelled")
    shoot(page, "editor", "#viewer")

    # Teach from the page: the labelled fields are listed and ticked.
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(url(service, "/teach"))
    page.select_option("#teach-material", MATERIAL)
    sync_api.expect(page.locator("#teach-fields input")).to_have_count(LABELLED, timeout=WAIT_MS)
    page.select_option("#teach-base", "superalloy")
    page.fill("#teach-budget", str(int(BUDGET_MIN)))
    page.fill("#teach-who", "A. Operator")
    page.click("#teach-start")
    sync_api.expect(page.locator("#job-stage")).to_contain_text("the whole job about", timeout=5 * 60_000)  # an ETA
    shoot(page, "progress", "#job-panel")
    page.set_viewport_size({"width": 1280, "height": 900})
    sync_api.expect(page.locator("#gate .gate-verdict")).to_be_visible(timeout=TEACH_DEADLINE_MS)
    sync_api.expect(page.locator("#gate .gate-field canvas")).to_have_count(1, timeout=WAIT_MS)  # one held out of 3
    assert not page.locator("#job-error").is_visible(), page.locator("#job-error").inner_text()
    shoot(page, "gate", "#gate-panel")
    model = page.locator("#job-model").get_attribute("href")
    assert model and model.startswith("/models/")

    # Re-analyse the specimen with the new model on its page.
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(url(service, model))
    sync_api.expect(page.locator("#reanalysis-specimen option")).not_to_have_count(0, timeout=WAIT_MS)
    page.click("#reanalysis-form button[type=submit]")
    # Old (superalloy's classes) and new (the material's) share no class name: no rows to pair,
    # but the fields the old model flagged and the new one trusts are listed.
    sync_api.expect(page.locator("#reanalysis h3")).to_contain_text("Flagged before, trusted now",
                                                                     timeout=TEACH_DEADLINE_MS)
    shoot(page, "reanalysis", "#reanalysis-title")
    assert errors == []
    page.close()
