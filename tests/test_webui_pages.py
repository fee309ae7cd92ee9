"""A page of something that does not exist is a 404 (issue 24's rough edges), not a page
of empty panels with controls that act on nothing."""

from __future__ import annotations

from test_web_security import make_app

from phasewatch.store import Store


def test_a_field_or_specimen_that_does_not_exist_is_404(tmp_path):
    store = Store(tmp_path / "data" / "phasewatch.sqlite3")
    try:
        file_id = store.enqueue("/watch/a.tif", 100, 1, "sha-a")["id"]
        client = make_app(store, tmp_path).test_client()
        assert client.get(f"/fields/{file_id}").status_code == 200
        missing = client.get("/fields/999")
        assert (missing.status_code, missing.get_json()) == (404, {"error": "no field 999"})
        specimen = store.current_specimen()["id"]
        assert client.get(f"/specimens/{specimen}").status_code == 200
        assert client.get("/specimens/999").get_json() == {"error": "no specimen 999"}
        assert client.get(f"/fields/{2**63}").status_code == 400  # no row could have it
    finally:
        store.close()
