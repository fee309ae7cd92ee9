"""The SQLite queue and results store, on a real database file."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time

import pytest

from phasewatch.store import Store, StoreError, StoreUnavailable
from phasewatch.store.database import MIGRATIONS, SCHEMA_VERSION

RESULT = {
    "fractions": {"matrix": 0.75, "carbide": 0.25},
    "particles": {"carbide": {"count": 12, "mean_ecd": 1.5, "unit": "um"}},
    "valid_area_px": 1000,
    "valid_area_um2": 250.0,
    "pixel_size_um": 0.5,
}
UNLIKE = "intensity distribution unlike this model's training images"
FLAGGED = {**RESULT, "trust": {"ok": False, "score": 0.2, "reasons": [UNLIKE]}}
TRUSTED = {**RESULT, "trust": {"ok": True, "score": 0.9, "reasons": []}}


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


def test_requeue_failed_retries_failures_with_their_duplicates_beside_them(store):
    first = add(store, "a.tif", sha="abc")
    copy = add(store, "copy-of-a.tif", sha="abc")
    good = add(store, "b.tif")
    store.claim_next(batch=10)
    store.mark_failed(first["id"], "boom")
    store.mark_done(good["id"], RESULT)
    assert store.get_image(copy["id"])["state"] == "failed"
    assert store.requeue_failed() == 1
    again, dup, kept = (store.get_image(i) for i in (first["id"], copy["id"], good["id"]))
    assert (again["state"], again["error"], again["attempts"]) == ("pending", None, 0)
    assert (dup["state"], dup["duplicate_of"]) == ("done", first["id"])
    assert kept["state"] == "done"
    (claimed,) = store.claim_next(batch=10)
    store.mark_failed(claimed["id"], "boom again")  # failing again fails its duplicate again
    assert store.get_image(copy["id"])["error"] == f"same content as file {first['id']}, which failed: boom again"


def crash(store: Store) -> Store:
    """The worker dies with whatever it holds; a new one opens the same database."""
    store.close()
    return Store(store.path, max_attempts=store.max_attempts)


def test_a_crash_charges_only_the_row_inside_inference(tmp_path):
    store = Store(tmp_path / "q.sqlite3", max_attempts=2)
    poison, queued, decoded = (add(store, f"{n}.tif")["id"] for n in ("poison", "queued", "decoded"))
    assert [r["id"] for r in store.claim_next(batch=3)] == [poison, queued, decoded]
    store.set_stage([poison], "segmenting")

    store = crash(store)
    assert store.recover_after_crash() == {"requeued": 3, "charged": 1, "failed": 0}
    rows = {i: store.get_image(i) for i in (poison, queued, decoded)}
    assert all(r["state"] == "pending" and r["stage"] is None for r in rows.values())
    assert (rows[poison]["crashes"], rows[poison]["attempts"], rows[poison]["alone"]) == (1, 1, 1)  # runs by itself
    for innocent in (queued, decoded):  # merely claimed: back free, as if never claimed
        assert (rows[innocent]["crashes"], rows[innocent]["attempts"]) == (0, 0)

    (again,) = store.claim_next()
    assert again["id"] == poison and again["attempts"] == 2
    store.set_stage([poison], "segmenting")
    store = crash(store)
    assert store.recover_after_crash() == {"requeued": 0, "charged": 1, "failed": 1}
    image = store.get_image(poison)
    assert (image["state"], image["error"]) == ("failed", "crashed the worker 2 times while segmenting")
    assert [r["id"] for r in store.claim_next(batch=5)] == [queued, decoded]
    store.close()


def test_rows_that_left_inference_are_not_charged(tmp_path):
    store = Store(tmp_path / "q.sqlite3", max_attempts=1)
    row = add(store, "a.tif")
    store.claim_next()
    store.set_stage([row["id"]], "segmenting")
    store.set_stage([row["id"]], None)  # segmented; the worker dies while writing its outputs
    store = crash(store)
    assert store.recover_after_crash() == {"requeued": 1, "charged": 0, "failed": 0}
    assert store.get_image(row["id"])["crashes"] == 0
    store.close()


def test_a_kill_charges_nobody_but_splits_the_batch(tmp_path):
    store = Store(tmp_path / "q.sqlite3", max_attempts=1)
    ids = [add(store, f"{n}.tif")["id"] for n in "abc"]
    store.claim_next(batch=3)
    store.set_stage(ids[:2], "segmenting")  # a and b in one batch when kill -9 (or the OOM killer) came
    store = crash(store)
    assert store.recover_after_crash(charge=False) == {"requeued": 3, "charged": 0, "failed": 0}
    rows = [store.get_image(i) for i in ids]
    assert [(r["state"], r["crashes"], r["attempts"], r["alone"]) for r in rows] == [
        ("pending", 0, 0, 1), ("pending", 0, 0, 1), ("pending", 0, 0, 0)]
    store.close()


def test_rows_charged_together_are_run_alone_until_the_poison_is_found(tmp_path):
    store = Store(tmp_path / "q.sqlite3", max_attempts=2)
    good, poison = add(store, "good.tif")["id"], add(store, "poison.tif")["id"]
    store.set_stage([r["id"] for r in store.claim_next(batch=2)], "segmenting")  # one batch
    store = crash(store)
    assert store.recover_after_crash() == {"requeued": 2, "charged": 2, "failed": 0}
    assert [(r["id"], r["alone"], r["crashes"]) for r in store.claim_next(batch=2)] == [(good, 1, 1), (poison, 1, 1)]
    store.set_stage([good], "segmenting")  # alone now: the good one is segmented and done
    store.set_stage([good], None)
    store.mark_done(good, RESULT)
    store.set_stage([poison], "segmenting")  # and the poison crashes the worker by itself
    store = crash(store)
    assert store.recover_after_crash() == {"requeued": 0, "charged": 1, "failed": 1}
    assert store.get_image(good)["state"] == "done"
    assert store.get_image(poison)["error"] == "crashed the worker 2 times while segmenting"
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


def measured(store: Store, results: list[dict]) -> list[int]:
    """One done field per result, in order; their ids."""
    ids = [add(store, f"f{i}.tif")["id"] for i in range(len(results))]
    for row, result in zip(store.claim_next(batch=len(results)), results, strict=True):
        store.mark_done(row["id"], result)
    return ids


def test_flagged_fields_count_only_once_accepted_or_when_asked(store):
    old, trusted, flagged = measured(store, [RESULT, TRUSTED, FLAGGED])
    specimen = store.current_specimen()["id"]
    assert store.get_image(old)["trust"] is None  # made before the trust record: trusted
    assert store.get_image(flagged)["trust"] == FLAGGED["trust"]
    assert [f["id"] for f in store.field_results(specimen)] == [old, trusted]
    assert [f["id"] for f in store.field_results(specimen, count_flagged=True)] == [old, trusted, flagged]
    assert store.flagged_pending(specimen) == 1

    store.accept_field(flagged, "  A. Metallographer ", "checked\nby eye")
    assert [f["id"] for f in store.field_results(specimen)] == [old, trusted, flagged]
    assert store.flagged_pending(specimen) == 0
    store.unaccept_field(flagged)
    assert [f["id"] for f in store.field_results(specimen)] == [old, trusted]

    store.exclude_field(flagged, "scratch")  # excluded: not awaiting anyone's acceptance
    assert store.flagged_pending(specimen) == 0
    assert flagged not in [f["id"] for f in store.field_results(specimen, count_flagged=True)]


def test_acceptance_is_persisted_with_who_why_and_when(tmp_path):
    path = tmp_path / "a.sqlite3"
    store = Store(path)
    (flagged,) = measured(store, [FLAGGED])
    before = time.time()
    store.accept_field(flagged, "  A. Metallographer ", "checked\nby eye")
    store.close()

    store = Store(path)
    image = store.get_image(flagged)
    assert (image["accepted"], image["accepted_by"], image["accept_reason"]) == (
        1, "A. Metallographer", "checked by eye")
    assert before <= image["accepted_at"] <= time.time()
    store.unaccept_field(flagged)
    image = store.get_image(flagged)
    assert (image["accepted"], image["accepted_by"], image["accept_reason"], image["accepted_at"]) == (
        0, None, None, None)
    store.close()


def test_acceptance_needs_who_and_why_and_acts_on_a_duplicates_original(store):
    (flagged,) = measured(store, [FLAGGED])
    copy = add(store, "copy.tif", sha="sha-f0.tif")
    assert store.get_image(copy["id"])["trust"] == FLAGGED["trust"]  # the original's result
    for who, why in (("", "fine"), ("me", "  ")):
        with pytest.raises(StoreError, match=f"accepting file {flagged} needs who and why"):
            store.accept_field(flagged, who, why)
    store.accept_field(copy["id"], "me", "fine")
    assert store.get_image(flagged)["accepted"] == 1
    assert store.flagged_pending(store.current_specimen()["id"]) == 0
    with pytest.raises(StoreError, match="no file 999"):
        store.unaccept_field(999)


def test_a_database_of_schema_1_is_upgraded_and_keeps_its_fields(tmp_path):
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(MIGRATIONS[0])
    conn.executescript(
        f"""INSERT INTO specimens (id, name, created, is_current) VALUES (1, 'default', 0, 1);
            INSERT INTO files (id, path, size, mtime_ns, sha256, state, specimen_id, created, excluded)
                VALUES (1, '/in/old.tif', 1, 1, 'sha-old', 'done', 1, 0, 0);
            INSERT INTO results (file_id, fractions, particles, valid_area_px, measurement, outputs)
                VALUES (1, '{{}}', '{{}}', 1000, '{json.dumps(RESULT)}', '{{}}');
            PRAGMA user_version = 1;"""
    )
    conn.close()
    store = Store(path)
    assert store._conn().execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    image = store.get_image(1)
    assert (image["accepted"], image["accepted_by"], image["trust"]) == (0, None, None)
    assert [f["id"] for f in store.field_results(1)] == [1]  # an old field still counts
    store.accept_field(1, "me", "fine")  # the new columns are writable
    assert [s["name"] for s in store.list_specimens()] == ["default"]  # no second default
    store.close()


def test_a_database_of_schema_4_gains_the_operator_and_keeps_its_specimens(tmp_path):
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    for script in MIGRATIONS[:4]:
        conn.executescript(script)
    conn.executescript(
        """INSERT INTO specimens (id, name, created, is_current) VALUES (1, 'default', 0, 0);
            INSERT INTO specimens (id, name, notes, created, is_current, model_name)
                VALUES (2, 'S-9', 'etched 5 s', 1, 1, 'superalloy');
            INSERT INTO files (id, path, size, mtime_ns, sha256, state, specimen_id, created)
                VALUES (1, '/in/old.tif', 1, 1, 'sha-old', 'pending', 2, 0);
            PRAGMA user_version = 4;"""
    )
    conn.close()
    store = Store(path)
    assert store._conn().execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert [(s["id"], s["name"], s["notes"], s["model_name"], s["files"], s["operator"])
            for s in store.list_specimens()] == [(2, "S-9", "etched 5 s", "superalloy", 1, ""),
                                                 (1, "default", "", None, 0, "")]
    assert store.current_specimen()["id"] == 2
    store.update_specimen(2, operator=" A.  Metallographer\n")  # the new column is writable, one line
    assert store.get_specimen(2)["operator"] == "A. Metallographer"
    store.close()


# A Latin-1 "café.tif" from an SMB client: not UTF-8, so Python names it with a surrogate escape.
LATIN1_NAME = os.fsdecode(b"caf\xe9.tif")


def test_a_name_that_is_not_utf8_is_queued_and_given_back_unchanged(store):
    path = f"/in/{LATIN1_NAME}"
    row = store.enqueue(path, 100, 1, "sha-latin1")
    assert row["path"] == path and row["state"] == "pending"
    assert store.enqueue(path, 100, 1, "sha-latin1")["id"] == row["id"]  # still idempotent
    (claimed,) = store.claim_next()
    assert claimed["path"] == path  # what the decoder opens: the file's own bytes
    assert store.get_image(row["id"])["path"] == path
    assert [i["path"] for i in store.list_images()] == [path]
    raw = store._conn().execute("SELECT path FROM files WHERE id = ?", (row["id"],)).fetchone()[0]
    assert raw == b"/in/caf\xe9.tif"  # lossless: the bytes the file system gave
    store.mark_failed(row["id"], f"{path}: no image\nin the file")
    assert store.get_image(row["id"])["error"] == "/in/caf\ufffd.tif: no image in the file"


def test_a_utf8_name_is_still_stored_as_text(store):
    row = add(store, "café.tif")
    raw = store._conn().execute("SELECT path FROM files WHERE id = ?", (row["id"],)).fetchone()[0]
    assert raw == "/in/café.tif"  # rows of older databases keep matching their files


def test_a_sub_folder_specimen_whose_name_is_not_utf8(store):
    folder = os.fsdecode(b"lot-\xe9")
    lot = store.specimen_for_path(f"/in/{folder}/{LATIN1_NAME}", "/in")
    assert store.specimen_for_path(f"/in/{folder}/b.tif", "/in") == lot
    specimen = store.get_specimen(lot)
    assert (specimen["name"], specimen["folder"]) == ("lot-\ufffd", folder)
    assert folder in [s["folder"] for s in store.list_specimens()]


def test_release_reason_naming_a_file_that_is_not_utf8(store):
    row = store.enqueue(f"/in/{LATIN1_NAME}", 100, 1, "sha-latin1")
    store.claim_next()
    store.release(row["id"], f"/out/{LATIN1_NAME}: disk full")
    assert store.get_image(row["id"])["error"] == "/out/caf\ufffd.tif: disk full"


def test_duplicates_of_a_file_that_fails_fail_with_its_reason(store):
    first = add(store, "a.tif", sha="abc")
    copy = add(store, "copy-of-a.tif", sha="abc")
    assert copy["state"] == "done" and copy["duplicate_of"] == first["id"]
    store.claim_next()
    store.mark_failed(first["id"], "a.tif: not a TIFF")
    image = store.get_image(copy["id"])
    assert (image["state"], image["error"]) == (
        "failed", f"same content as file {first['id']}, which failed: a.tif: not a TIFF")
    assert image["duplicate_of"] == first["id"]  # still says which file it copies
    assert store.counts_by_state() == {"pending": 0, "processing": 0, "done": 0, "failed": 2}


def test_duplicates_of_a_file_that_keeps_crashing_the_worker_fail_too(tmp_path):
    store = Store(tmp_path / "q.sqlite3", max_attempts=1)
    first = add(store, "a.tif", sha="abc")
    copy = add(store, "copy-of-a.tif", sha="abc")
    store.claim_next()
    store.set_stage([first["id"]], "segmenting")  # the worker dies with it in inference
    assert store.recover_after_crash() == {"requeued": 0, "charged": 1, "failed": 1}
    image = store.get_image(copy["id"])
    assert (image["state"], image["error"]) == (
        "failed", f"same content as file {first['id']}, which failed: crashed the worker once while segmenting")
    store.close()


def test_new_copy_of_a_failed_file_is_not_a_duplicate_of_it_or_of_its_copies(store):
    first = add(store, "a.tif", sha="abc")
    add(store, "copy-of-a.tif", sha="abc")
    store.claim_next()
    store.mark_failed(first["id"], "boom")
    retry = add(store, "a-again.tif", sha="abc")
    assert retry["state"] == "pending" and retry["duplicate_of"] is None
    later = add(store, "a-third.tif", sha="abc")  # the retry is the original now
    assert later["state"] == "done" and later["duplicate_of"] == retry["id"]


def test_recovery_mends_duplicates_an_older_version_left_done_on_a_failed_original(store):
    first = add(store, "a.tif", sha="abc")
    copy = add(store, "copy-of-a.tif", sha="abc")
    store._conn().execute(  # how the defect left them: the original failed, the copy done
        "UPDATE files SET state = 'failed', error = 'boom' WHERE id = ?", (first["id"],))
    store.recover_after_crash()
    image = store.get_image(copy["id"])
    assert (image["state"], image["error"]) == (
        "failed", f"same content as file {first['id']}, which failed: boom")


# --- faults outside the data: the same call can succeed later -------------------------


def test_a_lock_held_past_the_busy_timeout_is_unavailable_not_fatal(tmp_path):
    store = Store(tmp_path / "q.sqlite3", busy_timeout_s=0.2)
    other = sqlite3.connect(store.path, isolation_level=None)  # another process's connection
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreUnavailable, match=r"q\.sqlite3: database is locked$"):
            add(store, "a.tif")
        assert store.counts_by_state()["pending"] == 0  # readers are not blocked (WAL)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert add(store, "a.tif")["state"] == "pending"  # the same call, once the lock is gone
    store.close()


def test_a_full_database_is_unavailable_and_rolled_back(store):
    conn = store._conn()
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full: not one page more
    with pytest.raises(StoreUnavailable, match="database or disk is full"):
        for i in range(1000):
            store.enqueue(f"/in/{'x' * 200}{i}.tif", 100, 1, f"sha-{i}")
    conn.execute("PRAGMA max_page_count = 1000000")  # space is back
    assert not conn.in_transaction
    row = store.enqueue("/in/after.tif", 100, 1, "sha-after")
    assert store.get_image(row["id"])["state"] == "pending"


def test_other_database_errors_are_still_errors(store):
    with pytest.raises(sqlite3.OperationalError, match="no such table"), store._write() as conn:
        conn.execute("SELECT * FROM no_such_table")
    assert not store._conn().in_transaction
