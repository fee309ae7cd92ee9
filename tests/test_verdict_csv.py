"""Issue 24: ``/export.csv`` and a report's CSV carry each field's specimen verdict and its
limits (webui/csv_export.py), the same verdict /api/specimens/ID/stats gives (Flask's test
client over a real Store)."""

from __future__ import annotations

import csv
import io

from test_signoff_api import GP, LIMITS
from test_webui_history import Service


def table(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_both_csvs_carry_the_verdict_and_the_limits(tmp_path):
    service = Service(tmp_path)
    client, sid = service.client, service.store.current_specimen()["id"]
    service.finish("a.tif", 0.30)
    service.store.set_limits(sid, [*LIMITS, {"class": "gamma matrix", "measure": "number_density", "lower": 5}],
                             "Ana")
    rows = table(client.get("/export.csv").get_data(as_text=True))
    assert (rows[0]["specimen_verdict"], rows[0]["specimen_limits"]) == (
        "undecided", f"{GP} area % 20 – 40 at 10 % RA: undecided (a CI needs two fields) | "
        "gamma matrix number density ≥ 5 1/mm2 at 10 % RA: undecided (no field measured it yet)")
    for name, fraction in (("b.tif", 0.31), ("c.tif", 0.29), ("d.tif", 0.30)):
        service.finish(name, fraction)
    service.store.set_limits(sid, LIMITS, "Ana")
    stats = client.get(f"/api/specimens/{sid}/stats").get_json()["verdict"]
    assert stats["verdict"] == "pass"
    for url in ("/export.csv", f"/specimens/{sid}/report.csv"):
        rows = table(client.get(url).get_data(as_text=True))
        assert len(rows) == 4
        assert {(r["specimen_verdict"], r["specimen_limits"]) for r in rows} == {
            ("pass", f"{GP} area % 20 – 40 at 10 % RA: pass")}, url


def test_a_specimen_without_limits_has_empty_verdict_cells_and_each_row_its_own(tmp_path):
    service = Service(tmp_path)
    first = service.store.current_specimen()["id"]
    service.finish("a.tif", 0.30)
    service.store.set_limits(first, [{"class": GP, "measure": "fractions", "upper": 1}], "Ana")
    service.finish("b.tif", 0.31)
    second = service.store.start_specimen("S-2")
    service.finish("c.tif", 0.30)
    rows = {r["file"]: r for r in table(service.client.get("/export.csv").get_data(as_text=True))}
    assert rows["a.tif"]["specimen_verdict"] == rows["b.tif"]["specimen_verdict"] == "fail"
    assert rows["a.tif"]["specimen_limits"] == f"{GP} area % ≤ 1 at 10 % RA: fail (the 95 % CI lies entirely above 1)"
    assert (rows["c.tif"]["specimen_verdict"], rows["c.tif"]["specimen_limits"]) == ("", "")
    only = table(service.client.get(f"/export.csv?specimen={second}").get_data(as_text=True))
    assert [r["file"] for r in only] == ["c.tif"]
