"""The specimen report as a PDF, drawn by ReportLab (its platypus layout, its graphics
for the chart) from a :class:`~.report_data.Report`: the same sections, numbers and
wording as the printable page, with the fields' overlays embedded as small JPEGs under a
legend of their colours. The sign-off follows the statistics and the verdict it signs,
kept on one page with the last table; every page says "page N of M" (a second pass
over the finished pages, :class:`_NumberedCanvas`).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Container, Sequence
from typing import Any
from xml.sax.saxutils import escape

import cv2
from reportlab.graphics.shapes import Circle, Drawing, Line, Polygon, PolyLine, Rect, String
from reportlab.lib import colors
from reportlab.lib.enums import TA_RIGHT
from reportlab.lib.pagesizes import A4, letter
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import Flowable, Image, KeepTogether, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from phasewatch.webui.names import display_name
from phasewatch.webui.report_chart import layout_trend
from phasewatch.webui.report_data import (
    FIELDS_NOTE,
    SIGN_OFF,
    UNCALIBRATED,
    FieldEntry,
    Report,
    number,
    pct,
    when,
)
from phasewatch.webui.report_fonts import PdfFonts, pdf_fonts

PAPERS = {"a4": A4, "letter": letter}
MARGIN = 15 * mm
THUMB_SIDE_PX = 240  # about 200 dpi at the 30 mm the field list gives a thumbnail
THUMB_MM = 26
INK, MUTED, RULE, BAND, ACCENT = (colors.HexColor(c) for c in ("#111111", "#555555", "#bbbbbb", "#c9ddf2", "#1f5f9f"))


class _Styles:
    """Paragraph styles in the report's font."""

    def __init__(self, fonts: PdfFonts) -> None:
        base = ParagraphStyle("body", fontName=fonts.regular, fontSize=9, leading=11.5, textColor=INK)
        self.body = base
        self.small = ParagraphStyle("small", base, fontSize=7.5, leading=9.5)
        self.muted = ParagraphStyle("muted", self.small, textColor=MUTED)
        self.cell = ParagraphStyle("cell", base, fontSize=8, leading=10)
        self.head = ParagraphStyle("head", self.cell, fontName=fonts.bold)
        self.cell_right = ParagraphStyle("cell_right", self.cell, alignment=TA_RIGHT)
        self.head_right = ParagraphStyle("head_right", self.head, alignment=TA_RIGHT)
        self.title = ParagraphStyle("title", base, fontName=fonts.bold, fontSize=16, leading=20, spaceAfter=2)
        self.h2 = ParagraphStyle("h2", base, fontName=fonts.bold, fontSize=11.5, leading=14, spaceBefore=9,
                                 spaceAfter=4, textColor=ACCENT, keepWithNext=True)
        self.h3 = ParagraphStyle("h3", base, fontName=fonts.bold, spaceBefore=4, spaceAfter=2, keepWithNext=True)


