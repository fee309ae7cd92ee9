"""Attempts charged to a file (store/queue.py, issue 21): an error of the file's own that may not
repeat sends it back to the queue with the attempt spent, and fails it with its reason once it
has had ``max_attempts``; its duplicates fail with it. ``in_work`` names what a death interrupted."""

from __future__ import annotations

import pytest
from test_store import add, crash

from phasewatch.store import Store, StoreError


def test_a_charged_file_is_tried_again_until_its_attempts_are_spent(tmp_path):
    store = Store(tmp_path / "q.sqlite3", max_attempts=3)
    bad, good = add(store, "bad.tif")["id"], add(store, "good.tif")["id"]
    for attempt in (1, 2):
        (row,) = store.claim_next()
        assert (row["id"], row["attempts"]) == (bad, attempt)
        store.set_stage([bad], "measuring")
        assert store.charge(bad, "bad.tif: cannot segment:\nboom") == "pending"
        row = store.get_image(bad)
        assert (row["state"], row["attempts"], row["error"], row["stage"]) == ("pending", attempt,
                                                                               "bad.tif: cannot segment: boom", None)
    (row,) = store.claim_next()
    copy = add(store, "copy-of-bad.tif", sha="sha-bad.tif")  # same bytes, while the first is in work
    assert copy["state"] == "done"
    assert store.charge(bad, "bad.tif: cannot segment: boom") == "failed"
    row = store.get_image(bad)
    assert (row["state"], row["attempts"], row["error"]) == ("failed", 3, "bad.tif: cannot segment: boom")
    assert store.get_image(copy["id"])["state"] == "failed"
    (row,) = store.claim_next()
    assert row["id"] == good  # the queue goes on
    store.close()


def test_charging_a_file_not_in_work_is_an_error(tmp_path):
    store = Store(tmp_path / "q.sqlite3")
    row = add(store, "a.tif")
    with pytest.raises(StoreError, match="is not being processed"):
        store.charge(row["id"], "reason")
    store.close()


def test_in_work_names_the_rows_a_death_left_processing(tmp_path):
    store = Store(tmp_path / "q.sqlite3", max_attempts=3)
    ids = [add(store, f"{n}.tif")["id"] for n in "abc"]
    store.claim_next(batch=2)
    store = crash(store)
    assert store.in_work() == ids[:2]
    store.recover_after_crash()
    assert store.in_work() == []
    store.close()
