"""The HTML pages. Each is a template over ``base.html`` (header, navigation, status,
announcements) and a script module of its own in ``static/``; the data comes from the
JSON API, so a page's URL is all it needs: every view has its own address (an image is
``/images/ID``) to bookmark, send or open in another tab.

| page                       | template          | script           |
|----------------------------|-------------------|------------------|
| ``/`` live view            | ``index.html``    | ``live.js``      |
| ``/fields`` history        | ``fields.html``   | ``fields.js``    |
| ``/images/ID`` one image   | ``field.html``    | ``field.js``     |
| ``/specimens``             | ``specimens.html``| ``specimens.js`` |
| ``/specimens/ID``          | ``specimen.html`` | ``specimen.js``  |
| ``/specimens/compare?ids=``| ``compare.html``  | ``compare.js``   |
| ``/teach`` (``?job=``)     | ``teach.html``    | ``teach.js``     |
| ``/models``                | ``models.html``   | ``models.js``    |
| ``/models/NAME``           | ``model.html``    | ``model.js``     |

An image's page carries the label editor (``_labels.html``, ``label_editor.js``).
``/fields/ID`` is the deprecated old address of ``/images/ID`` (the same page).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template

from phasewatch.webui.context import current_context
from phasewatch.webui.rest import ApiError, checked_id

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


@blueprint.get("/images/<int:file_id>")
@blueprint.get("/fields/<int:file_id>")
def image(file_id: int) -> str:
    """One image's page. ``/fields/ID`` is deprecated: the page's address before 0.2 (when
    "field" meant an image too), kept so that bookmarks and links sent before still open it;
    links now point to ``/images/ID``."""
    # A page of no image would show empty panels and controls that act on nothing.
    if current_context().store.get_image(checked_id("image", file_id)) is None:
        raise ApiError(404, f"no image {file_id}")
    return _page("field.html", "field.js", "fields", file_id=file_id, editable=True)


@blueprint.get("/specimens")
def specimens() -> str:
    return _page("specimens.html", "specimens.js", "specimens")


@blueprint.get("/specimens/<int:specimen_id>")
def specimen(specimen_id: int) -> str:
    if current_context().store.get_specimen(checked_id("specimen", specimen_id)) is None:
        raise ApiError(404, f"no specimen {specimen_id}")
    return _page("specimen.html", "specimen.js", "specimens", specimen_id=specimen_id)


@blueprint.get("/specimens/compare")
def compare() -> str:
    return _page("compare.html", "compare.js", "specimens")


@blueprint.get("/teach")
def teach() -> str:
    return _page("teach.html", "teach.js", "teach")


@blueprint.get("/models")
def models() -> str:
    return _page("models.html", "models.js", "models")


@blueprint.get("/models/<name>")
def model(name: str) -> str:
    return _page("model.html", "model.js", "models", model_name=name)
