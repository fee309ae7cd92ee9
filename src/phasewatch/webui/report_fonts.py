"""The PDF report's fonts.

A report names phases γ and γ′ and sizes in µm: the PDF needs a font with those glyphs.
ReportLab's built-in Helvetica has Latin-1 only (no γ, no ′), so the report embeds DejaVu
Sans from the system (Debian and Ubuntu: ``fonts-dejavu-core``, also on a Jetson). Where it
is missing the report still renders in Helvetica, with each character Helvetica cannot
show spelled out (γ as "gamma") or replaced by "?", and says so once in the log.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont

log = logging.getLogger(__name__)

FONT_DIRS = (
    Path("/usr/share/fonts/truetype/dejavu"),  # Debian, Ubuntu
    Path("/usr/share/fonts/dejavu-sans-fonts"),  # Fedora
    Path("/usr/share/fonts/TTF"),  # Arch
)
FILES = {"regular": "DejaVuSans.ttf", "bold": "DejaVuSans-Bold.ttf"}
# What Helvetica (WinAnsi) lacks but a metallographer writes, spelled in what it has.
SPELLED = {"γ": "gamma", "Γ": "Gamma", "α": "alpha", "β": "beta", "δ": "delta", "′": "'", "″": '"',
           "−": "-", "≤": "<=", "≥": ">="}


@dataclass(frozen=True)
class PdfFonts:
    regular: str
    bold: str
    unicode: bool  # False: Helvetica, text goes through :meth:`text`

    def text(self, value: str) -> str:
        """``value`` as the font can show it."""
        if self.unicode:
            return value
        return "".join(ch if _in_winansi(ch) else SPELLED.get(ch, "?") for ch in value)


def _in_winansi(ch: str) -> bool:
    try:
        ch.encode("cp1252")
    except UnicodeEncodeError:
        return False
    return True


@functools.cache
def pdf_fonts(dirs: tuple[Path, ...] = FONT_DIRS) -> PdfFonts:
    """DejaVu Sans from the first of ``dirs`` that has both faces (registered with ReportLab
    once per process), else Helvetica (module doc)."""
    for folder in dirs:
        paths = {face: folder / name for face, name in FILES.items()}
        if all(p.is_file() for p in paths.values()):
            for face, path in paths.items():
                pdfmetrics.registerFont(TTFont(f"DejaVuSans-{face}", str(path)))
            return PdfFonts("DejaVuSans-regular", "DejaVuSans-bold", unicode=True)
    log.warning("report: DejaVuSans.ttf is not in %s (apt-get install fonts-dejavu-core); PDF reports use "
                "Helvetica and spell out what it lacks (γ as 'gamma')", ", ".join(map(str, dirs)))
    return PdfFonts("Helvetica", "Helvetica-Bold", unicode=False)
