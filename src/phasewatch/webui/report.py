"""A specimen's report, for QA to sign off, in three forms gathered by :mod:`.report_data`:

* ``/specimens/ID/report``: a page that prints cleanly (``static/report.css``: A4, or US
  Letter with ``?paper=letter``; its links are hidden in print; no script);
* ``/specimens/ID/report.pdf``: the same report drawn on the server (:mod:`.report_pdf`),
  on A4 or ``?paper=letter``;
* ``/specimens/ID/report.csv``: the specimen's fields with provenance columns
  (:func:`.csv_export.provenance_csv`).

They sit behind the same guards as every route (token, host, security headers). The
sha256 of every PDF and page served is recorded with the sign-off it shows
(``store/signoff.py``), so ``GET /api/reports/SHA256`` tells whether a copy is one of ours.
"""

from __future__ import annotations

import hashlib
import re

from flask import Blueprint, Response, render_template, request

from phasewatch.webui.context import current_context
from phasewatch.webui.csv_export import provenance_csv
from phasewatch.webui.names import display_name
from phasewatch.webui.report_chart import layout_trend
from phasewatch.webui.report_data import (
    FIELDS_NOTE,
    SIGN_OFF,
    UNCALIBRATED,
    Report,
    gather_report,
    number,
    pct,
    when,
)
from phasewatch.webui.report_pdf import PAPERS, render_pdf
from phasewatch.webui.rest import ApiError, checked_id

blueprint = Blueprint("report", __name__)

# The page's chart: an SVG viewBox of CHART_W x CHART_H, plot inside these margins.
CHART_W, CHART_H = 700, 240
CHART_LEFT, CHART_RIGHT, CHART_TOP, CHART_BOTTOM = 46, 10, 12, 30


def _report(specimen_id: int) -> Report:
    ctx = current_context()
    report = gather_report(ctx.store, checked_id("specimen", specimen_id), ctx.data_dir, ctx.target_ra,
                           ctx.count_flagged)
    if report is None:
        raise ApiError(404, f"no specimen {specimen_id}")
    return report


def _paper() -> str:
    paper = request.args.get("paper", "a4").lower()
    if paper not in PAPERS:
        raise ApiError(400, f"paper must be one of {', '.join(PAPERS)}, got {paper!r}")
    return paper


def _attachment(report: Report, extension: str) -> dict[str, str]:
    # A name a file system and a header take as it is: the specimen's name, plainly spelled.
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", str(report.specimen["name"])).strip("._")[:60] or "specimen"
    return {"Content-Disposition": f'attachment; filename="{slug}-{report.specimen["id"]}-report.{extension}"'}


def _recorded(report: Report, kind: str, body: bytes) -> bytes:
    """``body``, after noting its sha256 (module doc)."""
    current_context().store.record_report(hashlib.sha256(body).hexdigest(), int(report.specimen["id"]), kind,
                                          len(body), report.verdict["verdict"])
    return body


@blueprint.get("/specimens/<int:specimen_id>/report")
def page(specimen_id: int) -> Response:
    report = _report(specimen_id)
    trend = report.stats["trend"]
    plot = (CHART_LEFT, CHART_W - CHART_RIGHT)
    chart = trend and layout_trend(trend, *plot, CHART_H - CHART_BOTTOM, CHART_TOP)
    html = render_template("report.html", report=report, chart=chart, paper=_paper(), sign_off=SIGN_OFF,
                           fields_note=FIELDS_NOTE, uncalibrated=UNCALIBRATED, display_name=display_name,
                           chart_size=(CHART_W, CHART_H), plot=plot, number=number, pct=pct, when=when)
    return Response(_recorded(report, "html", html.encode()), mimetype="text/html")


@blueprint.get("/specimens/<int:specimen_id>/report.pdf")
def pdf(specimen_id: int) -> Response:
    report = _report(specimen_id)
    body = _recorded(report, "pdf", render_pdf(report, _paper()))
    return Response(body, mimetype="application/pdf", headers=_attachment(report, "pdf"))


@blueprint.get("/specimens/<int:specimen_id>/report.csv")
def csv(specimen_id: int) -> Response:
    report = _report(specimen_id)
    body = provenance_csv(report.fields, {m.name: m.onnx_sha256 for m in report.models}, report.verdict)
    return Response(body, mimetype="text/csv", headers=_attachment(report, "csv"))
