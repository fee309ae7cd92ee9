"""``reanalyse-compare``'s pairing and statistics on stores written directly: fields paired by
content across folders, specimens from the new run, flagged fields left out as the specimen
statistics leave them out, and the figures ``stats.field_statistics``'s."""

from __future__ import annotations

from pathlib import Path

import pytest

from phasewatch.app.cli import main
from phasewatch.core.stats import field_statistics
from phasewatch.service.archive_compare import compare
from phasewatch.store import Store


def record(phase: float, area: int, trusted: bool = True) -> dict[str, object]:
    return {"fractions": {"matrix": 1.0 - phase, "phase": phase}, "particles": {}, "valid_area_px": area,
            "valid_area_um2": None, "pixel_size_um": None, "trust": {"ok": trusted, "score": 0.1, "reasons": []}}


def measured(store: Store, root: Path, fields: dict[str, tuple[str, dict[str, object]]]) -> None:
    """``fields``: relative path -> (content sha256, record), queued per sub-folder specimen and done."""
    for relative, (sha, result) in fields.items():
        path = root / relative
        row = store.enqueue(path, 1, 1, sha, store.specimen_for_path(path, root))
        (claimed,) = store.claim_next(1)
        assert claimed["id"] == row["id"]
        store.mark_done(row["id"], result, {}, {"name": "m", "onnx_sha256": "x"})


@pytest.fixture
def stores(tmp_path: Path):
    old, new = Store(tmp_path / "old" / "phasewatch.sqlite3"), Store(tmp_path / "new" / "phasewatch.sqlite3")
    # the old results came from a daemon's watch folder, all in one specimen
    measured(old, tmp_path / "watch", {"a1.tif": ("a1", record(0.10, 100)), "a2.tif": ("a2", record(0.20, 300)),
                                       "a3.tif": ("a3", record(0.30, 100)), "b1.tif": ("b1", record(0.40, 100)),
                                       "gone.tif": ("gone", record(0.5, 100))})
    measured(new, tmp_path / "archive", {"A/a1.tif": ("a1", record(0.12, 100)), "A/a2.tif": ("a2", record(0.21, 300)),
                                         "A/a3.tif": ("a3", record(0.35, 100)), "B/b1.tif": ("b1", record(0.41, 100)),
                                         "B/b2.tif": ("b2", record(0.9, 100, trusted=False)),
                                         "B/new.tif": ("new", record(0.6, 100))})
    yield old, new
    old.close()
    new.close()


def test_fields_pair_by_content_and_the_difference_is_a_paired_interval(stores) -> None:
    old, new = stores
    report = compare(old, new)
    a, b = report["specimens"]
    assert (a["name"], a["fields"], a["new_only"]) == ("A", 3, 0)
    assert (b["name"], b["fields"], b["new_only"]) == ("B", 1, 1)  # b2 is flagged, so not counted; new.tif unpaired
    assert report["old_only"] == 1  # gone.tif
    phase = a["classes"]["phase"]
    assert phase["difference"] == field_statistics([12.0 - 10.0, 21.0 - 20.0, 35.0 - 30.0])
    assert phase["old"] == field_statistics([10.0, 20.0, 30.0], [100, 300, 100])
    assert phase["new"]["weighted_mean"] == pytest.approx((12.0 * 100 + 21.0 * 300 + 35.0 * 100) / 500)
    assert b["classes"]["phase"]["difference"]["ci95"] is None  # one pair: no interval


def test_count_flagged_takes_the_flagged_field_in(stores) -> None:
    old, new = stores
    (_, b) = compare(old, new, count_flagged=True)["specimens"]
    assert (b["fields"], b["new_only"]) == (1, 2)


def test_the_command_prints_the_table_and_writes_the_csv(stores, tmp_path: Path, capsys) -> None:
    assert main(["reanalyse-compare", str(tmp_path / "old"), str(tmp_path / "new"), "--csv",
                 str(tmp_path / "c.csv")]) == 0
    printed = capsys.readouterr().out
    assert "A " in printed and "2.67 ± " in printed  # mean difference of phase in A: (2 + 1 + 5) / 3
    lines = (tmp_path / "c.csv").read_text().splitlines()
    assert lines[0].startswith("specimen,class,fields,old_pct")
    assert len(lines) == 1 + 2 * 2  # two specimens, two classes each


def test_a_folder_without_results_is_refused_in_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["reanalyse-compare", str(tmp_path / "empty"), str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.strip().endswith("no results here (no phasewatch.sqlite3)")
    assert not (tmp_path / "empty" / "phasewatch.sqlite3").exists()
