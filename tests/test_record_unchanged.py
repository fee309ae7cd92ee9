"""The daemon records exactly what it recorded before the src/ layout (commit f19764f) for the
same real micrograph: the store's image row, measurement, trust and model identity included,
timings aside. tests/daemon_record.py says how the fixture was made from the old tree."""

from __future__ import annotations

import json
import re
from pathlib import Path

from daemon_record import SHARED_IMAGE, daemon_record

FIXTURE = Path(__file__).parent / "data" / "daemon_record_f19764f.json"


# Keys added since the fixture was made, each with the change that added it: the row's and the
# record's, checked for what they must be here and then set aside.
ADDED_TO_ROW = {"same_pixels_as": None}  # issue 24: the same field re-saved (store/queue.py)
ADDED_TO_RECORD = ("pixel_sha256",)  # issue 24: core/pixel_hash.py
# Output files renamed since, on purpose, with the change: (suffix then, suffix now). Only the
# name changes; what the pictures show is tested in tests/test_outputs.py.
RENAMED_OUTPUTS = {"overlay": (".overlay.png", ".overlay.jpg"),  # issue 25: pictures for people are JPEGs
                   "preview": (".preview.png", ".preview.jpg")}  # (core/outputs.py)


def test_the_daemon_records_what_it_recorded_before_the_move(shared_data, tmp_path):
    before = json.loads(FIXTURE.read_text())
    now = daemon_record(shared_data / SHARED_IMAGE, tmp_path)
    assert now["state"] == "done" and before["state"] == "done"
    assert {key: now.pop(key) for key in ADDED_TO_ROW} == ADDED_TO_ROW
    added = {key: now["measurement"].pop(key) for key in ADDED_TO_RECORD}
    assert re.fullmatch(r"[0-9a-f]{64}", added["pixel_sha256"])
    for kind, (then, since) in RENAMED_OUTPUTS.items():
        assert before["outputs"][kind].endswith(then)
        before["outputs"][kind] = before["outputs"][kind].removesuffix(then) + since
    assert now == before
