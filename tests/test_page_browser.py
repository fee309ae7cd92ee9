"""The page in a real browser (Debian's chromium driven by Playwright) against the real
``phasewatch serve`` on real micrographs (``superalloy/test``, an EBC image for a model
change): the legend, the viewer's modes and opacity (read back from the canvas's pixels),
a field's provenance, a duplicate's badge, a failed field without a picture, specimens
started and switched, a model change that starts a new specimen instead of mixing
classes, no sideways scrolling and text contrast on every page at 400, 1280 and 1440 px,
and ten tabs of one browser sharing one event stream.

Screenshots of the live view, a field page and a specimen page at 1280 px go to
``$PHASEWATCH_SHOTS`` as ``page-live.png``, ``page-field.png``, ``page-specimen.png``
(``docs/images`` refreshes the README's) or a temporary folder; the same and the history
at 400 and 2560 px go to a temporary folder, for a person to look at.

Needs ``apt-get install -y chromium`` and ``pip install playwright`` (never downloads a
browser) and the real micrographs (``tests/conftest.py``); skips, saying so, without them.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chromium import needs_chromium
from test_daemon_e2e import ServeProcess

from phasewatch.bundle import load_bundle

Image = pytest.importorskip("PIL.Image", reason="Pillow is not installed (it comes with reportlab)")

WAIT_MS = 30_000
PIXEL_SIZE_UM = 0.0195  # [calibration] of the watch folder: particle sizes come out in µm
WIDTHS = (400, 1280, 1440)
TABS = 10
MAX_SHOT_BYTES = 300_000  # what docs/images may hold per picture

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytestmark = needs_chromium


def post(port: int, path: str, body: dict[str, Any]) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        answer = json.loads(response.read())
        assert response.status in (200, 201), answer
        return answer
    finally:
        conn.close()


def serve(root: Path, model: str) -> ServeProcess:
    service = ServeProcess(root, model)  # type: ignore[arg-type]  # a bundled model's name
    with service.config.open("a") as config:
        config.write(f"\n[calibration]\npixel_size_um = {PIXEL_SIZE_UM}\n")
    return service


@pytest.fixture(scope="module")
def daemon(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServeProcess, dict]]:
    """The daemon with the superalloy model: the four test images, a copy of one
    (a duplicate), a file that is no picture (failed), and a second, empty specimen."""
    images = sorted((shared_data / "superalloy" / "test" / "images").glob("*.tif"))
    service = serve(tmp_path_factory.mktemp("page"), "superalloy").start()
    try:
        for image in images:
            shutil.copy(image, service.watch / image.name)
        service.wait_idle(len(images))
        shutil.copy(images[0], service.watch / "copy-of-first.tif")
        service.wait_idle(len(images) + 1)
        (service.watch / "broken.tif").write_bytes(b"this is no micrograph\n")
        service.wait_idle(len(images) + 2)
        ids = {image["file"]: image["id"] for image in service.images()}
        default = service.get_json("/api/specimens")["current"]["id"]
        empty = post(service.port, "/api/specimens", {"name": "S-empty", "notes": "nothing yet"})["id"]
        post(service.port, f"/api/specimens/{default}/current", {})
        yield service, {"ids": ids, "images": images, "default": default, "empty": empty}
    finally:
        service.stop_if_running()



@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("PHASEWATCH_SHOTS") or tmp_path_factory.mktemp("shots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def more_shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("more-shots")


def url(service: ServeProcess, path: str = "") -> str:
    return f"http://127.0.0.1:{service.port}{path}"


def first_field(daemon) -> tuple[int, Path]:
    _, known = daemon
    image = known["images"][0]
    return known["ids"][image.name], image


# Mean colourfulness (|R - G| + |G - B|) and mean brightness of the canvas's pixels.
CANVAS_PIXELS = """() => {
  const canvas = document.getElementById("picture");
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let colour = 0, light = 0, n = 0;
  for (let p = 0; p < data.length; p += 16) {
    colour += Math.abs(data[p] - data[p + 1]) + Math.abs(data[p + 1] - data[p + 2]);
    light += data[p] + data[p + 1] + data[p + 2];
    n += 1;
  }
  return { colour: colour / n, light: light / n / 3 };
}"""

# Every text on the page (outside SVG) against the background it is drawn on: the
# elements whose contrast is under 4.5:1 (WCAG AA), with their ratio.
LOW_CONTRAST = """() => {
  const parse = (c) => { const m = c.match(/rgba?\\(([^)]+)\\)/); if (!m) return null;
    const p = m[1].split(",").map(Number); return { r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1 }; };
  const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
  const lum = ({ r, g, b }) => 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  const background = (el) => { for (let e = el; e; e = e.parentElement) {
    const c = parse(getComputedStyle(e).backgroundColor); if (c && c.a > 0.5) return c; }
    return { r: 255, g: 255, b: 255 }; };
  const low = [];
  for (const el of document.querySelectorAll("body *")) {
    if (el.closest("svg, [hidden], .visually-hidden, .skip") || el.matches(":disabled")) continue;
    const text = [...el.childNodes].filter((n) => n.nodeType === 3).map((n) => n.textContent.trim()).join("");
    if (!text || !el.getClientRects().length) continue;
    const fg = parse(getComputedStyle(el).color), bg = background(el);
    const [a, b] = [lum(fg) + 0.05, lum(bg) + 0.05];
    const ratio = Math.max(a, b) / Math.min(a, b);
    if (ratio < 4.5) low.push(`${el.tagName}.${el.className} "${text.slice(0, 30)}": ${ratio.toFixed(2)}`);
  }
  return low;
}"""


def save_shot(page, path: Path, full_page: bool = False) -> int:
    """A screenshot as a 256-colour PNG (a third of the bytes of a full-colour one, and
    no visible loss on these pages); its size in bytes."""
    picture = Image.open(io.BytesIO(page.screenshot(full_page=full_page))).convert("RGB")
    picture.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
    return path.stat().st_size


def canvas_pixels(page) -> dict[str, float]:
    return page.evaluate(CANVAS_PIXELS)


def open_field(page, service: ServeProcess, file_id: int) -> None:
    page.goto(url(service, f"/images/{file_id}"))
    sync_api.expect(page.locator("#picture")).to_have_attribute("data-field", str(file_id), timeout=WAIT_MS)


def test_the_legend_names_the_classes_beside_their_colours(daemon, browser):
    service, _ = daemon
    file_id, _ = first_field(daemon)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    open_field(page, service, file_id)
    legend = page.locator("#legend li")
    sync_api.expect(legend).to_have_count(3)
    assert [t.split("\n")[0] for t in legend.locator(".name").all_inner_texts()] == [
        "γ matrix", "secondary γ′", "tertiary γ′"]
    palette = {c.name: "#{:02x}{:02x}{:02x}".format(*c.colour) for c in load_bundle("superalloy").classes}
    for name, colour in palette.items():
        assert page.locator(f'#legend li[data-class="{name}"] .swatch rect').get_attribute("fill") == colour
    sync_api.expect(page.locator('#legend li[data-class="secondary gamma prime"] .value')).to_have_text(
        re.compile(r"^\d+\.\d %$"))
    page.close()


def test_the_mode_toggle_and_opacity_change_the_picture(daemon, browser):
    service, _ = daemon
    file_id, _ = first_field(daemon)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    open_field(page, service, file_id)
    overlay = canvas_pixels(page)
    shot_overlay = page.locator("#picture").screenshot()
    page.locator('input[name="mode"][value="original"]').check()
    original = canvas_pixels(page)
    assert page.locator("#picture").screenshot() != shot_overlay
    # The SEM micrograph is grey; the overlay tints the phases in their colours.
    assert original["colour"] < 2 < overlay["colour"]
    page.locator('input[name="mode"][value="classes"]').check()
    classes = canvas_pixels(page)
    assert classes["colour"] > overlay["colour"]
    page.keyboard.press("1")  # back to the overlay, by key
    sync_api.expect(page.locator("#picture")).to_have_attribute("data-mode", "overlay")
    page.locator("#opacity").fill("0")
    sync_api.expect(page.locator("#opacity-value")).to_have_text("0 %")
    assert canvas_pixels(page) == pytest.approx(original, abs=0.01)
    page.locator("#opacity").fill("100")
    opaque = canvas_pixels(page)
    assert opaque["colour"] > overlay["colour"] > original["colour"]
    # Zoom to full resolution: one image pixel per device pixel, the picture changes again.
    before = page.locator("#picture").screenshot()
    page.locator("#zoom-one").click()
    sync_api.expect(page.locator("#zoom-value")).to_have_text("100 %")
    page.locator("#zoom-in").click()
    sync_api.expect(page.locator("#zoom-value")).to_have_text("150 %")
    assert page.locator("#picture").screenshot() != before
    page.keyboard.press("0")
    sync_api.expect(page.locator("#zoom-value")).to_contain_text("fit")
    page.close()


def test_a_field_page_shows_its_measurements_and_provenance(daemon, browser, shots, more_shots):
    service, _ = daemon
    file_id, image = first_field(daemon)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    open_field(page, service, file_id)
    fact = lambda name: page.locator(f'#provenance dd[data-fact="{name}"]')  # noqa: E731
    sync_api.expect(fact("sha256")).to_have_text(hashlib.sha256(image.read_bytes()).hexdigest())
    sync_api.expect(fact("file")).to_have_text(image.name)
    sync_api.expect(fact("model")).to_have_text("superalloy")
    sync_api.expect(fact("model ONNX sha256")).to_have_text(load_bundle("superalloy").onnx_sha256)
    sync_api.expect(fact("pixel size")).to_have_text(f"{PIXEL_SIZE_UM} µm per pixel")
    sync_api.expect(fact("pixel size source")).to_have_text("the service's [calibration] for its folder")
    sync_api.expect(fact("backend")).to_have_text("cpu")
    sync_api.expect(fact("software")).to_contain_text("phasewatch ")
    sync_api.expect(fact("tiling")).to_contain_text("tile 256 px")
    sync_api.expect(fact("captured")).to_contain_text("file modification time")
    sync_api.expect(page.locator("#particles-caption")).to_contain_text("sizes in µm")
    sync_api.expect(page.locator("#ecd-head")).to_have_text("mean ECD, µm")
    sync_api.expect(page.locator("#density-head")).to_have_text("density, per mm²")
    sync_api.expect(page.locator('#fractions tr[data-class="secondary gamma prime"] td').first).to_have_text(
        "secondary γ′")
    sync_api.expect(page.locator("#trusted")).to_contain_text("Inside this model's experience")
    # x excludes the field from the statistics, and x again puts it back.
    page.locator("body").press("x")
    sync_api.expect(page.locator("#field-badges .excluded")).to_have_text("excluded", timeout=WAIT_MS)
    assert service.get_json(f"/api/images/{file_id}")["excluded"] is True
    page.locator("body").press("x")
    sync_api.expect(page.locator("#field-badges .excluded")).to_have_count(0, timeout=WAIT_MS)
    assert service.get_json(f"/api/images/{file_id}")["excluded"] is False
    assert save_shot(page, shots / "page-field.png") < MAX_SHOT_BYTES
    for width in (400, 2560):
        page.set_viewport_size({"width": width, "height": 1000})
        save_shot(page, more_shots / f"field-{width}.png", full_page=True)
    page.close()


def test_a_duplicate_says_so_and_links_to_its_original(daemon, browser):
    service, known = daemon
    original, _ = first_field(daemon)
    duplicate = known["ids"]["copy-of-first.tif"]
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    open_field(page, service, duplicate)
    badge = page.locator("#field-badges a.duplicate")
    sync_api.expect(badge).to_have_text(f"duplicate of #{original}, not counted")
    sync_api.expect(page.locator("#exclude")).to_be_disabled()  # excluding it would exclude the original
    badge.click()
    sync_api.expect(page).to_have_url(url(service, f"/images/{original}"))
    sync_api.expect(page.locator("#picture")).to_have_attribute("data-field", str(original), timeout=WAIT_MS)
    page.close()


def test_a_failed_field_shows_its_reason_and_no_picture(daemon, browser):
    service, known = daemon
    failed = known["ids"]["broken.tif"]
    duplicate = known["ids"]["copy-of-first.tif"]
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    # From a field with a picture to the failed one (the next, by key): the picture goes.
    open_field(page, service, duplicate)
    sync_api.expect(page.locator("#next")).to_have_attribute("href", f"/images/{failed}", timeout=WAIT_MS)
    page.keyboard.press("ArrowRight")
    sync_api.expect(page).to_have_url(url(service, f"/images/{failed}"))
    sync_api.expect(page.locator("#field-error")).to_contain_text("broken.tif: not a TIFF", timeout=WAIT_MS)
    sync_api.expect(page.locator("#viewer")).to_be_hidden()
    assert page.locator("#picture").get_attribute("data-field") is None
    assert canvas_pixels(page)["light"] == 0  # cleared, not the previous field's picture
    sync_api.expect(page.locator("#legend li")).to_have_count(0)
    sync_api.expect(page.locator("#no-measurements")).to_be_visible()
    sync_api.expect(page.locator('#provenance dd[data-fact="file"]')).to_have_text("broken.tif")
    # The live view: the newest file failed; its reason shows above the newest measured field,
    # which keeps the view (test_webui_browser.py follows a failure as it arrives).
    page.goto(url(service, "/"))
    sync_api.expect(page.locator("#live-failure-reason")).to_contain_text("not a TIFF", timeout=WAIT_MS)
    sync_api.expect(page.locator("#live-failure-link")).to_have_attribute("href", f"/images/{failed}")
    sync_api.expect(page.locator("#viewer")).to_be_visible()
    sync_api.expect(page.locator("#field-error")).to_be_hidden()
    assert page.locator(f'#strip a[data-id="{failed}"] img').count() == 0
    page.close()


def test_starting_a_specimen_and_switching_back(daemon, browser):
    service, known = daemon
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(url(service, "/specimens"))
    sync_api.expect(page.locator(f'#specimens tr[data-id="{known["default"]}"] .state')).to_have_text(
        "current", timeout=WAIT_MS)
    form = page.locator("#new-specimen")
    form.locator('input[name="name"]').fill("S-17 γ′")
    form.locator('input[name="notes"]').fill("etched 10 s")
    form.get_by_label("Operator", exact=True).fill("Ana Kovač")
    form.locator('button[type="submit"]').click()
    new_row = page.locator("#specimens tr", has_text="S-17 γ′")
    sync_api.expect(new_row.locator(".state")).to_have_text("current", timeout=WAIT_MS)
    current = service.get_json("/api/specimens")["current"]
    assert (current["name"], current["operator"]) == ("S-17 γ′", "Ana Kovač")
    default_row = page.locator(f'#specimens tr[data-id="{known["default"]}"]')
    default_row.get_by_role("button", name="Make current").click()
    sync_api.expect(default_row.locator(".state")).to_have_text("current", timeout=WAIT_MS)
    sync_api.expect(new_row.locator(".state")).to_have_text("open")
    assert service.get_json("/api/specimens")["current"]["id"] == known["default"]
    # Its page shows the operator in the edit form, and saves a new one.
    page.goto(url(service, f"/specimens/{current['id']}"))
    operator = page.locator("#edit").get_by_label("Operator", exact=True)
    sync_api.expect(operator).to_have_value("Ana Kovač", timeout=WAIT_MS)
    operator.fill("B. Ruiz")
    with page.expect_response(lambda r: r.request.method == "PATCH") as patched:
        page.locator("#edit").get_by_role("button", name="Save").click()
    assert patched.value.ok
    assert service.get_json(f"/api/specimens/{current['id']}")["operator"] == "B. Ruiz"
    # Signed off on its page (the list links there), it cannot become current until reopened.
    page.goto(url(service, "/specimens"))
    new_row.get_by_role("link", name="Close with a signature…").click()
    # The specimen's script has run (it fills the form) before its button is pressed: on a
    # loaded machine a click on the bare HTML button did nothing (seen in CI).
    sync_api.expect(page.locator("#edit").get_by_label("Operator", exact=True)).to_have_value("B. Ruiz",
                                                                                        timeout=WAIT_MS)
    page.locator("#close").click()
    page.locator("#sign").locator('input[name="who"]').fill("Q. A. Lead")
    page.locator("#sign").locator('button[type="submit"]').click()
    sync_api.expect(page.locator("#signed")).to_contain_text("by Q. A. Lead", timeout=WAIT_MS)
    page.goto(url(service, "/specimens"))
    sync_api.expect(new_row.locator(".state")).to_contain_text("closed", timeout=WAIT_MS)
    sync_api.expect(new_row.get_by_role("link", name="Reopen (signed)…")).to_be_visible()
    assert new_row.get_by_role("button", name="Make current").count() == 0
    # The live page's form starts one with an operator too.
    page.goto(url(service, "/"))
    form = page.locator("#new-specimen")
    form.locator('input[name="name"]').fill("S-18")
    form.get_by_label("Operator", exact=True).fill("C. Lee")
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/api/specimens")) as started:
        form.locator('button[type="submit"]').click()
    assert started.value.status == 201
    assert service.get_json("/api/specimens")["current"]["operator"] == "C. Lee"
    post(service.port, f"/api/specimens/{known['default']}/current", {})
    page.close()


# Each page, and what shows that it has its data.
def test_the_history_searches_and_every_field_links_to_its_page(daemon, browser):
    service, known = daemon
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(url(service, "/fields"))
    sync_api.expect(page.locator("#list li")).to_have_count(len(known["ids"]), timeout=WAIT_MS)
    page.locator('#filter input[name="q"]').fill("copy")
    page.locator("#filter").get_by_role("button", name="Search").click()
    sync_api.expect(page).to_have_url(url(service, "/fields?q=copy"))  # the search is in the address
    sync_api.expect(page.locator("#list li")).to_have_count(1, timeout=WAIT_MS)
    page.locator('#filter select[name="state"]').select_option("failed")
    page.locator('#filter input[name="q"]').fill("")
    page.locator("#filter").get_by_role("button", name="Search").click()
    sync_api.expect(page).to_have_url(url(service, "/fields?state=failed"))
    card = page.locator("#list li a")
    sync_api.expect(card).to_have_count(1, timeout=WAIT_MS)
    sync_api.expect(card.locator("img")).to_have_count(0)  # a failed field has no picture, not another's
    card.click()
    sync_api.expect(page).to_have_url(url(service, f"/images/{known['ids']['broken.tif']}"))
    # Thumbnails are the small cached JPEGs.
    page.goto(url(service, "/fields?state=done"))
    thumb = page.locator("#list img").first
    thumb.wait_for(timeout=WAIT_MS)
    response = page.request.get(url(service, thumb.get_attribute("src")))
    assert response.headers["content-type"] == "image/jpeg" and len(response.body()) < 30_000
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    page.close()


PAGES = {"/": "#strip li", "/fields": "#list li", "/images/{field}": "#picture[data-field]",
         "/images/{failed}": "#field-error:not([hidden])", "/specimens": "#specimens tbody tr",
         "/specimens/{default}": "#stats tbody tr",
         "/specimens/compare?ids={default},{empty}": "#compare-table tbody tr",
         "/specimens/{default}/report": "table.fields tbody tr"}


def goto_ready(page, service: ServeProcess, path: str, values: dict[str, int]) -> None:
    page.goto(url(service, path.format(**values)))
    page.locator(PAGES[path]).first.wait_for(timeout=WAIT_MS)
    page.wait_for_timeout(300)  # charts redraw at their width


def test_no_page_scrolls_sideways_and_text_has_contrast(daemon, browser, shots, more_shots):
    service, known = daemon
    values = {"field": first_field(daemon)[0], "failed": known["ids"]["broken.tif"], "default": known["default"],
              "empty": known["empty"]}
    page = browser.new_page(viewport={"width": WIDTHS[0], "height": 900})
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        for path in PAGES:
            goto_ready(page, service, path, values)
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{path} at {width} px is {overflow} px too wide"
            assert page.evaluate(LOW_CONTRAST) == [], f"{path} at {width} px"
    page.set_viewport_size({"width": 1280, "height": 900})
    goto_ready(page, service, "/specimens/{default}", values)
    assert save_shot(page, shots / "page-specimen.png") < MAX_SHOT_BYTES
    for width in (400, 2560):
        page.set_viewport_size({"width": width, "height": 900})
        for name, path in (("specimen", "/specimens/{default}"), ("fields", "/fields")):
            goto_ready(page, service, path, values)
            save_shot(page, more_shots / f"{name}-{width}.png", full_page=True)
    page.close()


def test_ten_tabs_share_one_event_stream_and_all_hear_the_next_field(daemon, browser, shared_data, shots,
                                                                     more_shots):
    service, _ = daemon
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    streams: list[str] = []
    context.on("request", lambda request: streams.append(request.url) if request.url.endswith("/events") else None)
    tabs = [context.new_page() for _ in range(TABS)]
    for tab in tabs:
        tab.goto(url(service, "/"))
    for tab in tabs:
        sync_api.expect(tab.locator("#status")).to_contain_text("live", timeout=WAIT_MS)
    arrival = sorted((shared_data / "superalloy" / "val" / "images").glob("*.tif"))[0]
    shutil.copy(arrival, service.watch / "for-ten-tabs.tif")
    for tab in tabs:
        sync_api.expect(tab.locator("#announce")).to_contain_text("New field for-ten-tabs.tif", timeout=WAIT_MS)
    assert len(streams) == 1, streams  # one stream for the whole browser, not one per tab
    # The live view with the field that just arrived, for people to look at.
    live = tabs[0]
    arrived = service.images()[0]["id"]
    sync_api.expect(live.locator("#picture")).to_have_attribute("data-field", str(arrived), timeout=WAIT_MS)
    live.wait_for_timeout(300)
    assert save_shot(live, shots / "page-live.png") < MAX_SHOT_BYTES
    for width in (400, 2560):
        live.set_viewport_size({"width": width, "height": 900})
        live.wait_for_timeout(300)
        save_shot(live, more_shots / f"live-{width}.png", full_page=True)
    # The tab holding the stream goes; another takes it over and the rest still hear fields.
    leader = next(tab for tab in tabs if tab.evaluate("import('/static/stream.js').then((s) => s.isLeader())"))
    with context.expect_event("request", lambda request: request.url.endswith("/events"), timeout=WAIT_MS):
        leader.close()
    rest = [tab for tab in tabs if not tab.is_closed()]
    for tab in rest:
        sync_api.expect(tab.locator("#status")).to_contain_text("live", timeout=WAIT_MS)
    assert len(streams) == 2
    shutil.copy(arrival, service.watch / "after-the-leader-left.tif")
    for tab in rest:
        sync_api.expect(tab.locator("#announce")).to_contain_text("after-the-leader-left.tif", timeout=WAIT_MS)
    context.close()


def test_a_model_change_starts_a_new_specimen_and_never_mixes_classes(shared_data, tmp_path, browser):
    superalloy = sorted((shared_data / "superalloy" / "test" / "images").glob("*.tif"))[:2]
    ebc = sorted((shared_data / "ebc" / "test" / "images").glob("*.tif"))[0]
    service = serve(tmp_path, "superalloy").start()
    try:
        for image in superalloy:
            shutil.copy(image, service.watch / image.name)
        service.wait_idle(2)
        assert service.terminate() == 0
        service.bundle = "ebc"  # type: ignore[assignment]  # the same data folder, another model
        service.start()
        shutil.copy(ebc, service.watch / "ebc-field.tif")
        service.wait_idle(3)
        listing = service.get_json("/api/specimens")
        by_name = {s["name"]: s for s in listing["specimens"]}
        assert set(by_name) == {"default", "default (model ebc)"}
        assert (by_name["default"]["model_name"], by_name["default (model ebc)"]["model_name"]) == ("superalloy", "ebc")
        assert listing["current"]["name"] == "default (model ebc)"
        classes = {name: set(service.get_json(f"/api/specimens/{s['id']}/stats")["fractions"])
                   for name, s in by_name.items()}
        assert classes["default"] == {"gamma matrix", "secondary gamma prime", "tertiary gamma prime"}
        assert classes["default (model ebc)"] == {"background", "oxide", "crack"}
        assert "fields of model ebc" in service.log_text()

        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url(service, f"/specimens/{by_name['default (model ebc)']['id']}"))
        rows = page.locator("#stats tbody tr")
        sync_api.expect(rows).to_have_count(3, timeout=WAIT_MS)
        assert sorted(rows.evaluate_all("(rows) => rows.map((r) => r.dataset.class)")) == ["background", "crack",
                                                                                            "oxide"]
        sync_api.expect(page.locator("#about")).to_contain_text("the model changed")
        page.goto(url(service, "/specimens"))
        sync_api.expect(page.locator("#specimens tbody tr")).to_have_count(2, timeout=WAIT_MS)
        sync_api.expect(page.locator("#specimens")).to_contain_text("superalloy")
        page.close()
    finally:
        service.stop_if_running()
