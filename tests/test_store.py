"""The SQLite queue and results store, on a real database file."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from phasewatch.runtime.service.store import SCHEMA_VERSION, Store, StoreError

RESULT = {
    "fractions": {"matrix": 0.75, "carbide": 0.25},
    "particles": {"carbide": {"count": 12, "mean_ecd": 1.5, "unit": "um"}},
    "valid_area_px": 1000,
    "valid_area_um2": 250.0,
    "pixel_size_um": 0.5,
}


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "db" / "phasewatch.sqlite3", max_attempts=3)
    yield s
    s.close()


def add(store: Store, name: str, sha: str = "", mtime: int = 1, **kw):
    return store.enqueue(f"/in/{name}", 100, mtime, sha or f"sha-{name}", **kw)


def test_new_database_is_wal_versioned_and_has_a_current_specimen(store):
    conn = sqlite3.connect(store.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()
    assert store.current_specimen()["name"] == "default"
    assert store.counts_by_state() == {"pending": 0, "processing": 0, "done": 0, "failed": 0}


def test_newer_schema_is_refused_with_a_clear_line(tmp_path):
    path = tmp_path / "x.sqlite3"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match=r"x\.sqlite3: database schema version \d+ is newer"):
        Store(path)


def test_not_a_database_is_refused(tmp_path):
    path = tmp_path / "junk.sqlite3"
    path.write_bytes(b"this is no database" * 100)
    with pytest.raises(StoreError, match=r"junk\.sqlite3: "):
        Store(path)


def test_state_machine_pending_processing_done_and_failed(store):
    a, b = add(store, "a.tif"), add(store, "b.tif")
    assert (a["state"], a["attempts"]) == ("pending", 0)
    claimed = store.claim_next(batch=5)
    assert [r["id"] for r in claimed] == [a["id"], b["id"]]
    assert all(r["state"] == "processing" and r["attempts"] == 1 for r in claimed)
    assert store.claim_next() == []
    store.mark_done(a["id"], RESULT, {"overlay": "/out/a.overlay.png"})
    store.mark_failed(b["id"], "b.tif: not a TIFF\nfile")
    assert store.counts_by_state() == {"pending": 0, "processing": 0, "done": 1, "failed": 1}
    done = store.get_image(a["id"])
    assert done["fractions"] == RESULT["fractions"]
    assert done["outputs"] == {"overlay": "/out/a.overlay.png"}
    assert done["measurement"]["valid_area_um2"] == 250.0
    assert done["processed"] is not None
    failed = store.get_image(b["id"])
    assert (failed["state"], failed["error"]) == ("failed", "b.tif: not a TIFF file")
    with pytest.raises(StoreError, match=f"file {a['id']} is not being processed"):
        store.mark_done(a["id"], RESULT)


def test_enqueue_is_idempotent_for_the_same_version(store):
    first = add(store, "a.tif")
    again = add(store, "a.tif")
    assert again["id"] == first["id"]
    assert store.counts_by_state()["pending"] == 1


def test_same_content_twice_is_one_result(store):
    first = add(store, "a.tif", sha="abc")
    copy = add(store, "copy-of-a.tif", sha="abc")
    touched = add(store, "a.tif", sha="abc", mtime=2)  # same path, same content, new mtime
    for dup in (copy, touched):
        assert dup["state"] == "done"
        assert dup["duplicate_of"] == first["id"]
    assert [r["id"] for r in store.claim_next(batch=10)] == [first["id"]]
    store.mark_done(first["id"], RESULT)
    assert store.get_image(copy["id"])["fractions"] == RESULT["fractions"]
    fields = store.field_results(store.current_specimen()["id"])
    assert [f["id"] for f in fields] == [first["id"]]


def test_rewritten_file_with_new_content_is_a_new_field(store):
    first = add(store, "a.tif", sha="old")
    second = add(store, "a.tif", sha="new", mtime=2)
    assert second["id"] != first["id"]
    assert second["state"] == "pending" and second["duplicate_of"] is None


def test_copy_of_a_failed_file_is_queued_again(store):
    first = add(store, "a.tif", sha="abc")
    store.claim_next()
    store.mark_failed(first["id"], "boom")
    retry = add(store, "a-again.tif", sha="abc")
    assert retry["state"] == "pending" and retry["duplicate_of"] is None


def test_crash_recovery_requeues_then_fails_after_max_attempts(tmp_path):
    path = tmp_path / "q.sqlite3"
    store = Store(path, max_attempts=2)
    row = add(store, "a.tif")
    store.claim_next()
    store.close()  # the worker "crashes" with the row processing

    store = Store(path, max_attempts=2)
    assert store.recover_after_crash() == {"requeued": 1, "failed": 0}
    assert store.get_image(row["id"])["state"] == "pending"
    assert store.claim_next()[0]["attempts"] == 2
    store.close()  # crashes again

    store = Store(path, max_attempts=2)
    assert store.recover_after_crash() == {"requeued": 0, "failed": 1}
    image = store.get_image(row["id"])
    assert (image["state"], image["error"]) == ("failed", "crashed the worker 2 times")
    assert store.claim_next() == []
    store.close()


def test_two_threads_never_claim_the_same_row(tmp_path):
    path = tmp_path / "c.sqlite3"
    store = Store(path)
    ids = {add(store, f"f{i}.tif")["id"] for i in range(400)}
    claimed: list[list[int]] = [[], []]
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def worker(slot: int) -> None:
        start.wait()
        try:
            while rows := store.claim_next(batch=2):
                claimed[slot].extend(r["id"] for r in rows)
        except BaseException as exc:  # surfaced below: a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.close()
    assert errors == []
    assert not set(claimed[0]) & set(claimed[1])
    assert sorted(claimed[0] + claimed[1]) == sorted(ids)


def test_specimens_current_and_per_subfolder(store):
    before = add(store, "a.tif")
    steel = store.start_specimen("S-17 steel", "etched 5 s")
    after = add(store, "b.tif")
    assert store.current_specimen()["id"] == steel
    assert before["specimen_id"] != steel and after["specimen_id"] == steel
    lot = store.specimen_for_path("/in/lot-4/day2/f1.tif", "/in")
    assert store.specimen_for_path("/in/lot-4/f2.tif", "/in") == lot
    assert store.specimen_for_path("/in/f3.tif", "/in") == steel
    assert store.get_specimen(lot)["name"] == "lot-4"
    assert store.current_specimen()["id"] == steel  # a sub-folder specimen is not made current
    listed = {s["id"]: s for s in store.list_specimens()}
    assert listed[steel]["files"] == 1 and listed[steel]["notes"] == "etched 5 s"
    with pytest.raises(StoreError, match="not inside the watch folder"):
        store.specimen_for_path("/elsewhere/x.tif", "/in")


def test_excluded_fields_leave_the_field_results(store):
    rows = [add(store, f"{n}.tif") for n in "abc"]
    for r in store.claim_next(batch=3):
        store.mark_done(r["id"], RESULT)
    copy = add(store, "copy.tif", sha="sha-b.tif")
    specimen = store.current_specimen()["id"]
    store.exclude_field(rows[0]["id"], "scratch")
    store.exclude_field(copy["id"], "out of focus")  # acts on the original, b
    assert [f["id"] for f in store.field_results(specimen)] == [rows[2]["id"]]
    assert store.get_image(rows[0]["id"])["exclude_reason"] == "scratch"
    store.include_field(rows[0]["id"])
    assert [f["id"] for f in store.field_results(specimen)] == [rows[0]["id"], rows[2]["id"]]
    with pytest.raises(StoreError, match="no file 999"):
        store.exclude_field(999, "x")


def test_list_images_newest_first_by_specimen_and_page(store):
    a = add(store, "a.tif")
    other = store.start_specimen("other")
    b, c = add(store, "b.tif"), add(store, "c.tif")
    assert [i["id"] for i in store.list_images()] == [c["id"], b["id"], a["id"]]
    assert [i["id"] for i in store.list_images(specimen=other)] == [c["id"], b["id"]]
    assert [i["id"] for i in store.list_images(limit=1, before_id=c["id"])] == [b["id"]]
    assert store.list_images(limit=1)[0]["specimen"] == "other"
    assert store.get_image(12345) is None


def test_release_requeues_without_spending_an_attempt(store):
    a = add(store, "a.tif")
    store.claim_next()
    store.release(a["id"], "results: disk\nfull")
    row = store.get_image(a["id"])
    assert (row["state"], row["attempts"], row["error"]) == ("pending", 0, "results: disk full")
    assert [r["id"] for r in store.claim_next()] == [a["id"]]
    store.mark_done(a["id"], RESULT)
    with pytest.raises(StoreError, match="not being processed"):
        store.release(a["id"], "late")
