"""The web app's routes against a real Store, real PNG outputs and the real waitress server.

Expected statistics are computed by hand in the comments: two carbide fields of 20 % on
1000 px and 30 % on 3000 px.
"""

from __future__ import annotations

import csv
import dataclasses
import http.client
import io
import json
import math
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from phasewatch.service.prometheus import DaemonMetrics
from phasewatch.store import Store
from phasewatch.webui.app import AppContext, create_app, image_json
from phasewatch.webui.events import EventBroker, StreamRefused
from phasewatch.webui.server import serve_in_thread

T_975_DF1 = 12.706204736
TIMEOUT_S = 10


UNLIKE = "intensity distribution unlike this model's training images (mean 0.91, trained 0.35-0.62)"
FLAGGED = {"ok": False, "score": 0.125, "reasons": [UNLIKE, "sharpness unlike this model's training images"]}


def measurement(carbide: float, area_px: int) -> dict:
    return {
        "fractions": {"matrix": 1.0 - carbide, "carbide": carbide},
        "particles": {
            "carbide": {"count": 4, "number_per_mpx": 4 / area_px * 1e6, "number_per_mm2": None,
                        "mean_ecd": 2.0, "unit": "px"}
        },
        "valid_area_px": area_px,
        "valid_area_um2": None,
        "pixel_size_um": None,
    }


def write_picture(path: Path, value: int) -> Path:
    """A PNG or JPEG after the suffix (cv2 chooses by it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((8, 12, 3), value, np.uint8))
    return path


def finish(store: Store, name: str, result: dict | None, outputs: dict | None = None, error: str = "") -> int:
    """Enqueue, claim and finish one field through the store's public API; its id."""
    file_id = store.enqueue(f"/watch/{name}", 100, 1, f"sha-{name}")["id"]
    assert [r["id"] for r in store.claim_next()] == [file_id]
    if result is None:
        store.mark_failed(file_id, error)
    else:
        store.mark_done(file_id, result, outputs)
    return file_id


class Daemon:
    """The app's collaborators, with the health switchable by the test."""

    def __init__(self, tmp_path: Path) -> None:
        self.data = tmp_path / "data"
        self.store = Store(self.data / "phasewatch.sqlite3")
        self.events = EventBroker(keepalive_s=0.2)
        self.healthy = True
        self.metrics = DaemonMetrics(self.store.counts_by_state)
        out = self.data / "results"
        # The first field as recorded before overlays and previews were JPEGs; the second as now.
        self.outputs = {
            "overlay": write_picture(out / "a.overlay.png", 200),
            "classes": write_picture(out / "a.classes.png", 1),
            "preview": write_picture(out / "a.preview.png", 90),
        }
        self.first = finish(self.store, "a.tif", measurement(0.20, 1000), self.outputs)
        self.second = finish(self.store, "b.tif", measurement(0.30, 3000),
                             {"overlay": write_picture(out / "b.overlay.jpg", 50)})
        self.failed = finish(self.store, "c.tif", None, error="c.tif: truncated TIFF")
        self.processing = self.store.enqueue("/watch/d.tif", 100, 1, "sha-d")["id"]
        self.store.claim_next()
        self.ctx = AppContext(
            store=self.store, events=self.events, status=self.status, health=self.health,
            metrics=self.metrics.render, target_ra=0.10, data_dir=self.data,
        )

    def status(self) -> dict:
        counts = self.store.counts_by_state()
        return {"queued": counts["pending"], "processing": counts["processing"], "done": counts["done"],
                "failed": counts["failed"], "backend": "cpu", "model": "toy", "uptime_s": 12.5}

    def health(self) -> tuple[bool, dict]:
        return (True, {"reasons": []}) if self.healthy else (False, {"reasons": ["worker stalled for 120 s"]})


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path)
    yield d
    d.events.close()
    d.store.close()


@pytest.fixture
def client(daemon):
    return create_app(daemon.ctx).test_client()


