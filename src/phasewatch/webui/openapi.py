"""The OpenAPI 3 description of the HTTP API, served at ``/api/openapi.json``.

Written by hand, next to the routes it describes; ``tests/test_web_security.py`` checks
that every route of the app (``/api/...``, ``/events``, ``/export.csv``, ``/healthz``,
``/metrics``, the pages and the reports) and its methods are here and that nothing here
is missing from the app. The pages are listed as what they are, HTML (tag ``pages``);
``/``, ``/login``, ``/logout`` and static files are left out. The schemas of images, their
records (``openapi_records.py``) and specimens are held to the TypedDicts of what the routes
return (``webui/payloads.py``, ``store/rows.py``, ``core/records.py``) by
``tests/test_record_schema.py``.
"""

from __future__ import annotations

import copy
from typing import Any

from flask import Blueprint, Response, jsonify

from phasewatch.core.verdict import MEASURES as LIMIT_MEASURES
from phasewatch.core.volume_views import SLICE_PICTURES
from phasewatch.store import MEANINGS
from phasewatch.webui.api import DEFAULT_LIMIT, IMAGE_STATES, MAX_LIMIT, MAX_QUERY
from phasewatch.webui.openapi_records import RECORD_SCHEMAS, nullable, ref
from phasewatch.webui.payloads import PICTURE_TYPES, PICTURES
from phasewatch.webui.rest import MAX_ID, MAX_NAME, MAX_TEXT
from phasewatch.webui.security import COOKIE

blueprint = Blueprint("openapi", __name__)

JSON = "application/json"


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(ref("Error"), description)


def _id_param(name: str, what: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": f"the {what}'s id",
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID}}


