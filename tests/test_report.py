"""The specimen report (src/phasewatch/webui/report*.py) against a real Store, real PNG outputs, the real
bundled superalloy manifest and real PDFs read back with pypdf.

The store holds, for specimen "S-17 γ′": two counted fields (20 % and 30 % carbide), one
excluded, one flagged and not accepted, one flagged and accepted, a duplicate, a field
without valid area, a failed file and one still pending.
"""

from __future__ import annotations

import csv
import dataclasses
import html.parser
import io
import re
from pathlib import Path

import cv2
import numpy as np
import pypdf
import pytest
from chromium import CHROMIUM, CHROMIUM_ARGS

from phasewatch.bundle import load_bundle
from phasewatch.core.stats import specimen_statistics
from phasewatch.store import Store
from phasewatch.webui.access import Access
from phasewatch.webui.app import AppContext, create_app
from phasewatch.webui.csv_export import PROVENANCE_COLUMNS
from phasewatch.webui.events import EventBroker
from phasewatch.webui.report_chart import layout_trend, nice_ticks
from phasewatch.webui.report_data import SIGN_OFF, gather_report, number, picture
from phasewatch.webui.report_fonts import FONT_DIRS, pdf_fonts
from phasewatch.webui.report_pdf import render_pdf
from phasewatch.webui.server import serve_in_thread

TOKEN = "report-token-0123456789abcdef"
UNLIKE = "unlike any of this model's training images (novelty 4.73 > limit 1.00)"
FLAGGED = {"ok": False, "score": 4.73, "reasons": [UNLIKE]}
TRUSTED = {"ok": True, "score": 0.3, "reasons": []}


def record(carbide: float, area_px: int = 1000, model: str = "superalloy", trust: dict | None = None) -> dict:
    """A field record as pipeline.measure_and_write writes it (0.5 µm pixels from the TIFF)."""
    return {
        "model": model, "backend": "cpu", "pixel_size_um": 0.5, "pixel_size_source": "tiff",
        "fractions": {"matrix": 1.0 - carbide, "carbide": carbide},
        "particles": {"carbide": {"count": 4, "number_per_mpx": 4e6 / area_px, "number_per_mm2": 16e6 / area_px,
                                  "mean_ecd": 1.5, "unit": "um"}},
        "valid_area_px": area_px, "valid_area_um2": area_px * 0.25,
        "trust": trust or TRUSTED,
    }