@pytest.fixture
def server(daemon):
    handle = serve_in_thread(create_app(daemon.ctx), "127.0.0.1", 0)
    yield handle
    daemon.events.close()
    handle.stop()


# -- status, health, metrics --------------------------------------------------------


def test_status_has_counts_backend_and_health(client, daemon):
    daemon.store.enqueue("/watch/queued.tif", 100, 1, "sha-queued")
    body = client.get("/api/status").get_json()
    assert body == {"queued": 1, "processing": 1, "done": 2, "failed": 1, "backend": "cpu", "model": "toy",
                    "uptime_s": 12.5, "health": {"ok": True, "reasons": []}}
    daemon.healthy = False
    assert client.get("/api/status").get_json()["health"] == {"ok": False, "reasons": ["worker stalled for 120 s"]}


def test_healthz_is_200_when_healthy_and_503_with_reasons_when_not(client, daemon):
    ok = client.get("/healthz")
    assert (ok.status_code, ok.get_json()) == (200, {"ok": True, "reasons": []})
    daemon.healthy = False
    bad = client.get("/healthz")
    assert (bad.status_code, bad.get_json()) == (503, {"ok": False, "reasons": ["worker stalled for 120 s"]})


def test_metrics_are_the_prometheus_exposition(client):
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    assert 'phasewatch_files{state="done"} 2.0' in response.get_data(as_text=True)


# -- images ----------------------------------------------------------------------------


def test_images_newest_first_with_their_fields(client, daemon):
    images = client.get("/api/images").get_json()
    assert [i["id"] for i in images] == [daemon.processing, daemon.failed, daemon.second, daemon.first]
    first = images[-1]
    assert first["file"] == "a.tif" and first["path"] == "/watch/a.tif"
    assert (first["state"], first["error"], first["specimen"]) == ("done", None, "default")
    assert first["fractions"] == pytest.approx({"matrix": 0.8, "carbide": 0.2})
    assert first["phases"] == ["carbide"]
    assert first["created"] <= first["processed"]
    assert first["pictures"] == {k: f"/api/images/{daemon.first}/{k}.png" for k in ("overlay", "classes", "preview")}
    assert images[-2]["pictures"] == {"overlay": f"/api/images/{daemon.second}/overlay.jpg"}
    failed = images[1]
    assert (failed["state"], failed["error"], failed["fractions"]) == ("failed", "c.tif: truncated TIFF", None)
    assert images[0]["state"] == "processing" and images[0]["processed"] is None


def test_images_limit_and_specimen_filter(client, daemon):
    assert [i["id"] for i in client.get("/api/images?limit=2").get_json()] == [daemon.processing, daemon.failed]
    assert [i["id"] for i in client.get(f"/api/images?before={daemon.second}").get_json()] == [daemon.first]
    other = daemon.store.start_specimen("S-2")
    newest = finish(daemon.store, "e.tif", measurement(0.5, 500))
    assert [i["id"] for i in client.get(f"/api/images?specimen={other}").get_json()] == [newest]


@pytest.mark.parametrize(("query", "message"), [
    ("limit=abc", "limit must be an integer, got 'abc'"),
    ("limit=0", "limit must be 1..1000, got 0"),
    ("limit=1001", "limit must be 1..1000, got 1001"),
    ("specimen=-3", "specimen must be >= 1, got -3"),
])
def test_images_bad_query_is_400(client, query, message):
    response = client.get(f"/api/images?{query}")
    assert (response.status_code, response.get_json()) == (400, {"error": message})


def test_one_image_with_its_measurement(client, daemon):
    body = client.get(f"/api/images/{daemon.first}").get_json()
    assert body["id"] == daemon.first
    assert body["measurement"] == measurement(0.20, 1000)
    missing = client.get("/api/images/999")
    assert (missing.status_code, missing.get_json()) == (404, {"error": "no image 999"})


