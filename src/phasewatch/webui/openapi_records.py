"""The OpenAPI schemas of a field's record (``measurement`` in ``GET /api/images/ID``) and of
its parts: ``src/phasewatch/core/records.py`` written out for API clients, with what each key
means. ``tests/test_record_schema.py`` holds them to those TypedDicts key for key (types and
nullability too), so a key added on one side and not the other fails there.

No key is declared required: the API returns each record as it was stored, and records stored
by older versions may lack keys that records made now always have (the TypedDicts say which).
"""

from __future__ import annotations

from typing import Any


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` or null; a reference is wrapped in allOf, since OpenAPI 3.0 ignores a $ref's siblings."""
    if "$ref" in schema:
        return {"allOf": [schema], "nullable": True}
    return {**schema, "nullable": True}


def _object(description: str, **properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "description": description, "properties": properties}


def _array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


def _map(values: dict[str, Any], description: str) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": values, "description": description}


INTEGER: dict[str, Any] = {"type": "integer"}
NUMBER: dict[str, Any] = {"type": "number"}
STRING: dict[str, Any] = {"type": "string"}
BOOLEAN: dict[str, Any] = {"type": "boolean"}
FRACTIONS = _map(NUMBER, "class name -> fraction of the valid area (excluded classes have none)")

RECORD_SCHEMAS: dict[str, Any] = {
    "EcdHistogram": _object(
        "ECD bins: geometric edges (ratio sqrt 2), one count fewer than edges; both empty without a whole particle",
        edges=_array(NUMBER), counts=_array(INTEGER)),
    "EcdPercentiles": _object("ECD percentiles of the whole particles", p10=NUMBER, p50=NUMBER, p90=NUMBER),
    "PhaseParticles": _object(
        "one phase class's particles: 8-connected, at least min_particle_area_px; border particles are left out of "
        "size statistics and count 1/2 in the densities",
        count=INTEGER, border_count=INTEGER,
        number_per_mm2=nullable({**NUMBER, "description": "null without a pixel size"}),
        number_per_mpx={**NUMBER, "description": "per million valid pixels"},
        mean_ecd=nullable(NUMBER), median_ecd=nullable(NUMBER),
        std_ecd=nullable({**NUMBER, "description": "sample std (n - 1); null below two whole particles"}),
        ecd_percentiles=nullable(ref("EcdPercentiles")), ecd_histogram=ref("EcdHistogram"),
        unit={**STRING, "enum": ["um", "px"], "description": "the ECDs' unit: um with a pixel size"}),
    "TrustMeasures": _object(
        "a page's trust measures; novelty and nearest only when the model has a trust calibration",
        unsure={**NUMBER, "description": "share of the valid pixels whose softmax margin is under 0.5"},
        novelty={**NUMBER, "description": "distance to the nearest calibration field, in typical distances"},
        nearest={**STRING, "description": "that calibration field's name"}),
    "TrustRecord": _object(
        "whether the model was inside its experience on the field; the API's lists show its ok, score and "
        "reasons (Trust)",
        ok=BOOLEAN, score=nullable({**NUMBER, "description": "largest measure / limit; null without calibration"}),
        reasons=_array(STRING), measures=ref("TrustMeasures"),
        slices_not_ok={**_array(INTEGER), "description": "a volume's only: its slices not trusted"}),
    "Timing": _object("milliseconds per page for each step", decode=NUMBER, segment=NUMBER, measure=NUMBER),
    "VolumeTrust": _object("a volume's trust: every slice's, the worst score",
                           ok=BOOLEAN, score=nullable(NUMBER), slices_not_ok=_array(INTEGER)),
    "SliceRecord": _object("one slice of a volume", slice=INTEGER, fractions=FRACTIONS, trust=ref("TrustRecord")),
    "VolumeTiming": _object("the volume's time", seconds=NUMBER, seconds_per_slice=NUMBER,
                            slices_per_second=nullable(NUMBER)),
    "VolumeRecord": _object(
        "a segmented volume's record (its NAME.volume.json)",
        volume={**STRING, "description": "the stack's path"}, model=STRING, backend=STRING, slices=INTEGER,
        shape={**_array(INTEGER), "description": "z, y, x"},
        spacing_um=nullable({**_array(NUMBER), "description": "z, y, x in µm"}), spacing_source=STRING,
        trust=ref("VolumeTrust"), per_slice=_array(ref("SliceRecord")),
        measurements_3d={"type": "object", "description": "3D phase fractions and components (measure3d's rules)"},
        timing=ref("VolumeTiming"), outputs=_map(STRING, "output kind -> file"),
        classes={**_array(ref("ModelClass")), "description": "the model's classes by id: what the class ids of "
                 "NAME.classes.tif mean (written into its ImageJ properties too)"}),
    "ModelClass": _object("a class of the model: its id in the class maps, name, RGB colour and role",
                          id=INTEGER, name=STRING, colour=_array(INTEGER),
                          role={**STRING, "enum": ["phase", "background", "excluded"]}),
    "FieldRecord": _object(
        "one field's record: a page, a multi-page file combined (pages), or a volume shown as one field (volume). "
        "Every record made now has image, page, model, backend, width, height, pixel_size_um, pixel_size_source, "
        "fractions, particles, valid_area_px and valid_area_um2; a page's also the measurement rules and areas, "
        "trust and timing_ms",
        image={**STRING, "description": "the path of the file the field came from"},
        page=nullable({**INTEGER, "description": "null for a multi-page file combined, or a volume"}),
        model=STRING, backend=STRING, width=INTEGER, height=INTEGER,
        pixel_size_um=nullable(NUMBER),
        pixel_size_source={**STRING, "description": "where the pixel size came from (none without one)"},
        fractions=FRACTIONS,
        particles=_map(ref("PhaseParticles"), "phase class name -> its particles (empty for a volume)"),
        valid_area_px=INTEGER, valid_area_um2=nullable(NUMBER),
        excluded_area_px=INTEGER, valid_area_empty=BOOLEAN, connectivity=INTEGER, min_particle_area_px=INTEGER,
        border_rule=STRING, trust=ref("TrustRecord"), timing_ms=ref("Timing"),
        pages={**_array(ref("FieldRecord")), "description": "a multi-page file's: each page's own record"},
        volume=ref("VolumeRecord"),
        pixel_sha256={**STRING, "description": "sha256 of the file's pixels stretched to 8 bits: the same field "
                      "re-saved (16-bit, another format) has the same (core/pixel_hash.py)"}),
    "ModelTiling": _object(
        "the sliding window a field went through; planned, multiple and max_pixels only when tiles are planned "
        "per field", tile=INTEGER, halo=INTEGER, scale=NUMBER, planned=BOOLEAN, multiple=INTEGER,
        max_pixels=INTEGER),
}
