"""The drawn micrographs (core/synthetic.py) and the demo's microscope (core/microscope.py)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from phasewatch.bundle import load_bundle
from phasewatch.core.microscope import Microscope, calibration_seeds, capture, fields_in
from phasewatch.core.synthetic import MATERIALS, ebc_micrograph, material_for, superalloy_micrograph
from phasewatch.imageio.formats import read_pages

# class name -> plausible range of its area fraction in any drawn field
PLAUSIBLE = {
    "superalloy": {"gamma matrix": (0.3, 0.6), "secondary gamma prime": (0.35, 0.65),
                   "tertiary gamma prime": (0.005, 0.06)},
    "ebc": {"background": (0.65, 0.92), "oxide": (0.08, 0.35), "crack": (0.0003, 0.01)},
}


@pytest.mark.parametrize("name", MATERIALS)
def test_a_drawn_field_has_the_material_s_classes_and_plausible_fractions(name):
    material = MATERIALS[name]
    for seed in range(1, 6):
        image, labels = material.draw(seed)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert labels.dtype == np.uint8 and labels.shape == image.shape[:2]
        assert set(np.unique(labels)) == set(range(len(material.classes)))
        fractions = material.true_fractions(labels)
        assert list(fractions) == list(material.classes)
        assert sum(fractions.values()) == pytest.approx(1.0)
        for cls, (low, high) in PLAUSIBLE[name].items():
            assert low <= fractions[cls] <= high, (seed, cls, fractions[cls])


@pytest.mark.parametrize("draw", [superalloy_micrograph, ebc_micrograph])
def test_a_seed_always_draws_the_same_field_and_another_seed_another(draw):
    image, labels = draw(200, 240, seed=7)
    again, again_labels = draw(200, 240, seed=7)
    other, other_labels = draw(200, 240, seed=8)
    assert image.shape == (200, 240, 3)
    assert np.array_equal(image, again) and np.array_equal(labels, again_labels)
    assert not np.array_equal(labels, other_labels) and not np.array_equal(image, other)


def test_the_main_phase_varies_from_field_to_field():
    # so that the demo's statistics have a spread to estimate
    for material in MATERIALS.values():
        main = [material.true_fractions(material.draw(seed)[1])[material.main_phase] for seed in range(1, 6)]
        assert np.ptp(main) > 0.02, material.name


def test_ebc_cracks_lie_inside_the_oxide_and_cross_it():
    _, labels = ebc_micrograph(512, 512, seed=3)
    oxide_rows = np.nonzero((labels > 0).any(axis=1))[0]
    crack_rows = np.nonzero((labels == 2).any(axis=1))[0]
    # a crack reaches from the oxide's top to its bottom, and no crack pixel lies outside it
    assert crack_rows.min() <= oxide_rows.min() + 30 and crack_rows.max() >= oxide_rows.max() - 30
    assert crack_rows.min() >= oxide_rows.min() and crack_rows.max() <= oxide_rows.max()


def test_a_model_is_paired_with_the_generator_of_its_classes():
    for name in MATERIALS:
        assert material_for([c.name for c in load_bundle(name).classes]) is MATERIALS[name]
    assert material_for([c.name for c in load_bundle("uhcs-carbide").classes]) is None


def test_a_captured_field_carries_its_pixel_size_and_its_truth_comes_first(tmp_path):
    material = MATERIALS["superalloy"]
    path = tmp_path / "f.tif"
    truths = []
    labels = capture(material, 3, path, lambda truth: truths.append((truth, path.exists())))
    (field,) = read_pages(path)
    assert field.pixel_size_um == pytest.approx(material.pixel_size_um)
    assert np.array_equal(field.image, material.draw(3)[0])
    [(truth, field_was_there)] = truths
    assert not field_was_there
    assert truth["file"] == "f.tif" and truth["seed"] == 3 and truth["main_phase"] == material.main_phase
    assert truth["fractions"] == pytest.approx(material.true_fractions(labels))
    assert [p.name for p in tmp_path.iterdir()] == ["f.tif"]  # no temporary left


def wait_for_fields(truth_dir, count):
    deadline = time.monotonic() + 30
    while fields_in(truth_dir) < count:
        assert time.monotonic() < deadline, f"{count} fields never came"
        time.sleep(0.02)


def test_the_microscope_writes_n_fields_numbering_on_and_never_a_calibration_seed(tmp_path):
    material = MATERIALS["superalloy"]
    watch, truth = tmp_path / "watch", tmp_path / "truth"
    Microscope(material, watch, truth, interval_s=0.01, count=2).start()
    wait_for_fields(truth, 2)
    told = []
    second = Microscope(material, watch, truth, interval_s=0.01, count=1, first=fields_in(truth) + 1,
                        on_truth=told.append)
    second.start()
    wait_for_fields(truth, 3)
    time.sleep(0.2)  # ten more intervals: neither writes another
    second.stop()
    assert sorted(p.name for p in watch.iterdir()) == ["field-0001.tif", "field-0002.tif", "field-0003.tif"]
    seeds = [json.loads((truth / f"field-000{n}.json").read_text())["seed"] for n in (1, 2, 3)]
    assert seeds == [1, 2, 3] and not set(seeds) & set(calibration_seeds(10))
    assert [t["file"] for t in told] == ["field-0003.tif"]


def test_a_stopped_microscope_writes_no_more(tmp_path):
    microscope = Microscope(MATERIALS["superalloy"], tmp_path / "w", tmp_path / "t", interval_s=60)
    microscope.start()
    microscope.stop()  # returns at once, though the next field was due in a minute
    assert [p.name for p in (tmp_path / "w").iterdir()] == ["field-0001.tif"]
