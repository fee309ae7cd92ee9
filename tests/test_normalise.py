"""Per-image normalisation: hand-computed values, whole-image statistics, bounded memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from phasewatch.bundle import Normalisation
from phasewatch.core.normalise import prepare

GRAY = Normalisation(mean=(0.5,), std=(0.25,))
IDENTITY_GRAY = Normalisation(mean=(0.0,), std=(1.0,), sixteen_bit="full_range")
IDENTITY_RGB = Normalisation(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def whole(model_input) -> np.ndarray:
    return model_input.region(0, model_input.height, 0, model_input.width)


def test_eight_bit_values():
    image = np.array([[0, 51, 255]], np.uint8)
    out = whole(prepare(image, 1, GRAY))
    assert out.dtype == np.float32 and out.shape == (1, 1, 3)
    # x/255 then (x - 0.5) / 0.25: 0 -> -2, 51 -> 0.2 -> -1.2, 255 -> 2
    np.testing.assert_allclose(out[0, 0], [-2.0, -1.2, 2.0], atol=1e-6)


def test_eight_bit_ignores_the_sixteen_bit_rule():
    image = np.array([[100, 200]], np.uint8)
    percentile = Normalisation(mean=(0.0,), std=(1.0,), sixteen_bit="percentile")
    np.testing.assert_allclose(whole(prepare(image, 1, percentile))[0, 0], [100 / 255, 200 / 255])


def test_sixteen_bit_full_range():
    image = np.array([[0, 13107, 65535]], np.uint16)
    np.testing.assert_allclose(whole(prepare(image, 1, IDENTITY_GRAY))[0, 0], [0.0, 0.2, 1.0], atol=1e-6)


def test_sixteen_bit_percentile_stretch_and_clip():
    image = (np.arange(101, dtype=np.uint16) * 100)[None]  # 0, 100, ..., 10000
    norm = Normalisation(mean=(0.0,), std=(1.0,), sixteen_bit="percentile", percentiles=(10, 90))
    model_input = prepare(image, 1, norm)
    out = whole(model_input)[0, 0]
    # 10th and 90th percentiles are 1000 and 9000: 5000 -> 0.5, 3000 -> 0.25, ends clipped
    assert (model_input.low, model_input.high) == (1000.0, 9000.0)
    np.testing.assert_allclose(out[[0, 10, 30, 50, 90, 100]], [0, 0, 0.25, 0.5, 1, 1], atol=1e-6)


def test_flat_sixteen_bit_image_maps_to_zero():
    image = np.full((4, 4), 1234, np.uint16)
    norm = Normalisation(mean=(0.0,), std=(1.0,), sixteen_bit="percentile")
    np.testing.assert_array_equal(whole(prepare(image, 1, norm)), 0.0)


def test_percentile_statistics_come_from_the_whole_image():
    rng = np.random.default_rng(3)
    image = rng.integers(1000, 2000, size=(300, 400), dtype=np.uint16)
    image[:, 200:] += 30000  # bright right half: a crop of the left half alone would stretch otherwise
    norm = Normalisation(mean=(0.4,), std=(0.2,), sixteen_bit="percentile", percentiles=(1, 99))
    model_input = prepare(image, 1, norm)
    full = whole(model_input)
    window = model_input.region(50, 120, 20, 150)
    np.testing.assert_array_equal(window, full[:, 50:120, 20:150])
    # the left half sits near the bottom of the whole image's range, not spread over 0..1
    assert window.max() * 0.2 + 0.4 < 0.1


def test_gray_image_for_three_channel_model_is_repeated():
    image = np.array([[0, 255]], np.uint8)
    norm = Normalisation(mean=(0.1, 0.2, 0.3), std=(1.0, 2.0, 4.0))
    out = whole(prepare(image, 3, norm))
    assert out.shape == (3, 1, 2)
    # 255 -> 1: (1 - 0.1)/1, (1 - 0.2)/2, (1 - 0.3)/4; 0 -> -mean/std
    np.testing.assert_allclose(out[:, 0, 1], [0.9, 0.4, 0.175], atol=1e-6)
    np.testing.assert_allclose(out[:, 0, 0], [-0.1, -0.1, -0.075], atol=1e-6)


def test_rgb_image_for_one_channel_model_is_luminance():
    image = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [100, 200, 50]]], np.uint8)
    norm = Normalisation(mean=(0.0,), std=(1.0,))
    out = whole(prepare(image, 1, norm))
    assert out.shape == (1, 1, 4)
    # 0.299 R + 0.587 G + 0.114 B; (29.9 + 117.4 + 5.7) / 255 = 153 / 255 = 0.6
    np.testing.assert_allclose(out[0, 0], [0.299, 0.587, 0.114, 0.6], atol=1e-6)


def test_rgb_image_for_three_channel_model_keeps_channel_order():
    image = np.zeros((2, 3, 3), np.uint8)
    image[..., 0] = 255
    image[..., 2] = 51
    out = whole(prepare(image, 3, IDENTITY_RGB))
    assert out.shape == (3, 2, 3)
    np.testing.assert_allclose(out[:, 1, 2], [1.0, 0.0, 0.2], atol=1e-6)


def test_downscale_averages_area():
    block = np.zeros((4, 4), np.uint8)
    block[0, 0] = 160  # area mean 10; sampling the block's centre would give 0
    image = np.tile(block, (5, 3))  # 20 x 12
    model_input = prepare(image, 1, Normalisation(mean=(0.0,), std=(1.0,)), scale=0.25)
    assert (model_input.height, model_input.width) == (5, 3)
    np.testing.assert_allclose(whole(model_input), 10 / 255, atol=1e-6)


def test_upscale_sizes():
    image = np.full((10, 7), 51, np.uint16)
    model_input = prepare(image, 1, IDENTITY_GRAY, scale=2.0)
    assert (model_input.height, model_input.width, model_input.channels) == (20, 14, 1)
    np.testing.assert_allclose(whole(model_input), 51 / 65535, atol=1e-7)


def test_region_outside_the_image_is_refused():
    model_input = prepare(np.zeros((10, 10), np.uint8), 1, GRAY)
    with pytest.raises(ValueError, match="outside"):
        model_input.region(0, 11, 0, 5)


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros((8, 8), np.float32), "dtype"),
        (np.zeros((8, 8, 2), np.uint8), "shape"),
    ],
)
def test_bad_images_are_refused(image, match):
    with pytest.raises(ValueError, match=match):
        prepare(image, 1, GRAY)


def test_large_image_is_not_copied_to_float():
    height = width = 6000
    image = np.full((height, width), 20000, np.uint16)
    image[::7, ::5] = 40000
    norm = Normalisation(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), sixteen_bit="percentile")
    tracemalloc.start()
    try:
        model_input = prepare(image, 3, norm)
        tile = model_input.region(1000, 1256, 2000, 2256)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert tile.shape == (3, 256, 256)
    assert model_input.image is image  # no resize, no copy
    assert peak < height * width * 4 / 8  # a float32 copy would be 144 MB
