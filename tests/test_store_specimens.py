"""Specimens in the store: one model per specimen (a model change starts a derived
specimen instead of mixing classes), renaming, notes, switching, closing and reopening,
and the filters of the field history."""

from __future__ import annotations

import time

import pytest

from phasewatch.store import ImageFilter, Store, StoreError

SUPERALLOY = {"name": "superalloy", "onnx_sha256": "a" * 64, "classes": ["gamma matrix"]}
EBC = {"name": "ebc", "onnx_sha256": "b" * 64, "classes": ["background"]}


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "phasewatch.sqlite3")
    yield s
    s.close()


def record(fractions: dict[str, float]) -> dict:
    return {"fractions": fractions, "particles": {}, "valid_area_px": 100, "valid_area_um2": None,
            "pixel_size_um": None}


def finish(store: Store, name: str, model: dict | None, specimen_id: int | None = None,
           result: dict | None = None) -> int:
    file_id = store.enqueue(f"/watch/{name}", 1, 1, f"sha-{name}", specimen_id=specimen_id)["id"]
    store.claim_next()
    store.mark_done(file_id, result or record({"x": 1.0}), {}, model=model)
    return file_id


def specimen_of(store: Store, file_id: int) -> dict:
    image = store.get_image(file_id)
    specimen = store.get_specimen(image["specimen_id"])
    assert specimen is not None
    return specimen


def test_the_first_field_claims_the_specimen_for_its_model(store):
    first = finish(store, "a.tif", SUPERALLOY)
    specimen = specimen_of(store, first)
    assert (specimen["name"], specimen["model_name"], specimen["model_sha256"]) == ("default", "superalloy", "a" * 64)
    assert store.get_image(first)["model"] == SUPERALLOY
    second = finish(store, "b.tif", SUPERALLOY)
    assert specimen_of(store, second)["id"] == specimen["id"]


def test_another_model_starts_a_derived_current_specimen_and_never_mixes_classes(store, caplog):
    store.update_specimen(store.current_specimen()["id"], operator="Ana")
    finish(store, "a.tif", SUPERALLOY, result=record({"gamma matrix": 0.5, "secondary gamma prime": 0.5}))
    original = store.current_specimen()
    # Queued before the restart, measured by the new model (after the next one).
    queued = store.enqueue("/watch/c.tif", 1, 1, "sha-c")["id"]
    store.claim_next()
    moved = finish(store, "b.tif", EBC, result=record({"background": 0.7, "oxide": 0.3}))
    derived = specimen_of(store, moved)
    assert derived["id"] != original["id"]
    assert derived["operator"] == original["operator"] == "Ana"  # the same physical specimen
    assert (derived["name"], derived["model_name"], derived["derived_from"]) == (
        "default (model ebc)", "ebc", original["id"])
    assert store.current_specimen()["id"] == derived["id"]
    assert "model changed from superalloy to ebc" in derived["notes"]
    assert "fields of model ebc" in caplog.text
    # The field queued into the old specimen joins the same derived one, not a third.
    store.mark_done(queued, record({"background": 1.0}), {}, model=EBC)
    assert specimen_of(store, queued)["id"] == derived["id"]
    for specimen_id, classes in ((original["id"], {"gamma matrix", "secondary gamma prime"}),
                                 (derived["id"], {"background", "oxide"})):
        assert {c for f in store.field_results(specimen_id) for c in f["fractions"]} == classes
    # Back to the first model: a new specimen again, named from the base name.
    back = finish(store, "d.tif", SUPERALLOY)
    assert specimen_of(store, back)["name"] == "default (model superalloy)"


def test_a_new_onnx_of_the_same_name_is_another_model(store):
    finish(store, "a.tif", SUPERALLOY)
    retrained = finish(store, "b.tif", {**SUPERALLOY, "onnx_sha256": "c" * 64})
    assert specimen_of(store, retrained)["name"] == "default (model superalloy)"


def test_a_sub_folder_specimen_keeps_its_folder_and_stays_not_current(store, tmp_path):
    folder = store.specimen_for_path(tmp_path / "S-9" / "a.tif", tmp_path)
    finish(store, "a.tif", SUPERALLOY, specimen_id=folder)
    moved = finish(store, "b.tif", EBC, specimen_id=folder)
    derived = specimen_of(store, moved)
    assert derived["name"] == "S-9 (model ebc)" and not derived["is_current"]
    assert store.current_specimen()["name"] == "default"
    again = finish(store, "c.tif", EBC, specimen_id=folder)
    assert specimen_of(store, again)["id"] == derived["id"]


def test_fields_without_a_model_identity_never_move(store):
    finish(store, "a.tif", SUPERALLOY)
    legacy = finish(store, "b.tif", None)
    assert specimen_of(store, legacy)["name"] == "default"
    assert store.get_image(legacy)["model"] is None


