"""The live page (``/``); its script and styles are the app's static files."""

from __future__ import annotations

from flask import Blueprint, render_template

from phasewatch.webui.context import current_context

blueprint = Blueprint("pages", __name__)


@blueprint.get("/")
def index() -> str:
    return render_template("index.html", target_ra_pct=current_context().target_ra * 100.0)
