"""The trust record: calibration limits, flags and their reasons, invariance of the input measures."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from onnx_graphs import make_bundle

from phasewatch.runtime.bundle import Normalisation, load_bundle
from phasewatch.runtime.normalise import prepare
from phasewatch.runtime.trust import (
    LIMIT_FACTOR,
    LIMIT_FLOORS,
    InputFeatures,
    assess,
    calibrate,
    input_features,
    unsure_fraction,
)

PERCENTILE = Normalisation(mean=(0.5,), std=(0.25,), rule="per-image-percentile")


def ramp_cdf(shift: float = 0.0) -> tuple[float, ...]:
    edges = np.linspace(1 / 32, 1, 32)
    return tuple(float(v) for v in np.clip(edges - shift, 0, 1))


def test_limits_are_the_largest_calibration_value_times_the_factor_or_the_floor():
    features = [InputFeatures(ramp_cdf(), 0.10), InputFeatures(ramp_cdf(0.1), 0.20)]
    block = calibrate(features, [0.01, 0.2], "test")
    edge_ref = 0.15  # median of 0.10 and 0.20
    assert block["edge"] == pytest.approx(edge_ref)
    assert block["limits"]["texture"] == pytest.approx(LIMIT_FACTOR * abs(math.log(0.10 / edge_ref)), abs=1e-4)
    assert block["limits"]["unsure"] == pytest.approx(LIMIT_FACTOR * 0.2)
    assert block["limits"]["intensity"] >= LIMIT_FLOORS["intensity"]
    assert block["calibration"]["fields"] == 2 and block["calibration"]["false_alarm_rate_on_calibration"] == 0


@pytest.fixture
def calibrated(tmp_path):
    bundle = load_bundle(make_bundle(tmp_path / "b"))
    features = [InputFeatures(ramp_cdf(s), e) for s, e in [(0.0, 0.1), (0.01, 0.11), (0.02, 0.09)]]
    block = calibrate(features, [0.01, 0.02, 0.015], "test")
    return dataclasses.replace(bundle, manifest={**bundle.manifest, "trust": block},
                               pixel_size_um=0.02)


def test_a_field_like_the_calibration_is_trusted(calibrated):
    trust = assess(InputFeatures(ramp_cdf(0.01), 0.1), 0.01, calibrated, pixel_size_um=0.021)
    assert trust["ok"] and trust["reasons"] == [] and trust["score"] <= 1


@pytest.mark.parametrize("features, unsure, pixel_size, words", [
    (InputFeatures(ramp_cdf(0.4), 0.1), 0.01, None, "intensity distribution unlike"),
    (InputFeatures(ramp_cdf(), 0.3), 0.01, None, "texture or scale unlike"),
    (InputFeatures(ramp_cdf(), 0.1), 0.5, None, "the model is unsure"),
    (InputFeatures(ramp_cdf(), 0.1), 0.01, 0.05, "pixel size 0.05 µm is 2.50x"),
])
def test_each_measure_over_its_limit_flags_the_field_with_its_reason(calibrated, features, unsure, pixel_size,
                                                                     words):
    trust = assess(features, unsure, calibrated, pixel_size)
    assert not trust["ok"]
    assert len(trust["reasons"]) == 1 and words in trust["reasons"][0]


def test_an_uncalibrated_model_vouches_for_nothing(tmp_path):
    bundle = load_bundle(make_bundle(tmp_path / "b", name="plain"))
    trust = assess(InputFeatures(ramp_cdf(), 0.1), 0.0, bundle)
    assert not trust["ok"] and "model plain has no trust calibration" in trust["reasons"][0]


def test_input_measures_ignore_bit_depth_and_contrast_under_the_percentile_rule():
    rng = np.random.default_rng(0)
    image = np.clip(rng.normal(120, 40, (300, 280)), 0, 255).astype(np.uint8)
    base = input_features(prepare(image, 1, PERCENTILE))
    for variant in (image.astype(np.uint16) * 257, image.astype(np.uint16) * 16,
                    np.clip(0.8 * image.astype(np.float32) + 25, 0, 255).astype(np.uint8)):
        other = input_features(prepare(variant, 1, PERCENTILE))
        assert np.abs(np.subtract(other.cdf, base.cdf)).mean() < 0.01
        assert other.edge == pytest.approx(base.edge, rel=0.05)


def test_unsure_fraction_counts_low_margins_over_valid_pixels():
    margin = np.array([[0, 100, 200, 255]], np.uint8)
    assert unsure_fraction(margin) == 0.5
    assert unsure_fraction(margin, np.array([[True, False, True, True]])) == pytest.approx(1 / 3)
