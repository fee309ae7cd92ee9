"""One record schema (issue 20): the TypedDicts of core/records.py, store/rows.py and
webui/payloads.py are what the code really makes, and the OpenAPI description says the same,
key for key, type for type.

* Each schema of the API is compared with the TypedDict of what its route returns, recursively
  (a key added on either side fails), types and nullability included.
* Where the API shows a store row differently (drops, renames, derives keys) the sets are
  written out here, so a new column or key must be placed on purpose.
* A real field record (the bundled model on a real micrograph), a real store's rows and the
  API's payloads of them conform to their TypedDicts, value by value.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, TypedDict, get_args, get_origin, get_type_hints

import pytest

from phasewatch.core.measure import combine_pages
from phasewatch.core.pipeline import open_model, process_file
from phasewatch.core.provenance import model_identity
from phasewatch.core.records import FieldRecord, ModelClass, ModelTiling, TrustRecord
from phasewatch.store import Store
from phasewatch.store.rows import FileRow, ImageRow, SpecimenRow, SpecimenSummary
from phasewatch.webui.openapi import openapi_document
from phasewatch.webui.payloads import (
    ClassJson,
    ImageDetailJson,
    ImageJson,
    ProvenanceJson,
    TrustJson,
    image_detail_json,
    image_json,
)

SCHEMAS = openapi_document()["components"]["schemas"]
JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean"}


# -- TypedDict against OpenAPI schema ------------------------------------------------------------

def _resolve(schema: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """(the schema a $ref or a one-part allOf stands for, whether null is allowed)."""
    nullable = bool(schema.get("nullable"))
    if "allOf" in schema and len(schema["allOf"]) == 1:
        schema = schema["allOf"][0]
    if "$ref" in schema:
        schema = SCHEMAS[schema["$ref"].rsplit("/", 1)[1]]
        nullable = nullable or bool(schema.get("nullable"))
    return schema, nullable


def _properties(schema: dict[str, Any]) -> tuple[dict[str, Any], list[str] | None]:
    """The properties of an object schema (allOf parts merged) and its required keys (None: not declared)."""
    if "allOf" in schema and len(schema["allOf"]) > 1:
        properties: dict[str, Any] = {}
        required: list[str] = []
        for part in schema["allOf"]:
            props, req = _properties(_resolve(part)[0])
            properties |= props
            required += req or []
        return properties, required
    return schema.get("properties", {}), schema.get("required")


def _split_none(annotation: Any) -> tuple[Any, bool]:
    if get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in get_args(annotation) if a is not type(None)]
        assert len(rest) == 1, f"unexpected union {annotation}"
        return rest[0], len(rest) < len(get_args(annotation))
    return annotation, False


def schema_errors(annotation: Any, schema: dict[str, Any], where: str,
                  seen: set[tuple[str, str]] | None = None) -> list[str]:
    """How ``schema`` differs from the type ``annotation``: missing or extra keys, JSON types,
    nullability, required keys where the schema declares them."""
    seen = set() if seen is None else seen
    inner, may_be_none = _split_none(annotation)
    schema, nullable = _resolve(schema)
    errors = [] if nullable == may_be_none else [f"{where}: nullable {nullable}, the type says {may_be_none}"]
    if inner is Any:
        return errors
    if typing.is_typeddict(inner):
        key = (inner.__qualname__, repr(sorted(schema.get("properties", {}))))
        if key in seen:  # a recursive record (FieldRecord.pages) is compared once
            return errors
        seen.add(key)
        properties, required = _properties(schema)
        hints = get_type_hints(inner)
        errors += [f"{where}.{k}: in {inner.__name__}, not in the schema" for k in sorted(hints.keys() - properties)]
        errors += [f"{where}.{k}: in the schema, not in {inner.__name__}" for k in sorted(properties.keys() - hints)]
        if required is not None and set(required) != inner.__required_keys__:
            errors.append(f"{where}: required {sorted(required)}, {inner.__name__} requires "
                          f"{sorted(inner.__required_keys__)}")
        for k in sorted(hints.keys() & properties):
            errors += schema_errors(hints[k], properties[k], f"{where}.{k}", seen)
        return errors
    origin = get_origin(inner)
    if origin is list:
        if schema.get("type") != "array":
            return [*errors, f"{where}: type {schema.get('type')}, the type says array"]
        return errors + schema_errors(get_args(inner)[0], schema["items"], f"{where}[]", seen)
    if origin is dict:
        if schema.get("type") != "object":
            return [*errors, f"{where}: type {schema.get('type')}, the type says object"]
        values = get_args(inner)[1]
        if values is Any:
            return errors
        if "additionalProperties" not in schema:
            return [*errors, f"{where}: the schema does not say what its values are ({values})"]
        return errors + schema_errors(values, schema["additionalProperties"], f"{where}{{}}", seen)
    expected = JSON_TYPES[inner]
    if schema.get("type") != expected:
        errors.append(f"{where}: type {schema.get('type')}, the type says {expected}")
    return errors


@pytest.mark.parametrize(("typed", "schema"), [
    (FieldRecord, "FieldRecord"),  # and, through it, the trust record, particles, timing, volume record
    (TrustRecord, "TrustRecord"),
    (ModelTiling, "ModelTiling"),
    (ImageJson, "Image"),  # GET /api/images, the answers of exclude/include/accept/unaccept, the field event
    (ImageDetailJson, "ImageDetail"),  # GET /api/images/ID, with FieldRecord as its measurement
    (ProvenanceJson, "Provenance"),
    (ClassJson, "Class"),
    (TrustJson, "Trust"),
    (SpecimenSummary, "Specimen"),  # GET/POST/PATCH /api/specimens...: the store's row as it is
])
def test_each_api_schema_is_its_typeddict_key_for_key(typed, schema):
    # Specimen declares only the keys every specimen answer has: SpecimenRow's (the counts
    # come only in the list, SpecimenSummary); the comparison below checks all properties.
    declared = SCHEMAS[schema]
    if typed is SpecimenSummary:
        assert set(declared["required"]) == SpecimenRow.__required_keys__
        declared = {k: v for k, v in declared.items() if k != "required"}
    assert schema_errors(typed, declared, schema) == []


def test_the_comparison_fails_on_a_key_on_either_side_and_on_a_type():
    class Grown(TrustJson):
        new_key: int

    assert schema_errors(Grown, SCHEMAS["Trust"], "Trust") == ["Trust.new_key: in Grown, not in the schema",
                                                               "Trust: required ['ok', 'reasons', 'score'], Grown "
                                                               "requires ['new_key', 'ok', 'reasons', 'score']"]
    wider = {**SCHEMAS["Class"], "properties": {**SCHEMAS["Class"]["properties"], "extra": {"type": "string"}}}
    assert schema_errors(ClassJson, wider, "Class") == ["Class.extra: in the schema, not in ClassJson"]
    particles = SCHEMAS["PhaseParticles"]
    changed = {**particles, "properties": {**particles["properties"], "count": {"type": "number"}}}
    errors = schema_errors(FieldRecord, {"type": "object", "properties": {
        **SCHEMAS["FieldRecord"]["properties"], "particles": {"type": "object", "additionalProperties": changed}}},
        "FieldRecord")
    assert errors == ["FieldRecord.particles{}.count: type number, the type says integer"]


# -- what the API shows of a store row ----------------------------------------------------------

# Keys of a store image row that the API's Image leaves out, and why.
DROPPED_FROM_IMAGE_ROW = {
    "size", "mtime_ns", "sha256",  # the file's identity: in ImageDetail's provenance (size, captured, sha256)
    "attempts", "stage", "stage_since", "crashes", "alone",  # the queue's bookkeeping
    "particles",  # shown as phases (the names); the numbers are in ImageDetail's measurement
    "valid_area_px", "valid_area_um2", "pixel_size_um",  # in the measurement and the provenance
    "measurement", "model",  # ImageDetail's measurement, classes and provenance
    "outputs",  # shown as pictures (URLs), never as paths
}
# Keys the API's Image adds, and what they come from.
DERIVED_IN_IMAGE = {
    "file": "path",  # its last part
    "labels": "fractions",  # display names of their classes
    "phases": "particles",
    "pictures": "outputs",
    "thumbnail": "outputs",
    "slices": "measurement",  # a volume's depth
}


def test_the_api_image_is_the_store_row_with_these_keys_dropped_and_derived():
    row, shown = get_type_hints(ImageRow), get_type_hints(ImageJson)
    assert row.keys() >= DROPPED_FROM_IMAGE_ROW and all(source in row for source in DERIVED_IN_IMAGE.values())
    assert shown.keys() == (row.keys() - DROPPED_FROM_IMAGE_ROW) | DERIVED_IN_IMAGE.keys()
    # passed on as they are, but for 0/1 flags shown as booleans and the trust record as its verdict
    for key in shown.keys() - DERIVED_IN_IMAGE.keys() - {"excluded", "accepted", "trust"}:
        assert shown[key] == row[key], key
    assert (row["excluded"], shown["excluded"]) == (row["accepted"], shown["accepted"]) == (int, bool)
    assert TrustJson.__required_keys__ == TrustRecord.__required_keys__  # ok, score, reasons
    assert TrustRecord.__optional_keys__ == {"measures", "slices_not_ok"}  # the API's Trust drops these
    detail = get_type_hints(ImageDetailJson)
    assert detail["measurement"] == FieldRecord | None  # the whole record, as stored
    # the legend: the model's classes with a display label, the colour as #rrggbb
    assert get_type_hints(ClassJson).keys() == get_type_hints(ModelClass).keys() | {"label"}


# -- real records and rows ----------------------------------------------------------------------

def conformance_errors(value: Any, annotation: Any, where: str) -> list[str]:
    """How a JSON-like ``value`` differs from ``annotation`` (exact keys for a TypedDict)."""
    inner, may_be_none = _split_none(annotation)
    if value is None:
        return [] if may_be_none or inner is Any else [f"{where}: None"]
    if inner is Any:
        return []
    if typing.is_typeddict(inner):
        if not isinstance(value, dict):
            return [f"{where}: {type(value).__name__}, not a {inner.__name__}"]
        hints = get_type_hints(inner)
        errors = [f"{where}: lacks {sorted(inner.__required_keys__ - value.keys())}"] \
            if inner.__required_keys__ - value.keys() else []
        errors += [f"{where}.{k}: not a key of {inner.__name__}" for k in sorted(value.keys() - hints)]
        for k in sorted(value.keys() & hints):
            errors += conformance_errors(value[k], hints[k], f"{where}.{k}")
        return errors
    origin = get_origin(inner)
    if origin is list:
        return [f"{where}: not a list"] if not isinstance(value, list) else \
            [e for i, v in enumerate(value) for e in conformance_errors(v, get_args(inner)[0], f"{where}[{i}]")]
    if origin is dict:
        return [f"{where}: not a dict"] if not isinstance(value, dict) else \
            [e for k, v in value.items() for e in conformance_errors(v, get_args(inner)[1], f"{where}{{{k}}}")]
    ok = {int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str), bool: lambda v: isinstance(v, bool)}[inner](value)
    return [] if ok else [f"{where}: {value!r} is not {inner.__name__}"]


class _Probe(TypedDict):
    a: int


def test_the_conformance_check_fails_on_a_missing_or_extra_key_or_a_type():
    assert conformance_errors({"a": 1}, _Probe, "p") == []
    assert conformance_errors({}, _Probe, "p") == ["p: lacks ['a']"]
    assert conformance_errors({"a": 1, "b": 2}, _Probe, "p") == ["p.b: not a key of _Probe"]
    assert conformance_errors({"a": True}, _Probe, "p") == ["p.a: True is not int"]


@pytest.fixture(scope="module")
def measured(shared_data, tmp_path_factory):
    """A real field measured by the bundled model and recorded in a real store."""
    model = open_model("superalloy", "cpu")
    try:
        image = shared_data / "superalloy/val/images/spot1_0d_0.tif"
        result = process_file(image, model, tmp_path_factory.mktemp("out"))
        store = Store(tmp_path_factory.mktemp("data") / "phasewatch.db")
        stat = Path(image).stat()
        row = store.enqueue(image, stat.st_size, stat.st_mtime_ns, "0" * 64)
        store.claim_next(1)
        store.mark_done(row["id"], result.record, result.outputs, model_identity(model))
        yield result, store, row
    finally:
        model.close()


def test_a_real_field_record_and_its_store_rows_are_their_typeddicts(measured):
    result, store, row = measured
    record = result.record
    assert conformance_errors(record, FieldRecord, "record") == []
    assert {"trust", "timing_ms", "excluded_area_px"} <= record.keys() and "measures" in record["trust"]
    assert conformance_errors(combine_pages([record, record]), FieldRecord, "combined") == []  # a 2-page file
    assert conformance_errors(row, FileRow, "enqueued") == []
    image = store.get_image(row["id"])
    assert image is not None and conformance_errors(image, ImageRow, "image row") == []
    assert conformance_errors(store.list_images(10), list[ImageRow], "list") == []
    assert conformance_errors(store.get_specimen(row["specimen_id"]), SpecimenRow, "specimen") == []
    assert conformance_errors(store.list_specimens(), list[SpecimenSummary], "specimens") == []
    assert conformance_errors(image_json(image), ImageJson, "Image") == []
    assert conformance_errors(image_detail_json(image), ImageDetailJson, "ImageDetail") == []
