"""A teach job's plan: which labelled fields are held out, the model's versioned name, the trust
calibration's unlabelled companions, and the refusals (no torch needed)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from phasewatch.export.teach import TeachError, TeachRequest, flagged_companions, hold_out, next_version, plan
from phasewatch.store import Store


def fields(specimens: list[int]) -> list[dict]:
    return [{"file_id": i + 1, "specimen_id": s} for i, s in enumerate(specimens)]


def test_about_one_in_five_is_held_out_whole_specimens_first():
    train, held = hold_out(fields([1] * 10))
    assert [f["file_id"] for f in held] == [5, 10] and len(train) == 8
    train, held = hold_out(fields([1] * 3))
    assert [f["file_id"] for f in held] == [3] and len(train) == 2
    assert hold_out(fields([1])) == (fields([1]), [])
    # several specimens: the newest whole specimens, never all of them
    train, held = hold_out(fields([1, 1, 1, 2, 2, 2, 3, 3, 3, 3]))
    assert {f["specimen_id"] for f in held} == {3} and {f["specimen_id"] for f in train} == {1, 2}
    train, held = hold_out(fields([1, 2]))
    assert [f["specimen_id"] for f in held] == [2] and [f["specimen_id"] for f in train] == [1]


def test_versions_count_up_and_a_bundled_name_is_version_one(tmp_path):
    models = tmp_path / "models"
    assert next_version(models, "al-si") == "al-si@1"
    assert next_version(models, "superalloy") == "superalloy@2"
    for name in ("al-si@1", "al-si@3", "al-six@9"):
        (models / name).mkdir(parents=True)
    assert next_version(models, "al-si") == "al-si@4"


def png(array: np.ndarray) -> bytes:
    return cv2.imencode(".png", array)[1].tobytes()


def test_plan_refuses_in_one_line_and_finds_the_flagged_companions(tmp_path):
    data = tmp_path / "data"
    store = Store(data / "phasewatch.sqlite3")
    other = store.start_specimen("other")
    ids = []
    for i, (trusted, specimen) in enumerate([(False, None), (False, None), (True, None), (False, other)]):
        image = tmp_path / f"f{i}.png"
        cv2.imwrite(str(image), np.zeros((6, 8), np.uint8))
        row = store.enqueue(image, 1, 1, f"sha{i}", specimen_id=specimen or 1)
        store.claim_next(1)
        store.mark_done(row["id"], {"fractions": {}, "width": 8, "height": 6,
                                    "trust": {"ok": trusted, "score": 1.0, "reasons": []}})
        ids.append(row["id"])
    classes = [{"name": "a", "colour": "#000000", "role": "phase"}, {"name": "b", "colour": "#ffffff"}]
    store.create_material("al-si", classes, who="ana")
    request = TeachRequest(data, "al-si", "superalloy", "ana", 1.0)
    with pytest.raises(TeachError, match="no field is labelled"):
        plan(store, request)
    store.save_labels(ids[0], "al-si", png(np.ones((6, 8), np.uint8)), who="ana")
    one = plan(store, request)
    assert one.held_out == [] and "cannot pass" in one.warnings[0] and one.name == "al-si@1"
    assert not one.same_classes
    # the other flagged field of the labelled field's specimen; not the trusted one, not another specimen's
    assert [f["id"] for f in flagged_companions(store, one.train)] == [ids[1]]
    with pytest.raises(TeachError, match="base model"):
        plan(store, TeachRequest(data, "al-si", "no-such-model", "ana", 1.0))
    with pytest.raises(TeachError, match="budget"):
        plan(store, TeachRequest(data, "al-si", "superalloy", "ana", 0.0))
    with pytest.raises(TeachError, match="has no labels"):
        plan(store, TeachRequest(data, "al-si", "superalloy", "ana", 1.0, fields=[ids[2]]))
    store.close()


def test_the_gate_of_the_bases_own_material_compares_with_the_base_and_measures_forgetting(shared_data):
    """Candidate = base (the bundled superalloy model twice): it cannot beat the base on the
    held-out field, and loses nothing on the base's reference set (its validation images)."""
    from contextlib import closing

    from phasewatch.bundle import load_bundle
    from phasewatch.core.pipeline import open_model
    from phasewatch.export.datasets import read_label
    from phasewatch.export.evaluate import label_palette
    from phasewatch.export.teach import Plan, gate

    base = load_bundle("superalloy")
    classes = [{"name": c.name, "colour": "#000000", "role": c.role} for c in base.classes]
    p = Plan({"name": "superalloy", "classes": classes}, base, [], [{"file_id": 7}], "superalloy@2")
    image = sorted((shared_data / "superalloy" / "test" / "images").glob("*.tif"))[0]
    label = read_label(shared_data / "superalloy" / "test" / "masks" / f"{image.stem}_mask.tif", label_palette(base))
    with closing(open_model("superalloy", "cpu", threads=1)) as candidate, \
            closing(open_model("superalloy", "cpu", threads=1)) as same:
        verdict = gate(candidate, same, p, [(image, label)], calibrated=True)
    assert p.same_classes and verdict["rule"] == "beat the base on the held-out fields"
    held = verdict["held_out"]
    assert held["candidate"]["mean_iou"] == held["base"]["mean_iou"] > 0.7
    assert not verdict["passed"] and "does not beat the base" in verdict["reasons"][0]
    reference = verdict["reference"]
    assert reference["measured"] and reference["fields"] == 4 and reference["forgetting_points"] == 0
    assert len(verdict["reasons"]) == 1  # no forgetting