def write_picture(path: Path, value: int) -> Path:
    """A PNG or JPEG after the suffix (cv2 chooses by it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((60, 80, 3), value, np.uint8))
    return path


class Specimen:
    def __init__(self, tmp_path: Path) -> None:
        self.data = (tmp_path / "data").resolve()
        self.store = Store(self.data / "phasewatch.sqlite3")
        self.id = self.store.start_specimen("S-17 γ′", "etched 10 s; 0.5 µm pixels")
        results = self.data / "results"
        overlay = write_picture(results / "a.overlay.jpg", 90)  # as recorded now
        old_preview = write_picture(results / "b.preview.png", 60)  # as recorded before previews were JPEGs
        self.counted = [self.finish("a.tif", record(0.20), {"overlay": overlay}),
                        self.finish("b.tif", record(0.30, 3000), {"preview": old_preview})]
        self.excluded = self.finish("c.tif", record(0.9))
        self.store.exclude_field(self.excluded, "=scratch across the field")
        self.flagged = self.finish("d.tif", record(0.7, trust=FLAGGED))
        self.accepted = self.finish("e.tif", record(0.25, 2000, trust=FLAGGED))
        self.store.accept_field(self.accepted, "Ana", "checked by eye under the optical scope")
        self.duplicate = self.store.enqueue("/watch/a-again.tif", 100, 2, "sha-a.tif")["id"]
        self.empty = self.finish("f.tif", {**record(0.0), "valid_area_px": 0, "valid_area_um2": 0.0})
        self.failed = self.finish("g.tif", None, error="g.tif: truncated TIFF")
        self.pending = self.store.enqueue("/watch/h.tif", 100, 1, "sha-h")["id"]

    def finish(self, name: str, result: dict | None, outputs: dict | None = None, error: str = "") -> int:
        file_id = self.store.enqueue(f"/watch/{name}", 100, 1, f"sha-{name}", self.id)["id"]
        assert [r["id"] for r in self.store.claim_next()] == [file_id]
        if result is None:
            self.store.mark_failed(file_id, error)
        else:
            self.store.mark_done(file_id, result, {k: str(v) for k, v in (outputs or {}).items()})
        return file_id

    def context(self, **changes) -> AppContext:
        ctx = AppContext(store=self.store, events=EventBroker(), status=lambda: {}, health=lambda: (True, {}),
                         metrics=lambda: (b"", "text/plain"), target_ra=0.10, data_dir=self.data)
        return dataclasses.replace(ctx, **changes)


@pytest.fixture
def specimen(tmp_path):
    s = Specimen(tmp_path)
    yield s
    s.store.close()


@pytest.fixture
def client(specimen):
    return create_app(specimen.context()).test_client()


def pdf_text(data: bytes) -> str:
    return "\n".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(data)).pages)


# -- the report's data ---------------------------------------------------------------------


def test_every_field_is_listed_with_whether_it_counts_and_why_not(specimen):
    report = gather_report(specimen.store, specimen.id, specimen.data)
    by_id = {f.id: f for f in report.fields}
    assert list(by_id) == sorted(by_id)  # oldest first
    assert {i: (f.status, f.counted) for i, f in by_id.items()} == {
        specimen.counted[0]: ("counted", True), specimen.counted[1]: ("counted", True),
        specimen.excluded: ("excluded", False), specimen.flagged: ("flagged", False),
        specimen.accepted: ("accepted", True), specimen.duplicate: ("duplicate", False),
        specimen.empty: ("no valid area", False), specimen.failed: ("failed", False),
        specimen.pending: ("pending", False),
    }
    assert by_id[specimen.excluded].note == "=scratch across the field"
    assert by_id[specimen.flagged].note == f"{UNLIKE}; not counted until an operator accepts it"
    assert by_id[specimen.accepted].note == f"{UNLIKE}; accepted by Ana: checked by eye under the optical scope"
    assert by_id[specimen.failed].note == "g.tif: truncated TIFF"
    assert f"field {specimen.counted[0]}" in by_id[specimen.duplicate].note
    assert [f.id for f in report.excluded] == [specimen.excluded]
    assert [f.id for f in report.accepted] == [specimen.accepted]
    assert [f.id for f in report.flagged_not_counted] == [specimen.flagged]
    assert report.flagged_total == 2
    assert report.classes == ["matrix", "carbide"]


def test_the_statistics_are_the_apis_and_count_what_the_field_list_says(specimen):
    report = gather_report(specimen.store, specimen.id, specimen.data)
    assert report.stats == specimen_statistics(specimen.store, specimen.id, 0.10)
    assert report.stats["fields"] == sum(f.counted for f in report.fields) == 3
    assert report.stats["fractions"]["carbide"]["mean"] == pytest.approx(25.0)  # (20 + 30 + 25) / 3
    headings = [(heading, unit) for heading, unit, _, _ in report.tables()]
    assert headings == [("Area fraction", "area %"), ("Number density", "1/mm²"),
                        ("Mean equivalent circle diameter", "µm")]


def test_count_flagged_counts_an_unaccepted_flagged_field_and_says_so(specimen):
    report = gather_report(specimen.store, specimen.id, specimen.data, count_flagged=True)
    flagged = next(f for f in report.fields if f.id == specimen.flagged)
    assert (flagged.status, flagged.counted) == ("counted", True)
    assert flagged.note == f"{UNLIKE}; counted unaccepted ([specimen] count_flagged)"
    assert report.stats["fields"] == 4 and report.flagged_not_counted == []


def test_models_carry_version_hash_and_held_out_evaluation_from_the_bundle(specimen):
    (pending,) = specimen.store.claim_next()  # measured by a model that is not installed here
    specimen.store.mark_done(pending["id"], record(0.5, model="no-such-model"))
    report = gather_report(specimen.store, specimen.id, specimen.data)
    missing, superalloy = report.models  # by name
    bundle = load_bundle("superalloy")
    assert (superalloy.name, superalloy.fields) == ("superalloy", 6)  # measured originals, duplicate not again
    assert superalloy.onnx_sha256 == bundle.onnx_sha256 and len(superalloy.onnx_sha256) == 64
    assert superalloy.exported_at == bundle.manifest["exported_at"] and not superalloy.problem
    held_out = bundle.manifest["evaluations"]
    assert [e.dataset for e in superalloy.evaluations] == list(held_out)
    first = superalloy.evaluations[0]
    assert first.mean_iou == held_out[first.dataset]["mean_iou"]
    assert first.per_class_iou == held_out[first.dataset]["per_class_iou"]
    assert (missing.name, missing.fields, missing.onnx_sha256) == ("no-such-model", 1, "")
    assert "not a model bundle" in missing.problem


def test_thumbnails_only_from_inside_the_data_folder(specimen, tmp_path):
    outside = write_picture(tmp_path / "elsewhere.png", 10)
    inside = write_picture(specimen.data / "results" / "x.preview.png", 10)
    assert picture({"outputs": {"overlay": str(outside), "preview": str(inside)}}, specimen.data) == ("preview", inside)
    assert picture({"outputs": {"overlay": str(specimen.data / "results" / "gone.png")}}, specimen.data) is None
    assert picture({"outputs": None}, specimen.data) is None
    report = gather_report(specimen.store, specimen.id, specimen.data)
    kinds = {f.id: f.picture and f.picture[0] for f in report.fields}
    assert (kinds[specimen.counted[0]], kinds[specimen.counted[1]], kinds[specimen.excluded]) == (
        "overlay", "preview", None)


def test_no_such_specimen(specimen):
    assert gather_report(specimen.store, 999, specimen.data) is None


def test_numbers_are_printed_one_way():
    assert (number(25.0), number(None), number(0.5551, ".3g"), number(3, "d")) == ("25.00", "–", "0.555", "3")


# -- the chart --------------------------------------------------------------------------------


def test_nice_ticks_cover_the_range_in_round_steps():
    assert nice_ticks(12.3, 47.9) == [10, 20, 30, 40, 50]
    assert nice_ticks(2.41, 3.09) == pytest.approx([2.4, 2.6, 2.8, 3.0, 3.2])
    assert nice_ticks(0.0, 0.5) == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])


def test_chart_layout_is_the_same_picture_with_y_up_or_down():
    trend = {"class": "carbide", "ids": [4, 7, 9], "values": [20.0, 30.0, 25.0], "mean": [20.0, 25.0, 25.0],
             "ci95": [None, 63.5, 12.4]}
    up = layout_trend(trend, 0, 100, 0, 50)
    down = layout_trend(trend, 0, 100, 50, 0)
    assert [x for x, _ in up.values] == [0, 50, 100]
    assert [y for _, y in down.values] == pytest.approx([50 - y for _, y in up.values])
    assert up.x_ticks == [(0, "#4"), (50, "#7"), (100, "#9")]
    assert len(up.band) == 4  # the CI from the second field on, upper then lower edge
    assert up.y_ticks[0] == (0, "0") and up.y_ticks[-1][0] == 50  # a wide CI is clipped at 0 %
    assert layout_trend({**trend, "ids": [], "values": [], "mean": [], "ci95": []}, 0, 1, 0, 1) is None


# -- fonts --------------------------------------------------------------------------------------


def test_without_dejavu_helvetica_spells_out_what_it_lacks(specimen, tmp_path, caplog):
    fonts = pdf_fonts((tmp_path,))
    assert (fonts.regular, fonts.unicode) == ("Helvetica", False)
    assert "fonts-dejavu-core" in caplog.text
    assert fonts.text("γ′ 0.5 µm ± 1 ≤ 2 ☃") == "gamma' 0.5 µm ± 1 <= 2 ?"
    report = gather_report(specimen.store, specimen.id, specimen.data)
    assert "Specimen report: S-17 gamma'" in pdf_text(render_pdf(report, fonts=fonts))


@pytest.mark.skipif(not any((d / "DejaVuSans.ttf").is_file() for d in FONT_DIRS),
                    reason="DejaVu Sans is absent (apt-get install fonts-dejavu-core)")
def test_the_pdf_font_has_gamma_prime_micro_and_plus_minus(specimen):
    report = gather_report(specimen.store, specimen.id, specimen.data)
    text = pdf_text(render_pdf(report))
    assert "Specimen report: S-17 γ′" in text and "0.5 µm pixels" in text and "95 % CI ±" in text
    assert "Mean equivalent circle diameter (µm)" in text


# -- routes ---------------------------------------------------------------------------------------


def test_pdf_holds_the_statistics_fields_decisions_and_sign_off(client, specimen):
    response = client.get(f"/specimens/{specimen.id}/report.pdf")
    assert response.status_code == 200 and response.mimetype == "application/pdf"
    assert response.headers["Content-Disposition"] == f'attachment; filename="S-17-{specimen.id}-report.pdf"'
    text = pdf_text(response.data)
    stats = client.get(f"/api/specimens/{specimen.id}/stats").get_json()
    for name, st in stats["fractions"].items():
        assert re.search(rf"{name}\n\s*3\n\s*{st['mean']:.2f}\n\s*{st['std']:.2f}\n\s*{st['ci95']:.2f}\n", text), name
    assert load_bundle("superalloy").onnx_sha256 in text
    assert "=scratch across the field" in text and "checked by eye under the optical scope" in text
    assert f"{SIGN_OFF}:" in text and "Signature:" in text
    assert len(pypdf.PdfReader(io.BytesIO(response.data)).pages[0].mediabox) == 4


def test_the_operator_is_printed_or_left_as_a_line_to_fill_in(client, specimen):
    def views() -> tuple[str, str]:
        page = client.get(f"/specimens/{specimen.id}/report").get_data(as_text=True)
        return page, pdf_text(client.get(f"/specimens/{specimen.id}/report.pdf").data)

    page, text = views()
    assert '<th scope="row">Operator</th><td><span class="blank"></span></td>' in page
    assert re.search(r"Operator\s*_{40}", text)
    assert client.patch(f"/api/specimens/{specimen.id}", json={"operator": "Zoë O'Brien"}).status_code == 200
    page, text = views()
    assert '<th scope="row">Operator</th><td>Zoë O&#39;Brien</td>' in page
    assert re.search(r"Operator\s*Zoë O'Brien", text) and "_" * 40 not in text


@pytest.mark.parametrize(("paper", "size"), [("a4", (595.3, 841.9)), ("letter", (612.0, 792.0))])
def test_pdf_paper(client, specimen, paper, size):
    page = pypdf.PdfReader(io.BytesIO(client.get(f"/specimens/{specimen.id}/report.pdf?paper={paper}").data)).pages[0]
    assert (float(page.mediabox.width), float(page.mediabox.height)) == pytest.approx(size, abs=0.1)


def test_bad_requests_answer_json(client, specimen):
    for url, status, message in [
        ("/specimens/999/report.pdf", 404, "no specimen 999"),
        ("/specimens/999/report", 404, "no specimen 999"),
        (f"/specimens/{specimen.id}/report?paper=a3", 400, "paper must be one of a4, letter, got 'a3'"),
        (f"/specimens/{2**63}/report.csv", 400, f"specimen id must be 1..{2**63 - 1}, got {2**63}"),
    ]:
        response = client.get(url)
        assert (response.status_code, response.get_json()) == (status, {"error": message}), url


def test_the_report_needs_the_token_and_carries_the_security_headers(specimen):
    locked = create_app(specimen.context(access=Access(token=TOKEN))).test_client()
    for suffix in ("", ".pdf", ".csv"):
        url = f"/specimens/{specimen.id}/report{suffix}"
        assert locked.get(url).status_code == 401, url
        response = locked.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 200, url
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]
        assert response.headers["X-Frame-Options"] == "DENY"


class _Elements(html.parser.HTMLParser):
    """Tags of a page, each with the tags it sits in."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[tuple[str, dict]] = []
        self.found: list[tuple[str, dict, list[tuple[str, dict]]]] = []

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, dict(attrs), list(self.open)))
        if tag not in ("img", "br", "meta", "link", "line", "circle", "polygon", "polyline", "input"):
            self.open.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        while self.open and self.open.pop()[0] != tag:
            pass


