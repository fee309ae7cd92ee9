"""The Flask app of ``phasewatch serve``: :func:`create_app` builds it over an
:class:`AppContext` from its blueprints, one module each: :mod:`.pages` (the HTML
pages), :mod:`.api` (fields' JSON API, thumbnails, CSV export, health, metrics),
:mod:`.specimens_api` (specimens and their statistics), :mod:`.openapi` (the API's
description), :mod:`.events_view` (the SSE stream), :mod:`.login` (the token's sign-in
form) and :mod:`.report` (a specimen's printable report). Every error answers JSON
(:mod:`.rest`); :mod:`.security` guards every request (host, origin, token, JSON type,
body size) and adds the security headers.

Events. The daemon publishes ``field`` with :func:`image_json` of a field that has just
ended ``done`` or ``failed``; the API publishes ``specimen`` (:mod:`.api`,
:mod:`.specimens_api`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from flask import Flask
from werkzeug.exceptions import HTTPException

from phasewatch.store import StoreError
from phasewatch.webui import api, events_view, labels_api, login, openapi, pages, report, specimens_api
from phasewatch.webui.context import AppContext, install
from phasewatch.webui.payloads import image_json
from phasewatch.webui.rest import ApiError, JsonProvider, JsonRequest, api_error, http_error, store_error
from phasewatch.webui.security import install_guards
from phasewatch.webui.teach_api import blueprint as teach_blueprint

__all__ = ["AppContext", "create_app", "image_json"]


def create_app(ctx: AppContext) -> Flask:
    """The web app over ``ctx``."""
    app = Flask(__name__)
    app.json = JsonProvider(app)
    app.request_class = JsonRequest
    # Pictures are checked against the real data folder: resolved once, here.
    install(app, dataclasses.replace(ctx, data_dir=Path(ctx.data_dir).resolve()))
    app.register_error_handler(ApiError, api_error)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(StoreError, store_error)
    install_guards(app, ctx.access)
    for blueprint in (pages.blueprint, api.blueprint, specimens_api.blueprint, openapi.blueprint,
                      events_view.blueprint, login.blueprint, report.blueprint, labels_api.blueprint):
        app.register_blueprint(blueprint)
    app.register_blueprint(teach_blueprint)  # teach jobs, models, re-analysis: webui/teach_api.py
    return app
