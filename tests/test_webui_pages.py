"""A page of something that does not exist is a 404 (issue 24's rough edges), not a page
of empty panels with controls that act on nothing; an image's page answers at /images/ID and at
its deprecated old address /fields/ID alike."""

from __future__ import annotations

from test_web_security import make_app

from phasewatch.store import Store


def test_an_image_or_specimen_that_does_not_exist_is_404(tmp_path):
    store = Store(tmp_path / "data" / "phasewatch.sqlite3")
    try:
        file_id = store.enqueue("/watch/a.tif", 100, 1, "sha-a")["id"]
        client = make_app(store, tmp_path).test_client()
        page = client.get(f"/images/{file_id}")
        assert page.status_code == 200 and f'data-field-id="{file_id}"' in page.get_data(as_text=True)
        # /fields/ID, the deprecated old address, is the same page and the same refusals
        assert client.get(f"/fields/{file_id}").get_data() == page.get_data()
        for address in ("/images", "/fields"):
            missing = client.get(f"{address}/999")
            assert (missing.status_code, missing.get_json()) == (404, {"error": "no image 999"})
            assert client.get(f"{address}/{2**63}").status_code == 400  # no row could have it
        specimen = store.current_specimen()["id"]
        assert client.get(f"/specimens/{specimen}").status_code == 200
        assert client.get("/specimens/999").get_json() == {"error": "no specimen 999"}
    finally:
        store.close()
