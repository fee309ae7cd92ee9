"""The HTML pages. Each is a template over ``base.html`` (header, navigation, status,
announcements) and a script module of its own in ``static/``; the data comes from the
JSON API, so a page's URL is all it needs: every view has its own address (a field is
``/fields/ID``) to bookmark, send or open in another tab.

| page                       | template          | script           |
|----------------------------|-------------------|------------------|
| ``/`` live view            | ``index.html``    | ``live.js``      |
| ``/fields`` history        | ``fields.html``   | ``fields.js``    |
| ``/fields/ID`` one field   | ``field.html``    | ``field.js``     |
| ``/specimens``             | ``specimens.html``| ``specimens.js`` |
| ``/specimens/ID``          | ``specimen.html`` | ``specimen.js``  |
| ``/specimens/compare?ids=``| ``compare.html``  | ``compare.js``   |
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template

from phasewatch.webui.context import current_context
from phasewatch.webui.rest import checked_id

blueprint = Blueprint("pages", __name__)


def _page(template: str, script: str, section: str, **values: Any) -> str:
    """``section`` is the navigation entry the page belongs to (marked as current)."""
    return render_template(template, script=script, section=section,
                           target_ra_pct=current_context().target_ra * 100.0, **values)


@blueprint.get("/")
def live() -> str:
    return _page("index.html", "live.js", "live")


@blueprint.get("/fields")
def fields() -> str:
    return _page("fields.html", "fields.js", "fields")


@blueprint.get("/fields/<int:file_id>")
def field(file_id: int) -> str:
    return _page("field.html", "field.js", "fields", file_id=checked_id("image", file_id), editable=True)


@blueprint.get("/specimens")
def specimens() -> str:
    return _page("specimens.html", "specimens.js", "specimens")


@blueprint.get("/specimens/<int:specimen_id>")
def specimen(specimen_id: int) -> str:
    return _page("specimen.html", "specimen.js", "specimens", specimen_id=checked_id("specimen", specimen_id))


@blueprint.get("/specimens/compare")
def compare() -> str:
    return _page("compare.html", "compare.js", "specimens")
