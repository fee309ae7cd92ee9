"""The specimen report over real micrographs: the four superalloy/test fields and one EBC
field (which the superalloy model flags) are processed by the bundled superalloy model as
the daemon does (pipeline, store), one field is excluded with a reason, and report.pdf is
downloaded through the app and read back with pypdf, then through the real server with a
token. Needs ../shared/data (or $PHASEWATCH_DATA); skipped without it.
"""

from __future__ import annotations

import csv
import http.client
import io
import re
from pathlib import Path

import pypdf
import pytest

from phasewatch.bundle import load_bundle, sha256_file
from phasewatch.core.pipeline import open_model, process_file
from phasewatch.store import Store
from phasewatch.webui.access import Access
from phasewatch.webui.app import AppContext, create_app
from phasewatch.webui.events import EventBroker
from phasewatch.webui.names import display_name
from phasewatch.webui.report_data import SIGN_OFF
from phasewatch.webui.report_fonts import pdf_fonts
from phasewatch.webui.server import serve_in_thread

NAME = "IN738 S-17 γ′ ageing check"
REASON = "polishing scratch across the lower third"
OPERATOR = "Ana Kovač"
TOKEN = "real-report-token-0123456789"


class Processed:
    """A store filled by processing real files, and the app over it."""

    def __init__(self, data_dir: Path, shared: Path) -> None:
        self.data = data_dir.resolve()
        self.store = Store(self.data / "phasewatch.sqlite3")
        self.specimen = self.store.start_specimen(NAME, "etched 10 s, SEM 5000x", OPERATOR)
        files = sorted((shared / "superalloy" / "test" / "images").glob("*.tif"))
        files.append(sorted((shared / "ebc" / "test" / "images").iterdir())[0])
        model = open_model("superalloy", "cpu", threads=1)
        try:
            self.ids = [self.process(path, model) for path in files]
        finally:
            model.close()
        self.excluded, self.flagged = self.ids[1], self.ids[-1]
        self.store.exclude_field(self.excluded, REASON)
        self.ctx = AppContext(store=self.store, events=EventBroker(), status=lambda: {}, health=lambda: (True, {}),
                              metrics=lambda: (b"", "text/plain"), target_ra=0.10, data_dir=self.data,
                              access=Access(token=TOKEN))

    def process(self, path: Path, model) -> int:
        """What the daemon's stages do with one file."""
        stat = path.stat()
        file_id = self.store.enqueue(path, stat.st_size, stat.st_mtime_ns, sha256_file(path), self.specimen)["id"]
        assert [r["id"] for r in self.store.claim_next()] == [file_id]
        result = process_file(path, model, self.data / "results" / f"{file_id:06d}")
        self.store.mark_done(file_id, result.record, result.outputs)
        return file_id


@pytest.fixture(scope="module")
def processed(shared_data, tmp_path_factory):
    p = Processed(tmp_path_factory.mktemp("report-real"), shared_data)
    yield p
    p.store.close()


@pytest.fixture
def client(processed):
    client = create_app(processed.ctx).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"
    return client


def pdf_text(data: bytes) -> str:
    return "\n".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(data)).pages)


def test_report_pdf_holds_the_specimens_statistics_as_the_api_reports_them(processed, client):
    response = client.get(f"/specimens/{processed.specimen}/report.pdf")
    assert response.status_code == 200 and response.mimetype == "application/pdf"
    text = pdf_text(response.data)
    flat = " ".join(text.split())
    assert f"Specimen report: {pdf_fonts().text(NAME)}" in text
    stats = client.get(f"/api/specimens/{processed.specimen}/stats").get_json()
    assert stats["fields"] == 3 and stats["flagged_pending"] == 1  # 5 fields less one excluded, one flagged
    assert "3 counted of 5 measured" in text
    assert re.search(rf"Operator\s*{OPERATOR}", text)
    for name, st in stats["fractions"].items():
        label = re.escape(display_name(name))
        row = rf"{label}\n\s*{st['n']}\n\s*{st['mean']:.2f}\n\s*{st['std']:.2f}\n\s*{st['ci95']:.2f}\n"
        assert re.search(row, text), f"{name}: mean {st['mean']:.2f} ± {st['ci95']:.2f} not in the PDF"
    assert f"ONNX sha256 {load_bundle('superalloy').onnx_sha256[:16]}" in text
    assert REASON in flat
    flagged = client.get(f"/api/images/{processed.flagged}").get_json()
    assert not flagged["trust"]["ok"]
    assert " ".join(flagged["trust"]["reasons"][0].split()) in flat  # why it is not counted
    assert f"{SIGN_OFF}:" in text
    held_out = load_bundle("superalloy").manifest["evaluations"]["superalloy/test"]
    assert f"{100 * held_out['mean_iou']:.1f} %" in text


def test_report_csv_traces_each_field_to_its_file_and_model(processed, client):
    rows = list(csv.DictReader(io.StringIO(client.get(f"/specimens/{processed.specimen}/report.csv").get_data(True))))
    assert [int(r["id"]) for r in rows] == processed.ids
    for row in rows:
        measured = client.get(f"/api/images/{row['id']}").get_json()
        assert row["file_sha256"] == sha256_file(Path(measured["path"]))
        assert (row["model"], row["model_onnx_sha256"]) == ("superalloy", load_bundle("superalloy").onnx_sha256)
        assert row["pixel_size_source"] == measured["measurement"]["pixel_size_source"]
    assert [r["counted"] for r in rows] == ["1", "0", "1", "1", "0"]
    assert (rows[1]["status"], rows[1]["reason"]) == ("excluded", REASON)
    assert rows[-1]["status"] == "flagged" and rows[-1]["trust_ok"] == "0"


def test_report_pdf_over_the_real_server_needs_the_token(processed):
    handle = serve_in_thread(create_app(processed.ctx), "127.0.0.1", 0)
    try:
        for headers, status in (({}, 401), ({"Authorization": f"Bearer {TOKEN}"}, 200)):
            conn = http.client.HTTPConnection("127.0.0.1", handle.port, timeout=30)
            conn.request("GET", f"/specimens/{processed.specimen}/report.pdf", headers=headers)
            response = conn.getresponse()
            body = response.read()
            conn.close()
            assert response.status == status
        assert response.getheader("Content-Type") == "application/pdf"
        assert len(pypdf.PdfReader(io.BytesIO(body)).pages) >= 2
    finally:
        processed.ctx.events.close()
        handle.stop()
