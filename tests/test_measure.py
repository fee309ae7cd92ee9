"""measure(): fractions and particle statistics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from phasewatch.bundle import ClassInfo
from phasewatch.core.measure import combine_pages, measure

CLASSES = (
    ClassInfo(0, "matrix", (0, 0, 0), "background"),
    ClassInfo(1, "carbide", (255, 0, 0), "phase"),
    ClassInfo(2, "databar", (0, 0, 255), "excluded"),
)
SQRT_PI = math.sqrt(math.pi)


def _map(size: int = 100) -> np.ndarray:
    return np.zeros((size, size), np.uint8)


def _three_squares() -> np.ndarray:
    """Interior squares of 2x2, 4x4 and 6x6: areas 4, 16, 36 -> ECD 4, 8, 12 / sqrt(pi)."""
    classes = _map()
    classes[10:12, 10:12] = 1
    classes[30:34, 30:34] = 1
    classes[50:56, 50:56] = 1
    return classes


def test_excluded_bar_leaves_the_denominator():
    classes = _map()
    classes[90:, :] = 2  # 100 x 10 data bar
    classes[20:30, 20:30] = 1  # 10 x 10 square, clear of the bar and the edge
    result = measure(classes, CLASSES, None)

    assert result["valid_area_px"] == 9000
    assert result["excluded_area_px"] == 1000
    assert result["valid_area_um2"] is None
    assert result["valid_area_empty"] is False
    assert set(result["fractions"]) == {"matrix", "carbide"}
    assert result["fractions"]["carbide"] == pytest.approx(100 / 9000)
    assert result["fractions"]["matrix"] == pytest.approx(8900 / 9000)
    assert sum(result["fractions"].values()) == pytest.approx(1.0)
    # Only phase classes get particle statistics.
    assert set(result["particles"]) == {"carbide"}
    carbide = result["particles"]["carbide"]
    assert carbide["count"] == 1 and carbide["border_count"] == 0
    assert carbide["mean_ecd"] == pytest.approx(math.sqrt(400 / math.pi))
    assert carbide["unit"] == "px"
    assert carbide["number_per_mm2"] is None
    assert carbide["number_per_mpx"] == pytest.approx(1e6 / 9000)


def test_square_ecd_and_size_statistics_in_pixels():
    carbide = measure(_three_squares(), CLASSES, None)["particles"]["carbide"]
    assert carbide["count"] == 3 and carbide["border_count"] == 0
    assert carbide["mean_ecd"] == pytest.approx(8 / SQRT_PI)
    assert carbide["median_ecd"] == pytest.approx(8 / SQRT_PI)
    # Deviations -4, 0, +4 (/sqrt(pi)); sample variance (16 + 16) / 2 / pi.
    assert carbide["std_ecd"] == pytest.approx(4 / SQRT_PI)
    # Linear interpolation: p10 at rank 0.2 between 4 and 8, p90 at rank 1.8 between 8 and 12.
    assert carbide["ecd_percentiles"]["p10"] == pytest.approx(4.8 / SQRT_PI)
    assert carbide["ecd_percentiles"]["p50"] == pytest.approx(8 / SQRT_PI)
    assert carbide["ecd_percentiles"]["p90"] == pytest.approx(11.2 / SQRT_PI)


def test_single_4x4_square_has_ecd_sqrt_64_over_pi_and_no_std():
    classes = _map()
    classes[40:44, 40:44] = 1
    carbide = measure(classes, CLASSES, None)["particles"]["carbide"]
    assert carbide["count"] == 1
    assert carbide["mean_ecd"] == pytest.approx(math.sqrt(64 / math.pi))
    assert carbide["std_ecd"] is None


def test_histogram_edges_are_sqrt2_series_from_the_minimum_particle():
    hist = measure(_three_squares(), CLASSES, None)["particles"]["carbide"]["ecd_histogram"]
    # (ECD / first edge)^2 = area / 3: 4/3 in [1, 2) -> bin 0; 16/3 in [4, 8) -> bin 2;
    # 12 in [8, 16) -> bin 3. Five edges cover up to 16 = 2^4.
    first = math.sqrt(12 / math.pi)
    assert hist["edges"] == pytest.approx([first * math.sqrt(2) ** k for k in range(5)])
    assert hist["counts"] == [1, 0, 1, 1]


def test_pixel_size_gives_micrometres_and_number_per_mm2():
    classes = _three_squares()
    classes[0:3, 0:3] = 1  # touches the corner: a border particle
    result = measure(classes, CLASSES, 0.5)
    # 10000 px of 0.25 um^2 = 2500 um^2 = 0.0025 mm^2.
    assert result["valid_area_um2"] == pytest.approx(2500.0)
    carbide = result["particles"]["carbide"]
    assert carbide["unit"] == "um"
    assert carbide["count"] == 3 and carbide["border_count"] == 1
    assert carbide["mean_ecd"] == pytest.approx(4 / SQRT_PI)  # 8/sqrt(pi) px * 0.5 um
    assert carbide["std_ecd"] == pytest.approx(2 / SQRT_PI)
    # (3 whole + 0.5 * 1 border) / 0.0025 mm^2 = 1400 per mm^2.
    assert carbide["number_per_mm2"] == pytest.approx(1400.0)
    assert carbide["number_per_mpx"] == pytest.approx(3.5 / 10000 * 1e6)
    assert carbide["ecd_histogram"]["edges"][0] == pytest.approx(0.5 * math.sqrt(12 / math.pi))


@pytest.mark.parametrize(
    "rows, cols",
    [
        (slice(0, 5), slice(40, 45)),  # top edge
        (slice(95, 100), slice(40, 45)),  # bottom edge
        (slice(40, 45), slice(0, 5)),  # left edge
        (slice(40, 45), slice(95, 100)),  # right edge
    ],
)
def test_particles_on_any_image_edge_are_border_particles(rows, cols):
    classes = _map()
    classes[rows, cols] = 1
    carbide = measure(classes, CLASSES, None)["particles"]["carbide"]
    assert carbide["count"] == 0 and carbide["border_count"] == 1
    assert carbide["mean_ecd"] is None  # excluded from size statistics
    assert carbide["number_per_mpx"] == pytest.approx(0.5 / 10000 * 1e6)


def test_particles_touching_excluded_region_are_border_particles():
    classes = _map()
    classes[50:, :] = 2  # excluded lower half
    classes[46:50, 10:14] = 1  # last row 49 shares an edge with excluded row 50: border
    classes[45:49, 30:34] = 1  # one matrix row (49) between it and the bar: whole
    classes[20:24, 60:64] = 1  # far away: whole
    carbide = measure(classes, CLASSES, None)["particles"]["carbide"]
    assert carbide["border_count"] == 1
    assert carbide["count"] == 2
    assert carbide["mean_ecd"] == pytest.approx(math.sqrt(64 / math.pi))


def test_diagonal_contact_with_excluded_region_makes_a_border_particle():
    classes = _map()
    classes[50:, 50:] = 2  # excluded lower-right quadrant, first excluded pixel (50, 50)
    classes[46:50, 46:50] = 1  # its corner (49, 49) touches (50, 50) diagonally only
    carbide = measure(classes, CLASSES, None)["particles"]["carbide"]
    assert carbide["border_count"] == 1 and carbide["count"] == 0


def test_eight_connectivity_and_minimum_area():
    classes = _map()
    classes[[10, 11, 12], [10, 11, 12]] = 1  # diagonal chain: one particle of 3 px
    classes[30, 30:32] = 1  # 2 px: noise, ignored
    classes[50, 50] = 1  # 1 px: noise, ignored
    classes[0, 60] = 1  # 1 px on the edge: noise, not even a border particle
    result = measure(classes, CLASSES, None)
    carbide = result["particles"]["carbide"]
    assert result["connectivity"] == 8
    assert result["min_particle_area_px"] == 3
    assert carbide["count"] == 1 and carbide["border_count"] == 0
    assert carbide["mean_ecd"] == pytest.approx(math.sqrt(12 / math.pi))
    # Noise still counts towards the area fraction.
    assert result["fractions"]["carbide"] == pytest.approx(7 / 10000)


def test_empty_valid_area_is_flagged_with_zero_fractions():
    classes = np.full((20, 30), 2, np.uint8)
    result = measure(classes, CLASSES, 1.0)
    assert result["valid_area_empty"] is True
    assert result["valid_area_px"] == 0
    assert result["valid_area_um2"] == 0.0
    assert result["fractions"] == {"matrix": 0.0, "carbide": 0.0}
    carbide = result["particles"]["carbide"]
    assert carbide["count"] == 0 and carbide["number_per_mm2"] == 0.0


def test_absent_class_has_zero_count_and_null_statistics():
    result = measure(_map(), CLASSES, 2.0)
    carbide = result["particles"]["carbide"]
    assert result["fractions"] == {"matrix": 1.0, "carbide": 0.0}
    assert carbide["count"] == 0 and carbide["border_count"] == 0
    assert carbide["number_per_mm2"] == 0.0
    for key in ("mean_ecd", "median_ecd", "std_ecd", "ecd_percentiles"):
        assert carbide[key] is None
    assert carbide["ecd_histogram"] == {"edges": [], "counts": []}
    assert "border" in result["border_rule"]


def test_class_id_outside_the_model_is_refused():
    classes = _map()
    classes[5, 5] = 3
    with pytest.raises(ValueError, match="class id 3"):
        measure(classes, CLASSES, None)


def test_wrong_dtype_and_bad_pixel_size_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        measure(np.zeros((4, 4), np.int32), CLASSES, None)
    with pytest.raises(ValueError, match="pixel size"):
        measure(_map(), CLASSES, 0.0)


def test_real_label_map_fractions_match_pixel_counts(shared_data):
    labels = sorted((shared_data / "tomography" / "train" / "labels").glob("*.npy"))
    if not labels:
        pytest.skip("no tomography labels in the shared data")
    classes = np.load(labels[0]).astype(np.uint8)
    infos = (
        ClassInfo(0, "matrix", (0, 0, 0), "background"),
        ClassInfo(1, "second", (255, 0, 0), "phase"),
    )
    result = measure(classes, infos, None)
    assert result["fractions"]["second"] == pytest.approx(float(np.mean(classes == 1)))
    second = result["particles"]["second"]
    assert second["count"] > 0
    assert sum(second["ecd_histogram"]["counts"]) == second["count"]


def test_combine_pages_weights_fractions_by_valid_area() -> None:
    pages = [
        {"page": 0, "valid_area_px": 100, "fractions": {"a": 0.2, "b": 0.8}},
        {"page": 1, "valid_area_px": 300, "fractions": {"a": 0.6, "b": 0.4}},
    ]
    combined = combine_pages(pages)
    # a: 0.25 * 0.2 + 0.75 * 0.6 = 0.5; b: 0.25 * 0.8 + 0.75 * 0.4 = 0.5
    assert combined["fractions"] == pytest.approx({"a": 0.5, "b": 0.5})
    assert combined["valid_area_px"] == 400
    assert combined["page"] is None and combined["pages"] == pages
    assert combine_pages(pages[:1]) is pages[0]


def test_combine_pages_without_valid_area_weighs_pages_equally() -> None:
    pages = [{"page": i, "valid_area_px": 0, "fractions": {"a": f}} for i, f in enumerate((0.2, 0.4))]
    assert combine_pages(pages)["fractions"]["a"] == pytest.approx(0.3)


def test_a_stack_is_trusted_only_when_every_page_is():
    pages = [{"page": 0, "valid_area_px": 10, "fractions": {"a": 1.0},
              "trust": {"ok": True, "score": 0.4, "reasons": []}},
             {"page": 1, "valid_area_px": 10, "fractions": {"a": 0.0},
              "trust": {"ok": False, "score": 2.5, "reasons": ["texture unlike training"]}}]
    trust = combine_pages(pages)["trust"]
    assert trust == {"ok": False, "score": 2.5, "reasons": ["page 1: texture unlike training"]}
