"""The web app's additions for the field pages, history and specimens, through Flask's test
client over a real Store and real PNG outputs: display names, provenance, thumbnails
(cached for good under versioned URLs), history filters and paging, specimen management,
the statistics' per-class trends and particle size histograms, the pages and sign-in."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from phasewatch.core.stats import ecd_histogram
from phasewatch.store import Store
from phasewatch.webui.access import Access
from phasewatch.webui.app import AppContext, create_app
from phasewatch.webui.events import EventBroker
from phasewatch.webui.names import display_name
from phasewatch.webui.thumbs import CACHE_FOREVER

TOKEN = "history-token-0123456789abcdef"
MODEL = {"name": "superalloy", "onnx_sha256": "ab" * 32, "architecture": "unet", "exported_at": "2026-01-01",
         "classes": [{"id": 0, "name": "gamma matrix", "colour": [128, 128, 128], "role": "background"},
                     {"id": 1, "name": "secondary gamma prime", "colour": [40, 90, 255], "role": "phase"}],
         "backend": "cpu", "tiling": {"tile": 256, "halo": 80, "scale": 1.0}, "software": "0.1.0"}


def record(fraction: float, pixel_size: float | None = 0.02, edges: list[float] | None = None,
           counts: list[int] | None = None) -> dict:
    unit = "um" if pixel_size else "px"
    edges = edges or [1.0, math.sqrt(2), 2.0]
    counts = counts or [3, 1]
    return {"image": "/watch/x.tif", "page": 0, "model": "superalloy", "backend": "cpu", "width": 64, "height": 48,
            "pixel_size_um": pixel_size, "pixel_size_source": "config" if pixel_size else "none",
            "fractions": {"gamma matrix": 1 - fraction, "secondary gamma prime": fraction},
            "particles": {"secondary gamma prime": {
                "count": sum(counts), "border_count": 1, "number_per_mpx": 10.0,
                "number_per_mm2": 25.0 if pixel_size else None, "mean_ecd": 1.5, "unit": unit,
                "ecd_histogram": {"edges": edges, "counts": counts}}},
            "valid_area_px": 3072, "valid_area_um2": 3072 * pixel_size**2 if pixel_size else None}


class Service:
    def __init__(self, tmp_path: Path, access: Access | None = None) -> None:
        self.data = tmp_path / "data"
        self.store = Store(self.data / "phasewatch.sqlite3")
        self.events = EventBroker(keepalive_s=0.05)
        self.ctx = AppContext(
            store=self.store, events=self.events, status=lambda: {}, health=lambda: (True, {"reasons": []}),
            metrics=lambda: (b"", "text/plain"), target_ra=0.10, data_dir=self.data, access=access or Access())
        self.client = create_app(self.ctx).test_client()

    def finish(self, name: str, fraction: float | None, model: dict | None = MODEL, **kwargs) -> int:
        file_id = self.store.enqueue(f"/watch/{name}", 1234, 1_700_000_000_000_000_000, f"sha-{name}")["id"]
        self.store.claim_next()
        if fraction is None:
            self.store.mark_failed(file_id, f"{name}: truncated TIFF")
            return file_id
        out = self.data / "results" / f"{file_id:06d}"
        out.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(file_id)
        pictures = {}
        for kind in ("overlay", "preview"):
            pictures[kind] = out / f"{name}.{kind}.png"
            assert cv2.imwrite(str(pictures[kind]), rng.integers(0, 255, (480, 640, 3), np.uint8))
        pictures["classes"] = out / f"{name}.classes.png"
        assert cv2.imwrite(str(pictures["classes"]), (rng.random((480, 640)) < fraction).astype(np.uint8))
        self.store.mark_done(file_id, record(fraction, **kwargs), {k: str(v) for k, v in pictures.items()},
                             model=model)
        return file_id


@pytest.fixture
def service(tmp_path):
    s = Service(tmp_path)
    yield s
    s.events.close()
    s.store.close()


# -- names, provenance ----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "shown"), [
    ("gamma matrix", "γ matrix"), ("secondary gamma prime", "secondary γ′"), ("gamma double prime", "γ″"),
    ("widmanstatten", "Widmanstätten"), ("Widmanstatten laths", "Widmanstätten laths"),
    ("alpha prime martensite", "α′ martensite"), ("alphabet", "alphabet"), ("cementite network", "cementite network"),
    ("delta ferrite", "δ ferrite"),
])
def test_display_names(name, shown):
    assert display_name(name) == shown


def test_a_field_has_its_legend_and_provenance(service):
    field = service.finish("a.tif", 0.4)
    body = service.client.get(f"/api/images/{field}").get_json()
    assert body["labels"] == {"gamma matrix": "γ matrix", "secondary gamma prime": "secondary γ′"}
    assert body["classes"] == [
        {"id": 0, "name": "gamma matrix", "label": "γ matrix", "colour": "#808080", "role": "background"},
        {"id": 1, "name": "secondary gamma prime", "label": "secondary γ′", "colour": "#285aff", "role": "phase"}]
    provenance = body["provenance"]
    assert (provenance["file"], provenance["sha256"], provenance["size"]) == ("a.tif", "sha-a.tif", 1234)
    assert provenance["captured"] == pytest.approx(1_700_000_000.0)
    assert provenance["arrived"] <= provenance["processed"] <= time.time()
    assert (provenance["model"], provenance["onnx_sha256"], provenance["backend"]) == ("superalloy", "ab" * 32, "cpu")
    assert provenance["tiling"] == {"tile": 256, "halo": 80, "scale": 1.0} and provenance["software"] == "0.1.0"
    assert (provenance["pixel_size_um"], provenance["pixel_size_source"]) == (0.02, "config")
    assert (provenance["width"], provenance["height"], provenance["pages"]) == (64, 48, 1)


def test_a_result_from_before_model_identities_still_has_names(service):
    field = service.finish("old.tif", 0.3, model=None)
    body = service.client.get(f"/api/images/{field}").get_json()
    assert [(c["label"], c["colour"]) for c in body["classes"]] == [("γ matrix", None), ("secondary γ′", None)]
    assert (body["provenance"]["model"], body["provenance"]["onnx_sha256"]) == ("superalloy", None)


def test_a_failed_field_has_no_pictures_and_no_thumbnail(service):
    failed = service.finish("bad.tif", None)
    body = service.client.get(f"/api/images/{failed}").get_json()
    assert (body["state"], body["pictures"], body["thumbnail"], body["classes"]) == ("failed", {}, None, [])
    assert body["provenance"]["sha256"] == "sha-bad.tif" and body["provenance"]["model"] is None


# -- thumbnails ------------------------------------------------------------------------------


def test_thumbnails_are_small_jpegs_cached_for_good(service):
    field = service.finish("a.tif", 0.4)
    url = service.client.get(f"/api/images/{field}").get_json()["thumbnail"]
    assert url.startswith(f"/api/images/{field}/thumb-") and url.endswith(".jpg")
    first = service.client.get(url)
    assert first.status_code == 200 and first.mimetype == "image/jpeg"
    assert first.headers["Cache-Control"] == CACHE_FOREVER
    assert first.data[:3] == b"\xff\xd8\xff" and len(first.data) < 40_000  # noise: the worst case for JPEG
    picture = cv2.imdecode(np.frombuffer(first.data, np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape == (150, 200, 3)
    (cached,) = (service.data / "thumbs").iterdir()
    assert cached.read_bytes() == first.data
    assert service.client.get(url).data == first.data  # made once


def test_a_new_picture_gets_a_new_thumbnail_url_and_the_old_one_is_gone(service):
    field = service.finish("a.tif", 0.4)
    old = service.client.get(f"/api/images/{field}").get_json()["thumbnail"]
    overlay = Path(service.store.get_image(field)["outputs"]["overlay"])
    os.utime(overlay, ns=(1, 1))  # the field was measured again
    new = service.client.get(f"/api/images/{field}").get_json()["thumbnail"]
    assert new != old
    gone = service.client.get(old)
    assert gone.status_code == 404 and "not its current one" in gone.get_json()["error"]
    assert service.client.get(new).status_code == 200


def test_a_duplicate_shares_its_originals_thumbnail_file(service):
    original = service.finish("a.tif", 0.4)
    duplicate = service.store.enqueue("/watch/copy.tif", 1234, 5, "sha-a.tif")["id"]
    for file_id in (original, duplicate):
        url = service.client.get(f"/api/images/{file_id}").get_json()["thumbnail"]
        assert service.client.get(url).status_code == 200
    assert len(list((service.data / "thumbs").iterdir())) == 1


def test_thumbnails_need_the_token(tmp_path):
    locked = Service(tmp_path, Access(token=TOKEN))
    field = locked.finish("a.tif", 0.4)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    url = locked.client.get(f"/api/images/{field}", headers=bearer).get_json()["thumbnail"]
    assert locked.client.get(url).status_code == 401
    assert locked.client.get(url, headers=bearer).status_code == 200
    locked.store.close()


# -- history -----------------------------------------------------------------------------------


def test_history_filters_and_pages_both_ways(service):
    ids = [service.finish(f"{name}.tif", 0.4) for name in ("alpha", "beta", "alphabet", "gamma")]
    failed = service.finish("broken.tif", None)

    def listed(query: str) -> list[int]:
        response = service.client.get(f"/api/images?{query}")
        assert response.status_code == 200, response.get_json()
        return [i["id"] for i in response.get_json()]

    assert listed("q=ALPHA") == [ids[2], ids[0]]
    assert listed("state=failed") == [failed]
    assert listed(f"limit=2&before={failed}") == [ids[3], ids[2]]
    assert listed(f"limit=2&after={ids[0]}") == [ids[2], ids[1]]
    assert listed(f"after={ids[0]}&before={ids[3]}") == [ids[2], ids[1]]  # a range
    arrived = {i["id"]: i["created"] for i in service.client.get("/api/images").get_json()}
    assert listed(f"since={arrived[ids[1]]}&until={arrived[ids[3]]}") == [ids[2], ids[1]]


@pytest.mark.parametrize(("query", "message"), [
    ("state=lost", "state must be one of pending, processing, done, failed, excluded, flagged, duplicate, got 'lost'"),
    ("since=yesterday", "since must be a number, got 'yesterday'"),
    ("until=nan", "until must be a finite number, got 'nan'"),
    ("q=" + "x" * 201, "q is longer than 200 characters"),
])
def test_history_refuses_odd_queries(service, query, message):
    response = service.client.get(f"/api/images?{query}")
    assert (response.status_code, response.get_json()) == (400, {"error": message})


def test_a_method_a_route_does_not_take_gets_405_with_allow(service):
    response = service.client.delete("/api/images/1")
    assert response.status_code == 405 and response.is_json
    assert set(response.headers["Allow"].split(", ")) >= {"GET", "HEAD"}


# -- specimens -----------------------------------------------------------------------------


def test_rename_switch_close_and_reopen_a_specimen(service):
    stream = service.events.subscribe()
    assert next(stream).startswith("retry:")
    default = service.store.current_specimen()["id"]
    created = service.client.post("/api/specimens", json={"name": "S-2"}).get_json()
    assert next(stream).endswith(f'data: {{"id":{created["id"]}}}\n\n')
    renamed = service.client.patch(f"/api/specimens/{created['id']}", json={"name": " S-2b ", "notes": "etched"})
    assert (renamed.status_code, renamed.get_json()["name"], renamed.get_json()["notes"]) == (200, "S-2b", "etched")
    assert "event: specimen" in next(stream)
    back = service.client.post(f"/api/specimens/{default}/current", json={})
    assert (back.status_code, back.get_json()["is_current"]) == (200, 1)
    assert service.client.get("/api/specimens").get_json()["current"]["id"] == default
    unsigned = service.client.post(f"/api/specimens/{created['id']}/close", json={"meaning": "rejected"})
    assert unsigned.status_code == 400 and unsigned.get_json()["error"] == "who is required"
    closed = service.client.post(f"/api/specimens/{created['id']}/close",
                                 json={"who": "Q. Lead", "meaning": "rejected"}).get_json()
    assert (closed["closed_by"], closed["close_meaning"], closed["next"]) == ("Q. Lead", "rejected", None)
    assert service.client.post(f"/api/specimens/{created['id']}/current", json={}).status_code == 409
    reopened = service.client.post(f"/api/specimens/{created['id']}/reopen",
                                   json={"who": "Q. Lead", "reason": "wrong specimen"}).get_json()
    assert reopened["closed"] is None
    assert service.client.get(f"/api/specimens/{created['id']}").get_json()["name"] == "S-2b"


def test_a_specimen_has_an_operator_set_when_started_and_changed_alone(service):
    started = service.client.post("/api/specimens", json={"name": "S-3", "operator": " Ana Kovač "})
    assert (started.status_code, started.get_json()["operator"]) == (201, "Ana Kovač")
    specimen = started.get_json()["id"]
    changed = service.client.patch(f"/api/specimens/{specimen}", json={"operator": "B. Ruiz"}).get_json()
    assert (changed["name"], changed["notes"], changed["operator"]) == ("S-3", "", "B. Ruiz")
    cleared = service.client.patch(f"/api/specimens/{specimen}", json={"name": "S-3b", "operator": ""}).get_json()
    assert (cleared["name"], cleared["operator"]) == ("S-3b", "")
    assert service.client.post("/api/specimens", json={"name": "S-4"}).get_json()["operator"] == ""
    listed = service.client.get("/api/specimens").get_json()["specimens"]
    assert [s["operator"] for s in listed if s["id"] == specimen] == [""]


@pytest.mark.parametrize(("body", "message"), [
    ({}, "send name, notes, operator or several of them"), ({"name": " "}, "name is required"),
    ({"notes": 3}, "notes must be a string"), ({"operator": None}, "operator must be a string"),
    ({"operator": "x" * 201}, "operator is longer than 200 characters"),
])
def test_specimen_updates_are_validated(service, body, message):
    specimen = service.store.current_specimen()["id"]
    response = service.client.patch(f"/api/specimens/{specimen}", json=body)
    assert (response.status_code, response.get_json()) == (400, {"error": message})
    assert service.client.patch("/api/specimens/99", json={"name": "x"}).status_code == 404


def test_specimen_statistics_have_every_class_trend_histograms_and_the_legend(service):
    for fraction in (0.4, 0.5, 0.45):
        service.finish(f"{fraction}.tif", fraction)
    stats = service.client.get(f"/api/specimens/{service.store.current_specimen()['id']}/stats").get_json()
    assert [c["label"] for c in stats["classes"]] == ["γ matrix", "secondary γ′"]
    assert set(stats["trends"]) == {"gamma matrix", "secondary gamma prime"}
    assert stats["trends"]["secondary gamma prime"]["values"] == pytest.approx([40, 50, 45])
    assert stats["trend"] == stats["trends"]["secondary gamma prime"]
    assert stats["ecd_histograms"]["secondary gamma prime"] == {
        "edges": pytest.approx([1.0, math.sqrt(2), 2.0]), "counts": [9, 3], "unit": "um"}
    assert stats["mean_ecd"]["secondary gamma prime"]["unit"] == "um"


def test_histograms_of_other_pixel_sizes_go_to_the_bin_holding_their_centre():
    r = math.sqrt(2)
    def field(pixel_size: float, name: str, edges: list[float], counts: list[int]) -> dict:
        histogram = {"edges": edges, "counts": counts}
        return {"pixel_size_um": pixel_size, "particles": {name: {"unit": "um", "ecd_histogram": histogram}}}

    fields = [
        field(0.1, "p", [1, r, 2], [1, 2]),
        # Another calibration: its bins sit half a bin higher; each lands where its centre falls.
        field(0.2, "p", [r**0.5, r**1.5, r**2.5], [4, 8]),
        field(0.2, "q", [1, r], [5]),
    ]
    combined = ecd_histogram(fields, "p", physical=True)
    assert combined["edges"] == pytest.approx([1, r, 2, 2 * r])
    assert combined["counts"] == [1, 2 + 4, 8]
    in_pixels = ecd_histogram(fields[:1], "p", physical=False)
    assert (in_pixels["edges"][0], in_pixels["unit"]) == (pytest.approx(10.0), "px")
    assert ecd_histogram(fields, "missing", physical=True) is None


# -- pages and signing in ------------------------------------------------------------------


PAGES = ["/", "/fields", "/images/1", "/fields/1", "/specimens", "/specimens/1", "/specimens/compare?ids=1,2"]


@pytest.mark.parametrize("url", PAGES)
def test_every_page_is_its_template_and_script(service, url):
    service.finish("a.tif", 0.4)  # image 1: a page of no image is a 404
    response = service.client.get(url)
    html = response.get_data(as_text=True)
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert '<script type="module" src="/static/' in html and 'href="/static/favicon.svg"' in html
    assert 'aria-live="polite"' in html and 'aria-live="assertive"' in html
    assert "http" not in html.replace("http://www.w3.org", "")


def test_a_browser_opening_a_page_without_the_token_signs_in_and_comes_back(tmp_path):
    locked = Service(tmp_path, Access(token=TOKEN))
    browser = {"Accept": "text/html,application/xhtml+xml"}
    page = locked.client.get("/images/7?x=1", headers=browser)
    assert (page.status_code, page.headers["Location"]) == (303, "/login?next=%2Fimages%2F7%3Fx%3D1")
    assert locked.client.get("/images/7").status_code == 401  # a script gets the 401 it can act on
    assert locked.client.get("/", headers=browser).headers["Location"] == "/login"
    form = locked.client.get("/login?next=/images/7").get_data(as_text=True)
    assert 'name="next" value="/images/7"' in form
    signed_in = locked.client.post("/login", data={"token": TOKEN, "next": "/images/7"})
    assert (signed_in.status_code, signed_in.headers["Location"]) == (303, "/images/7")
    for n in range(7):  # image 7: a page of no image is a 404
        locked.finish(f"f{n}.tif", None)
    assert locked.client.get("/images/7").status_code == 200
    for elsewhere in ("//evil.example/", "https://evil.example/", "/\\evil.example", "fields", "/x\ny"):
        assert locked.client.get("/login", query_string={"next": elsewhere}).headers["Location"] == "/", elsewhere
    # What the sign-in form shows needs no token; the page's scripts do.
    locked.client.delete_cookie("phasewatch_session")
    assert locked.client.get("/static/app.css").status_code == 200
    assert locked.client.get("/static/favicon.svg").status_code == 200
    assert locked.client.get("/static/live.js").status_code == 401
    locked.store.close()
