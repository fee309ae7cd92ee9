"""Test-time augmentation: transforms invert exactly, probabilities are averaged."""

from __future__ import annotations

import numpy as np
import pytest

from phasewatch.backends.tta import TRANSFORMS, TtaBackend


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
    with pytest.raises(ValueError, match="not one of none, flips, d4"):
        TtaBackend(PositionDependent(), "scales")