@pytest.mark.parametrize("kind", ["overlay", "classes", "preview"])
def test_pictures_are_the_recorded_files(client, daemon, kind):
    response = client.get(f"/api/images/{daemon.first}/{kind}.png")
    assert response.status_code == 200 and response.mimetype == "image/png"
    assert response.data == daemon.outputs[kind].read_bytes()


def test_a_jpeg_picture_is_served_as_one(client, daemon):
    response = client.get(f"/api/images/{daemon.second}/overlay.jpg")
    assert response.status_code == 200 and response.mimetype == "image/jpeg"
    assert response.data.startswith(b"\xff\xd8\xff")


@pytest.mark.parametrize(("which", "asked", "recorded"), [("second", "png", "jpg"), ("first", "jpg", "png")])
def test_a_picture_asked_under_the_other_suffix_is_redirected_to_its_own(client, daemon, which, asked, recorded):
    file_id = getattr(daemon, which)
    response = client.get(f"/api/images/{file_id}/overlay.{asked}")
    assert (response.status_code, response.location) == (302, f"/api/images/{file_id}/overlay.{recorded}")
    followed = client.get(f"/api/images/{file_id}/overlay.{asked}", follow_redirects=True)
    assert followed.mimetype == f"image/{'jpeg' if recorded == 'jpg' else 'png'}"


def test_missing_pictures_are_404_json(client, daemon):
    no_preview = client.get(f"/api/images/{daemon.second}/preview.jpg")
    assert (no_preview.status_code, no_preview.get_json()) == (
        404, {"error": f"image {daemon.second} has no preview picture"})
    assert client.get(f"/api/images/{daemon.failed}/overlay.png").status_code == 404
    assert client.get("/api/images/999/overlay.png").get_json() == {"error": "no image 999"}
    assert client.get(f"/api/images/{daemon.first}/json.png").status_code == 404
    not_a_picture = client.get(f"/api/images/{daemon.first}/overlay.gif")
    assert (not_a_picture.status_code, not_a_picture.get_json()) == (
        404, {"error": "no picture overlay.gif; kinds: overlay, classes, preview, as png or jpg"})
    daemon.outputs["classes"].unlink()
    gone = client.get(f"/api/images/{daemon.first}/classes.png")
    assert (gone.status_code, gone.get_json()) == (
        404, {"error": f"image {daemon.first}: the classes picture is missing on disk"})


def test_a_recorded_path_outside_the_data_folder_is_never_served(client, daemon, tmp_path):
    secret = write_picture(tmp_path / "elsewhere" / "x.png", 7)
    sneaky = finish(daemon.store, "f.tif", measurement(0.1, 100),
                    {"overlay": str(secret), "classes": str(daemon.data / ".." / "elsewhere" / "x.png")})
    for kind in ("overlay", "classes"):
        response = client.get(f"/api/images/{sneaky}/{kind}.png")
        assert response.status_code == 403
        assert response.get_json() == {"error": f"image {sneaky}: the {kind} picture is outside the data folder"}


# -- specimens and statistics ----------------------------------------------------------


def test_stats_of_the_current_specimen_by_hand(client, daemon):
    specimen = client.get("/api/specimens").get_json()["current"]
    body = client.get(f"/api/specimens/{specimen['id']}/stats").get_json()
    assert body["specimen"]["name"] == "default" and body["fields"] == 2
    carbide = body["fractions"]["carbide"]
    assert carbide["n"] == 2
    assert carbide["mean"] == pytest.approx(25.0)  # (20 + 30) / 2
    assert carbide["weighted_mean"] == pytest.approx(27.5)  # (1000 * 20 + 3000 * 30) / 4000
    assert carbide["std"] == pytest.approx(math.sqrt(50))  # (25 + 25) / 1
    ci = T_975_DF1 * math.sqrt(50) / math.sqrt(2)  # 63.53
    assert carbide["ci95"] == pytest.approx(ci)
    assert carbide["ra_pct"] == pytest.approx(ci / 25 * 100)
    assert body["main_phase"] == "carbide"
    trend = body["trend"]
    assert trend["class"] == "carbide" and trend["ids"] == [daemon.first, daemon.second]
    assert trend["values"] == pytest.approx([20.0, 30.0])
    assert trend["mean"] == pytest.approx([20.0, 25.0])
    assert trend["ci95"][0] is None and trend["ci95"][1] == pytest.approx(ci)
    assert client.get("/api/specimens/999/stats").status_code == 404


