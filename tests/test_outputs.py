"""Output writers: exact class maps, overlays, previews, atomic files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from phasewatch import atomic_files
from phasewatch.atomic_files import OutputError, write_json_atomic
from phasewatch.bundle import load_bundle
from phasewatch.core.outputs import (
    overlay,
    preview,
    to_display_8bit,
    write_outputs,
    write_png_atomic,
    write_preview,
)
from phasewatch.export.datasets import find_pairs, read_label
from phasewatch.imageio.formats import read_pages

PALETTE = [(0, 0, 0), (255, 0, 0), (0, 200, 255)]


def _classes(height: int = 40, width: int = 60) -> np.ndarray:
    classes = np.zeros((height, width), np.uint8)
    classes[5:15, 5:25] = 1
    classes[20:35, 30:55] = 2
    return classes


def test_classes_png_round_trips_exactly(tmp_path):
    classes = np.random.default_rng(1).integers(0, 3, size=(37, 53), dtype=np.uint8)
    image = np.full((37, 53), 100, np.uint8)
    paths = write_outputs(tmp_path / "out", "field_01", image, classes, PALETTE, {"n": 1})

    assert paths == {
        "classes": tmp_path / "out" / "field_01.classes.png",
        "overlay": tmp_path / "out" / "field_01.overlay.jpg",
        "json": tmp_path / "out" / "field_01.json",
    }
    assert paths["classes"].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    back = cv2.imread(str(paths["classes"]), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint8 and back.shape == (37, 53)
    np.testing.assert_array_equal(back, classes)
    assert json.loads(paths["json"].read_text()) == {"n": 1}


def test_overlay_is_a_jpeg_of_the_field_in_rgb_order(tmp_path):
    image = np.full((40, 60), 128, np.uint8)
    paths = write_outputs(tmp_path, "field", image, _classes(), PALETTE, {})
    assert paths["overlay"].read_bytes().startswith(b"\xff\xd8\xff")  # JPEG's start of image
    written = cv2.cvtColor(cv2.imread(str(paths["overlay"]), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)
    assert written.shape == (40, 60, 3)
    # Class 1 (255, 0, 0) blended at 0.45 into gray 128 is (185, 70, 70): reddish, not bluish.
    assert np.abs(written[10, 15].astype(int) - (185, 70, 70)).max() <= 3


def test_preview_is_a_jpeg_gray_when_the_micrograph_is(tmp_path):
    gray = np.random.default_rng(2).integers(0, 65535, size=(30, 50), dtype=np.uint16)
    path = write_preview(tmp_path, "a", np.dstack([gray] * 3))
    assert path == tmp_path / "a.preview.jpg"
    back = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert back.shape == (30, 50)  # one channel on disk, a third of the bytes of RGB
    assert np.abs(back.astype(int) - preview(gray).astype(int)).mean() < 3  # white noise, JPEG's worst case: 1.5


# Real fields with their annotated class maps (real boundaries, real precipitates and cracks).
SUPERALLOY_PALETTE = {(0, 0, 255): 1, (255, 0, 0): 2}


@pytest.mark.parametrize("material", ["superalloy", "ebc"])
def test_jpeg_overlay_of_a_real_field_keeps_its_colours(material, shared_data: Path, tmp_path):
    """The JPEG overlay against the same overlay kept exactly (what a PNG held). Tolerances
    from the test fields of both materials (512² and 1024²): each class's mean colour moves
    by < 0.9 of 255 and 99.9 % of channel values by <= 14; with JPEG's usual 4:2:0 chroma the
    colour of small precipitates and thin cracks bleeds (class means move 10-22, 99.9 % up to
    38), and at quality 90 class means move up to 3 and 99.9 % up to 24."""
    image_path, label_path = find_pairs(shared_data / material / "test" / "images",
                                        shared_data / material / "test" / "masks")[0]
    image = read_pages(image_path)[0].image
    classes = read_label(label_path, SUPERALLOY_PALETTE if material == "superalloy" else None)
    bundle = load_bundle(material)
    skip = {c.id for c in bundle.classes if c.role == "background"}
    paths = write_outputs(tmp_path, "field", image, classes, bundle.palette(), {}, skip=skip)

    np.testing.assert_array_equal(cv2.imread(str(paths["classes"]), cv2.IMREAD_UNCHANGED), classes)
    exact = overlay(image, classes, bundle.palette(), skip=skip).astype(int)
    written = cv2.cvtColor(cv2.imread(str(paths["overlay"]), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB).astype(int)
    assert written.shape == exact.shape == (*classes.shape, 3)
    for class_id in np.unique(classes):
        inside = classes == class_id
        shift = np.abs(written[inside].mean(axis=0) - exact[inside].mean(axis=0)).max()
        assert shift < 2.0, f"class {class_id}'s colour moved by {shift:.2f}"
    assert np.percentile(np.abs(written - exact), 99.9) <= 16


def test_overlay_moves_class_pixels_towards_the_palette_colour():
    image = np.full((40, 60), 128, np.uint8)
    classes = _classes()
    out = overlay(image, classes, PALETTE, alpha=0.5)
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    # (128 * 0.5 + 255 * 0.5) = 191.5, (128 * 0.5 + 0) = 64 -> class 1 pixel (192|191, 64, 64).
    r, g, b = (int(v) for v in out[10, 10])
    assert r in (191, 192) and g == 64 and b == 64
    # Class 0 blends towards black as well, since nothing is skipped.
    assert tuple(out[0, 0]) == (64, 64, 64)


def test_overlay_skip_leaves_those_classes_as_the_micrograph():
    image = np.full((40, 60), 128, np.uint8)
    out = overlay(image, _classes(), PALETTE, alpha=0.5, skip={0})
    assert tuple(out[0, 0]) == (128, 128, 128)
    assert tuple(out[25, 40]) != (128, 128, 128)


def test_overlay_of_rgb_image_keeps_channels_in_order():
    image = np.zeros((40, 60, 3), np.uint8)
    image[..., 2] = 200  # blue micrograph
    out = overlay(image, np.zeros((40, 60), np.uint8), [(0, 0, 0)], alpha=0.0)
    np.testing.assert_array_equal(out, image)


def test_sixteen_bit_is_stretched_for_display():
    image = np.linspace(1000, 3000, 200 * 100).reshape(200, 100).astype(np.uint16)
    shown = to_display_8bit(image)
    assert shown.dtype == np.uint8
    # The 0.5 / 99.5 percentiles map near 0 and 255: the narrow 16-bit range fills the display.
    assert shown.min() == 0 and shown.max() == 255
    assert 120 <= shown[100, 50] <= 135
    out = overlay(image, np.zeros((200, 100), np.uint8), PALETTE, alpha=0.0)
    np.testing.assert_array_equal(out[..., 0], shown)


def test_flat_sixteen_bit_image_does_not_divide_by_zero():
    shown = to_display_8bit(np.full((10, 10), 500, np.uint16))
    assert shown.dtype == np.uint8 and len(np.unique(shown)) == 1


def test_preview_downscales_the_longer_side_and_keeps_small_images():
    big = np.zeros((300, 2000), np.uint16)
    big[:, 1000:] = 4000
    small = preview(big, max_side=500)
    assert small.shape == (75, 500) and small.dtype == np.uint8
    assert small[0, 0] < small[0, -1]
    rgb = np.zeros((100, 80, 3), np.uint8)
    rgb[:, :, 0] = 50
    assert preview(rgb, max_side=1024).shape == (100, 80, 3)


def test_preview_of_gray_stored_as_rgb_is_gray():
    gray = np.random.default_rng(0).integers(0, 255, (100, 80), dtype=np.uint8)
    shown = preview(np.dstack([gray] * 3), max_side=1024)
    assert shown.shape == (100, 80) and np.array_equal(shown, gray)


def test_overlay_blends_every_class_but_the_skipped_ones():
    image = np.full((4, 6), 100, np.uint8)
    classes = np.array([[0, 1, 2] * 2] * 4, np.uint8)
    palette = [(0, 0, 0), (255, 0, 0), (0, 0, 255)]
    picture = overlay(image, classes, palette, alpha=0.5, skip={0})
    assert picture[0, 0].tolist() == [100, 100, 100]  # skipped: the micrograph as it is
    assert picture[0, 1].tolist() == [178, 50, 50] and picture[0, 2].tolist() == [50, 50, 178]


def test_overlay_skips_exactly_the_skipped_ids_among_many():
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (40, 60, 3), np.uint8)
    classes = rng.integers(0, 5, (40, 60), np.uint8)
    palette = [(10 * i, 255 - 10 * i, 40) for i in range(5)]
    picture, tinted = overlay(image, classes, palette, skip={1, 3}), overlay(image, classes, palette)
    skipped = (classes == 1) | (classes == 3)
    assert np.array_equal(picture[skipped], image[skipped])
    assert np.array_equal(picture[~skipped], tinted[~skipped]) and not np.array_equal(picture, tinted)
    wide = classes.astype(np.int32)  # ids wider than uint8 take the other way to the same picture
    assert np.array_equal(overlay(image, wide, palette, skip={1, 3}), picture)


def test_json_round_trip_with_numpy_values(tmp_path):
    record = {"fraction": np.float64(0.25), "count": np.int64(3), "edges": np.arange(3), "x": None}
    path = tmp_path / "r.json"
    write_json_atomic(path, record)
    expected = {"fraction": 0.25, "count": 3, "edges": [0, 1, 2], "x": None}
    assert json.loads(path.read_text()) == expected


def test_json_with_nan_is_refused_and_nothing_written(tmp_path):
    path = tmp_path / "r.json"
    with pytest.raises(ValueError, match="r.json"):
        write_json_atomic(path, {"mean": float("nan")})
    assert list(tmp_path.iterdir()) == []


def test_write_into_missing_folder_raises_and_leaves_nothing(tmp_path):
    path = tmp_path / "missing" / "x.png"
    with pytest.raises(OutputError, match="x.png"):
        write_png_atomic(path, np.zeros((4, 4), np.uint8))
    assert not path.parent.exists()


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "field.json"
    write_json_atomic(path, {"version": 1})

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic_files.os, "fsync", broken_fsync)
    with pytest.raises(OutputError, match="field.json: cannot write: No space left"):
        write_json_atomic(path, {"version": 2})
    assert json.loads(path.read_text()) == {"version": 1}
    assert os.listdir(tmp_path) == ["field.json"]


def test_write_outputs_refuses_a_class_map_of_another_size(tmp_path):
    with pytest.raises(ValueError, match="image's size"):
        write_outputs(tmp_path, "a", np.zeros((10, 10), np.uint8), _classes(), PALETTE, {})
    assert list(tmp_path.iterdir()) == []


def test_overlay_refuses_ids_beyond_the_palette():
    classes = _classes()
    classes[0, 0] = 7
    with pytest.raises(ValueError, match="palette"):
        overlay(np.zeros((40, 60), np.uint8), classes, PALETTE)
