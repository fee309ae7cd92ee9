"""A volume's page in a real browser (Debian's chromium through Playwright, the real waitress
server over a daemon that segmented a Z stack): the slice slider walks the slices, each with
its own fractions, and the 3D measurements are shown. Screenshots at a phone's, a laptop's and
a wall screen's width go to ``SHOTS``."""

from __future__ import annotations

import pytest
import test_daemon
from chromium import CHROMIUM, CHROMIUM_ARGS
from test_daemon import drop, finished, wait_for, web_app
from test_daemon_volume import VOLUME
from test_segment_volume import write_imagej_stack
from test_webui_browser import SHOT_WIDTHS, SHOTS, WAIT_MS

from phasewatch.webui.server import serve_in_thread

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
make_daemon = test_daemon.make_daemon  # the in-process daemon fixture, shared
pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"{CHROMIUM} is absent (apt-get install -y chromium)")


def test_the_slice_slider_and_the_3d_measurements(make_daemon) -> None:
    daemon = make_daemon()
    drop(daemon, "ball.tif", lambda p: write_imagej_stack(p, VOLUME))
    (image,) = wait_for(lambda: finished(daemon, 1), "the volume's result")
    assert image["state"] == "done", image["error"]
    slices = len(VOLUME)
    per_slice = image["measurement"]["volume"]["per_slice"]
    handle = serve_in_thread(web_app(daemon), "127.0.0.1", 0)
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(f"{handle.url}/images/{image['id']}")
            expect = sync_api.expect
            picture = page.locator("#picture")
            expect(picture).to_have_attribute("data-slice", str(slices // 2), timeout=WAIT_MS)
            expect(page.locator("#slice-control")).to_be_visible()
            expect(page.locator("#slice")).to_have_attribute("max", str(slices - 1))
            expect(page.locator("#slice-value")).to_have_text(f"{slices // 2 + 1} of {slices} · z = 8 µm")
            expect(page.locator("#field-badges")).to_contain_text(f"volume · {slices} slices")
            expect(page.locator("#fractions-caption")).to_have_text("Volume fraction, % of the valid voxels")
            row = page.locator('#volume-classes tr[data-class="class1"] td')
            expect(row.nth(2)).to_have_text("1 (1)")  # one ball, whatever the connectivity
            expect(row.nth(5)).to_have_text("1 (1)")  # Euler number of a ball
            expect(page.locator("#volume-facts")).to_contain_text(f"40 × 40 px × {slices} slices")

            page.locator("#slice").fill("0")
            expect(picture).to_have_attribute("data-slice", "0", timeout=WAIT_MS)
            expect(page.locator("#slice-value")).to_have_text(f"1 of {slices} · z = 0 µm")
            first = 100 * per_slice[0]["fractions"]["class1"]
            expect(page.locator("#slice-facts")).to_contain_text(f"class1 {first:.1f} %")

            SHOTS.mkdir(parents=True, exist_ok=True)
            for width in SHOT_WIDTHS:
                page.set_viewport_size({"width": width, "height": 1000})
                page.screenshot(path=str(SHOTS / f"volume-{width}.png"), full_page=True)
                overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
                assert overflow <= 0, f"{width} px: the page is {overflow} px too wide"
            browser.close()
    finally:
        handle.stop()