def test_exclude_and_include_change_the_statistics(client, daemon):
    specimen_id = daemon.store.current_specimen()["id"]
    stream = daemon.events.subscribe()
    assert next(stream).startswith("retry:")

    excluded = client.post(f"/api/images/{daemon.second}/exclude", json={"reason": "  scratch  "})
    assert excluded.status_code == 200
    assert (excluded.get_json()["excluded"], excluded.get_json()["exclude_reason"]) == (True, "scratch")
    event = next(stream)
    assert event.startswith("id: 1\nevent: specimen\n") and f'"id":{specimen_id}' in event
    carbide = client.get(f"/api/specimens/{specimen_id}/stats").get_json()["fractions"]["carbide"]
    assert (carbide["n"], carbide["mean"], carbide["std"]) == (1, pytest.approx(20.0), None)

    included = client.post(f"/api/images/{daemon.second}/include", json={})
    assert included.get_json()["excluded"] is False
    carbide = client.get(f"/api/specimens/{specimen_id}/stats").get_json()["fractions"]["carbide"]
    assert (carbide["n"], carbide["mean"]) == (2, pytest.approx(25.0))


def test_exclude_refuses_what_is_not_a_measured_field(client, daemon):
    for file_id, state in ((daemon.failed, "failed"), (daemon.processing, "processing")):
        response = client.post(f"/api/images/{file_id}/exclude", json={"reason": "x"})
        assert (response.status_code, response.get_json()) == (
            409, {"error": f"image {file_id} is {state}: only a measured field counts"})
    assert client.post("/api/images/999/include", json={}).status_code == 404
    bad = client.post(f"/api/images/{daemon.first}/exclude", json={"reason": 3})
    assert (bad.status_code, bad.get_json()) == (400, {"error": "reason must be a string"})


def test_start_a_specimen(client, daemon):
    stream = daemon.events.subscribe()
    assert next(stream).startswith("retry:")
    response = client.post("/api/specimens", json={"name": " S-17 ", "notes": "etched 10 s"})
    assert response.status_code == 201
    created = response.get_json()
    assert (created["name"], created["notes"], created["is_current"]) == ("S-17", "etched 10 s", 1)
    listing = client.get("/api/specimens").get_json()
    assert listing["current"]["id"] == created["id"]
    assert [s["name"] for s in listing["specimens"]] == ["S-17", "default"]
    assert next(stream) == f'id: 1\nevent: specimen\ndata: {{"id":{created["id"]}}}\n\n'
    stats = client.get(f"/api/specimens/{created['id']}/stats").get_json()
    assert (stats["fields"], stats["fractions"], stats["main_phase"], stats["trend"]) == (0, {}, None, None)


@pytest.mark.parametrize(("body", "message"), [
    (None, "the request body must be a JSON object"),
    ([1, 2], "the request body must be a JSON object"),
    ({"notes": "x"}, "name is required"),
    ({"name": "   "}, "name is required"),
    ({"name": 5}, "name must be a string"),
    ({"name": "x" * 201}, "name is longer than 200 characters"),
    ({"name": "ok", "notes": ["a"]}, "notes must be a string"),
])
def test_start_a_specimen_validates(client, daemon, body, message):
    response = client.post("/api/specimens", data=b"" if body is None else json.dumps(body),
                           content_type="application/json")
    assert (response.status_code, response.get_json()) == (400, {"error": message})
    assert daemon.store.current_specimen()["name"] == "default"


# -- trust: fields outside the model's experience -----------------------------------------