def test_the_page_has_a_print_stylesheet_and_nothing_to_click_on_paper(client, specimen):
    page = client.get(f"/specimens/{specimen.id}/report")
    assert page.status_code == 200 and page.mimetype == "text/html"
    body = page.get_data(as_text=True)
    elements = _Elements()
    elements.feed(body)
    sheets = [a["href"] for tag, a, _ in elements.found if tag == "link" and a.get("rel") == "stylesheet"]
    assert sheets == ["/static/report.css"]
    css = client.get(sheets[0]).get_data(as_text=True)
    assert re.search(r"@page\s*\{[^}]*size:\s*A4", css) and re.search(r"@page letter\s*\{\s*size:\s*letter", css)
    assert "body.paper-letter { page: letter; }" in css
    hidden_in_print = re.search(r"@media print\s*\{\s*(?:/\*.*?\*/\s*)?([^{]+)\{\s*display:\s*none", css, re.S)
    assert {s.strip() for s in hidden_in_print.group(1).split(",")} >= {
        ".toolbar", "button", "input", "select", "textarea", "form"}
    # Every link and control is in the toolbar that print hides; CSP: no inline script or style.
    controls = [(tag, parents) for tag, _, parents in elements.found
                if tag in ("a", "button", "input", "select", "textarea", "form")]
    assert controls and all(("nav", {"class": "toolbar", "aria-label": "Report"}) in p for _, p in controls)
    assert not any(tag in ("script", "style") or "style" in a for tag, a, _ in elements.found)
    assert "Specimen report: S-17 γ′" in body and f"{SIGN_OFF}:" in body
    assert 'class="paper-a4"' in body
    assert 'class="paper-letter"' in client.get(f"/specimens/{specimen.id}/report?paper=letter").get_data(True)