def _query_int(name: str, description: str, maximum: int = MAX_ID, default: int | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer", "minimum": 1, "maximum": maximum}
    if default is not None:
        schema["default"] = default
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


def _text(limit: int) -> dict[str, Any]:
    return {"type": "string", "maxLength": limit}


def _name(limit: int) -> dict[str, Any]:
    """A text field that must hold something besides spaces when given."""
    return {"type": "string", "maxLength": limit, "pattern": r"\S"}


def _body(properties: dict[str, Any], required: list[str], min_properties: int = 0) -> dict[str, Any]:
    # Required even where the API takes an empty body: it must still be sent as
    # application/json (a body-less POST is what another origin's form can send).
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    if min_properties:
        schema["minProperties"] = min_properties
    return {"required": True, "content": {JSON: {"schema": schema}}}


# Answers every state-changing route can give besides its own.
_CHANGE_ERRORS = {
    "400": _error("a body or parameter the API refuses"),
    "403": _error("the request came from another origin"),
    "413": _error("the body is larger than 1 MiB"),
    "415": _error("the body is not sent as application/json"),
}
_IMAGE_ERRORS = {"400": _error("an id out of range"), "404": _error("no such image")}
_SPECIMEN_ERRORS = {"400": _error("an id out of range"), "404": _error("no such specimen")}
_MEASURED_ERRORS = {**_IMAGE_ERRORS, **_CHANGE_ERRORS,
                    "409": _error("the image is not a measured field (or, to accept, not flagged)")}

def _every_key(schema: dict[str, Any], but: tuple[str, ...] = ()) -> dict[str, Any]:
    """``schema`` with each of its properties required, ``but`` those some answers lack."""
    return {**schema, "required": [k for k in schema["properties"] if k not in but]}


_SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "Trust": {"type": "object", "required": ["ok", "score", "reasons"], "properties": {
        "ok": {"type": "boolean"}, "score": {"type": "number", "nullable": True},
        "reasons": {"type": "array", "items": {"type": "string"}}}},
    "Image": _every_key({"type": "object", "properties": {
        "id": {"type": "integer"}, "file": {"type": "string"}, "path": {"type": "string"},
        "state": {"type": "string", "enum": ["pending", "processing", "done", "failed"]},
        "error": {"type": "string", "nullable": True}, "specimen": {"type": "string"},
        "specimen_id": {"type": "integer"},
        "fractions": {"type": "object", "nullable": True, "additionalProperties": {"type": "number"}},
        "phases": {"type": "array", "items": {"type": "string"}},
        "created": {"type": "number"}, "processed": {"type": "number", "nullable": True},
        "duplicate_of": {"type": "integer", "nullable": True},
        "same_pixels_as": {"type": "integer", "nullable": True, "description": "likely the same field as this "
                           "older one of its specimen (the same pixels re-saved): not counted until accepted"},
        "excluded": {"type": "boolean"},
        "exclude_reason": {"type": "string", "nullable": True}, "trust": nullable(ref("Trust")),
        "accepted": {"type": "boolean"}, "accepted_by": {"type": "string", "nullable": True},
        "accept_reason": {"type": "string", "nullable": True},
        "accepted_at": {"type": "number", "nullable": True},
        "pictures": {"type": "object", "additionalProperties": {"type": "string"},
                     "description": f"URL of each picture the field has: {', '.join(PICTURES)}"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"},
                   "description": "display name of each class in fractions (e.g. 'secondary γ′')"},
        "thumbnail": {"type": "string", "nullable": True,
                      "description": "URL of a small JPEG, versioned: cached for good"},
        "slices": {"type": "integer", "nullable": True,
                   "description": "a volume's number of slices (its pictures are its middle slice's); "
                                  "null for a field"}}}),
    "Class": {"type": "object", "required": ["id", "name", "label", "colour", "role"], "properties": {
        "id": {"type": "integer", "nullable": True}, "name": {"type": "string", "description": "as the model names it"},
        "label": {"type": "string", "description": "display name"},
        "colour": {"type": "string", "nullable": True, "description": "#rrggbb"},
        "role": {"type": "string", "nullable": True, "enum": ["phase", "background", "excluded", None]}}},
    "Provenance": _every_key({"type": "object", "description": "where a field's numbers come from", "properties": {
        "file": {"type": "string"}, "path": {"type": "string"}, "sha256": {"type": "string"},
        "size": {"type": "integer"}, "captured": {"type": "number", "description": "file modification time"},
        "arrived": {"type": "number"}, "processed": {"type": "number", "nullable": True},
        "model": {"type": "string", "nullable": True}, "onnx_sha256": {"type": "string", "nullable": True},
        "architecture": {"type": "string", "nullable": True}, "exported_at": {"type": "string", "nullable": True},
        "backend": {"type": "string", "nullable": True}, "tiling": nullable(ref("ModelTiling")),
        "software": {"type": "string", "nullable": True}, "width": {"type": "integer", "nullable": True},
        "height": {"type": "integer", "nullable": True}, "page": {"type": "integer", "nullable": True},
        "pages": {"type": "integer"}, "slices": {"type": "integer", "nullable": True},
        "pixel_size_um": {"type": "number", "nullable": True},
        "pixel_size_source": {"type": "string", "nullable": True}}}),
    "ImageDetail": {"allOf": [ref("Image"), _every_key({"type": "object", "properties": {
        "measurement": {**nullable(ref("FieldRecord")), "description": "the field's whole record, as stored"},
        "classes": {"type": "array", "items": ref("Class")}, "provenance": ref("Provenance")}})]},
    "Specimen": _every_key({"type": "object", "properties": {
        "id": {"type": "integer"}, "name": {"type": "string"}, "notes": {"type": "string"},
        "operator": {"type": "string", "description": "who prepared and imaged it; empty when nobody said"},
        "folder": {"type": "string", "nullable": True}, "created": {"type": "number"},
        "is_current": {"type": "integer", "enum": [0, 1]},
        "model_name": {"type": "string", "nullable": True, "description": "the one model whose fields it holds"},
        "model_sha256": {"type": "string", "nullable": True},
        "derived_from": {"type": "integer", "nullable": True,
                         "description": "the specimen it was started from when the model changed"},
        "closed": {"type": "number", "nullable": True, "description": "when it was closed; null while open"},
        "closed_by": {"type": "string", "nullable": True, "description": "who signed it off; null while open"},
        "close_meaning": {"type": "string", "nullable": True,
                          "description": "what that signature means (reviewed and released, rejected, ...)"},
        "files": {"type": "integer", "description": "only in the list of specimens"},
        "done": {"type": "integer", "description": "only in the list of specimens"},
        "failed": {"type": "integer", "description": "only in the list of specimens"},
        "last_file": {"type": "number", "nullable": True, "description": "only in the list of specimens"}}},
        but=("files", "done", "failed", "last_file")),
    "Stats": {"type": "object", "description": "runtime.stats.specimen_statistics plus the specimen",
              "properties": {
                  "specimen_id": {"type": "integer"}, "fields": {"type": "integer"},
                  "target_ra_pct": {"type": "number"}, "fractions": {"type": "object"},
                  "number_density": {"type": "object"}, "mean_ecd": {"type": "object"},
                  "main_phase": {"type": "string", "nullable": True},
                  "trend": {"type": "object", "nullable": True},
                  "trends": {"type": "object", "description": "per class: ids, values, running mean and ci95"},
                  "ecd_histograms": {"type": "object", "description": "per phase class: edges, counts, unit"},
                  "flagged_pending": {"type": "integer"}, "count_flagged": {"type": "boolean"},
                  "specimen": ref("Specimen"), "classes": {"type": "array", "items": ref("Class")},
                  "verdict": {"type": "object", "description": "core.verdict.judge: verdict (pass, fail, undecided; "
                              "null without limits), checks (one per limit: mean, ci95, low, high, ra_pct, verdict, "
                              "why, fields_needed), fields_needed"}}},
    "Limit": {"type": "object", "required": ["class"], "properties": {
        "class": {"type": "string"}, "measure": {"type": "string", "enum": list(LIMIT_MEASURES)},
        "lower": {"type": "number", "nullable": True}, "upper": {"type": "number", "nullable": True},
        "target_ra_pct": {"type": "number", "nullable": True,
                          "description": "relative accuracy to reach, %; null: the service's target"}}},
    "Limits": {"type": "object", "properties": {"specimen_id": {"type": "integer"},
                                                "limits": {"type": "array", "items": ref("Limit")}}},
    "LimitTemplate": {"type": "object", "properties": {
        "name": {"type": "string"}, "limits": {"type": "array", "items": ref("Limit")}, "created": {"type": "number"},
        "created_by": {"type": "string"}}},
    "AuditRow": {"type": "object", "properties": {
        "seq": {"type": "integer"}, "at": {"type": "number"}, "actor": {"type": "string"},
        "action": {"type": "string"}, "subject": {"type": "string"}, "before": {"nullable": True},
        "after": {"nullable": True}, "reason": {"type": "string"}, "prev_hash": {"type": "string"},
        "hash": {"type": "string"}}},
    "ReportRecord": {"type": "object", "properties": {
        "sha256": {"type": "string"}, "specimen_id": {"type": "integer"}, "kind": {"type": "string"},
        "size": {"type": "integer"}, "created": {"type": "number"}, "closed": {"type": "number", "nullable": True},
        "closed_by": {"type": "string", "nullable": True}, "close_meaning": {"type": "string", "nullable": True},
        "verdict": {"type": "string", "nullable": True}}},
    "Health": {"type": "object", "required": ["ok"], "properties": {
        "ok": {"type": "boolean"},
        "failing": {"type": "array", "items": {"type": "string"},
                    "description": "without the token: the failing components (disk, watch, worker, ...)"},
        "reasons": {"type": "array", "items": {"type": "string"}, "description": "with the token: one line each"},
        "problems": {"type": "object", "description": "with the token: component -> reason"}}},
    **RECORD_SCHEMAS,
}