def flagged_field(daemon: Daemon, carbide: float = 0.9) -> int:
    return finish(daemon.store, "flagged.tif", {**measurement(carbide, 1000), "trust": FLAGGED})


def test_images_show_trust_and_acceptance(client, daemon):
    flagged = flagged_field(daemon)
    body = client.get(f"/api/images/{flagged}").get_json()
    assert body["trust"] == FLAGGED
    assert (body["accepted"], body["accepted_by"], body["accept_reason"], body["accepted_at"]) == (
        False, None, None, None)
    old = client.get(f"/api/images/{daemon.first}").get_json()
    assert old["trust"] is None and old["accepted"] is False  # made before the trust record
    listed = {i["id"]: i for i in client.get("/api/images").get_json()}
    assert listed[flagged]["trust"] == FLAGGED and listed[daemon.failed]["trust"] is None


def test_a_flagged_field_counts_once_accepted(client, daemon):
    specimen_id = daemon.store.current_specimen()["id"]
    flagged = flagged_field(daemon)
    stream = daemon.events.subscribe()
    assert next(stream).startswith("retry:")
    stats = client.get(f"/api/specimens/{specimen_id}/stats").get_json()
    assert (stats["fields"], stats["flagged_pending"], stats["count_flagged"]) == (2, 1, False)

    accepted = client.post(f"/api/images/{flagged}/accept", json={"who": " Ana ", "reason": "checked by eye"})
    assert accepted.status_code == 200
    body = accepted.get_json()
    assert (body["accepted"], body["accepted_by"], body["accept_reason"]) == (True, "Ana", "checked by eye")
    assert body["accepted_at"] <= time.time()
    assert f'event: specimen\ndata: {{"id":{specimen_id}}}' in next(stream)
    stats = client.get(f"/api/specimens/{specimen_id}/stats").get_json()
    assert (stats["fields"], stats["flagged_pending"]) == (3, 0)
    assert stats["fractions"]["carbide"]["mean"] == pytest.approx(140 / 3)  # (20 + 30 + 90) / 3

    unaccepted = client.post(f"/api/images/{flagged}/unaccept", json={})
    assert (unaccepted.status_code, unaccepted.get_json()["accepted"]) == (200, False)
    assert "event: specimen" in next(stream)
    assert client.get(f"/api/specimens/{specimen_id}/stats").get_json()["fields"] == 2


def test_count_flagged_counts_them_but_still_says_how_many(daemon):
    flagged_field(daemon)
    client = create_app(dataclasses.replace(daemon.ctx, count_flagged=True)).test_client()
    stats = client.get(f"/api/specimens/{daemon.store.current_specimen()['id']}/stats").get_json()
    assert (stats["fields"], stats["flagged_pending"], stats["count_flagged"]) == (3, 1, True)


@pytest.mark.parametrize(("body", "message"), [
    (None, "the request body must be a JSON object"),
    ({"reason": "fine"}, "who is required"),
    ({"who": "Ana"}, "reason is required"),
    ({"who": "  ", "reason": "fine"}, "who is required"),
    ({"who": "Ana", "reason": 7}, "reason must be a string"),
    ({"who": "x" * 201, "reason": "fine"}, "who is longer than 200 characters"),
    ({"who": "Ana", "reason": "x" * 2001}, "reason is longer than 2000 characters"),
])
def test_accept_validates_who_and_why(client, daemon, body, message):
    flagged = flagged_field(daemon)
    response = client.post(f"/api/images/{flagged}/accept", data=b"" if body is None else json.dumps(body),
                           content_type="application/json")
    assert (response.status_code, response.get_json()) == (400, {"error": message})
    assert daemon.store.get_image(flagged)["accepted"] == 0


