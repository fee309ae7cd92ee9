"""Issue 24 in a real browser (Debian's chromium through Playwright) against the real
waitress server: limits set on the specimen page, the verdict going from undecided to pass
on the live page as fields arrive, a close with an electronic signature (a new specimen
starts), the closed specimen read-only, and its PDF (read with pypdf) naming the signer,
the meaning, the time, the verdict and where the pixel size came from. Screenshots of the
live page, the specimen page and the PDF's first page at 400, 1280 and 2560 px go to
``$PHASEWATCH_SHOTS`` (default: the test's temporary folder)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from chromium import CHROMIUM, CHROMIUM_ARGS
from test_webui_browser import SHOT_WIDTHS, WAIT_MS, finish_field

from phasewatch.app.cli import main
from phasewatch.webui.app import image_json

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pypdf = pytest.importorskip("pypdf")
pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"{CHROMIUM} is absent (apt-get install -y chromium)")


PROVENANCE = {"pixel_size_source": "imagej", "backend": "cpu"}



def shots(page, url: str, folder: Path, name: str) -> None:
    for width in SHOT_WIDTHS:
        page.set_viewport_size({"width": width, "height": 1000})
        page.goto(url)
        page.wait_for_timeout(600)
        page.screenshot(path=str(folder / f"{name}-{width}.png"), full_page=True)


def test_limits_verdict_signature_read_only_and_pdf(served, tmp_path):
    store, events, data, url = served
    folder = Path(os.environ.get("PHASEWATCH_SHOTS", tmp_path / "shots"))
    folder.mkdir(parents=True, exist_ok=True)
    sid = store.current_specimen()["id"]
    finish_field(store, data / "results", 1, extra=PROVENANCE)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(f"{url}/specimens/{sid}")
        form = page.locator("#limit-form")
        sync_api.expect(form.locator('select[name="class"] option[value="secondary"]')).to_have_count(1,
                                                                                                    timeout=WAIT_MS)
        form.locator('select[name="class"]').select_option("secondary")
        form.locator('input[name="lower"]').fill("1")
        form.locator('input[name="upper"]').fill("90")
        form.locator('input[name="target"]').fill("50")
        form.locator('input[name="who"]').fill("Ana Kovač")
        form.locator('button[type="submit"]').click()
        sync_api.expect(page.locator("#limits li")).to_contain_text("1 – 90", timeout=WAIT_MS)
        sync_api.expect(page.locator("#audit tbody tr")).to_have_count(1, timeout=WAIT_MS)

        live = browser.new_page(viewport={"width": 1280, "height": 1000})
        live.goto(url)
        verdict = live.locator("#verdict-text")
        sync_api.expect(verdict).to_have_text("Verdict: UNDECIDED: about 1 more field needed", timeout=WAIT_MS)
        for seed in (2, 3, 4):
            field = finish_field(store, data / "results", seed, extra=PROVENANCE)
            events.publish("field", image_json(store.get_image(field)))
        sync_api.expect(verdict).to_have_text("Verdict: PASS, every limit is met at 95 % confidence",
                                              timeout=WAIT_MS)
        sync_api.expect(live.locator("#checks li")).to_contain_text("secondary, area % 1 – 90 %: ")
        sync_api.expect(live.locator("#checks li .check-verdict")).to_have_text("pass")
        shots(live, url, folder, "live")
        shots(page, f"{url}/specimens/{sid}", folder, "specimen-pass")
        page.set_viewport_size({"width": 1280, "height": 1000})

        page.locator("#close").click()
        sign = page.locator("#sign")
        sign.locator('input[name="who"]').fill("Q. A. Lead")
        sign.locator('select[name="meaning"]').select_option("reviewed and released")
        sign.locator('button[type="submit"]').click()
        sync_api.expect(page.locator("#signed")).to_contain_text("by Q. A. Lead: reviewed and released",
                                                                 timeout=WAIT_MS)
        assert store.current_specimen()["id"] != sid  # the next fields go to a new specimen
        for control in ("#edit button", '#limit-form button[type="submit"]', "#close", "#make-current",
                        "#apply-template"):
            sync_api.expect(page.locator(control)).to_be_disabled()
        sync_api.expect(page.locator("#reopen")).to_be_enabled()
        sync_api.expect(page.locator("#audit tbody tr")).to_have_count(2, timeout=WAIT_MS)  # limits, close
        shots(page, f"{url}/specimens/{sid}", folder, "specimen-closed")
        refused = page.request.post(f"{url}/api/images/1/exclude", data={"reason": "x"})
        assert refused.status == 400 and "closed specimen" in refused.json()["error"]

        pdf = page.request.get(f"{url}/specimens/{sid}/report.pdf").body()
        browser.close()
    (folder / "report.pdf").write_bytes(pdf)
    text = "\n".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(pdf)).pages)
    closed = store.get_specimen(sid)
    from phasewatch.webui.report_data import when

    for expected in ("Q. A. Lead", "reviewed and released", when(closed["closed"]), "Verdict: PASS",
                     "0.01 µm/px from ImageJ metadata in the file", "Backend cpu", "page 1 of"):
        assert expected in " ".join(text.split()), expected
    if shutil.which("pdftoppm"):
        for width in SHOT_WIDTHS:
            subprocess.run(["pdftoppm", "-png", "-f", "1", "-l", "1", "-scale-to-x", str(width), "-scale-to-y",
                            "-1", str(folder / "report.pdf"), str(folder / f"report-page1-{width}")], check=True)
    assert main(["audit", "verify", "--data", str(data)]) == 0
