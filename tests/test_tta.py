"""Test-time augmentation: transforms invert exactly, probabilities are averaged; scales resize
to the network's multiple and back."""

from __future__ import annotations

import numpy as np
import pytest

from phasewatch.backends.base import BackendError, max_side
from phasewatch.backends.tta import TRANSFORMS, TtaBackend, resize, scaled_side


class PositionDependent:
    """Logits that depend on where a pixel sits in the tile, so a flip changes them."""

    name, max_batch = "fake", 8

    def __init__(self) -> None:
        self.calls = 0

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        n, _, h, w = batch.shape
        ramp = np.linspace(0, 1, w, dtype=np.float32)[None, None, None, :].repeat(h, axis=2)
        return np.concatenate([batch[:, :1] + ramp, np.zeros((n, 1, h, w), np.float32)], axis=1)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("mode", list(TRANSFORMS))
def test_every_transform_is_undone(mode):
    x = np.random.default_rng(0).random((2, 3, 8, 8)).astype(np.float32)
    for apply, invert in TRANSFORMS[mode]:
        np.testing.assert_array_equal(invert(apply(x)), x)


def test_probabilities_are_averaged_over_the_flips():
    batch = np.random.default_rng(1).random((1, 1, 4, 6)).astype(np.float32)
    inner = PositionDependent()
    logits = TtaBackend(inner, "flips").run(batch)
    assert inner.calls == 4
    ramp = np.linspace(0, 1, 6)
    expected = []
    for flip_x in (False, True):
        r = ramp[::-1] if flip_x else ramp  # a horizontal flip reverses the ramp seen by each pixel
        expected += [1 / (1 + np.exp(-(batch[0, 0] + r)))] * 2  # the vertical flip leaves it alone
    np.testing.assert_allclose(np.exp(logits[0, 0]), np.mean(expected, axis=0), rtol=1e-5)


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="not one of none, flips, d4, scales"):
        TtaBackend(PositionDependent(), "blur")


class PerPixel:
    """Any-size logits [x, 2x - 1] per pixel, that record the sizes they were asked for."""

    name, max_batch, any_size = "per-pixel", 8, True

    def __init__(self, max_side: int = 0) -> None:
        self.sizes: list[tuple[int, int]] = []
        self.max_side = max_side

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.sizes.append(batch.shape[-2:])
        return np.concatenate([batch[:, :1], 2 * batch[:, :1] - 1], axis=1)

    def close(self) -> None:
        pass


def test_scaled_sides_round_to_the_network_multiple():
    assert [scaled_side(128, s, 32) for s in (0.75, 1.0, 1.25)] == [96, 128, 160]
    assert scaled_side(40, 0.75, 32) == 32  # never below one multiple


def test_scales_run_three_sizes_and_average_back_at_the_tile_size():
    inner = PerPixel()
    # A linear ramp survives bilinear resizing exactly away from the edges; a constant field
    # everywhere, so the averaged probabilities equal one pass's.
    flat = np.full((2, 1, 128, 96), 0.3, np.float32)
    logits = TtaBackend(inner, "scales", 32).run(flat)
    assert inner.sizes == [(96, 64), (128, 96), (160, 128)]
    assert logits.shape == (2, 2, 128, 96)
    single = 1 / (1 + np.exp(-(2 * 0.3 - 1 - 0.3)))  # softmax of [x, 2x - 1], class 1
    np.testing.assert_allclose(np.exp(logits[:, 1]), single, rtol=1e-5)


def test_resize_there_and_back_keeps_a_smooth_image():
    ramp = np.linspace(0, 1, 96, dtype=np.float32)[None, None, None, :].repeat(64, axis=2)
    back = resize(resize(ramp, 80, 120), 64, 96)
    np.testing.assert_allclose(back[..., 2:-2], ramp[..., 2:-2], atol=1e-5)


def test_scales_need_an_any_size_model_and_keep_within_max_side():
    with pytest.raises(BackendError, match="any size"):
        TtaBackend(PositionDependent(), "scales", 32)  # a backend for one tile size
    with pytest.raises(BackendError, match="any size"):
        TtaBackend(PerPixel(), "scales", 0)  # a bundle exported for one tile size
    assert max_side(TtaBackend(PerPixel(max_side=1024), "scales", 32)) == 800  # 800 * 1.25 = 1000 <= 1024
