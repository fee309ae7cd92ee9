"""The live page in a real browser (Debian's chromium driven by Playwright) against the
real waitress server: a field finished by the daemon appears without a reload; a field
outside the model's experience is marked, left out of the statistics, and accepted.
Screenshots of the flagged field at a phone's, a laptop's and a wall screen's width go to
``SHOTS`` for a person to look at.

Needs ``apt-get install -y chromium`` and ``pip install playwright``; never downloads a
browser (Playwright is pointed at /usr/bin/chromium).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from chromium import needs_chromium

from phasewatch.bundle import ClassInfo
from phasewatch.core.measure import measure
from phasewatch.core.outputs import preview, write_jpeg_atomic, write_outputs
from phasewatch.core.synthetic import superalloy_micrograph
from phasewatch.imageio.formats import ImageReadError, read_pages
from phasewatch.store import Store
from phasewatch.webui.app import AppContext, create_app, image_json
from phasewatch.webui.events import EventBroker
from phasewatch.webui.server import serve_in_thread

CLASSES = (
    ClassInfo(0, "gamma", (0, 0, 0), "background"),
    ClassInfo(1, "secondary", (30, 144, 255), "phase"),
    ClassInfo(2, "tertiary", (255, 80, 60), "phase"),
)
WAIT_MS = 15_000
SHOTS = Path("/tmp/shots")
SHOT_WIDTHS = (400, 1280, 2560)
UNLIKE = "intensity distribution unlike this model's training images (mean 0.91, trained 0.35-0.62)"

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytestmark = needs_chromium


def finish_field(store: Store, out_dir: Path, seed: int, trust: dict | None = None, extra: dict | None = None) -> int:
    """A synthetic superalloy field measured and written like the daemon does, with the
    ``trust`` record given (none: a record from before trust records) and ``extra`` keys of
    the record (provenance: backend, pixel_size_source); its id."""
    image, labels = superalloy_micrograph(240, 320, seed=seed)
    record = measure(labels, CLASSES, pixel_size_um=0.01) | (extra or {})
    if trust is not None:
        record["trust"] = trust
    stem = f"field{seed:02d}"
    paths = write_outputs(out_dir, stem, image, labels, [c.colour for c in CLASSES], record, skip={0})
    paths["preview"] = out_dir / f"{stem}.preview.jpg"
    write_jpeg_atomic(paths["preview"], preview(image, 160))
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



def test_a_finished_field_appears_live(served, browser, tmp_path):
    store, events, out_dir, url = served
    for seed in (1, 2):
        finish_field(store, out_dir, seed)
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.goto(url)
    n_cell = page.locator('#stats tr[data-class="secondary"] td.n')
    sync_api.expect(n_cell).to_have_text("2", timeout=WAIT_MS)
    sync_api.expect(page.locator("#status")).to_contain_text("live", timeout=WAIT_MS)

    new_id = finish_field(store, out_dir, 3)
    events.publish("field", image_json(store.get_image(new_id)))

    # The viewer draws the new field (its canvas says which), the statistics and the strip follow.
    sync_api.expect(page.locator("#picture")).to_have_attribute("data-field", str(new_id), timeout=WAIT_MS)
    sync_api.expect(n_cell).to_have_text("3", timeout=WAIT_MS)
    sync_api.expect(page.locator("#strip li")).to_have_count(3, timeout=WAIT_MS)
    sync_api.expect(page.locator("#strip a").first).to_have_attribute("href", f"/images/{new_id}")
    sync_api.expect(page.locator("#announce")).to_have_text(re.compile(r"^New field field03\.tif, secondary "))
    sync_api.expect(page.locator("#trust")).to_be_hidden()  # a record without trust is trusted
    sync_api.expect(page.locator("#trusted")).to_contain_text("No trust record")
    # Thumbnails are the small cached JPEGs, and they loaded.
    page.wait_for_function("[...document.querySelectorAll('#strip img')].every((i) => i.naturalWidth > 0 && "
                           "i.src.includes('/thumb-'))", timeout=WAIT_MS)
    shot = tmp_path / "webui.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 0


def test_a_flagged_field_is_marked_not_counted_and_accepted(served, browser):
    store, events, out_dir, url = served
    for seed in (1, 2):
        finish_field(store, out_dir, seed, {"ok": True, "score": 0.9, "reasons": []})
    # A reason with markup must show as text, never as HTML.
    flagged = finish_field(store, out_dir, 3, {"ok": False, "score": 0.1, "reasons": [UNLIKE, "<b>x</b>"]})
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.goto(url)
    n_cell = page.locator('#stats tr[data-class="secondary"] td.n')
    sync_api.expect(n_cell).to_have_text("2", timeout=WAIT_MS)
    note = page.locator("#flagged-note")
    sync_api.expect(note).to_have_text("1 field outside the model's experience is not counted until someone "
                                       "accepts it.", timeout=WAIT_MS)
    thumb = page.locator(f'#strip a[data-id="{flagged}"]')
    sync_api.expect(thumb.locator(".trust-mark")).to_have_text("⚠ outside experience", timeout=WAIT_MS)
    sync_api.expect(page.locator("#strip .trust-mark")).to_have_count(1)

    thumb.click()  # a card is a link to the field's own page
    sync_api.expect(page).to_have_url(f"{url}/images/{flagged}")
    trust = page.locator("#trust")
    sync_api.expect(trust.locator("#trust-reason")).to_have_text(
        f"Outside this model's experience: {UNLIKE} (+1 more)", timeout=WAIT_MS)
    sync_api.expect(trust.locator("#trust-state")).to_have_text(
        "Not counted in the statistics until someone accepts it.")
    assert page.locator("#trust b").count() == 0
    sync_api.expect(page.locator("#field-badges")).to_contain_text("⚠ outside experience")
    sync_api.expect(page.locator("#picture")).to_have_attribute("data-field", str(flagged), timeout=WAIT_MS)
    SHOTS.mkdir(parents=True, exist_ok=True)
    for width in SHOT_WIDTHS:
        page.set_viewport_size({"width": width, "height": 1000})
        page.screenshot(path=str(SHOTS / f"flagged-{width}.png"), full_page=True)
        assert page.evaluate("document.documentElement.scrollWidth") <= width  # nothing spills sideways

    page.set_viewport_size({"width": 1600, "height": 1000})
    page.locator("#accept").click()
    dialog = page.locator("#accept-dialog")
    sync_api.expect(dialog).to_be_visible()
    dialog.locator('input[name="who"]').fill("Ana")
    dialog.locator('button[type="submit"]').click()  # no reason yet: the browser refuses
    sync_api.expect(dialog).to_be_visible()
    dialog.locator('input[name="reason"]').fill("checked by eye: the segmentation is right")
    page.screenshot(path=str(SHOTS / "accept-dialog-1600.png"))
    dialog.locator('button[type="submit"]').click()
    sync_api.expect(dialog).to_be_hidden(timeout=WAIT_MS)
    sync_api.expect(trust.locator("#trust-state")).to_have_text(
        "Accepted by Ana: checked by eye: the segmentation is right", timeout=WAIT_MS)
    sync_api.expect(page.locator("#unaccept")).to_be_visible()
    sync_api.expect(page.locator("#field-badges")).to_contain_text("outside experience · accepted")

    page.goto(url)  # the live view counts it now
    sync_api.expect(n_cell).to_have_text("3", timeout=WAIT_MS)
    sync_api.expect(note).to_be_hidden()
    sync_api.expect(thumb.locator(".trust-mark")).to_have_text("outside experience · accepted")
    page.screenshot(path=str(SHOTS / "accepted-1600.png"), full_page=True)

    page.goto(f"{url}/images/{flagged}")
    page.locator("#unaccept").click()
    sync_api.expect(page.locator("#accept")).to_be_visible(timeout=WAIT_MS)
    assert store.get_image(flagged)["accepted"] == 0


def fail_file(store: Store, name: str, reason: str) -> int:
    """A file the daemon failed with ``reason`` (its one line); its id."""
    file_id = store.enqueue(f"/watch/{name}", 1, 99, f"sha-{name}")["id"]
    store.claim_next()
    store.mark_failed(file_id, reason)
    return file_id


def test_a_failed_file_shows_its_reason_while_the_live_view_keeps_the_last_good_field(served, browser, tmp_path):
    store, events, out_dir, url = served
    good = [finish_field(store, out_dir, seed) for seed in (1, 2)]
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(url)
    picture = page.locator("#picture")
    sync_api.expect(picture).to_have_attribute("data-field", str(good[-1]), timeout=WAIT_MS)
    notice = page.locator("#live-failure")
    sync_api.expect(notice).to_be_hidden()

    # The reason exactly as the decoder words it for a text file saved as .tif.
    notes = tmp_path / "notes.tif"
    notes.write_text("this is not an image\n")
    with pytest.raises(ImageReadError) as caught:
        read_pages(notes)
    reason = str(caught.value).replace(str(notes), "/watch/notes.tif")
    failed = fail_file(store, "notes.tif", reason)
    events.publish("field", image_json(store.get_image(failed)))

    sync_api.expect(notice).to_be_visible(timeout=WAIT_MS)
    sync_api.expect(page.locator("#live-failure-link")).to_have_text("notes.tif")
    sync_api.expect(page.locator("#live-failure-link")).to_have_attribute("href", f"/images/{failed}")
    readable = 'not a TIFF, PNG, JPEG or BMP image (starts with the text "this is ")'
    sync_api.expect(page.locator("#live-failure-reason")).to_have_text(readable)
    sync_api.expect(page.locator("#alarm")).to_have_text(f"Field notes.tif failed: {readable}")
    # The strip has the failed card; the viewer still shows the last good field, drawn.
    sync_api.expect(page.locator("#strip li")).to_have_count(3, timeout=WAIT_MS)
    sync_api.expect(page.locator(f'#strip a[data-id="{failed}"] .error')).to_have_text(readable)
    sync_api.expect(picture).to_have_attribute("data-field", str(good[-1]))
    sync_api.expect(page.locator("#viewer")).to_be_visible()
    sync_api.expect(page.locator("#field-error")).to_be_hidden()
    sync_api.expect(page.locator("#field-title")).to_have_text(f"field02.tif (#{good[-1]})")
    assert page.evaluate("document.getElementById('picture').width") > 0
    assert "b'" not in page.locator("main").inner_text()
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "failed-live-1280.png"), full_page=True)

    # Two more failures: the newest is named, the others counted.
    for name in ("empty.tif", "cut.tif"):
        other = fail_file(store, name, f"/watch/{name}: empty file (0 bytes)")
        events.publish("field", image_json(store.get_image(other)))
    sync_api.expect(page.locator("#live-failure-link")).to_have_text("cut.tif", timeout=WAIT_MS)
    sync_api.expect(page.locator("#live-failure-more")).to_have_text("(and 2 earlier files failed)")

    # A good field takes the view; the notice stays until it is dismissed.
    newer = finish_field(store, out_dir, 3)
    events.publish("field", image_json(store.get_image(newer)))
    sync_api.expect(picture).to_have_attribute("data-field", str(newer), timeout=WAIT_MS)
    sync_api.expect(notice).to_be_visible()
    page.locator("#live-failure-dismiss").click()
    sync_api.expect(notice).to_be_hidden()

    # Opened after a file failed: the newest measured field, and the notice for the failure.
    last = fail_file(store, "late.tif", "/watch/late.tif: image is 8 x 8 pixels, smaller than the 16 x 16 needed")
    fresh = browser.new_page(viewport={"width": 1280, "height": 900})
    fresh.goto(url)
    sync_api.expect(fresh.locator("#picture")).to_have_attribute("data-field", str(newer), timeout=WAIT_MS)
    sync_api.expect(fresh.locator("#live-failure-link")).to_have_attribute("href", f"/images/{last}")
    sync_api.expect(fresh.locator("#live-failure-more")).to_have_text("")
