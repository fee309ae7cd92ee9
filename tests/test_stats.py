"""ASTM E562 / E1245 field statistics; expected values computed by hand."""

from __future__ import annotations

import math

import pytest

from phasewatch.core.stats import (
    field_statistics,
    main_phase,
    phase_trend,
    running_statistics,
    specimen_statistics,
    t_975,
)
from phasewatch.store import Store


@pytest.mark.parametrize(
    ("df", "expected"),
    # Printed two-sided 95 % t tables (3 decimals).
    [(1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228), (30, 2.042), (60, 2.000), (120, 1.980)],
)
def test_t_quantile_matches_printed_tables(df, expected):
    assert t_975(df) == pytest.approx(expected, abs=5e-4)


@pytest.mark.parametrize(
    # Exact quantiles from an arbitrary-precision inverse t (mpmath), between table rows.
    ("df", "expected"),
    [(35, 2.0301079), (50, 2.0085591), (90, 1.9866745), (200, 1.9718962), (1000, 1.9623391)],
)
def test_t_quantile_between_table_rows(df, expected):
    assert t_975(df) == pytest.approx(expected, abs=1e-4)


def test_t_quantile_rejects_zero_degrees_of_freedom():
    with pytest.raises(ValueError):
        t_975(0)


def test_e562_worked_example():
    # Fields 12, 15, 10, 14, 11 %: mean 62/5 = 12.4; squared deviations
    # 0.16 + 6.76 + 5.76 + 2.56 + 1.96 = 17.2, s = sqrt(17.2 / 4) = 2.0736;
    # CI = 2.7764 * 2.0736 / sqrt(5) = 2.5748; %RA = 2.5748 / 12.4 * 100 = 20.76.
    stats = field_statistics([12, 15, 10, 14, 11])
    assert stats["n"] == 5
    assert stats["mean"] == pytest.approx(12.4)
    assert stats["std"] == pytest.approx(2.0736, abs=5e-5)
    assert stats["ci95"] == pytest.approx(2.5748, abs=5e-5)
    assert stats["ra_pct"] == pytest.approx(20.76, abs=5e-3)
    assert stats["weighted_mean"] is None
    assert stats["target_ra_pct"] == pytest.approx(10.0)


def test_fields_needed_by_hand():
    # s / (RA * mean) = 2.0736 / (0.10 * 12.4) = 1.6723; m >= (t(m-1) * 1.6723)^2:
    # m = 13: (2.1788 * 1.6723)^2 = 13.28 > 13, not enough;
    # m = 14: (2.1604 * 1.6723)^2 = 13.05 <= 14. So 14 fields, 9 more than the 5.
    stats = field_statistics([12, 15, 10, 14, 11], target_ra=0.10)
    assert stats["fields_required"] == 14
    assert stats["fields_needed"] == 9
    # At 25 % the five fields are enough: %RA is 20.76.
    assert field_statistics([12, 15, 10, 14, 11], target_ra=0.25)["fields_needed"] == 0


def test_one_field_has_no_confidence_interval():
    stats = field_statistics([12.0])
    assert stats["mean"] == 12.0
    assert stats["std"] is None and stats["ci95"] is None and stats["ra_pct"] is None
    assert stats["fields_needed"] is None


def test_no_fields_and_zero_mean_do_not_crash():
    assert field_statistics([])["mean"] is None
    zero = field_statistics([0.0, 0.0, 0.0])
    assert zero["ci95"] == 0.0
    assert zero["ra_pct"] is None and zero["fields_needed"] is None


def test_identical_fields_need_nothing_more():
    stats = field_statistics([5.0, 5.0])
    assert stats["ci95"] == 0.0 and stats["ra_pct"] == 0.0 and stats["fields_needed"] == 0


def test_area_weighted_ratio_estimator():
    # (1 * 10 + 3 * 20) / (1 + 3) = 70 / 4 = 17.5, beside the plain mean 15.
    stats = field_statistics([10.0, 20.0], areas=[1.0, 3.0])
    assert stats["mean"] == pytest.approx(15.0)
    assert stats["weighted_mean"] == pytest.approx(17.5)
    with pytest.raises(ValueError, match="2 values but 1 areas"):
        field_statistics([10.0, 20.0], areas=[1.0])


