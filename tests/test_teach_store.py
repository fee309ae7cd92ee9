"""Materials, labels, model activations and the hash-chained audit record in the store."""

from __future__ import annotations

import sqlite3

import cv2
import numpy as np
import pytest

from phasewatch.store import UNLABELLED, Store, StoreError

TWO = [{"name": "matrix", "colour": "#6e6e6e", "role": "phase"},
       {"name": "second phase", "colour": "#ff7800", "role": "phase"}]


def png(array: np.ndarray) -> bytes:
    return cv2.imencode(".png", array)[1].tobytes()


def measured_field(store: Store, name: str = "a.tif", width: int = 40, height: int = 30) -> int:
    row = store.enqueue(f"/watch/{name}", 10, 1, f"sha-{name}")
    store.claim_next(1)
    store.mark_done(row["id"], {"fractions": {"x": 1.0}, "width": width, "height": height})
    return int(row["id"])


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "db.sqlite3")
    yield s
    s.close()


def test_bundled_models_are_materials_and_new_ones_are_checked(store):
    names = [m["name"] for m in store.materials()]
    assert "superalloy" in names and "tomography" in names
    superalloy = store.material("superalloy")
    assert len(superalloy["classes"]) == 3 and superalloy["source"] == "bundled"
    made = store.create_material("al-si", TWO, who="ana", target_miou=0.85)
    assert made["classes"][1]["colour"] == "#ff7800" and made["target_miou"] == 0.85
    assert store.material("al-si")["created_by"] == "ana"
    with pytest.raises(StoreError, match="exists already"):
        store.create_material("al-si", TWO, who="ana")
    with pytest.raises(StoreError, match="bundled"):
        store.create_material("superalloy", TWO, who="ana")
    with pytest.raises(StoreError, match="colour"):
        store.create_material("x", [{"name": "a", "colour": "red"}, TWO[1]], who="ana")
    with pytest.raises(StoreError, match="role"):
        store.create_material("x", [{**TWO[0], "role": "hole"}, TWO[1]], who="ana")
    with pytest.raises(StoreError, match="2..32"):
        store.create_material("x", TWO[:1], who="ana")


def test_labels_keep_every_version_and_are_checked_against_field_and_material(store):
    field = measured_field(store)
    store.create_material("al-si", TWO, who="ana")
    first = np.full((30, 40), UNLABELLED, np.uint8)
    first[5:10, 5:10] = 1
    v1 = store.save_labels(field, "al-si", png(first), who="ana")
    second = first.copy()
    second[20:25, :] = 0
    v2 = store.save_labels(field, "al-si", png(second), who="ben")
    assert (v1["version"], v1["labelled_px"], v2["version"], v2["labelled_px"]) == (1, 25, 2, 25 + 200)
    newest = store.labels(field, "al-si")
    assert newest["who"] == "ben"
    assert np.array_equal(cv2.imdecode(np.frombuffer(newest["png"], np.uint8), cv2.IMREAD_UNCHANGED), second)
    assert store.labels(field, "al-si", version=1)["who"] == "ana"
    assert [v["version"] for v in store.label_versions(field, "al-si")] == [1, 2]
    assert [f["file_id"] for f in store.labelled_fields("al-si")] == [field]
    with pytest.raises(StoreError, match="40 x 30"):
        store.save_labels(field, "al-si", png(np.zeros((40, 30), np.uint8)), who="ana")
    with pytest.raises(StoreError, match="value 2 is no class"):
        store.save_labels(field, "al-si", png(np.full((30, 40), 2, np.uint8)), who="ana")
    with pytest.raises(StoreError, match="one 8-bit channel"):
        store.save_labels(field, "al-si", png(np.zeros((30, 40, 3), np.uint8)), who="ana")
    with pytest.raises(StoreError, match="no material"):
        store.save_labels(field, "nothing", png(first), who="ana")
    with pytest.raises(StoreError, match="has no labels"):
        store.labelled_fields("al-si", [field, field + 1])


def test_activation_and_rollback_walk_back_one_step_at_a_time(store):
    assert store.active_model() is None
    with pytest.raises(StoreError, match="nothing|no model activation"):
        store.rollback_model("ana")
    store.activate_model("al-si@1", "ana")
    store.activate_model("al-si@2", "ana")
    assert store.active_model()["name"] == "al-si@2"
    assert store.rollback_model("ben")["name"] == "al-si@1"
    assert store.rollback_model("ben")["name"] is None  # the configured model
    with pytest.raises(StoreError, match="no model activation"):
        store.rollback_model("ben")
    actions = [(r["action"], r["before"], r["after"]) for r in store.audit.rows()]
    assert actions == [("model.activate", {"model": None}, {"model": "al-si@1"}),
                       ("model.activate", {"model": "al-si@1"}, {"model": "al-si@2"}),
                       ("model.rollback", {"model": "al-si@2"}, {"model": "al-si@1"}),
                       ("model.rollback", {"model": "al-si@1"}, {"model": None})]


def test_audit_chain_verifies_and_names_the_first_changed_row(store, tmp_path):
    for i in range(4):
        store.audit.record("ana", "test.step", f"thing:{i}", {"n": i}, {"n": i + 1}, "because")
    check = store.audit.verify()
    assert check.ok and check.rows == 4 and check.head == store.audit.rows()[-1]["hash"]
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        store._conn().execute("UPDATE audit SET reason = 'no' WHERE seq = 2")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        store._conn().execute("DELETE FROM audit WHERE seq = 4")
    # Someone edits the file outside phasewatch: drops the trigger and changes row 3.
    raw = sqlite3.connect(tmp_path / "db.sqlite3")
    raw.execute("DROP TRIGGER audit_no_update")
    raw.execute("UPDATE audit SET after = '{\"n\":99}' WHERE seq = 3")
    raw.commit()
    raw.close()
    check = store.audit.verify()
    assert not check.ok and check.first_bad == 3 and "does not match its hash" in check.reason
    with pytest.raises(StoreError, match="who"):
        store.audit.record("", "x", "y")