def test_the_pages_thumbnails_and_statistics(client, specimen):
    body = client.get(f"/specimens/{specimen.id}/report").get_data(as_text=True)
    pictures = re.findall(r'<img src="([^"]+)"', body)
    assert pictures == [f"/api/images/{specimen.counted[0]}/overlay.jpg",
                        f"/api/images/{specimen.counted[1]}/preview.png",
                        f"/api/images/{specimen.duplicate}/overlay.jpg"]  # its original's
    assert all(client.get(url).status_code == 200 for url in pictures)
    carbide = client.get(f"/api/specimens/{specimen.id}/stats").get_json()["fractions"]["carbide"]
    assert f"<td>{carbide['mean']:.2f}</td><td>{carbide['std']:.2f}</td>" in body
    assert f"<td>{carbide['ci95']:.2f}</td>" in body
    assert "<polyline class=\"mean\"" in body and 'class="band"' in body


def test_csv_has_provenance_columns(client, specimen):
    response = client.get(f"/specimens/{specimen.id}/report.csv")
    assert response.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert list(rows[0])[-len(PROVENANCE_COLUMNS):] == PROVENANCE_COLUMNS == [
        "counted", "status", "file_sha256", "model", "model_onnx_sha256", "backend", "pixel_size_um",
        "pixel_size_source", "accepted_at"]
    by_id = {int(r["id"]): r for r in rows}
    first = by_id[specimen.counted[0]]
    assert (first["counted"], first["status"], first["file_sha256"], first["model"]) == (
        "1", "counted", "sha-a.tif", "superalloy")
    assert first["model_onnx_sha256"] == load_bundle("superalloy").onnx_sha256
    assert (first["backend"], first["pixel_size_um"], first["pixel_size_source"]) == ("cpu", "0.5", "tiff")
    excluded = by_id[specimen.excluded]
    assert (excluded["counted"], excluded["status"]) == ("0", "excluded")
    assert excluded["reason"] == "'=scratch across the field"  # never run as a formula
    accepted = by_id[specimen.accepted]
    assert (accepted["status"], accepted["accepted_by"], accepted["trust_ok"]) == ("accepted", "Ana", "0")
    assert accepted["accepted_at"].endswith("Z")
    failed = by_id[specimen.failed]
    assert (failed["status"], failed["model"], failed["model_onnx_sha256"], failed["error"]) == (
        "failed", "", "", "g.tif: truncated TIFF")
    assert sum(r["counted"] == "1" for r in rows) == 3