def _page(summary: str, *params: dict[str, Any], deprecated: bool = False) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": "the page (its data comes from the API)",
                                         "content": {"text/html": {"schema": {"type": "string"}}}}}
    if params:
        responses |= {"400": _error("an id beyond the largest one"),
                      "404": _error("no such image or specimen, or an id that is not a number >= 0")}
    operation = {"summary": summary, "tags": ["pages"], "parameters": list(params), "responses": responses}
    return {"get": {**operation, "deprecated": True} if deprecated else operation}


_PAGES: dict[str, Any] = {
    "/fields": _page("page: the history of fields, searchable (q, state, from, to, specimen), paged"),
    "/images/{file_id}": _page("page: one image (pictures, legend, measurements, trust, provenance, labels)",
                               _id_param("file_id", "image")),
    "/fields/{file_id}": _page("page: the old address of /images/{file_id}, the same page",
                               _id_param("file_id", "image"), deprecated=True),
    "/specimens": _page("page: the specimens; start, switch, close, reopen, compare"),
    "/specimens/{specimen_id}": _page("page: one specimen's statistics", _id_param("specimen_id", "specimen")),
    "/specimens/compare": _page("page: specimens side by side (ids=1,2,...)"),
    "/teach": _page("page: teach a material (its labelled fields, base, budget), follow the job, its gate"),
    "/models": _page("page: bundled and taught models with parent, material and gate; activate, roll back"),
    "/models/{name}": _page("page: one model (facts, gate, re-analysis of a specimen)",
                            {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}),
}


def _report(summary: str, media: str, paper: bool = True) -> dict[str, Any]:
    params = [_id_param("specimen_id", "specimen")]
    if paper:
        params.append(_query("paper", "page size", {"type": "string", "enum": ["a4", "letter"], "default": "a4"}))
    return {"get": {"summary": summary, "tags": ["reports"], "parameters": params,
                    "responses": {"200": {"description": summary, "content": {media: {"schema": {"type": "string"}}}},
                                  **_SPECIMEN_ERRORS}}}


_REPORTS: dict[str, Any] = {
    "/specimens/{specimen_id}/report": _report("a specimen's report, as a page that prints", "text/html"),
    "/specimens/{specimen_id}/report.pdf": _report("a specimen's report as PDF", "application/pdf"),
    "/specimens/{specimen_id}/report.csv": _report("a specimen's fields with provenance columns", "text/csv",
                                                   paper=False),
}