def test_rename_notes_operator_switch_close_reopen(store):
    default = store.current_specimen()["id"]
    assert store.get_specimen(default)["operator"] == ""
    other = store.start_specimen("S-2", "etched", operator=" Ana\nKovač ")
    assert store.get_specimen(other)["operator"] == "Ana Kovač"
    store.update_specimen(other, name="  S-2b ", notes="etched 10 s")
    assert (store.get_specimen(other)["name"], store.get_specimen(other)["notes"]) == ("S-2b", "etched 10 s")
    assert store.get_specimen(other)["operator"] == "Ana Kovač"  # None: left as is
    store.update_specimen(other, notes="", operator="B. Ruiz")
    specimen = store.get_specimen(other)
    assert (specimen["name"], specimen["notes"], specimen["operator"]) == ("S-2b", "", "B. Ruiz")
    with pytest.raises(StoreError, match="needs a name"):
        store.update_specimen(other, name=" ")
    store.make_current(default)
    assert store.current_specimen()["id"] == default
    assert store.close_specimen(other, "Q. A. Lead", "rejected") is None  # not current: nothing follows it
    assert store.get_specimen(other)["closed"] <= time.time()
    with pytest.raises(StoreError, match="is closed .*; reopen it first"):
        store.make_current(other)
    store.reopen_specimen(other, "Q. A. Lead", "signed by mistake")
    store.make_current(other)
    assert store.current_specimen()["id"] == other
    with pytest.raises(StoreError, match="no specimen 99"):
        store.update_specimen(99, name="x")


def test_list_specimens_counts_files_by_state(store):
    finish(store, "a.tif", None)
    failed = store.enqueue("/watch/b.tif", 1, 1, "sha-b")["id"]
    store.claim_next()
    store.mark_failed(failed, "b.tif: truncated")
    (default,) = store.list_specimens()
    assert (default["files"], default["done"], default["failed"]) == (2, 1, 1)
    assert default["last_file"] == store.get_image(failed)["created"]


def test_image_filters_and_paging_both_ways(store):
    ids = [finish(store, f"{name}.tif", None) for name in ("alpha", "Beta", "alphabet", "gamma")]
    failed = store.enqueue("/watch/broken.tif", 1, 1, "sha-broken")["id"]
    store.claim_next()
    store.mark_failed(failed, "broken")
    duplicate = store.enqueue("/watch/copy-of-alpha.tif", 1, 2, "sha-alpha.tif")["id"]
    flagged = finish(store, "odd.tif", None, result={**record({"x": 1.0}), "trust": {"ok": False, "reasons": []}})
    store.exclude_field(ids[1], "scratch")

    def names(**kwargs) -> list[str]:
        only = ImageFilter(**{k: v for k, v in kwargs.items() if k in ("name", "state", "since", "until")})
        rest = {k: v for k, v in kwargs.items() if k in ("limit", "before_id", "after_id")}
        return [i["path"].rsplit("/", 1)[1] for i in store.list_images(only=only, **rest)]

    assert names(name="ALPHA") == ["copy-of-alpha.tif", "alphabet.tif", "alpha.tif"]
    assert names(state="failed") == ["broken.tif"]
    assert names(state="excluded") == ["Beta.tif"]
    assert names(state="duplicate") == ["copy-of-alpha.tif"]
    assert names(state="flagged") == ["odd.tif"]
    created = {i["id"]: i["created"] for i in store.list_images()}
    assert names(since=created[ids[2]], until=created[failed]) == ["gamma.tif", "alphabet.tif"]
    assert names(limit=2) == ["odd.tif", "copy-of-alpha.tif"]
    assert names(limit=2, before_id=duplicate) == ["broken.tif", "gamma.tif"]
    assert names(limit=2, after_id=ids[0]) == ["alphabet.tif", "Beta.tif"]  # the next two, newest first
    assert names(limit=5, after_id=flagged) == []


def test_the_daemon_records_the_model_identity_it_measured_with():
    from phasewatch.core.pipeline import open_model
    from phasewatch.core.provenance import model_identity, software_version

    model = open_model("superalloy", "cpu", 1, threads=1)
    try:
        identity = model_identity(model)
    finally:
        model.close()
    assert (identity["name"], identity["onnx_sha256"]) == ("superalloy", model.bundle.onnx_sha256)
    assert [c["name"] for c in identity["classes"]] == ["gamma matrix", "secondary gamma prime",
                                                       "tertiary gamma prime"]
    assert identity["classes"][1]["colour"] == list(model.bundle.classes[1].colour)
    assert identity["backend"] == "cpu" and identity["tiling"]["tile"] == model.bundle.tile
    assert identity["software"] == software_version() != "unknown"
