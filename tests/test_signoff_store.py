"""Signed close and reopen, read-only closed specimens, limits and templates, reports by
hash, and the audit rows each of them writes (store/signoff.py, store/specs.py,
store/curation.py, store/specimens.py) on a real SQLite file."""

from __future__ import annotations

import pytest

from phasewatch.store import Refused, Store


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "phasewatch.sqlite3")
    yield s
    s.close()


def measured(store: Store, name: str) -> int:
    file_id = store.enqueue(f"/watch/{name}", 1, 1, f"sha-{name}")["id"]
    store.claim_next()
    store.mark_done(file_id, {"fractions": {"a": 0.5}, "particles": {}, "valid_area_px": 100,
                              "valid_area_um2": None, "pixel_size_um": None}, {})
    return file_id


GP = [{"class": "secondary gamma prime", "measure": "fractions", "lower": 45, "upper": 55, "target_ra_pct": 10}]


def test_closing_the_current_specimen_starts_the_next_and_makes_it_read_only(store):
    first = store.start_specimen("S-1", operator="Ana", who="Ana")
    field = measured(store, "a.tif")
    store.set_limits(first, GP, "Ana")
    following = store.close_specimen(first, "Q. Lead", "reviewed and released")
    assert following is not None and store.current_specimen()["id"] == following
    assert store.current_specimen()["name"] == "after S-1" and store.current_specimen()["operator"] == "Ana"
    closed = store.get_specimen(first)
    assert (closed["closed_by"], closed["close_meaning"], closed["is_current"]) == ("Q. Lead",
                                                                                    "reviewed and released", 0)
    for change in (lambda: store.exclude_field(field, "scratch", "Ana"), lambda: store.include_field(field),
                   lambda: store.accept_field(field, "Ana", "fine"), lambda: store.unaccept_field(field),
                   lambda: store.set_limits(first, [], "Ana"), lambda: store.update_specimen(first, notes="x"),
                   lambda: store.make_current(first),
                   lambda: store.close_specimen(first, "Q. Lead", "rejected")):
        with pytest.raises(Refused, match="closed"):
            change()
    with pytest.raises(Refused, match="needs who and why"):
        store.reopen_specimen(first, "Q. Lead", " ")
    store.reopen_specimen(first, "Q. Lead", "one field was of another specimen")
    assert store.get_specimen(first)["closed"] is None and store.get_specimen(first)["closed_by"] is None
    store.exclude_field(field, "of another specimen", "Ana")
    actions = [(r["actor"], r["action"]) for r in store.audit.specimen_rows(first)]
    assert actions == [("Ana", "specimen.start"), ("Ana", "limits.set"), ("Q. Lead", "specimen.close"),
                       ("Q. Lead", "specimen.reopen"), ("Ana", "field.exclude")]
    reopen = store.audit.specimen_rows(first)[3]
    assert reopen["before"]["closed_by"] == "Q. Lead" and reopen["reason"] == "one field was of another specimen"
    exclude = store.audit.specimen_rows(first)[4]
    assert (exclude["before"]["excluded"], exclude["after"]["excluded"]) == (0, 1)
    assert store.audit.verify().ok


def test_a_signature_needs_a_name_and_a_known_meaning(store):
    sid = store.current_specimen()["id"]
    with pytest.raises(Refused, match="needs the signer's name"):
        store.close_specimen(sid, " ", "rejected")
    with pytest.raises(Refused, match="meaning of a signature is one of reviewed and released, rejected"):
        store.close_specimen(sid, "Q", "looks fine")
    assert store.get_specimen(sid)["closed"] is None


def test_limits_templates_and_their_audit(store):
    sid = store.current_specimen()["id"]
    with pytest.raises(Refused, match="limit 1 .*lower 5 is above upper 1"):
        store.set_limits(sid, [{"class": "a", "lower": 5, "upper": 1}], "Ana")
    store.save_template("IN718 γ′ check", GP, "Lead")
    store.apply_template(sid, "IN718 γ′ check", "Ana")
    assert [lim.cls for lim in store.limits(sid)] == ["secondary gamma prime"]
    store.set_limits(sid, GP, "Ana")  # the same limits again: nothing changed, nothing audited
    rows = store.audit.rows()
    assert [(r["action"], r["subject"]) for r in rows[-2:]] == [("template.save", "template:IN718 γ′ check"),
                                                               ("limits.set", f"specimen:{sid}")]
    assert rows[-1]["before"] == [] and rows[-1]["after"][0]["lower"] == 45
    assert rows[-1]["reason"] == "template IN718 γ′ check"
    assert store.templates()[0]["limits"][0]["class"] == "secondary gamma prime"
    with pytest.raises(Refused, match="no limit template 'x'"):
        store.apply_template(sid, "x", "Ana")


def test_specimen_edits_are_audited_with_before_and_after(store):
    sid = store.start_specimen("S-1", who="Ana")
    store.update_specimen(sid, name="S-1b", notes="etched", who="Ana")
    store.update_specimen(sid, name="S-1b", who="Ana")  # no change, no row
    rows = store.audit.specimen_rows(sid)
    assert [r["action"] for r in rows] == ["specimen.start", "specimen.edit"]
    assert rows[1]["before"] == {"name": "S-1", "notes": ""} and rows[1]["after"] == {"name": "S-1b",
                                                                                        "notes": "etched"}


def test_reports_are_found_by_their_hash(store):
    sid = store.current_specimen()["id"]
    store.record_report("AB" * 32, sid, "pdf", 1234, "pass")
    found = store.report("ab" * 32)
    assert found is not None and found["size"] == 1234 and found["verdict"] == "pass"
    assert store.report("cd" * 32) is None
