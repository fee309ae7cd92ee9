"""Issue 24: a 16-bit re-save of a field already measured is not counted twice. The pixel hash
(core/pixel_hash.py) of real files read and segmented by the real pipeline, stored by
mark_done in a real Store: the re-save is "likely the same field as #ID", out of the
statistics until an operator accepts it; a different field is not."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import tifffile
from onnx_graphs import make_bundle

from phasewatch.core.pipeline import open_model, process_file
from phasewatch.core.pixel_hash import pixel_sha256, stretched
from phasewatch.core.synthetic import superalloy_micrograph
from phasewatch.imageio.formats import read_pages
from phasewatch.store import Store


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    bundle = make_bundle(tmp_path_factory.mktemp("bundle") / "tiny", in_channels=1, num_classes=3, tile=64)
    opened = open_model(str(bundle), "cpu")
    yield opened
    opened.close()


def test_an_8_bit_field_saved_as_16_bit_has_the_same_hash_another_field_not():
    field = superalloy_micrograph(96, 128, seed=1)[0]
    assert field.dtype == np.uint8
    kept, scaled = field.astype(np.uint16), field.astype(np.uint16) * 257
    assert pixel_sha256([field]) == pixel_sha256([kept]) == pixel_sha256([scaled])
    assert np.array_equal(stretched(scaled), stretched(field))
    other = superalloy_micrograph(96, 128, seed=2)[0]
    assert pixel_sha256([other]) != pixel_sha256([field])
    assert pixel_sha256([field[:, :64]]) != pixel_sha256([field[:, 64:]])  # shape and content
    assert pixel_sha256([np.full((4, 4), 7, np.uint8)]) == pixel_sha256([np.zeros((4, 4), np.uint16)])  # flat


def by_the_formula(image: np.ndarray) -> np.ndarray:
    """The module doc's stretch, per pixel in int64: what the hash was defined (and first made) with."""
    values = image.astype(np.int64)
    low, high = int(values.min()), int(values.max())
    if high == low:
        return np.zeros(image.shape, np.uint8)
    return ((values - low) * 255 // (high - low)).astype(np.uint8)


def test_the_stretch_by_table_is_the_formula_on_every_real_field_and_odd_ranges(shared_data):
    # issue 25: 8- and 16-bit pages are stretched through a table (20 -> 1 ms per EBC field);
    # a hash already in a store must not change
    images = [read_pages(p)[0].image for p in sorted(shared_data.glob("*/*/images/*"))]
    assert len(images) > 50
    rng = np.random.default_rng(5)
    for low, high in ((0, 256), (0, 65536), (100, 4196), (7, 9), (65534, 65536)):
        images.append(rng.integers(low, high, (33, 47), np.uint16))
        if high <= 256:
            images.append(rng.integers(low, high, (33, 47, 3), np.uint8))
    images += [images[0].astype(np.uint16) * 257, images[0][:, ::3], rng.random((9, 5)).astype(np.float32)]
    for image in images:
        assert np.array_equal(stretched(image), by_the_formula(image)), (image.dtype, image.shape)


def test_a_16_bit_resave_is_flagged_and_counted_only_once_accepted(tmp_path, model):
    field = superalloy_micrograph(96, 128, seed=1)[0]
    files = {"a.png": tmp_path / "a.png", "a16.tif": tmp_path / "a16.tif", "b.png": tmp_path / "b.png"}
    assert cv2.imwrite(str(files["a.png"]), field)
    tifffile.imwrite(files["a16.tif"], field.astype(np.uint16) * 257)  # other bytes, the same field
    assert cv2.imwrite(str(files["b.png"]), superalloy_micrograph(96, 128, seed=2)[0])
    store = Store(tmp_path / "db.sqlite3")
    try:
        ids = {}
        for name, path in files.items():
            ids[name] = store.enqueue(str(path), path.stat().st_size, 1, f"sha-{name}")["id"]
            store.claim_next()
            result = process_file(path, model, tmp_path / "out")
            store.mark_done(ids[name], result.record)
        rows = {name: store.get_image(i) for name, i in ids.items()}
        assert rows["a16.tif"]["measurement"]["pixel_sha256"] == rows["a.png"]["measurement"]["pixel_sha256"]
        assert [rows[n]["same_pixels_as"] for n in files] == [None, ids["a.png"], None]
        sid = rows["a.png"]["specimen_id"]
        # the tiny model doubts every field: count_flagged counts those, never a copy not accepted
        counted = [f["id"] for f in store.field_results(sid, count_flagged=True)]
        assert counted == [ids["a.png"], ids["b.png"]]
        store.accept_field(ids["a16.tif"], "Ana", "a second acquisition of a static field, on purpose")
        counted = [f["id"] for f in store.field_results(sid, count_flagged=True)]
        assert counted == [ids["a.png"], ids["a16.tif"], ids["b.png"]]
    finally:
        store.close()


def test_the_api_shows_the_copy_and_an_operator_accepts_it(tmp_path):
    from test_webui_history import MODEL, Service, record

    service = Service(tmp_path)
    ids = []
    for name in ("a.tif", "a16.tif"):
        file_id = service.store.enqueue(f"/watch/{name}", 1, 1, f"sha-{name}")["id"]
        service.store.claim_next()
        service.store.mark_done(file_id, {**record(0.3), "pixel_sha256": "ab" * 32}, model=MODEL)
        ids.append(file_id)
    sid = service.store.current_specimen()["id"]
    shown = service.client.get(f"/api/images/{ids[1]}").get_json()
    assert (shown["same_pixels_as"], service.client.get(f"/api/images/{ids[0]}").get_json()["same_pixels_as"]) == (
        ids[0], None)
    assert service.client.get(f"/api/specimens/{sid}/stats").get_json()["fields"] == 1
    accepted = service.client.post(f"/api/images/{ids[1]}/accept", json={"who": "Ana", "reason": "on purpose"})
    assert accepted.status_code == 200
    assert service.client.get(f"/api/specimens/{sid}/stats").get_json()["fields"] == 2
