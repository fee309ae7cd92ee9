"""Specification limits judged on the statistics' 95 % CI (core/verdict.py), with
numbers worked by hand from core.stats."""

from __future__ import annotations

import math

import pytest

from phasewatch.core.stats import field_statistics, fields_required
from phasewatch.core.verdict import Limit, LimitError, judge, judge_limit, limits_json, parse_limits


def st(values, unit="area %"):
    return {**field_statistics(values), "unit": unit}


def test_pass_when_the_ci_is_inside_and_precise():
    s = st([50.0, 51.0, 49.0, 50.0])  # mean 50, s 0.8165, CI ±1.299, %RA 2.6
    check = judge_limit(Limit("gp", "fractions", 45, 55), s, 10.0)
    assert check["verdict"] == "pass"
    assert check["low"] == pytest.approx(50 - 1.2992, abs=1e-3)
    assert check["high"] == pytest.approx(50 + 1.2992, abs=1e-3)
    assert check["fields_needed"] == 0


def test_fail_when_the_ci_is_entirely_outside_even_if_imprecise():
    s = st([5.0, 3.0, 7.0])  # mean 5, CI ±4.97: 0.03..9.97, %RA 99
    assert judge_limit(Limit("pores", "fractions", upper=0.02), s, 10.0)["verdict"] == "fail"
    check = judge_limit(Limit("pores", "fractions", lower=10.0), s, 10.0)
    assert check["verdict"] == "fail"
    assert check["why"] == "the 95 % CI lies entirely below 10"


def test_straddling_is_undecided_with_the_fields_that_separate_it():
    s = st([54.0, 56.0, 55.0, 57.0, 53.0])  # mean 55, s 1.581, CI ±1.963
    check = judge_limit(Limit("gp", "fractions", 45, 56), s, 10.0)
    assert check["verdict"] == "undecided"
    assert check["why"] == "the 95 % CI straddles a limit"
    # the half-width must shrink below |55 - 56| = 1 = 1/55 of the mean
    assert check["fields_needed"] == fields_required(s["std"], 55.0, 1 / 55) - 5
    assert check["fields_needed"] > 0


def test_above_the_target_ra_is_undecided_even_inside():
    s = st([40.0, 60.0, 50.0])  # mean 50, CI ±24.8: %RA 49.7
    check = judge_limit(Limit("gp", "fractions", 0, 100), s, 10.0)
    assert check["verdict"] == "undecided"
    assert check["why"] == "%RA above the 10 % target"
    assert check["fields_needed"] == fields_required(s["std"], 50.0, 0.10) - 3
    # a limit's own target overrides the service's
    assert judge_limit(Limit("gp", "fractions", 0, 100, target_ra_pct=60), s, 10.0)["verdict"] == "pass"


def test_too_few_fields_no_field_and_a_mean_on_the_bound():
    one = judge_limit(Limit("gp", "fractions", 45, 55), st([50.0]), 10.0)
    assert (one["verdict"], one["fields_needed"], one["why"]) == ("undecided", 1, "a CI needs two fields")
    none = judge_limit(Limit("gp", "fractions", 45, 55), None, 10.0)
    assert (none["verdict"], none["fields_needed"]) == ("undecided", 2)
    on = judge_limit(Limit("gp", "fractions", 50, 60), st([49.0, 51.0, 50.0]), 10.0)
    assert on["verdict"] == "undecided" and on["fields_needed"] is None


def test_a_limit_in_um_on_pixel_statistics_is_undecided():
    check = judge_limit(Limit("gp", "mean_ecd", 0.1, 0.5), st([10.0, 11.0, 10.5], "px"), 10.0)
    assert check["verdict"] == "undecided"
    assert check["why"].startswith("uncalibrated")


def test_the_specimen_verdict_is_the_worst_check():
    stats = {"target_ra_pct": 10.0, "fractions": {"a": st([50.0, 51.0, 49.0, 50.0]), "b": st([5.0, 3.0, 7.0])},
             "number_density": {}, "mean_ecd": {}}
    good = Limit("a", "fractions", 45, 55)
    assert judge(stats, [])["verdict"] is None
    assert judge(stats, [good])["verdict"] == "pass"
    assert judge(stats, [good, Limit("a", "mean_ecd", 1, 2)])["verdict"] == "undecided"
    assert judge(stats, [good, Limit("a", "mean_ecd", 1, 2)])["fields_needed"] == 2
    assert judge(stats, [good, Limit("b", "fractions", upper=0.02), Limit("x", "fractions", 1)])["verdict"] == "fail"


def test_limits_are_checked_and_round_trip():
    raw = [{"class": "gp", "measure": "fractions", "lower": 45, "upper": "55", "target_ra_pct": 10},
           {"class": "pores", "measure": "fractions", "upper": 2}]
    limits = parse_limits(raw)
    assert limits == [Limit("gp", "fractions", 45, 55, 10), Limit("pores", "fractions", None, 2, None)]
    assert parse_limits(limits_json(limits)) == limits
    assert limits[1].text() == "≤ 2" and limits[0].text() == "45 – 55"
    for bad, message in [
        ({}, "limits must be a list"),
        ([{"measure": "fractions", "lower": 1}], "limit 1: needs a class name"),
        ([{"class": "a", "measure": "hardness", "lower": 1}], "measure must be one of"),
        ([{"class": "a"}], "needs a lower or an upper bound"),
        ([{"class": "a", "lower": 5, "upper": 1}], "lower 5 is above upper 1"),
        ([{"class": "a", "lower": "x"}], "lower must be a number"),
        ([{"class": "a", "lower": math.inf}], "lower must be finite"),
        ([{"class": "a", "lower": 1, "target_ra_pct": 0}], "target_ra_pct must be above 0"),
        ([{"class": "a", "lower": 1}, {"class": "a", "upper": 2}], "limit 2 (a, fractions): given twice"),
    ]:
        with pytest.raises(LimitError, match=message.replace("(", r"\(").replace(")", r"\)")):
            parse_limits(bad)
