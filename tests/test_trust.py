"""The trust record: calibration limits, flags and their reasons, invariance of the input measures."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from onnx_graphs import make_bundle

from phasewatch.bundle import Normalisation, load_bundle
from phasewatch.core.normalise import prepare
from phasewatch.core.trust import (
    LIMIT_FLOORS,
    InputFeatures,
    assess,
    calibrate,
    distances,
    input_features,
    novelty,
    unsure_fraction,
)

PERCENTILE = Normalisation(mean=(0.5,), std=(0.25,), rule="per-image-percentile")


def ramp_cdf(shift: float = 0.0) -> tuple[float, ...]:
    edges = np.linspace(1 / 32, 1, 32)
    return tuple(float(v) for v in np.clip(edges - shift, 0, 1))


def field(shift: float = 0.0, edge: float = -3.0) -> InputFeatures:
    return InputFeatures(ramp_cdf(shift), (edge, edge - 0.5, edge - 1.0))


CALIBRATION = [field(0.0, -3.0), field(0.02, -3.1), field(0.04, -2.9), field(0.01, -3.05), field(0.03, -2.95)]


def test_novelty_is_the_distance_to_the_nearest_calibration_field_in_typical_units():
    block = calibrate(CALIBRATION, [0.01] * 5, [f"f{i}" for i in range(5)], "test")
    typical_i, typical_t = block["typical"]
    assert typical_i >= 0.01 and typical_t >= 0.05
    value, nearest = novelty(CALIBRATION[2], block)
    assert value == pytest.approx(0.0, abs=1e-9) and nearest == "f2"
    far = field(0.5, -1.0)
    intensity, texture = distances(far, CALIBRATION[2])
    assert novelty(far, block)[0] <= (intensity / typical_i + texture / typical_t) / 2
    assert block["limits"]["novelty"] >= LIMIT_FLOORS["novelty"]
    assert block["calibration"]["fields"] == 5 and block["calibration"]["false_alarm_rate_on_calibration"] == 0


def test_one_odd_calibration_field_does_not_widen_the_limit():
    odd = [*CALIBRATION, field(0.6, 0.5)]
    block = calibrate(odd, [0.01] * 6, [f"f{i}" for i in range(6)], "test")
    assert block["limits"]["novelty"] < max(block["calibration"]["novelty_of_calibration_fields"])
    assert block["calibration"]["false_alarm_rate_on_calibration"] == pytest.approx(1 / 6, abs=1e-3)


@pytest.fixture
def calibrated(tmp_path):
    bundle = load_bundle(make_bundle(tmp_path / "b"))
    block = calibrate(CALIBRATION, [0.01, 0.02, 0.015, 0.01, 0.02], [f"f{i}" for i in range(5)], "test")
    return dataclasses.replace(bundle, manifest={**bundle.manifest, "trust": block}, pixel_size_um=0.02)


def test_a_field_like_the_calibration_is_trusted(calibrated):
    trust = assess(field(0.015, -3.0), 0.01, calibrated, pixel_size_um=0.021)
    assert trust["ok"] and trust["reasons"] == [] and trust["score"] <= 1


@pytest.mark.parametrize("features, unsure, pixel_size, words", [
    (field(0.4, -3.0), 0.01, None, "unlike any of this model's training images"),
    (field(0.0, -1.0), 0.01, None, "unlike any of this model's training images"),
    (field(0.0, -3.0), 0.5, None, "the model is unsure on 50 % of the field"),
    (field(0.0, -3.0), 0.01, 0.05, "pixel size 0.05 µm is 2.50x"),
])
def test_each_measure_over_its_limit_flags_the_field_with_its_reason(calibrated, features, unsure, pixel_size,
                                                                     words):
    trust = assess(features, unsure, calibrated, pixel_size)
    assert not trust["ok"]
    assert len(trust["reasons"]) == 1 and words in trust["reasons"][0]


def test_an_uncalibrated_model_vouches_for_nothing(tmp_path):
    bundle = load_bundle(make_bundle(tmp_path / "b", name="plain"))
    trust = assess(field(), 0.0, bundle)
    assert not trust["ok"] and "model plain has no trust calibration" in trust["reasons"][0]


def test_input_measures_ignore_bit_depth_and_contrast_under_the_percentile_rule():
    rng = np.random.default_rng(0)
    image = np.clip(rng.normal(120, 40, (300, 280)), 0, 255).astype(np.uint8)
    base = input_features(prepare(image, 1, PERCENTILE))
    for variant in (image.astype(np.uint16) * 257, image.astype(np.uint16) * 16,
                    np.clip(0.8 * image.astype(np.float32) + 25, 0, 255).astype(np.uint8)):
        intensity, texture = distances(input_features(prepare(variant, 1, PERCENTILE)), base)
        assert intensity < 0.01 and texture < 0.05


def test_unsure_fraction_counts_low_margins_over_valid_pixels():
    margin = np.array([[0, 100, 200, 255]], np.uint8)
    assert unsure_fraction(margin) == 0.5
    assert unsure_fraction(margin, np.array([[True, False, True, True]])) == pytest.approx(1 / 3)