PAPER_POINTS = {"a4": (595, 842), "letter": (612, 792)}
CONTROLS = "a, button, input, select, textarea, form, nav"
VISIBLE = f"() => [...document.querySelectorAll('{CONTROLS}')].filter(e => e.getClientRects().length).length"


@pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"{CHROMIUM} is absent (apt-get install -y chromium)")
def test_chromium_prints_the_page_on_a4_and_letter_without_its_links(specimen):
    """Debian's chromium (driven by Playwright) prints the page as a person would."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    ctx = specimen.context()
    handle = serve_in_thread(create_app(ctx), "127.0.0.1", 0)
    refused: list[str] = []
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.on("console", lambda m: "Content Security Policy" in m.text and refused.append(m.text))
            page.on("response", lambda r: r.status >= 400 and not r.url.endswith("/favicon.ico")
                    and refused.append(r.url))
            for paper, points in PAPER_POINTS.items():
                page.emulate_media(media="screen")
                page.goto(f"{handle.url}/specimens/{specimen.id}/report?paper={paper}")
                assert page.evaluate(VISIBLE) > 0  # on screen: the toolbar's links
                page.emulate_media(media="print")
                assert page.evaluate(VISIBLE) == 0, paper
                printed = page.pdf(prefer_css_page_size=True)
                pages = pypdf.PdfReader(io.BytesIO(printed)).pages
                assert {(round(float(p.mediabox.width)), round(float(p.mediabox.height))) for p in pages} == {points}
                text = pdf_text(printed)
                assert "Specimen report: S-17 γ′" in text and f"{SIGN_OFF}:" in text
                assert "Download PDF" not in text and f"page 1 of {len(pages)}" in text
            browser.close()
    finally:
        ctx.events.close()
        handle.stop()
    assert refused == []


def test_a_specimen_without_fields_still_reports(client, specimen):
    empty = specimen.store.start_specimen("S-18")
    text = pdf_text(client.get(f"/specimens/{empty}/report.pdf").data)
    assert "No field counts yet: nothing to estimate." in text and "No field has been measured yet." in text
    page = client.get(f"/specimens/{empty}/report").get_data(as_text=True)
    assert "No field counts yet" in page and "<svg" not in page
    assert client.get(f"/specimens/{empty}/report.csv").get_data(as_text=True).startswith("id,file,specimen,")


def test_pdf_sign_off_follows_the_statistics_on_page_one_when_they_fit(client, specimen):
    """Issue 24: the sign-off is kept with the last statistics table, and on page 1 when both fit
    there (a KeepTogether nested in another had sent them to page 2, leaving page 1 half empty)."""
    specimen.store.accept_field(specimen.flagged, "Ana", "checked")  # no note after the last table
    pages = pypdf.PdfReader(io.BytesIO(client.get(f"/specimens/{specimen.id}/report.pdf").data)).pages
    first = " ".join(pages[0].extract_text().split())
    last_table = first.rfind("Mean equivalent circle diameter")
    assert last_table > first.find("Statistics") > 0
    assert first.find("Sign-off") > last_table and f"{SIGN_OFF}:" in first
