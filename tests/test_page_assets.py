"""The pages' templates and static files keep to the Content-Security-Policy (no inline
script or style, nothing from another site) and hold together (every module a script
imports exists; every page's script exists)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

WEBUI = Path(__file__).resolve().parents[1] / "src" / "phasewatch" / "webui"
TEMPLATES = sorted(p for p in (WEBUI / "templates").glob("*.html") if not p.name.startswith("report"))
SCRIPTS = sorted((WEBUI / "static").glob("*.js"))


class _Finder(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self.scripts: list[str] = []

    def handle_starttag(self, tag, attrs):
        names = dict(attrs)
        if tag == "script":
            if "src" not in names:
                self.found.append("inline <script>")
            else:
                self.scripts.append(names["src"])
        if tag == "style":
            self.found.append("<style>")
        self.found += [f"{tag} {n}=" for n in names if n == "style" or n.startswith("on")]
        for key in ("src", "href", "action"):
            if re.match(r"\s*((https?:)?//|javascript:|data:)", names.get(key) or ""):
                self.found.append(f"{tag} {key} elsewhere")


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_templates_use_nothing_the_csp_blocks(template):
    finder = _Finder()
    finder.feed(template.read_text())
    assert finder.found == []


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_set_no_inline_style_nor_markup(script):
    text = script.read_text()
    assert not re.search(r"\.style\b|setAttribute\(\s*['\"]style|innerHTML|outerHTML|insertAdjacentHTML|"
                         r"document\.write|eval\(|new Function", text)
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text)  # nothing from another site
    assert text.startswith("//"), "each module says what it is for"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_import_exists(script):
    for module in re.findall(r'from "\./([\w.-]+)"', script.read_text()):
        assert (WEBUI / "static" / module).is_file(), f"{script.name} imports {module}"


def test_every_page_names_an_existing_script():
    pages = (WEBUI / "pages.py").read_text()
    for template, name in re.findall(r'_page\("([\w.]+)", "([\w.]+)"', pages):
        assert (WEBUI / "templates" / template).is_file(), template
        assert (WEBUI / "static" / name).is_file(), name
    assert (WEBUI / "static" / "favicon.svg").read_text().startswith("<svg")
