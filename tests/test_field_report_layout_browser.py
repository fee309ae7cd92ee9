"""Issue 24's rough edges of the field page and the report in a real browser (Debian's
chromium through Playwright) against the real waitress server, with the superalloy model's
class names (γ′): a field of a closed specimen shows no exclude or accept controls but a
note saying who closed it; the field page's particle table (median, s, p10–p90) is not
scrolled sideways at 1280 px; the report at 400 px breaks no word in the middle and its
audit trail's "before -> after" stays within the page. Screenshots of the field page and the
report at 400, 1280 and 2560 px go to ``$PHASEWATCH_SHOTS`` (default: the test's folder)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from chromium import CHROMIUM, CHROMIUM_ARGS
from test_signoff_browser import shots
from test_webui_browser import WAIT_MS

from phasewatch.bundle import load_bundle
from phasewatch.core.measure import measure
from phasewatch.core.outputs import preview, write_jpeg_atomic, write_outputs
from phasewatch.core.synthetic import superalloy_micrograph
from phasewatch.store import Store

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"{CHROMIUM} is absent (apt-get install -y chromium)")

BUNDLE = load_bundle("superalloy")
MODEL = {"name": "superalloy", "onnx_sha256": BUNDLE.onnx_sha256, "architecture": BUNDLE.architecture,
         "classes": [{"id": c.id, "name": c.name, "colour": list(c.colour), "role": c.role} for c in BUNDLE.classes],
         "backend": "cpu"}
# Whether any element (other than scroll boxes' own content) reaches past the viewport's right edge.
PAGE_OVERFLOW = "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"


def finish(store: Store, out_dir: Path, seed: int) -> int:
    """A synthetic superalloy field measured with the real model's classes, as the daemon records it."""
    image, labels = superalloy_micrograph(240, 320, seed=seed)
    record = measure(labels, BUNDLE.classes, pixel_size_um=0.01) | {"backend": "cpu", "pixel_size_source": "imagej"}
    stem = f"field{seed:02d}"
    paths = write_outputs(out_dir, stem, image, labels, [c.colour for c in BUNDLE.classes], record, skip={0})
    paths["preview"] = out_dir / f"{stem}.preview.jpg"
    write_jpeg_atomic(paths["preview"], preview(image, 160))
    file_id = store.enqueue(f"/watch/{stem}.tif", 1, seed, f"sha{seed}")["id"]
    store.claim_next()
    store.mark_done(file_id, record, {k: str(v) for k, v in paths.items()}, model=MODEL)
    return file_id



def broken_words(page) -> list[str]:
    """Words of the page's text that the browser laid out over two lines (each text node's
    words measured with a Range: a word whose rectangles lie on two lines is broken); a line
    may end after a hyphen ("area-" "weighted"), and hashes (class ``hash``) may break anywhere."""
    return page.evaluate("""() => {
      const broken = [];
      const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
      for (let node = walker.nextNode(); node; node = walker.nextNode()) {
        if (node.parentElement.closest(".hash")) continue; // a sha256 is no word
        for (const match of node.textContent.matchAll(/[^\\s-]+/g)) {
          const range = document.createRange();
          range.setStart(node, match.index);
          range.setEnd(node, match.index + match[0].length);
          const tops = new Set([...range.getClientRects()].filter((r) => r.width > 0).map((r) => Math.round(r.top)));
          if (tops.size > 1) broken.push(match[0]);
        }
      }
      return broken;
    }""")


def test_field_page_read_only_when_closed_and_tables_fit(served, tmp_path):
    store, _events, data, url = served
    folder = Path(os.environ.get("PHASEWATCH_SHOTS", tmp_path / "shots"))
    folder.mkdir(parents=True, exist_ok=True)
    sid = store.current_specimen()["id"]
    field = finish(store, data / "results", 1)
    finish(store, data / "results", 2)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(f"{url}/images/{field}")
        rows = page.locator("#particles tbody tr")
        sync_api.expect(rows).to_have_count(2, timeout=WAIT_MS)
        sync_api.expect(page.locator("#exclude")).to_be_visible()
        sync_api.expect(page.locator("#field-read-only")).to_be_hidden()
        # median, s and p10–p90 shown without scrolling the table sideways
        box = page.locator("#particles").evaluate("t => [t.parentElement.scrollWidth, t.parentElement.clientWidth]")
        assert box[0] <= box[1], f"the particle table scrolls: {box[0]} px in a {box[1]} px box"
        assert page.evaluate(PAGE_OVERFLOW) <= 0
        shots(page, f"{url}/images/{field}", folder, "field-open")

        store.set_limits(sid, [{"class": "secondary gamma prime", "measure": "fractions", "lower": 20, "upper": 80,
                                "target_ra_pct": 50}], "Ana Kovač", "spec 7 rev. B, γ′ window widened")
        store.exclude_field(field, "scratch across the lower third of the field", "Ana Kovač")
        store.include_field(field, "Ana Kovač")
        store.close_specimen(sid, "Q. A. Lead", "reviewed and released")
        page.set_viewport_size({"width": 1280, "height": 1000})
        page.goto(f"{url}/images/{field}")
        note = page.locator("#field-read-only")
        sync_api.expect(note).to_contain_text("closed", timeout=WAIT_MS)
        sync_api.expect(note).to_contain_text("by Q. A. Lead (reviewed and released)")
        sync_api.expect(note.locator("a")).to_have_attribute("href", f"/specimens/{sid}")
        for control in ("#exclude", "#include", "#exclude-reason", "#accept", "#unaccept"):
            sync_api.expect(page.locator(control)).to_be_hidden()
        page.keyboard.press("x")  # the shortcut does nothing either
        page.wait_for_timeout(300)
        assert not store.get_image(field)["excluded"]
        shots(page, f"{url}/images/{field}", folder, "field-closed")

        for width in (400, 1280, 2560):
            page.set_viewport_size({"width": width, "height": 1000})
            page.goto(f"{url}/specimens/{sid}/report")
            page.wait_for_load_state("load")
            assert broken_words(page) == [], width
            assert page.evaluate(PAGE_OVERFLOW) <= 0, width
            page.screenshot(path=str(folder / f"report-{width}.png"), full_page=True)
        page.set_viewport_size({"width": 400, "height": 1000})
        page.goto(f"{url}/specimens/{sid}")
        audit = page.locator("#audit tbody tr")
        sync_api.expect(audit).to_have_count(4, timeout=WAIT_MS)  # limits, exclude, include, close
        # of a change, what it changed
        sync_api.expect(audit.nth(1).locator("td.change")).to_have_text(
            'exclude_reason: – → "scratch across the lower third of the field"; excluded: 0 → 1')
        change = page.locator("#audit").evaluate("t => [t.parentElement.scrollWidth, t.parentElement.clientWidth]")
        assert change[0] <= change[1], f"the audit trail scrolls: {change[0]} px in a {change[1]} px box"
        assert page.evaluate(PAGE_OVERFLOW) <= 0
        page.screenshot(path=str(folder / "specimen-closed-audit-400.png"), full_page=True)
        browser.close()