def test_accept_refuses_what_is_not_a_flagged_measured_field(client, daemon):
    ok = {"who": "Ana", "reason": "fine"}
    not_flagged = client.post(f"/api/images/{daemon.first}/accept", json=ok)
    assert (not_flagged.status_code, not_flagged.get_json()) == (
        409, {"error": f"image {daemon.first} is not flagged: it counts without acceptance"})
    failed = client.post(f"/api/images/{daemon.failed}/accept", json=ok)
    assert (failed.status_code, failed.get_json()) == (
        409, {"error": f"image {daemon.failed} is failed: only a measured field counts"})
    assert client.post(f"/api/images/{daemon.processing}/unaccept", json={}).status_code == 409
    assert client.post("/api/images/999/accept", json=ok).status_code == 404
    assert client.post("/api/images/999/unaccept", json={}).status_code == 404


def test_export_csv_has_trust_and_acceptance(client, daemon):
    flagged = flagged_field(daemon)
    client.post(f"/api/images/{flagged}/accept", json={"who": "Ana", "reason": "checked by eye"})
    rows = {int(r["id"]): r for r in csv.DictReader(io.StringIO(client.get("/export.csv").get_data(as_text=True)))}
    row = rows[flagged]
    assert (row["trust_ok"], row["trust_score"], row["accepted"]) == ("0", "0.125", "1")
    assert row["trust_reasons"] == f"{UNLIKE}; sharpness unlike this model's training images"
    assert (row["accepted_by"], row["accept_reason"]) == ("Ana", "checked by eye")


# -- CSV, page, errors -------------------------------------------------------------------


def test_export_csv_has_one_row_per_field(client, daemon):
    client.post(f"/api/images/{daemon.second}/exclude", json={"reason": "scratch"})
    response = client.get("/export.csv")
    assert response.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert list(rows[0]) == ["id", "file", "specimen", "state", "processed", "matrix_area_pct",
                             "carbide_area_pct", "excluded", "reason", "trust_ok", "trust_score",
                             "trust_reasons", "accepted", "accepted_by", "accept_reason", "error", "path",
                             "specimen_verdict", "specimen_limits"]
    assert [int(r["id"]) for r in rows] == [daemon.first, daemon.second, daemon.failed, daemon.processing]
    first, second, failed, processing = rows
    assert (first["file"], first["state"], first["carbide_area_pct"], first["matrix_area_pct"]) == (
        "a.tif", "done", "20.0000", "80.0000")
    assert first["processed"].endswith("Z") and first["excluded"] == "0"
    assert (second["excluded"], second["reason"], second["carbide_area_pct"]) == ("1", "scratch", "30.0000")
    assert (first["trust_ok"], first["trust_score"], first["trust_reasons"], first["accepted"]) == ("", "", "", "0")
    assert (failed["state"], failed["error"], failed["carbide_area_pct"]) == ("failed", "c.tif: truncated TIFF", "")
    assert (processing["processed"], processing["path"]) == ("", "/watch/d.tif")


def test_page_and_its_vendored_assets(client):
    page = client.get("/")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and 'id="picture"' in html and 'data-target-ra="10.0"' in html
    assert "http" not in html.replace("http://www.w3.org", "")  # nothing from the internet
    script = client.get("/static/stream.js")
    assert script.status_code == 200 and "EventSource" in script.get_data(as_text=True)
    assert client.get("/static/app.css").status_code == 200


def test_unknown_routes_and_methods_answer_json(client):
    missing = client.get("/api/nothing")
    assert missing.status_code == 404 and "error" in missing.get_json()
    wrong = client.delete("/api/specimens")
    assert wrong.status_code == 405 and "error" in wrong.get_json()


def test_image_json_is_the_event_payload(daemon):
    payload = image_json(daemon.store.get_image(daemon.failed))
    assert json.loads(json.dumps(payload)) == payload
    assert (payload["id"], payload["state"], payload["pictures"]) == (daemon.failed, "failed", {})


# -- events: the broker alone, then over the real server ----------------------------------


