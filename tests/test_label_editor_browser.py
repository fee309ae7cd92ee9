"""The label editor in a real browser (Debian's chromium driven by Playwright) against the
real ``phasewatch serve`` with the superalloy model on a real micrograph
(``superalloy/test``).

- The operator's path: open a field, paint a stroke and fill a particle of the model's
  map with the mouse, save; the labels read back through the API
  (``GET /api/images/ID/labels``) hold the stroke's pixels and exactly the particle.
- The editor's parts in the page itself: the one-channel PNG it writes decodes to the
  same ids, a polygon covers the pixels whose centres lie inside, undo and redo restore
  the ids, and on a 4096 × 4096 raster a brush segment, a fill and the PNG take times
  printed (and bounded loosely: a responsive editor, not a benchmark).

Needs ``apt-get install -y chromium``, ``pip install playwright`` and the real
micrographs (``tests/conftest.py``); skips, saying so, without them.
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from chromium import needs_chromium
from test_page_browser import WAIT_MS, serve, url

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytestmark = needs_chromium

BRUSH_PX = 16  # the editor's default brush: 16 CSS px across
SECONDARY, TERTIARY = 1, 2  # superalloy's classes: 0 matrix, 1 secondary γ′, 2 tertiary γ′


@pytest.fixture(scope="module")
def daemon(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, int]]:
    """The daemon with the superalloy model and one of its test micrographs measured."""
    image = sorted((shared_data / "superalloy" / "test" / "images").glob("*.tif"))[0]
    service = serve(tmp_path_factory.mktemp("labels"), "superalloy").start()
    try:
        shutil.copy(image, service.watch / image.name)
        (field,) = service.wait_idle(1)
        assert field["state"] == "done", field
        yield service, field["id"]
    finally:
        service.stop_if_running()



def get_png(service, path: str) -> np.ndarray:
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, f"GET {path}: {response.status} {body[:200]!r}"
    finally:
        conn.close()
    array = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_UNCHANGED)
    assert array is not None, f"GET {path}: not a PNG"
    return array


def fit_geometry(page, width: int, height: int) -> tuple[float, float, float, dict[str, float]]:
    """The viewer's fit: CSS px per image pixel and the image's top-left corner on the
    page (the canvas box plus the centring offset), and the canvas box."""
    box = page.locator("#picture").bounding_box()
    scale = min(box["width"] / width, box["height"] / height)
    return scale, box["x"] + (box["width"] - width * scale) / 2, box["y"] + (box["height"] - height * scale) / 2, box


def particle_to_fill(model: np.ndarray, avoid: np.ndarray) -> tuple[tuple[int, int], int]:
    """The pixel deepest inside the largest tertiary-γ′ particle (4-connected) away from
    ``avoid``, and that class."""
    mask = ((model == TERTIARY) & ~avoid).astype(np.uint8)
    count, components, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
    assert count > 1, "the model found no tertiary γ′ in this field"
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    depth = cv2.distanceTransform((components == largest).astype(np.uint8), cv2.DIST_L2, 3)
    y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return (int(x), int(y)), TERTIARY


def test_paint_a_stroke_and_a_fill_save_and_read_them_back(daemon, browser):
    service, file_id = daemon
    field = service.get_json(f"/api/images/{file_id}")
    width, height = field["provenance"]["width"], field["provenance"]["height"]
    model = get_png(service, field["pictures"]["classes"])
    assert model.shape == (height, width)

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(url(service, f"/images/{file_id}"))
    picture = page.locator("#picture")
    sync_api.expect(picture).to_have_attribute("data-field", str(file_id), timeout=WAIT_MS)
    page.click("#label-edit")
    sync_api.expect(picture).to_have_attribute("data-labels-material", "superalloy", timeout=WAIT_MS)
    scale, left, top, _ = fit_geometry(page, width, height)

    # A stroke of secondary γ′ (key 2) across the upper part, in image pixels.
    stroke = [(60.5, 80.5), (260.5, 120.5), (450.5, 90.5)]
    page.keyboard.press("2")
    page.mouse.move(left + stroke[0][0] * scale, top + stroke[0][1] * scale)
    page.mouse.down()
    for x, y in stroke[1:]:
        page.mouse.move(left + x * scale, top + y * scale, steps=12)
    page.mouse.up()
    stroke_mask = np.zeros((height, width), np.uint8)
    radius = BRUSH_PX / 2 / scale  # device pixel ratio 1: a CSS px is a device px
    for a, b in zip(stroke, stroke[1:], strict=False):
        cv2.line(stroke_mask, (round(a[0]), round(a[1])), (round(b[0]), round(b[1])), 1, 1)
    near_stroke = cv2.dilate(stroke_mask, np.ones((3, 3), np.uint8), iterations=math.ceil(radius) + 2).astype(bool)

    # A fill (tool f, key 3: tertiary γ′) on a particle of the model's map away from the stroke.
    (fx, fy), fill_class = particle_to_fill(model, near_stroke)
    page.keyboard.press("f")
    page.keyboard.press("3")
    page.mouse.click(left + (fx + 0.5) * scale, top + (fy + 0.5) * scale)
    sync_api.expect(picture).to_have_attribute("data-labels-dirty", "true")
    page.fill("#label-who", "A. Operator")
    page.click("#label-save")
    sync_api.expect(picture).to_have_attribute("data-labels-dirty", "false", timeout=WAIT_MS)
    assert not page.locator("#label-error").is_visible(), page.locator("#label-error").inner_text()
    assert errors == []

    saved = get_png(service, f"/api/images/{file_id}/labels?material=superalloy")
    assert saved.shape == (height, width) and saved.dtype == np.uint8
    assert set(np.unique(saved)) == {SECONDARY, TERTIARY, 255}

    # The stroke: its centre line painted, nothing far from it, about its area.
    painted = saved == SECONDARY
    assert painted[stroke_mask.astype(bool)].all()
    assert not (painted & ~near_stroke).any()
    length = sum(math.dist(a, b) for a, b in zip(stroke, stroke[1:], strict=False))
    expected = 2 * radius * length + math.pi * radius**2
    assert abs(painted.sum() - expected) / expected < 0.1, (painted.sum(), expected)

    # The fill: exactly the model's particle under the click, 4-connected, less what the stroke took.
    region = ((model == model[fy, fx]) & ~painted).astype(np.uint8)
    _, components = cv2.connectedComponents(region, connectivity=4)
    assert np.array_equal(saved == fill_class, components == components[fy, fx])
    page.close()


# The editor's modules in the page: a 64 × 48 raster's PNG round trip, a polygon, undo and
# redo; then on 4096 × 4096 a brush segment, a whole-field fill and the PNG, timed.
PARTS = """async () => {
  const { LabelRaster, UNLABELLED } = await import("/static/labels.js");
  const { encodeGrey, decodeIds } = await import("/static/png.js");
  const out = {};
  const small = new LabelRaster(64, 48);
  small.polygon([[10, 10], [20, 10], [20, 20], [10, 20]], 3);
  out.square = small.ids.filter((v) => v === 3).length;
  small.stroke([0, 40], [63, 40], 2, 1);
  const afterStroke = Array.from(small.ids);
  small.undo();
  out.undoRestores = small.ids.every((v, i) => (v === 3) === (i % 64 >= 10 && i % 64 < 20 && i >= 640 && i < 1280));
  small.redo();
  out.redoRestores = small.ids.every((v, i) => v === afterStroke[i]);
  out.dirtyAfterEdits = small.dirty;
  small.markSaved();
  small.undo();
  out.dirtyAfterUndo = small.dirty;
  small.redo();
  out.dirtyAfterRedo = small.dirty;
  for (let i = 0; i < small.ids.length; i += 7) small.ids[i] = i % 5;
  const png = await encodeGrey(small.ids, 64, 48);
  const back = await decodeIds(new Blob([png], { type: "image/png" }));
  out.roundTrip = back.width === 64 && back.height === 48 && back.ids.every((v, i) => v === small.ids[i]);
  out.pngBase64 = btoa(String.fromCharCode(...png));
  out.expected = Array.from(small.ids);

  const big = new LabelRaster(4096, 4096);
  let t = performance.now();
  for (let k = 0; k < 100; k += 1) big.stroke([1000 + 10 * k, 2000], [1010 + 10 * k, 2005], 40, 1);
  out.strokeMs = (performance.now() - t) / 100;
  t = performance.now();
  out.filled = big.fill(10, 10, 2);
  out.fillMs = performance.now() - t;
  t = performance.now();
  out.pngBytes = (await encodeGrey(big.ids, 4096, 4096)).length;
  out.pngMs = performance.now() - t;
  t = performance.now();
  big.undo();
  out.undoMs = performance.now() - t;
  out.undoneToStroke = big.ids[0] === UNLABELLED && big.ids[2000 * 4096 + 1000] === 1;
  return out;
}"""


def test_the_editor_parts_in_the_page(daemon, browser):
    service, file_id = daemon
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(url(service, f"/images/{file_id}"))
    parts = page.evaluate(PARTS)
    page.close()
    assert parts["square"] == 100  # the centres of pixels 10..19 in x and y
    assert parts["undoRestores"] and parts["redoRestores"]
    assert parts["dirtyAfterEdits"] and parts["dirtyAfterUndo"] and not parts["dirtyAfterRedo"]
    assert parts["roundTrip"]
    png = cv2.imdecode(np.frombuffer(base64.b64decode(parts["pngBase64"]), np.uint8), cv2.IMREAD_UNCHANGED)
    assert png.ndim == 2 and png.dtype == np.uint8  # one channel, as the label API takes it
    assert png.ravel().tolist() == parts["expected"]
    assert parts["filled"] > 16_000_000 and parts["undoneToStroke"]
    timings = {k: parts[k] for k in ("strokeMs", "fillMs", "pngMs", "pngBytes", "undoMs")}
    print("4096 x 4096 labels: " + json.dumps(timings))
    assert parts["strokeMs"] < 50, "a brush segment must not hold up the pointer"
    assert parts["pngMs"] < 10_000 and parts["fillMs"] < 10_000