_JOB = {"type": "object", "description": "a teach job", "properties": {
    "job": {"type": "string"},
    "state": {"type": "string", "enum": ["queued", "running", "done", "failed", "cancelled"]},
    "progress": {"type": "number", "minimum": 0, "maximum": 1},
    "model": {"type": "string", "nullable": True, "description": "NAME@N, once made"},
    "gate": {"type": "object", "nullable": True, "description": "passed, rule, reasons, held_out {candidate, base?, "
             "images}, reference {measured, forgetting_points, ...}"},
    "error": {"type": "string", "nullable": True}, "stage": {"type": "string"}, "message": {"type": "string"},
    "warnings": {"type": "array", "items": {"type": "string"}},
    "eta_s": {"type": "number", "nullable": True}, "elapsed_s": {"type": "number"}}}
_MODEL = {"type": "object", "properties": {
    "name": {"type": "string"}, "source": {"type": "string", "enum": ["bundled", "taught"]},
    "material": {"type": "string"}, "parent": {"type": "string", "nullable": True},
    "onnx_sha256": {"type": "string"}, "classes": {"type": "array", "items": ref("Class")},
    "gate": {"type": "object", "nullable": True}, "fields": {"type": "array", "nullable": True},
    "budget_min": {"type": "number", "nullable": True}}}
_WHO = {"who": _name(MAX_NAME), "reason": _text(MAX_TEXT)}
_MATERIAL = {"type": "object", "properties": {
    "name": {"type": "string"}, "source": {"type": "string", "enum": ["bundled", "made"]},
    "classes": {"type": "array", "items": {"type": "object", "properties": {
        "name": {"type": "string"}, "colour": {"type": "string", "description": "#rrggbb"},
        "role": {"type": "string", "enum": ["phase", "background", "excluded"]}}}},
    "target_miou": {"type": "number"}, "created": {"type": "number", "nullable": True},
    "created_by": {"type": "string", "nullable": True}}}
_LABELS_PATHS: dict[str, Any] = {
    "/api/materials": {
        "get": {"summary": "materials (class sets): bundled models' first, then those people made",
                "responses": {"200": _json({"type": "object", "properties": {
                    "materials": {"type": "array", "items": _MATERIAL}}}, "materials")}},
        "post": {"summary": "make a material: names, colours and roles of its classes (index = class id)",
                 "requestBody": _body({"name": _name(MAX_NAME), "who": _name(MAX_NAME),
                                       "classes": {"type": "array", "minItems": 2, "items": {
                                           "type": "object", "required": ["name", "colour"], "properties": {
                                               "name": {"type": "string"}, "colour": {"type": "string"},
                                               "role": {"type": "string", "enum": ["phase", "background",
                                                                                   "excluded"]}}}}},
                                      ["name", "who", "classes"]),
                 "responses": {"201": _json(_MATERIAL, "the material"), **_CHANGE_ERRORS}}},
    "/api/materials/{name}/fields": {"get": {
        "summary": "the fields labelled with a material: newest labels' version, who, when, labelled pixels",
        "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {"200": _json({"type": "object", "properties": {"fields": {"type": "array", "items": {
            "type": "object"}}}}, "the labelled fields"), "404": _error("no such material")}}},
    "/api/images/{file_id}/labels": {
        "get": {"summary": "the newest labels of a field for a material: a one-channel PNG of class ids, "
                           "255 = not labelled",
                "parameters": [_id_param("file_id", "image"),
                               {"name": "material", "in": "query", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "PNG", "content": {"image/png": {"schema": {
                    "type": "string", "format": "binary"}}}}, **_IMAGE_ERRORS}},
        "put": {"summary": "save a new version of a field's labels (every version is kept, with who and when)",
                "parameters": [_id_param("file_id", "image")],
                "requestBody": _body({"material": _name(MAX_NAME), "who": _name(MAX_NAME),
                                      "png": {"type": "string", "format": "byte", "description":
                                              "base64 of a one-channel PNG of the field's size: class ids, "
                                              "255 = not labelled"}}, ["material", "who", "png"]),
                "responses": {"201": _json({"type": "object"}, "the saved version (no PNG)"), **_IMAGE_ERRORS,
                              **_CHANGE_ERRORS, "413": _error("the body is larger than 32 MiB")}}},
}