def test_broker_keepalive_replay_and_close():
    broker = EventBroker(keepalive_s=0.01)
    for n in range(3):
        broker.publish("field", {"n": n})
    stream = broker.subscribe(last_event_id=1)
    assert next(stream) == "retry: 3000\n\n"
    assert next(stream) == 'id: 2\nevent: field\ndata: {"n":1}\n\n'
    assert next(stream) == 'id: 3\nevent: field\ndata: {"n":2}\n\n'
    assert next(stream) == ": keep-alive\n\n"
    broker.close()
    assert list(stream) == []
    assert broker.subscriber_count == 0
    with pytest.raises(StreamRefused):
        broker.subscribe()


def test_a_stalled_subscriber_is_dropped_without_blocking_publish():
    broker = EventBroker(keepalive_s=5)
    stalled = broker.subscribe()
    for n in range(300):  # more than a subscriber's queue holds; returns at once
        broker.publish("field", {"n": n})
    assert broker.subscriber_count == 0
    assert list(stalled) == ["retry: 3000\n\n"]


def test_streams_are_capped(daemon):
    broker = EventBroker(max_subscribers=1)
    broker.subscribe()
    with pytest.raises(StreamRefused, match="all 1 event streams are in use"):
        broker.subscribe()
    response = create_app(dataclasses.replace(daemon.ctx, events=broker)).test_client().get("/events")
    assert response.status_code == 503 and response.headers["Retry-After"] == "10"
    broker.close()


def _sse_messages(response: http.client.HTTPResponse, count: int) -> list[dict[str, str]]:
    """The next ``count`` events (keep-alive comments and retry skipped) as field dicts."""
    messages, fields = [], {}
    while len(messages) < count:
        line = response.readline().decode("utf-8").rstrip("\n")
        if line == "":
            if "event" in fields:
                messages.append(fields)
            fields = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(": ")
            fields[key] = value
    return messages


def _open_events(server, headers=None) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT_S)
    conn.request("GET", "/events", headers=headers or {})
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type").startswith("text/event-stream")
    assert response.getheader("Server") == "phasewatch"
    return conn, response


def test_sse_over_the_real_server_delivers_a_finished_field(server, daemon):
    conn, response = _open_events(server)
    try:
        payload = image_json(daemon.store.get_image(daemon.second))
        daemon.events.publish("field", payload)
        (message,) = _sse_messages(response, 1)
        assert message["event"] == "field" and message["id"] == "1"
        assert json.loads(message["data"]) == payload
    finally:
        response.close()  # conn.close() alone leaves the streaming response's socket open
        conn.close()
    # The server notices the closed browser at the next keep-alive and frees the stream.
    deadline = time.monotonic() + TIMEOUT_S
    while daemon.events.subscriber_count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert daemon.events.subscriber_count == 0


def test_sse_reconnect_replays_missed_events(server, daemon):
    for file_id in (daemon.first, daemon.second, daemon.failed):
        daemon.events.publish("field", {"id": file_id})
    conn, response = _open_events(server, {"Last-Event-ID": "1"})
    try:
        messages = _sse_messages(response, 2)
        assert [m["id"] for m in messages] == ["2", "3"]
        assert [json.loads(m["data"])["id"] for m in messages] == [daemon.second, daemon.failed]
    finally:
        response.close()  # conn.close() alone leaves the streaming response's socket open
        conn.close()


def test_real_server_serves_the_api_and_stops(server, daemon):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT_S)
    conn.request("GET", "/healthz")
    response = conn.getresponse()
    assert (response.status, json.loads(response.read())) == (200, {"ok": True, "reasons": []})
    conn.close()
    port = server.port
    daemon.events.close()
    server.stop()
    with pytest.raises(OSError):
        http.client.HTTPConnection("127.0.0.1", port, timeout=2).request("GET", "/healthz")


def test_csv_cells_that_would_run_as_formulas_are_quoted():
    from phasewatch.webui.csv_export import _text

    assert [_text(v) for v in ("=HYPERLINK(\"x\")", "+1", "-2", "@SUM(A1)", "steel 4140", None)] == [
        "'=HYPERLINK(\"x\")", "'+1", "'-2", "'@SUM(A1)", "steel 4140", ""]