class _Writer:
    """Builds the story (the flowables) of one report."""

    def __init__(self, report: Report, fonts: PdfFonts, width: float) -> None:
        self.report, self.fonts, self.width = report, fonts, width
        self.styles = _Styles(fonts)

    def p(self, text: str, style: ParagraphStyle | None = None) -> Paragraph:
        """A paragraph of plain text (escaped: names and reasons are typed by people); a
        newline breaks the line."""
        return Paragraph(escape(self.fonts.text(text)).replace("\n", "<br/>"), style or self.styles.body)

    def table(self, rows: Sequence[Sequence[Any]], widths: Sequence[float], header: bool = True,
              numeric: Container[int] = ()) -> Table:
        """A ruled table; text cells become paragraphs, right-aligned in the ``numeric`` columns."""
        s = self.styles

        def cell(text: Any, row: int, column: int) -> Any:
            if not isinstance(text, str):
                return text  # a picture
            right = column in numeric
            if header and row == 0:
                return self.p(text, s.head_right if right else s.head)
            return self.p(text, s.cell_right if right else s.cell)

        table = Table([[cell(c, i, j) for j, c in enumerate(r)] for i, r in enumerate(rows)],
                      colWidths=list(widths), repeatRows=1 if header else 0)
        style = [("VALIGN", (0, 0), (-1, -1), "TOP"), ("LINEBELOW", (0, 0), (-1, -1), 0.3, RULE),
                 ("LEFTPADDING", (0, 0), (-1, -1), 3), ("RIGHTPADDING", (0, 0), (-1, -1), 3),
                 ("TOPPADDING", (0, 0), (-1, -1), 2), ("BOTTOMPADDING", (0, 0), (-1, -1), 2)]
        if header:
            style.append(("LINEBELOW", (0, 0), (-1, 0), 0.8, INK))
        table.setStyle(TableStyle(style))
        return table

    def story(self) -> list[Flowable]:
        r, s = self.report, self.styles
        *tables, last = self.statistics()
        # The sign-off is kept on a page with the last table of what it signs. Its block holds that
        # table's flowables, not the table's own KeepTogether: a KeepTogether inside another one
        # measures as 0xffffff high, which sent the sign-off to a new page every time and left
        # page 1 half empty.
        return [
            self.p(f"Specimen report: {r.specimen['name']}", s.title),
            self.p(f"phasewatch {r.software_version} · generated {when(r.generated)}", s.muted),
            Spacer(0, 4 * mm),
            self.facts(),
            *self.verdict(),
            *(KeepTogether(block) for block in tables),
            KeepTogether([*last, *self.sign_off()]),
            *self.models(),
            *self.chart(),
            *self.decisions(),
            *self.audit(),
            *self.fields(),
        ]

    def verdict(self) -> list[Flowable]:
        r, s = self.report, self.styles
        verdict = r.verdict["verdict"]
        out: list[Flowable] = [self.p("Specification and verdict", s.h2)]
        if verdict is None:
            return [*out, self.p("No specification limits were set for this specimen: no verdict.")]
        needed = r.verdict["fields_needed"]
        more = "" if verdict != "undecided" else (
            f" (about {needed} more field(s) needed)" if needed else " (more fields cannot settle it)")
        out.append(self.p(f"Verdict: {verdict.upper()}{more}", s.h3))
        rows: list[Sequence[Any]] = [("Class", "measure", "limits", "mean ± 95 % CI", "% RA (target)", "verdict",
                                      "why")]
        rows += [(c["label"], c["measure_label"], f"{c['range']} {c['unit_label']}".strip(),
                  "–" if c["ci95"] is None else f"{c['mean']:.4g} ± {c['ci95']:.3g}",
                  f"{number(c['ra_pct'], '.1f')} ({c['target_ra_pct']:g})", c["verdict"], c["why"])
                 for c in r.checks()]
        w = self.width
        out.append(self.table(rows, [30 * mm, 18 * mm, 24 * mm, 26 * mm, 20 * mm, 17 * mm, w - 135 * mm]))
        return out

    def facts(self) -> Table:
        r = self.report
        stats = r.stats
        measured = sum(f.measured for f in r.fields)
        rows = [
            ("Specimen", f"{r.specimen['name']} (id {r.specimen['id']}), started {when(r.specimen['created'])}"),
            ("Notes", r.specimen.get("notes") or "none"),
            ("Operator", r.operator or "_" * 40),
            ("Fields", f"{stats['fields']} counted of {measured} measured, {len(r.fields)} files in all"),
            ("Pixel size", r.pixel_size),
            ("Backend", ", ".join(r.backends) or "none yet"),
            ("State", self.state()),
            ("Target", f"{number(stats['target_ra_pct'], '.0f')} % relative accuracy at 95 % confidence "
                       "(Student's t), after ASTM E562 / E1245"),
        ]
        return self.table(rows, [28 * mm, self.width - 28 * mm], header=False)

    def state(self) -> str:
        specimen = self.report.specimen
        if specimen["closed"] is None:
            return "current: new fields come here" if specimen["is_current"] else "open (not signed off)"
        return f"closed {when(specimen['closed'])} by {specimen['closed_by']}: {specimen['close_meaning']}"

    def models(self) -> list[Flowable]:
        out: list[Flowable] = [self.p("Model", self.styles.h2)]
        if not self.report.models:
            out.append(self.p("No field has been measured yet."))
        for m in self.report.models:
            if m.problem:
                out.append(self.p(f"{m.name} ({m.fields} fields): bundle not readable: {m.problem}"))
                continue
            out.append(self.p(f"{m.name}: {m.architecture}, version exported {m.exported_at}; "
                              f"measured {m.fields} field(s) of this specimen"))
            out.append(self.p(f"ONNX sha256 {m.onnx_sha256}", self.styles.small))
            out.append(self.p(f"Trust: {m.trust_calibration or 'no trust calibration in its manifest'}",
                              self.styles.small))
            if not m.evaluations:
                out.append(self.p("No held-out evaluation recorded in its manifest.", self.styles.small))
                continue
            rows: list[Sequence[Any]] = [("Held-out set", "per-class IoU (%)", "images", "pixel accuracy",
                                          "mean IoU", "flagged")]
            rows += [(f"{e.dataset}\n{e.evaluated_at[:10]}",
                      ", ".join(f"{k} {100 * v:.1f}" for k, v in e.per_class_iou.items()),
                      number(e.images, "d"), pct(e.pixel_accuracy), pct(e.mean_iou),
                      "–" if e.flagged is None else f"{e.flagged} of {e.images}")
                     for e in m.evaluations]
            w = self.width
            out += [Spacer(0, 1.5 * mm),
                    self.table(rows, [30 * mm, w - 99 * mm, 14 * mm, 20 * mm, 17 * mm, 18 * mm], numeric=range(2, 6))]
        return out

    def statistics(self) -> list[list[Flowable]]:
        """Blocks, each kept on one page: one per table, the heading with the first and the note
        on flagged fields with the last; without a table, the heading and why."""
        r = self.report
        heading = "Statistics" + ("" if r.calibrated else f" ({UNCALIBRATED})")
        out: list[list[Flowable]] = []
        tables = list(r.tables())
        if not tables:
            out.append([self.p("No field counts yet: nothing to estimate.")])
        for title, unit, spec, per_class in tables:
            rows: list[Sequence[Any]] = [("Class", "n", "mean", "s", "95 % CI ±", "% RA", "area-weighted mean",
                                          "fields needed")]
            rows += [(name, str(st["n"]), number(st["mean"], spec), number(st["std"], spec),
                      number(st["ci95"], spec), number(st["ra_pct"], ".1f"), number(st["weighted_mean"], spec),
                      number(st["fields_needed"], "d")) for name, st in per_class]
            w = self.width
            out.append([
                self.p(f"{title} ({unit})", self.styles.h3),
                self.table(rows, [w - 131 * mm, 10 * mm, 20 * mm, 20 * mm, 20 * mm, 14 * mm, 27 * mm, 20 * mm],
                           numeric=range(1, 8)),
                Spacer(0, 3 * mm)])
        out[0].insert(0, self.p(heading, self.styles.h2))
        if r.stats["flagged_pending"]:
            out[-1].append(self.p(f"{r.stats['flagged_pending']} flagged field(s) await an operator's acceptance and "
                              + ("are counted anyway ([specimen] count_flagged)." if r.stats["count_flagged"]
                                 else "are not counted."), self.styles.small))
        return out

    def audit(self) -> list[Flowable]:
        lines = self.report.audit_lines()
        out: list[Flowable] = [self.p("Audit trail", self.styles.h2)]
        if not lines:
            return [*out, self.p("Nobody has changed this specimen or its fields.")]
        w = self.width
        out.append(self.p("Every change a person made to this specimen and its fields, from the appliance's "
                          "hash-chained audit record (phasewatch audit verify).", self.styles.small))
        out.append(self.table([("When", "Who", "What", "Detail"), *lines], [30 * mm, 28 * mm, 38 * mm, w - 96 * mm]))
        return out

    def legend(self) -> list[Flowable]:
        """The overlay colours, as swatches with the class names."""
        entries = self.report.legend
        if not entries:
            return []
        cells: list[Any] = []
        for name, colour in entries:
            swatch = Drawing(8, 8)
            swatch.add(Rect(0, 0, 8, 8, fillColor=colors.HexColor(colour), strokeColor=INK, strokeWidth=0.3))
            cells += [swatch, self.p(name, self.styles.small)]
        table = Table([cells], colWidths=[4 * mm, 30 * mm] * len(entries), hAlign="LEFT")
        table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "MIDDLE"), ("LEFTPADDING", (0, 0), (-1, -1), 1)]))
        return [self.p("Overlay colours:", self.styles.small), table, Spacer(0, 1.5 * mm)]

    def chart(self) -> list[Flowable]:
        trend = self.report.stats["trend"]
        height = 62 * mm
        layout = trend and layout_trend(trend, 14 * mm, self.width - 4 * mm, 9 * mm, height - 4 * mm)
        if not layout:
            return []
        drawing = Drawing(self.width, height)
        font = self.fonts.regular
        for y, label in layout.y_ticks:
            drawing.add(Line(14 * mm, y, self.width - 4 * mm, y, strokeColor=RULE, strokeWidth=0.3))
            drawing.add(String(12 * mm, y - 2.5, label, fontName=font, fontSize=7, textAnchor="end"))
        for x, label in layout.x_ticks:
            drawing.add(String(x, 4 * mm, label, fontName=font, fontSize=7, textAnchor="middle"))
        if len(layout.band) > 2:
            drawing.add(Polygon([c for p in layout.band for c in p], fillColor=BAND, strokeColor=None))
        drawing.add(PolyLine([c for p in layout.mean for c in p], strokeColor=ACCENT, strokeWidth=1.2))
        for x, y in layout.values:
            drawing.add(Circle(x, y, 1.6, fillColor=INK, strokeColor=None))
        drawing.add(String(14 * mm, 0, "field", fontName=font, fontSize=7, fillColor=MUTED))
        title = (f"{layout.phase}: area % per counted field (dots), running mean (line) and its 95 % "
                 "confidence interval (band)")
        return [KeepTogether([self.p("Running estimate", self.styles.h2), self.p(title, self.styles.small),
                              drawing])]

    def decisions(self) -> list[Flowable]:
        r = self.report
        out: list[Flowable] = [self.p("Trust and operators' decisions", self.styles.h2)]
        out.append(self.p(
            f"{r.flagged_total} measured field(s) flagged by the model as outside its experience: "
            f"{len(r.accepted)} accepted by an operator, {len(r.flagged_not_counted)} not counted. "
            f"{len(r.excluded)} field(s) excluded by an operator."))
        w = self.width
        for title, entries, what in r.decision_groups():
            if entries:
                rows: list[Sequence[Any]] = [("Field", what)]
                rows += [(f"#{e.id} {e.file}", e.note) for e in entries]
                out += [self.p(f"{title} ({len(entries)})", self.styles.h3), self.table(rows, [50 * mm, w - 50 * mm])]
        return out

    def fields(self) -> list[Flowable]:
        classes = self.report.classes
        fixed = (THUMB_MM + 2 + 34 + 16) * mm
        per_class = min(20 * mm, (self.width - fixed - 40 * mm) / max(1, len(classes)))
        rows: list[Sequence[Any]] = [("", "Field", "Status", *map(display_name, classes), "Note")]
        rows += [self.field_row(f, classes) for f in self.report.fields]
        widths = [(THUMB_MM + 2) * mm, 34 * mm, 16 * mm, *[per_class] * len(classes)]
        table = self.table(rows, [*widths, self.width - sum(widths)], numeric=range(3, 3 + len(classes)))
        return [self.p("Fields", self.styles.h2), self.p(FIELDS_NOTE, self.styles.small), *self.legend(), table]

    def field_row(self, entry: FieldEntry, classes: Sequence[str]) -> Sequence[Any]:
        row = entry.row
        thumb: Any = ""
        if entry.picture is not None and (jpeg := thumbnail_jpeg(str(entry.picture[1]))):
            thumb = Image(io.BytesIO(jpeg), width=THUMB_MM * mm, height=THUMB_MM * mm, kind="proportional")
        fractions = row.get("fractions") or {}
        return (thumb, f"#{entry.id} {entry.file}\n{when(row['processed'])}", entry.status,
                *(number(100 * fractions[c] if c in fractions else None) for c in classes), entry.note)

    def sign_off(self) -> list[Flowable]:
        specimen = self.report.specimen
        head = [self.p("Sign-off", self.styles.h2)]
        if specimen["closed"] is not None:
            verdict = self.report.verdict["verdict"]
            return [*head, self.p(
                f"Closed with an electronic signature by {specimen['closed_by']} on {when(specimen['closed'])}, "
                f"meaning: {specimen['close_meaning']}. Verdict at closing: {verdict or 'no limits set'}."),
                self.p("This report's sha256 is recorded by the appliance: GET /api/reports/SHA256 shows what it "
                       "served under that hash.", self.styles.small)]
        lines = self.table([(f"{SIGN_OFF}:", ""), ("Signature:", ""), ("Date:", "")], [45 * mm, 85 * mm],
                           header=False)
        # Room to write by hand on each line; the rule under the blank is the line to write on.
        lines.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "BOTTOM"), ("TOPPADDING", (0, 0), (-1, -1), 14),
                                   ("LINEBELOW", (0, 0), (0, -1), 0, colors.white),
                                   ("LINEBELOW", (1, 0), (1, -1), 0.8, INK)]))
        lines.hAlign = "LEFT"
        return [*head, self.p("Not signed off in phasewatch. I have reviewed the statistics, the fields and the "
                              "decisions in this report."), lines]