_TEACH_PATHS: dict[str, Any] = {
    "/api/teach": {
        "get": {"summary": "every teach job, newest first",
                "responses": {"200": _json({"type": "object", "properties": {"jobs": {"type": "array", "items": _JOB}}},
                                           "jobs"), "503": _error("the web app runs without the service")}},
        "post": {"summary": "teach a model: fine-tune a base on a material's labelled fields, gate it (202: started)",
                 "requestBody": _body({"material": _name(MAX_NAME), "base": _name(MAX_NAME),
                                       "fields": {"type": "array", "items": {"type": "integer", "minimum": 1}},
                                       "budget_min": {"type": "number", "exclusiveMinimum": True, "minimum": 0},
                                       "name": _text(MAX_NAME), "who": _name(MAX_NAME)},
                                      ["material", "base", "budget_min", "who"]),
                 "responses": {"202": _json({"type": "object", "properties": {"job": {"type": "string"}}}, "started"),
                               **_CHANGE_ERRORS, "404": _error("no such material or base model"),
                               "409": _error("too few labelled fields"),
                               "503": _error("the web app runs without the service")}}},
    "/api/teach/{job}": {
        "get": {"summary": "a teach job's state, progress, model and gate",
                "parameters": [{"name": "job", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": _json(_JOB, "the job"), "404": _error("no such job"),
                              "503": _error("the web app runs without the service")}},
        "delete": {"summary": "cancel a teach job (body: {} or {who})",
                   "parameters": [{"name": "job", "in": "path", "required": True, "schema": {"type": "string"}}],
                   "requestBody": _body({"who": _text(MAX_NAME)}, []),
                   "responses": {"200": _json(_JOB, "the job as it is now"), **_CHANGE_ERRORS,
                                 "404": _error("no such job"), "503": _error("the web app runs without the service")}}},
    "/api/models": {"get": {
        "summary": "bundled and taught models with material, parent and gate; the one measuring new fields",
        "responses": {"200": _json({"type": "object", "properties": {
            "models": {"type": "array", "items": _MODEL}, "active": {"type": "string", "nullable": True,
                                                                     "description": "null: the configured model"}}},
            "models")}}},
    "/api/models/{name}": {"get": {
        "summary": "one model", "parameters": [{"name": "name", "in": "path", "required": True,
                                                "schema": {"type": "string"}}],
        "responses": {"200": _json(_MODEL, "the model"), "404": _error("no such model")}}},
    "/api/models/{name}/activate": {"post": {
        "summary": "measure new fields with this model (a new specimen starts); a taught one only if its gate passed",
        "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
        "requestBody": _body(_WHO, ["who"]),
        "responses": {"200": _json({"type": "object", "properties": {"active": {"type": "string"}}}, "activated"),
                      **_CHANGE_ERRORS, "404": _error("no such model"),
                      "409": _error("its gate failed or its files do not match its manifest"),
                      "503": _error("the web app runs without the service")}}},
    "/api/models/rollback": {"post": {
        "summary": "undo the last model change: back to the model in force before it",
        "requestBody": _body(_WHO, ["who"]),
        "responses": {"200": _json({"type": "object", "properties": {"active": {"type": "string", "nullable": True}}},
                                   "the model now in force (null: the configured one)"),
                      **_CHANGE_ERRORS, "409": _error("nothing to roll back"),
                      "503": _error("the web app runs without the service")}}},
    "/api/models/{name}/reanalyse": {"post": {
        "summary": "re-analyse a specimen's measured files with this model (202: started)",
        "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
        "requestBody": _body({"specimen": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
                              "who": _text(MAX_NAME)}, ["specimen"]),
        "responses": {"202": _json({"type": "object", "properties": {"job": {"type": "string"}}}, "started"),
                      **_CHANGE_ERRORS, "404": _error("no such model or specimen"),
                      "503": _error("the web app runs without the service")}}},
    "/api/reanalyses/{job}": {"get": {
        "summary": "a re-analysis: state, progress, and old against new per class (reanalyse-compare's numbers) "
                   "with the fields now trusted",
        "parameters": [{"name": "job", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {"200": _json({"type": "object", "properties": {
            "state": {"type": "string", "enum": ["running", "done", "failed"]}, "progress": {"type": "number"},
            "comparison": {"type": "object", "nullable": True}, "error": {"type": "string", "nullable": True}}},
            "the re-analysis"), "404": _error("no such re-analysis"),
            "503": _error("the web app runs without the service")}}},
}


_PATHS: dict[str, Any] = {
    "/api/openapi.json": {"get": {
        "summary": "this description", "responses": {"200": _json({"type": "object"}, "OpenAPI 3 document")}}},
    "/api/status": {"get": {
        "summary": "queue counts, backend, model and health",
        "responses": {"200": _json({"type": "object", "properties": {
            "queued": {"type": "integer"}, "processing": {"type": "integer"}, "done": {"type": "integer"},
            "failed": {"type": "integer"}, "backend": {"type": "string"}, "model": {"type": "string"},
            "uptime_s": {"type": "number"}, "health": ref("Health")}}, "status")}}},
    "/api/images": {"get": {
        "summary": "fields, newest first",
        "parameters": [_query_int("limit", "how many", MAX_LIMIT, DEFAULT_LIMIT),
                       _query_int("specimen", "only this specimen's fields"),
                       _query_int("before", "only fields with a smaller id (paging back)"),
                       _query("after", "the oldest fields with a larger id (paging forward; with before: between)",
                              {"type": "integer", "minimum": 0, "maximum": MAX_ID}),
                       _query("q", "only files whose path contains this (ASCII letters in any case)",
                              {"type": "string", "maxLength": MAX_QUERY}),
                       _query("state", "only fields in this state or of this kind",
                              {"type": "string", "enum": list(IMAGE_STATES)}),
                       _query("since", "only fields that arrived at or after this time (epoch seconds)",
                              {"type": "number"}),
                       _query("until", "only fields that arrived before this time (epoch seconds)",
                              {"type": "number"})],
        "responses": {"200": _json({"type": "array", "items": ref("Image")}, "fields"),
                      "400": _error("a parameter out of range")}}},
    "/api/images/{file_id}": {"get": {
        "summary": "one field with its full record",
        "parameters": [_id_param("file_id", "image")],
        "responses": {"200": _json(ref("ImageDetail"), "the field"), **_IMAGE_ERRORS}}},
    "/api/images/{file_id}/{kind}.{suffix}": {"get": {
        "summary": "a picture of a field (only from the data folder), under the suffix of its recorded file "
                   "(the URL in Image.pictures): classes.png; overlay.jpg and preview.jpg, or .png when recorded "
                   "before they were JPEGs",
        "parameters": [_id_param("file_id", "image"),
                       {"name": "kind", "in": "path", "required": True, "schema": {"type": "string",
                                                                                   "enum": list(PICTURES)}},
                       {"name": "suffix", "in": "path", "required": True, "schema": {"type": "string",
                                                                                     "enum": list(PICTURE_TYPES)}}],
        "responses": {"200": {"description": "the recorded picture",
                              "content": {t: {"schema": {"type": "string", "format": "binary"}}
                                          for t in PICTURE_TYPES.values()}},
            "302": {"description": "the picture is recorded under the other suffix: Location is its URL"},
            "400": _error("an id out of range"), "403": _error("the recorded file is outside the data folder"),
            "404": _error("no such image, picture kind, suffix or file")}}},
    "/api/images/{file_id}/slices/{index}/{kind}.png": {"get": {
        "summary": "one slice of a volume: its class ids (classes) or its display picture (preview)",
        "parameters": [_id_param("file_id", "image"),
                       {"name": "index", "in": "path", "required": True,
                        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ID}},
                       {"name": "kind", "in": "path", "required": True, "schema": {"type": "string",
                                                                                   "enum": list(SLICE_PICTURES)}}],
        "responses": {"200": {"description": "PNG", "content": {"image/png": {"schema": {
            "type": "string", "format": "binary"}}}},
            "400": _error("an id out of range"), "403": _error("the recorded stack is outside the data folder"),
            "404": _error("no such image, slice or picture kind, or the image is not a volume")}}},
    "/api/images/{file_id}/thumb-{version}.jpg": {"get": {
        "summary": "a small JPEG of the field's overlay; the URL (from Image.thumbnail) never changes its bytes",
        "parameters": [_id_param("file_id", "image"),
                       {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {"200": {"description": "JPEG, Cache-Control: public, max-age=31536000, immutable",
                              "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}},
                      "400": _error("an id out of range"),
                      "403": _error("the recorded picture is outside the data folder"),
                      "404": _error("no such image or picture, or not the current version"),
                      "500": _error("the thumbnail could not be made")}}},
    "/api/images/{file_id}/exclude": {"post": {
        "summary": "leave a measured field out of the statistics, with a reason",
        "parameters": [_id_param("file_id", "image")],
        "requestBody": _body({"reason": _text(MAX_TEXT)}, []),
        "responses": {"200": _json(ref("Image"), "the field as it is now"), **_MEASURED_ERRORS}}},
    "/api/images/{file_id}/include": {"post": {
        "summary": "put an excluded field back into the statistics (body: {})",
        "parameters": [_id_param("file_id", "image")],
        "requestBody": _body({}, []),
        "responses": {"200": _json(ref("Image"), "the field as it is now"), **_MEASURED_ERRORS}}},
    "/api/images/{file_id}/accept": {"post": {
        "summary": "count a flagged field, naming who and why",
        "parameters": [_id_param("file_id", "image")],
        "requestBody": _body({"who": _name(MAX_NAME), "reason": _name(MAX_TEXT)}, ["who", "reason"]),
        "responses": {"200": _json(ref("Image"), "the field as it is now"), **_MEASURED_ERRORS}}},
    "/api/images/{file_id}/unaccept": {"post": {
        "summary": "withdraw an acceptance (body: {})",
        "parameters": [_id_param("file_id", "image")],
        "requestBody": _body({}, []),
        "responses": {"200": _json(ref("Image"), "the field as it is now"), **_MEASURED_ERRORS}}},
    "/api/specimens": {
        "get": {"summary": "the current specimen and all specimens, newest first",
                "responses": {"200": _json({"type": "object", "properties": {
                    "current": ref("Specimen"), "specimens": {"type": "array", "items": ref("Specimen")}}},
                    "specimens")}},
        "post": {"summary": "start a new specimen; it becomes the current one",
                 "requestBody": _body({"name": _name(MAX_NAME), "notes": _text(MAX_TEXT),
                                       "operator": _text(MAX_NAME)}, ["name"]),
                 "responses": {"201": _json(ref("Specimen"), "the new specimen"), **_CHANGE_ERRORS}}},
    "/api/specimens/{specimen_id}": {
        "get": {"summary": "one specimen", "parameters": [_id_param("specimen_id", "specimen")],
                "responses": {"200": _json(ref("Specimen"), "the specimen"), **_SPECIMEN_ERRORS}},
        "patch": {"summary": "rename a specimen and/or replace its notes or operator",
                  "parameters": [_id_param("specimen_id", "specimen")],
                  "requestBody": _body({"name": _name(MAX_NAME), "notes": _text(MAX_TEXT),
                                        "operator": _text(MAX_NAME)}, [], min_properties=1),
                  "responses": {"200": _json(ref("Specimen"), "the specimen as it is now"), **_SPECIMEN_ERRORS,
                                **_CHANGE_ERRORS}}},
    "/api/specimens/{specimen_id}/current": {"post": {
        "summary": "make an open specimen the current one: new fields go to it (body: {})",
        "parameters": [_id_param("specimen_id", "specimen")], "requestBody": _body({}, []),
        "responses": {"200": _json(ref("Specimen"), "the specimen as it is now"), **_SPECIMEN_ERRORS,
                      **_CHANGE_ERRORS, "409": _error("the specimen is closed")}}},
    "/api/specimens/{specimen_id}/close": {"post": {
        "summary": "close a specimen with an electronic signature: who and what it means; the token again when "
                   "access control is on; the current one starts the next (next: its id)",
        "parameters": [_id_param("specimen_id", "specimen")],
        "requestBody": _body({"who": _name(MAX_NAME), "meaning": {"type": "string", "enum": list(MEANINGS)},
                              "next_name": _text(MAX_NAME), "token": {"type": "string"}}, ["who", "meaning"]),
        "responses": {"200": _json({"allOf": [ref("Specimen"), {"type": "object", "properties": {
                          "next": {"type": "integer", "nullable": True}}}]}, "the specimen as it is now"),
                      **_SPECIMEN_ERRORS, **_CHANGE_ERRORS, "403": _error("the token was not entered again"),
                      "409": _error("the specimen is closed already")}}},
    "/api/specimens/{specimen_id}/reopen": {"post": {
        "summary": "reopen a closed specimen: a signed act (who, why; the token again when access control is on)",
        "parameters": [_id_param("specimen_id", "specimen")],
        "requestBody": _body({"who": _name(MAX_NAME), "reason": _name(MAX_TEXT), "token": {"type": "string"}},
                             ["who", "reason"]),
        "responses": {"200": _json(ref("Specimen"), "the specimen as it is now"), **_SPECIMEN_ERRORS,
                      **_CHANGE_ERRORS, "403": _error("the token was not entered again"),
                      "409": _error("the specimen is not closed")}}},
    "/api/specimens/{specimen_id}/limits": {
        "get": {"summary": "a specimen's specification limits", "parameters": [_id_param("specimen_id", "specimen")],
                "responses": {"200": _json(ref("Limits"), "its limits"), **_SPECIMEN_ERRORS}},
        "put": {"summary": "replace a specimen's limits (a list, [] removes them) or apply a template; audited",
                "parameters": [_id_param("specimen_id", "specimen")],
                "requestBody": _body({"limits": {"type": "array", "items": ref("Limit")}, "template": _name(MAX_NAME),
                                      "who": _text(MAX_NAME), "reason": _text(MAX_TEXT)}, [], min_properties=1),
                "responses": {"200": _json(ref("Limits"), "its limits now"), **_SPECIMEN_ERRORS, **_CHANGE_ERRORS,
                              "409": _error("the specimen is closed")}}},
    "/api/limit-templates": {
        "get": {"summary": "the templates of limits, by name",
                "responses": {"200": _json({"type": "array", "items": ref("LimitTemplate")}, "templates")}},
        "put": {"summary": "make or replace a template of limits; audited",
                "requestBody": _body({"name": _name(MAX_NAME), "limits": {"type": "array", "items": ref("Limit")},
                                      "who": _text(MAX_NAME)}, ["name", "limits"]),
                "responses": {"200": _json(ref("LimitTemplate"), "the template"), **_CHANGE_ERRORS}}},
    "/api/specimens/{specimen_id}/audit": {"get": {
        "summary": "the audit rows of a specimen and its fields, oldest first",
        "parameters": [_id_param("specimen_id", "specimen")],
        "responses": {"200": _json({"type": "array", "items": ref("AuditRow")}, "audit rows"), **_SPECIMEN_ERRORS}}},
    "/api/specimens/{specimen_id}/audit.csv": {"get": {
        "summary": "the same rows as CSV (times in UTC beside epoch seconds, hashes)",
        "parameters": [_id_param("specimen_id", "specimen")],
        "responses": {"200": {"description": "CSV", "content": {"text/csv": {"schema": {"type": "string"}}}},
                      **_SPECIMEN_ERRORS}}},
    "/api/reports/{sha256}": {"get": {
        "summary": "what the appliance recorded when it served the report (PDF or page) with this sha256",
        "parameters": [{"name": "sha256", "in": "path", "required": True,
                        "schema": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"}}],
        "responses": {"200": _json(ref("ReportRecord"), "the report's record"),
                      "400": _error("not 64 hexadecimal digits"), "404": _error("never served here")}}},
    "/api/specimens/{specimen_id}/stats": {"get": {
        "summary": "a specimen's statistics (ASTM E562 / E1245)",
        "parameters": [_id_param("specimen_id", "specimen")],
        "responses": {"200": _json(ref("Stats"), "statistics"), "400": _error("an id out of range"),
                      "404": _error("no such specimen")}}},
    "/export.csv": {"get": {
        "summary": "every field as CSV, oldest first, each with its specimen's verdict and limits",
        "parameters": [_query_int("specimen", "only this specimen's fields")],
        "responses": {"200": {"description": "CSV", "content": {"text/csv": {"schema": {"type": "string"}}}},
                      "400": _error("a parameter out of range")}}},
    "/events": {"get": {
        "summary": "Server-Sent Events: field (a field ended done or failed), specimen (statistics changed), "
                   "teach (a teach job changed: GET /api/teach/{job}'s body)",
        "parameters": [{"name": "Last-Event-ID", "in": "header", "required": False,
                        "description": "replay the recent events after this id (ignored unless 0..2^63-1)",
                        "schema": {"type": "string"}}],
        "responses": {"200": {"description": "the stream", "content": {"text/event-stream": {
            "schema": {"type": "string"}}}},
            "503": _error("every stream slot (in total or for this client address) is taken; retry later")}}},
    **_PAGES,
    **_REPORTS,
    **_TEACH_PATHS,
    **_LABELS_PATHS,
    "/healthz": {"get": {
        "summary": "health for monitoring; needs no token, and shows the reasons only with it", "security": [],
        "responses": {"200": _json(ref("Health"), "healthy"), "503": _json(ref("Health"), "unhealthy")}}},
    "/metrics": {"get": {
        "summary": "Prometheus metrics",
        "responses": {"200": {"description": "Prometheus text exposition",
                              "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
}

_DOCUMENT: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "phasewatch", "version": "1",
             "description": "The appliance's HTTP API. Every request needs a Host the service answers to "
                            "(400 otherwise). With a token configured, every route but /healthz needs it "
                            "(401 otherwise). State-changing requests must be application/json (415) and "
                            "from the service's own origin (403)."},
    "components": {
        "schemas": _SCHEMAS,
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "description": "the [web] token"},
            "cookie": {"type": "apiKey", "in": "cookie", "name": COOKIE,
                       "description": "set by POST /login"},
        },
        "responses": {"Unauthorized": _error("a token is configured and the request does not carry it"),
                      "TooManyWrongTokens": _error("too many wrong tokens from this address: wait "
                                                   "Retry-After seconds before presenting one again")},
    },
    "security": [{"bearer": []}, {"cookie": []}],
    "paths": _PATHS,
}


def _with_unauthorized(paths: dict[str, Any]) -> dict[str, Any]:
    """Every operation that needs the token may answer 401; any may answer 429 to a wrong
    bearer token once its address must wait."""
    for operations in paths.values():
        for operation in operations.values():
            if operation.get("security") != []:
                operation["responses"]["401"] = {"$ref": "#/components/responses/Unauthorized"}
            operation["responses"]["429"] = {"$ref": "#/components/responses/TooManyWrongTokens"}
    return paths


_with_unauthorized(_PATHS)


def openapi_document() -> dict[str, Any]:
    """The document (a copy: the caller may change it)."""
    return copy.deepcopy(_DOCUMENT)


@blueprint.get("/api/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_document())
