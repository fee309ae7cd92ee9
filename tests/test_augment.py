"""Paired augmentation: the mask stays aligned with the image, crops have the asked size, seeds reproduce."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from phasewatch.export.augment import CROP_RETRIES, AugmentConfig, augment, random_crop, sample

GEOMETRIC = {
    "flips": AugmentConfig(flips=True),
    "rot90": AugmentConfig(rot90=True),
    "flips+rot90": AugmentConfig(flips=True, rot90=True),
}


def labelled(height: int = 24, width: int = 36, classes: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A random class mask and an image that is the same mask as float, so alignment is equality."""
    mask = np.random.default_rng(seed).integers(0, classes, (height, width), dtype=np.uint8)
    return mask[None].astype(np.float32), mask


def blocky(height: int = 48, width: int = 64, block: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Like labelled() but in blocks, so linear and nearest resizing agree away from block edges."""
    coarse = np.random.default_rng(seed).integers(0, 5, (height // block, width // block), dtype=np.uint8)
    mask = np.kron(coarse, np.ones((block, block), np.uint8))
    return mask[None].astype(np.float32), mask


@pytest.mark.parametrize("name", GEOMETRIC)
def test_augment_keeps_mask_aligned_under_flips_and_rotations(name):
    image, mask = labelled()
    shapes = set()
    for seed in range(16):
        out_image, out_mask = augment(image, mask, GEOMETRIC[name], np.random.default_rng(seed))
        np.testing.assert_array_equal(out_image[0], out_mask)
        shapes.add(out_mask.shape)
        assert out_image.flags.c_contiguous and out_mask.flags.c_contiguous
    if "rot90" in name:
        assert shapes == {(24, 36), (36, 24)}


@pytest.mark.parametrize("name", GEOMETRIC)
def test_sample_keeps_mask_aligned_under_crop_flips_and_rotations(name):
    image, mask = labelled()
    for seed in range(16):
        out_image, out_mask = sample(image, mask, 16, GEOMETRIC[name], np.random.default_rng(seed))
        np.testing.assert_array_equal(out_image[0], out_mask)


def interior_mismatches(image: np.ndarray, mask: np.ndarray) -> int:
    """Pixels off a mask edge (3 x 3 neighbourhood of one class) where the resized image disagrees."""
    kernel = np.ones((3, 3), np.uint8)
    edge = cv2.dilate(mask, kernel) != cv2.erode(mask, kernel)
    return int(np.count_nonzero((np.rint(image[0]) != mask) & ~edge))


def test_scaling_keeps_mask_aligned():
    # Linear (image) and nearest (mask) resizing may differ only next to a class edge.
    image, mask = blocky(block=4)
    cfg = AugmentConfig(flips=True, rot90=True, scale=(0.75, 1.25))
    misaligned = 0
    for seed in range(12):
        for out_image, out_mask in (
            augment(image, mask, cfg, np.random.default_rng(seed)),
            sample(image, mask, 32, cfg, np.random.default_rng(seed)),
        ):
            assert interior_mismatches(out_image, out_mask) == 0
            assert np.mean(out_image[0] == out_mask) > 0.5
            misaligned += interior_mismatches(out_image, np.ascontiguousarray(out_mask[::-1]))
    assert misaligned > 0  # the check does catch a flipped mask


def test_augment_scale_resizes_both():
    image, mask = labelled(20, 40)
    out_image, out_mask = augment(image, mask, AugmentConfig(scale=(1.5, 1.5)), np.random.default_rng(0))
    assert out_image.shape == (1, 30, 60) and out_mask.shape == (30, 60)
    # nearest neighbour invents no class
    assert set(np.unique(out_mask)) <= set(np.unique(mask))


@pytest.mark.parametrize("scale", [(1.0, 1.0), (0.5, 0.5), (2.0, 2.0), (0.75, 1.25)])
def test_sample_returns_tile_sized_float32_and_uint8(scale):
    image = np.random.default_rng(1).random((3, 50, 70), dtype=np.float32)
    mask = np.zeros((50, 70), np.uint8)
    out_image, out_mask = sample(image, mask, 24, AugmentConfig(scale=scale), np.random.default_rng(0))
    assert out_image.shape == (3, 24, 24) and out_image.dtype == np.float32
    assert out_mask.shape == (24, 24) and out_mask.dtype == np.uint8


def test_random_crop_size_and_content():
    image, mask = labelled(30, 40)
    out_image, out_mask = random_crop(image, mask, 16, np.random.default_rng(3))
    assert out_image.shape == (1, 16, 16) and out_mask.shape == (16, 16)
    np.testing.assert_array_equal(out_image[0], out_mask)
    # the crop is a window of the original mask
    windows = np.lib.stride_tricks.sliding_window_view(mask, (16, 16))
    assert np.any(np.all(windows == out_mask, axis=(2, 3)))


def test_random_crop_mirror_pads_small_images_and_marks_padding_ignored():
    # 3 x 4 image into an 8 x 8 tile: pad 5 rows (2 above, 3 below) and 4 columns (2 each side).
    image = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    mask = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out_image, out_mask = random_crop(image, mask, 8, np.random.default_rng(0))
    assert out_image.shape == (1, 8, 8) and out_mask.shape == (8, 8)
    np.testing.assert_array_equal(out_image[0, 2:5, 2:6], image[0])
    np.testing.assert_array_equal(out_mask[2:5, 2:6], mask)
    assert np.count_nonzero(out_mask == 255) == 64 - 12
    # reflection about the edge pixel: the row above row 0 is row 1, the column left of col 0 is col 1
    np.testing.assert_array_equal(out_image[0, 1, 2:6], image[0, 1])
    np.testing.assert_array_equal(out_image[0, 2:5, 1], image[0, :, 1])


def test_random_crop_pads_a_single_pixel_image():
    image, mask = np.full((2, 1, 1), 0.5, np.float32), np.ones((1, 1), np.uint8)
    out_image, out_mask = random_crop(image, mask, 4, np.random.default_rng(0))
    assert np.all(out_image == 0.5)
    assert np.count_nonzero(out_mask == 1) == 1 and np.count_nonzero(out_mask == 255) == 15


def half_single_class() -> tuple[np.ndarray, np.ndarray]:
    """32 x 64: left half all class 0, right half alternating columns of classes 1 and 2.

    A 16-wide crop holds one class only when it lies in the left half: left offset 0..16 of 0..48,
    so a draw is single-class with probability 17/49.
    """
    mask = np.zeros((32, 64), np.uint8)
    mask[:, 32:] = 1 + np.arange(32) % 2
    return mask[None].astype(np.float32), mask


def single_class_fraction(cap: float, draws: int = 400) -> float:
    image, mask = half_single_class()
    rng = np.random.default_rng(123)
    single = 0
    for _ in range(draws):
        _, crop = random_crop(image, mask, 16, rng, cap)
        single += len(np.unique(crop)) == 1
    return single / draws


def test_single_class_cap_zero_rejects_single_class_crops():
    # all 11 draws single-class has probability (17/49)^11 ~ 1e-5
    assert single_class_fraction(0.0) == 0.0


def test_single_class_cap_one_accepts_the_natural_rate():
    assert single_class_fraction(1.0) == pytest.approx(17 / 49, abs=0.07)


def test_single_class_cap_half_matches_the_retry_formula():
    # Each draw: single and accepted p*c, single and redrawn p*(1-c) = r, else a mixed crop.
    # P(single) = p*c * (1 + r + ... + r^(N-1)) + r^N * p for N = CROP_RETRIES redraws.
    p, c = 17 / 49, 0.5
    r = p * (1 - c)
    expected = p * c * sum(r**i for i in range(CROP_RETRIES)) + r**CROP_RETRIES * p
    assert single_class_fraction(c) == pytest.approx(expected, abs=0.06)


FULL = AugmentConfig(
    flips=True, rot90=True, scale=(0.8, 1.2), brightness=0.2, contrast=0.3, noise=0.1, blur=0.5, single_class_cap=0.3
)


def test_same_seed_same_sample_and_different_seed_differs():
    image, mask = blocky()
    first = sample(image, mask, 24, FULL, np.random.default_rng(42))
    again = sample(image, mask, 24, FULL, np.random.default_rng(42))
    other = sample(image, mask, 24, FULL, np.random.default_rng(43))
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


PHOTOMETRIC = {
    "brightness": AugmentConfig(brightness=0.5),
    "contrast": AugmentConfig(contrast=0.5),
    "noise": AugmentConfig(noise=0.1),
    "blur": AugmentConfig(blur=1.0),
    "gamma": AugmentConfig(gamma=0.5),
}


@pytest.mark.parametrize("name", PHOTOMETRIC)
def test_photometric_ops_change_only_the_image(name):
    image, mask = blocky()
    image = image + np.random.default_rng(5).random(image.shape, dtype=np.float32)
    out_image, out_mask = augment(image, mask, PHOTOMETRIC[name], np.random.default_rng(0))
    np.testing.assert_array_equal(out_mask, mask)
    assert out_image.dtype == np.float32 and out_image.shape == image.shape
    assert not np.allclose(out_image, image)


def test_brightness_shifts_and_contrast_scales_about_the_mean():
    image = np.random.default_rng(5).random((2, 16, 16), dtype=np.float32)
    mask = np.zeros((16, 16), np.uint8)
    shifted, _ = augment(image, mask, AugmentConfig(brightness=0.5), np.random.default_rng(0))
    delta = shifted - image
    assert np.ptp(delta) < 1e-5 and 0 < abs(delta.flat[0]) <= 0.5
    stretched, _ = augment(image, mask, AugmentConfig(contrast=0.5), np.random.default_rng(0))
    centred, centred_out = image - image.mean((1, 2), keepdims=True), stretched - image.mean((1, 2), keepdims=True)
    gain = centred_out / centred
    assert np.ptp(gain) < 1e-3 and 0.5 <= gain.flat[0] <= 1.5 and gain.flat[0] != pytest.approx(1.0)


def test_noise_has_the_asked_spread_and_blur_smooths():
    image = np.zeros((1, 64, 64), np.float32)
    mask = np.zeros((64, 64), np.uint8)
    noisy, _ = augment(image, mask, AugmentConfig(noise=0.1), np.random.default_rng(0))
    assert noisy.std() == pytest.approx(0.1, rel=0.05)
    blurred, _ = augment(noisy, mask, AugmentConfig(blur=1.0), np.random.default_rng(0))
    assert blurred.std() < 0.6 * noisy.std()


def test_from_dict_builds_and_rejects_unknown_or_bad_keys():
    cfg = AugmentConfig.from_dict({"flips": True, "scale": [0.75, 1.25], "noise": 0.05})
    assert cfg == AugmentConfig(flips=True, scale=(0.75, 1.25), noise=0.05)
    with pytest.raises(ValueError, match="unknown augment key.*rotate") as info:
        AugmentConfig.from_dict({"rotate": True})
    assert "\n" not in str(info.value)
    for bad in ({"scale": [1.2, 0.8]}, {"scale": [1.0]}, {"blur": 1.5}, {"single_class_cap": -0.1}, {"noise": -1}):
        with pytest.raises(ValueError, match="augment"):
            AugmentConfig.from_dict(bad)


def test_mismatched_image_and_mask_are_rejected():
    with pytest.raises(ValueError, match="same size"):
        random_crop(np.zeros((1, 8, 8), np.float32), np.zeros((8, 9), np.uint8), 4, np.random.default_rng(0))


def test_gamma_bends_midtones_but_keeps_the_range_and_the_order():
    image = np.linspace(-2, 2, 256, dtype=np.float32).reshape(1, 16, 16)
    mask = np.zeros((16, 16), np.uint8)
    bent, _ = augment(image, mask, AugmentConfig(gamma=0.5), np.random.default_rng(1))
    assert bent.min() == pytest.approx(-2) and bent.max() == pytest.approx(2)
    assert np.all(np.diff(bent.ravel()) >= 0)  # monotone: no value overtakes another
    assert abs(float(bent.ravel()[128]) - float(image.ravel()[128])) > 0.05