def test_running_statistics_after_each_field_by_hand():
    # 12: mean 12, no CI; 12, 15: mean 13.5, s = 3 / sqrt(2), CI = 12.7062 * 3 / 2 = 19.0593;
    # 12, 15, 10: mean 37 / 3, s^2 = (1/9 + 64/9 + 49/9) / 2 = 19 / 3, CI = 4.3027 * sqrt(19 / 9) = 6.2516.
    running = running_statistics([12.0, 15.0, 10.0])
    assert [r["n"] for r in running] == [1, 2, 3]
    assert [r["mean"] for r in running] == pytest.approx([12.0, 13.5, 37 / 3])
    assert running[0]["ci95"] is None
    assert [r["ci95"] for r in running[1:]] == pytest.approx([19.0593, 6.2516], abs=5e-5)
    assert running_statistics([]) == []


def test_main_phase_is_the_phase_with_the_largest_summed_fraction():
    fields = [
        {"fractions": {"matrix": 0.7, "carbide": 0.1, "boride": 0.2}, "particles": {"carbide": {}, "boride": {}}},
        {"fractions": {"matrix": 0.6, "carbide": 0.3, "boride": 0.1}, "particles": {"carbide": {}}},
    ]
    # The matrix has no particle statistics: not a phase however large. Carbide 0.4 > boride 0.3.
    assert main_phase(fields) == "carbide"
    assert main_phase([{"fractions": {"matrix": 1.0}, "particles": {}}]) is None
    assert main_phase([]) is None


def test_phase_trend_follows_one_class_field_by_field():
    fields = [
        {"id": 4, "fractions": {"carbide": 0.20}},
        {"id": 9, "fractions": {"matrix": 1.0}},  # no carbide: 0 %
        {"id": 11, "fractions": {"carbide": 0.40}},
    ]
    trend = phase_trend(fields, "carbide")
    assert (trend["class"], trend["ids"]) == ("carbide", [4, 9, 11])
    assert trend["values"] == pytest.approx([20.0, 0.0, 40.0])
    assert trend["mean"] == pytest.approx([20.0, 10.0, 20.0])
    # Values 20, 0, 40: s = 20, CI = 4.3027 * 20 / sqrt(3) = 49.683.
    assert trend["ci95"][0] is None and trend["ci95"][2] == pytest.approx(t_975(2) * 20 / math.sqrt(3))
    assert phase_trend([], "carbide") == {"class": "carbide", "ids": [], "values": [], "mean": [], "ci95": []}


def _result(carbide: float, area_px: int, count: int, ecd: float | None, px: float | None):
    area_um2 = area_px * px * px if px else None
    per_mpx = count / area_px * 1e6
    return {
        "fractions": {"matrix": 1 - carbide, "carbide": carbide},
        "particles": {
            "carbide": {
                "count": count,
                "number_per_mpx": per_mpx,
                "number_per_mm2": count / (area_um2 * 1e-6) if px else None,
                "mean_ecd": ecd,
                "unit": "um" if px else "px",
            }
        },
        "valid_area_px": area_px,
        "valid_area_um2": area_um2,
        "pixel_size_um": px,
    }


def _specimen(tmp_path, results):
    store = Store(tmp_path / "s.sqlite3")
    ids = [store.enqueue(f"/in/{i}.tif", 1, 1, f"sha{i}")["id"] for i in range(len(results))]
    for row, result in zip(store.claim_next(batch=len(results)), results, strict=True):
        store.mark_done(row["id"], result)
    return store, ids