def thumbnail_jpeg(path: str) -> bytes | None:
    """A small JPEG of a picture on disk; None when it cannot be read."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        return None
    scale = THUMB_SIDE_PX / max(image.shape[:2])
    if scale < 1:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 82])
    return encoded.tobytes() if ok else None


def render_pdf(report: Report, paper: str = "a4", fonts: PdfFonts | None = None) -> bytes:
    """The report as PDF bytes on ``paper`` (a key of :data:`PAPERS`), in ``fonts``
    (:func:`.report_fonts.pdf_fonts` unless given)."""
    fonts = fonts or pdf_fonts()
    size = PAPERS[paper]
    out = io.BytesIO()
    name = fonts.text(str(report.specimen["name"]))
    doc = SimpleDocTemplate(out, pagesize=size, leftMargin=MARGIN, rightMargin=MARGIN, topMargin=MARGIN,
                            bottomMargin=MARGIN + 4 * mm, title=f"phasewatch report: {name}",
                            author="phasewatch", subject=f"specimen {report.specimen['id']}",
                            creator=f"phasewatch {report.software_version}")
    footer = f"phasewatch {report.software_version} · {name} · generated {when(report.generated)}"

    def footer_at(canvas: Canvas, page: int, pages: int) -> None:
        canvas.saveState()
        canvas.setFont(fonts.regular, 7)
        canvas.setFillColor(MUTED)
        canvas.drawString(MARGIN, MARGIN, footer)
        canvas.drawRightString(size[0] - MARGIN, MARGIN, f"page {page} of {pages}")
        canvas.restoreState()

    def canvas_maker(*args: Any, **kwargs: Any) -> _NumberedCanvas:
        return _NumberedCanvas(footer_at, *args, **kwargs)

    doc.build(_Writer(report, fonts, size[0] - 2 * MARGIN).story(), canvasmaker=canvas_maker)
    return out.getvalue()


class _NumberedCanvas(Canvas):
    """A canvas that keeps each page until the last, then draws the footer with the total
    (the count is known only once the story is laid out)."""

    def __init__(self, footer: Callable[[Canvas, int, int], None], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._footer = footer
        self._pages: list[dict[str, Any]] = []

    def showPage(self) -> None:  # noqa: N802 (ReportLab's name)
        self._pages.append(dict(self.__dict__))
        self._startPage()

    def save(self) -> None:
        for number_, state in enumerate(self._pages, 1):
            self.__dict__.update(state)
            self._footer(self, number_, len(self._pages))
            super().showPage()
        super().save()
