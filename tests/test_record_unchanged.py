"""The daemon records exactly what it recorded before the src/ layout (commit f19764f) for the
same real micrograph: the store's image row, measurement, trust and model identity included,
timings aside. tests/daemon_record.py says how the fixture was made from the old tree."""

from __future__ import annotations

import json
from pathlib import Path

from daemon_record import SHARED_IMAGE, daemon_record

FIXTURE = Path(__file__).parent / "data" / "daemon_record_f19764f.json"


def test_the_daemon_records_what_it_recorded_before_the_move(shared_data, tmp_path):
    before = json.loads(FIXTURE.read_text())
    now = daemon_record(shared_data / SHARED_IMAGE, tmp_path)
    assert now["state"] == "done" and before["state"] == "done"
    assert now == before
