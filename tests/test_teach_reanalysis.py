"""Re-analysing a measured specimen with another model (service/reanalysis_jobs.py), on real
superalloy micrographs with the bundled model: old against new per class with the paired
difference, and the fields the old run flagged that the new one trusts."""

from __future__ import annotations

import time

import pytest

from phasewatch.bundle import sha256_file
from phasewatch.service.reanalysis_jobs import Reanalyses
from phasewatch.store import Store


def test_a_specimen_is_reanalysed_and_compared(shared_data, tmp_path):
    images = sorted((shared_data / "superalloy" / "test" / "images").glob("*.tif"))[:3]
    data = tmp_path / "data"
    store = Store(data / "phasewatch.sqlite3")
    specimen = store.start_specimen("spot2")
    old = {}
    for i, path in enumerate(images):
        row = store.enqueue(path, path.stat().st_size, path.stat().st_mtime_ns, sha256_file(path),
                            specimen_id=specimen)
        store.claim_next(1)
        # What an old model recorded: 40 % secondary gamma prime, flagged on the first field only.
        store.mark_done(row["id"], {"fractions": {"gamma matrix": 0.6, "secondary gamma prime": 0.4,
                                                  "tertiary gamma prime": 0.0},
                                    "valid_area_px": 512 * 512, "width": 512, "height": 512,
                                    "trust": {"ok": i != 0, "score": 2.0 if i == 0 else 0.5, "reasons": []}},
                        model={"name": "old", "onnx_sha256": "0" * 64})
        old[row["id"]] = path
    jobs = Reanalyses(data, store)
    job = jobs.start("superalloy", specimen, who="qa")
    deadline = time.time() + 300
    while (state := jobs.get(job))["state"] == "running":
        assert time.time() < deadline, "re-analysis took over 5 minutes"
        time.sleep(0.2)
    assert state["state"] == "done", state["error"]
    comparison = state["comparison"]
    (only,) = comparison["specimens"]
    assert only["name"] == "spot2" and only["fields"] == 3 and only["new_only"] == 0
    gamma = only["classes"]["secondary gamma prime"]
    assert gamma["old"]["mean"] == pytest.approx(40.0)
    # the bundled model's own figure for these fields, paired against the recorded 40 %
    assert gamma["difference"]["mean"] == pytest.approx(gamma["new"]["mean"] - 40.0)
    assert gamma["difference"]["ci95"] is not None
    first = min(old)
    assert comparison["newly_trusted"] == [{"id": first, "file": old[first].name}]
    assert (data / "reanalyses" / job / "phasewatch.sqlite3").is_file()
    assert store.audit.rows()[-1]["action"] == "reanalysis.start"
    assert jobs.get("nope") is None
    store.close()
