"""Issue 24 over the web API (Flask's test client, a real Store): limits and templates, the
verdict in the statistics, a signed close (the token re-entered when access control is on)
that makes the specimen read-only, a signed reopen, the audit rows as JSON and CSV, and a
report found by its sha256."""

from __future__ import annotations

import csv
import hashlib
import io

from test_webui_history import TOKEN, Service

from phasewatch.webui.access import Access

GP = "secondary gamma prime"
LIMITS = [{"class": GP, "measure": "fractions", "lower": 20, "upper": 40, "target_ra_pct": 10}]


def test_limits_verdict_close_read_only_reopen_and_audit(tmp_path):
    service = Service(tmp_path)
    client, sid = service.client, service.store.current_specimen()["id"]
    bad = client.put(f"/api/specimens/{sid}/limits", json={"limits": [{"class": GP, "lower": 5, "upper": 1}]})
    assert bad.status_code == 400 and "lower 5 is above upper 1" in bad.get_json()["error"]
    put = client.put(f"/api/specimens/{sid}/limits", json={"limits": LIMITS, "who": "Ana", "reason": "spec 7"})
    assert put.status_code == 200 and put.get_json()["limits"][0]["upper"] == 40
    first = service.finish("a.tif", 0.30)
    verdict = client.get(f"/api/specimens/{sid}/stats").get_json()["verdict"]
    assert (verdict["verdict"], verdict["fields_needed"]) == ("undecided", 1)
    for name, fraction in (("b.tif", 0.31), ("c.tif", 0.29), ("d.tif", 0.30)):
        service.finish(name, fraction)
    verdict = client.get(f"/api/specimens/{sid}/stats").get_json()["verdict"]
    assert verdict["verdict"] == "pass" and verdict["checks"][0]["range"] == "20 – 40"

    closed = client.post(f"/api/specimens/{sid}/close", json={"who": "Q. Lead", "meaning": "reviewed and released"})
    assert closed.status_code == 200
    body = closed.get_json()
    assert body["closed_by"] == "Q. Lead" and body["next"] == service.store.current_specimen()["id"] != sid
    assert client.post(f"/api/images/{first}/exclude", json={"reason": "x"}).status_code == 400
    assert client.put(f"/api/specimens/{sid}/limits", json={"limits": []}).status_code == 409
    assert client.patch(f"/api/specimens/{sid}", json={"notes": "x"}).status_code == 400
    reopened = client.post(f"/api/specimens/{sid}/reopen", json={"who": "Q. Lead", "reason": "recount"})
    assert reopened.status_code == 200 and reopened.get_json()["closed"] is None
    assert client.post(f"/api/images/{first}/exclude", json={"reason": "scratch", "who": "Ana"}).status_code == 200

    rows = client.get(f"/api/specimens/{sid}/audit").get_json()
    assert [(r["actor"], r["action"]) for r in rows] == [
        ("Ana", "limits.set"), ("Q. Lead", "specimen.close"), ("Q. Lead", "specimen.reopen"),
        ("Ana", "field.exclude")]
    table = list(csv.DictReader(io.StringIO(client.get(f"/api/specimens/{sid}/audit.csv").get_data(as_text=True))))
    assert [r["action"] for r in table] == [r["action"] for r in rows]
    assert table[0]["reason"] == "spec 7" and table[3]["hash"] == rows[3]["hash"]
    assert table[1]["at_utc"].endswith("+00:00")


def test_templates_are_saved_and_applied(tmp_path):
    service = Service(tmp_path)
    sid = service.store.current_specimen()["id"]
    saved = service.client.put("/api/limit-templates", json={"name": "IN718 γ′ check", "limits": LIMITS})
    assert saved.status_code == 200 and saved.get_json()["limits"][0]["class"] == GP
    assert [t["name"] for t in service.client.get("/api/limit-templates").get_json()] == ["IN718 γ′ check"]
    applied = service.client.put(f"/api/specimens/{sid}/limits", json={"template": "IN718 γ′ check", "who": "Ana"})
    assert applied.status_code == 200 and applied.get_json()["limits"][0]["lower"] == 20


def test_a_signature_reenters_the_token(tmp_path):
    service = Service(tmp_path, Access(token=TOKEN))
    sid = service.store.current_specimen()["id"]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    signed = {"who": "Q. Lead", "meaning": "rejected"}
    refused = service.client.post(f"/api/specimens/{sid}/close", json=signed, headers=auth)
    assert refused.status_code == 403 and refused.get_json()["error"] == ("a signature needs the access token "
                                                                          "entered again")
    wrong = service.client.post(f"/api/specimens/{sid}/close", json={**signed, "token": "nope"}, headers=auth)
    assert wrong.status_code == 403 and service.store.get_specimen(sid)["closed"] is None
    done = service.client.post(f"/api/specimens/{sid}/close", json={**signed, "token": TOKEN}, headers=auth)
    assert done.status_code == 200 and done.get_json()["close_meaning"] == "rejected"


def test_a_served_report_is_found_by_its_hash(tmp_path):
    service = Service(tmp_path)
    sid = service.store.current_specimen()["id"]
    service.finish("a.tif", 0.3)
    pdf = service.client.get(f"/specimens/{sid}/report.pdf").get_data()
    digest = hashlib.sha256(pdf).hexdigest()
    found = service.client.get(f"/api/reports/{digest}")
    assert found.status_code == 200 and found.get_json()["kind"] == "pdf" and found.get_json()["size"] == len(pdf)
    assert service.client.get(f"/api/reports/{'0' * 64}").status_code == 404
    assert service.client.get("/api/reports/xyz").status_code == 400
    page = service.client.get(f"/specimens/{sid}/report").get_data()
    assert service.client.get(f"/api/reports/{hashlib.sha256(page).hexdigest()}").get_json()["kind"] == "html"