def test_specimen_statistics_in_physical_units_skip_excluded_fields(tmp_path):
    # Pixel 0.5 um: field 1 is 1000 px = 250 um2 with 10 particles -> 40000 / mm2;
    # field 2 is 3000 px = 750 um2 with 15 particles -> 20000 / mm2.
    store, ids = _specimen(
        tmp_path,
        [_result(0.20, 1000, 10, 2.0, 0.5), _result(0.30, 3000, 15, 1.0, 0.5),
         _result(0.90, 1000, 99, 9.0, 0.5)],
    )
    store.exclude_field(ids[2], "scratch")
    stats = specimen_statistics(store, store.current_specimen()["id"], target_ra=0.10)
    store.close()
    assert stats["fields"] == 2
    carbide = stats["fractions"]["carbide"]
    assert carbide["unit"] == "area %"
    assert carbide["mean"] == pytest.approx(25.0)  # (20 + 30) / 2
    assert carbide["weighted_mean"] == pytest.approx(27.5)  # (250 * 20 + 750 * 30) / 1000
    assert carbide["std"] == pytest.approx(math.sqrt(50))  # (25 + 25) / 1
    assert stats["fractions"]["matrix"]["mean"] == pytest.approx(75.0)
    density = stats["number_density"]["carbide"]
    assert density["unit"] == "1/mm2"
    assert density["mean"] == pytest.approx(30000.0)
    assert density["weighted_mean"] == pytest.approx(25000.0)  # 25 particles / 0.001 mm2
    ecd = stats["mean_ecd"]["carbide"]
    assert ecd["unit"] == "um"
    assert ecd["weighted_mean"] == pytest.approx(1.4)  # (10 * 2.0 + 15 * 1.0) / 25
    assert stats["main_phase"] == "carbide"
    trend = stats["trend"]  # the excluded field is left out here too
    assert trend["ids"] == ids[:2] and trend["values"] == pytest.approx([20.0, 30.0])
    assert trend["mean"] == pytest.approx([20.0, 25.0])
    assert trend["ci95"] == [None, pytest.approx(carbide["ci95"])]


def test_specimen_statistics_fall_back_to_pixels_when_a_pixel_size_is_missing(tmp_path):
    store, _ = _specimen(
        tmp_path, [_result(0.20, 1000, 10, 2.0, 0.5), _result(0.40, 1000, 5, None, None)]
    )
    stats = specimen_statistics(store, store.current_specimen()["id"])
    store.close()
    assert stats["number_density"]["carbide"]["unit"] == "1/Mpx"
    assert stats["number_density"]["carbide"]["mean"] == pytest.approx(7500.0)  # 10000, 5000
    ecd = stats["mean_ecd"]["carbide"]
    assert (ecd["unit"], ecd["n"], ecd["mean"]) == ("px", 1, pytest.approx(4.0))  # 2 um / 0.5


def test_empty_specimen(tmp_path):
    store = Store(tmp_path / "e.sqlite3")
    stats = specimen_statistics(store, store.current_specimen()["id"])
    store.close()
    assert stats["fields"] == 0 and stats["fractions"] == {}
    assert stats["main_phase"] is None and stats["trend"] is None
    assert stats["flagged_pending"] == 0


def test_flagged_fields_are_left_out_and_counted_as_pending_until_accepted(tmp_path):
    flagged = {"ok": False, "score": 0.1, "reasons": ["intensity distribution unlike this model's training images"]}
    store, ids = _specimen(
        tmp_path,
        [_result(0.20, 1000, 10, 2.0, 0.5), {**_result(0.30, 1000, 15, 1.0, 0.5), "trust": {"ok": True}},
         {**_result(0.90, 1000, 99, 9.0, 0.5), "trust": flagged}],
    )
    specimen = store.current_specimen()["id"]
    left_out = specimen_statistics(store, specimen)
    counted = specimen_statistics(store, specimen, count_flagged=True)
    store.accept_field(ids[2], "me", "looked at it")
    accepted = specimen_statistics(store, specimen)
    store.close()
    assert (left_out["fields"], left_out["flagged_pending"], left_out["count_flagged"]) == (2, 1, False)
    assert left_out["fractions"]["carbide"]["mean"] == pytest.approx(25.0)  # (20 + 30) / 2
    assert left_out["trend"]["ids"] == ids[:2]
    # Counted on request, but still reported as not accepted, so never silently.
    assert (counted["fields"], counted["flagged_pending"], counted["count_flagged"]) == (3, 1, True)
    assert counted["fractions"]["carbide"]["mean"] == pytest.approx(140 / 3)  # (20 + 30 + 90) / 3
    assert (accepted["fields"], accepted["flagged_pending"]) == (3, 0)
    assert accepted["trend"]["ids"] == ids
