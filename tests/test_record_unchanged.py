"""The daemon records what it recorded when the fixture was made, for the same real micrograph:
the store's image row, measurement, trust and model identity included, timings aside.

History. The fixture was first made by the tree before the src/ layout (commit f19764f) and
this test held it unchanged through the move (issue 20). It was made again when the bundled
superalloy model was retrained (issue 23): at that commit the same code with the previous bundle
(``daemon_record(..., model=FOLDER)``) still gave the f19764f fixture exactly, apart from what
issues 24 and 25 added on purpose (``same_pixels_as``, ``pixel_sha256``, JPEG pictures); the old
fixture is in git. Remake it only when the bundled model or a record change is meant to change
it: ``cd tests && python daemon_record.py new /PATH/TO/shared/data/superalloy/val/images/spot1_0d_0.tif
> data/daemon_record.json``."""

from __future__ import annotations

import json
from pathlib import Path

from daemon_record import SHARED_IMAGE, daemon_record

FIXTURE = Path(__file__).parent / "data" / "daemon_record.json"


def test_the_daemon_records_what_it_recorded_when_the_fixture_was_made(shared_data, tmp_path):
    before = json.loads(FIXTURE.read_text())
    now = daemon_record(shared_data / SHARED_IMAGE, tmp_path)
    assert now["state"] == "done"
    assert now == before
