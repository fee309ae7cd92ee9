"""INT8 for the CPU: ONNX Runtime static quantisation of a bundle, kept only if it passes the
FP16 gate's bars against FP32.

Weights per output channel (int8) and activations (uint8) in QDQ form, their ranges set at
the 0.001-99.999 percentiles of what they take on the bundle's reference tiles (real validation
tiles, normalised as the runtime does) and on tile-sized crops of the given quantisation samples (fields;
ONNX Runtime calls them calibration data, a name this project keeps for trust calibration). Measured on the
superalloy model: min-max ranges from the tiles alone missed the bar on the tiles themselves
(99.887 % agreement), percentile ranges from its validation fields passed everywhere (>= 99.93 %).
The gate then compares INT8 with FP32 logits on the reference tiles and on every check field,
whole (model input extended to the stride: what the sliding window gives a field that fits its budget;
held-out fields, not among the samples): argmax agreement >= 99.9 % of pixels and each
class's fraction within 0.1 point, on every input. A model that passes is written as
``model.int8.onnx`` and recorded in the manifest under ``int8``; the runtime's ``cpu-int8``
backend runs it. One that fails is not written (measured: the two UHCS models miss the bar,
99.79 and 99.71 % on one held-out field each).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from phasewatch.bundle import INT8_FILE, Bundle, sha256_file, write_manifest
from phasewatch.core.normalise import prepare
from phasewatch.errors import one_line
from phasewatch.export.engine_gate import GateResult, compare_logits, fp32_logits, load_reference_tiles
from phasewatch.export.onnx_export import ExportError
from phasewatch.imageio.formats import read_pages


def field_input(path: Path, bundle: Bundle) -> np.ndarray:
    """1 x C x H x W: a whole field's model input, extended by mirroring to the stride (a
    2.5D bundle's: the field as its own neighbours, as the runtime feeds a field)."""
    inp = prepare(read_pages(path)[0].image, bundle.channels, bundle.normalisation, bundle.scale,
                  slices=bundle.slices)
    array = inp.region(0, inp.height, 0, inp.width)
    multiple = bundle.spatial_multiple or 1
    pad = ((0, 0), (0, (-inp.height) % multiple), (0, (-inp.width) % multiple))
    return np.ascontiguousarray(np.pad(array, pad, mode="reflect")[None], dtype=np.float32)


def tile_crops(field: np.ndarray, tile: int) -> list[np.ndarray]:
    """The field's whole tile-sized crops (ONNX Runtime's range finder stacks what it sees: one shape)."""
    _, _, height, width = field.shape
    return [np.ascontiguousarray(field[:, :, y : y + tile, x : x + tile])
            for y in range(0, height - tile + 1, tile) for x in range(0, width - tile + 1, tile)]


def quantise(bundle: Bundle, samples: Sequence[Path], checks: Sequence[Path]) -> dict[str, Any]:
    """Write ``model.int8.onnx`` into the bundle, its ranges set on the reference tiles and the
    quantisation ``samples``, if it passes the gate on the reference tiles and the ``checks``
    fields; returns the manifest's new ``int8`` block (the samples under ``samples``; manifests
    written before 0.2 name them ``calibration``). Raises :class:`ExportError` (writing nothing)
    when it does not pass."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if (samples or checks) and not bundle.spatial_multiple:
        raise ExportError(f"{bundle.path}: whole fields need a bundle with dynamic sizes (phasewatch export --bundle)")
    tiles = load_reference_tiles(bundle)
    feed = [tile[None] for tile in tiles] + [crop for p in samples for crop in tile_crops(field_input(p, bundle),
                                                                                           bundle.tile)]

    class Inputs(CalibrationDataReader):
        def __init__(self) -> None:
            self.feed = iter([{"input": x} for x in feed])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feed, None)

    with tempfile.TemporaryDirectory() as work:
        prepared, quantised = Path(work) / "prepared.onnx", Path(work) / INT8_FILE
        try:
            # Symbolic shape inference gives up on dynamic sizes; ONNX's own inference suffices here.
            quant_pre_process(str(bundle.onnx_path), str(prepared), skip_symbolic_shape=True)
            quantize_static(str(prepared), str(quantised), Inputs(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.Percentile)
        except Exception as exc:  # the quantiser raises many types; all mean the same here
            raise ExportError(f"{bundle.onnx_path}: INT8 quantisation failed: {one_line(exc)}") from exc
        inputs = [("reference tiles", tiles)] + [(p.name, field_input(p, bundle)) for p in checks]
        results = [(name, compare_logits(fp32_logits(bundle.onnx_path, x), fp32_logits(quantised, x)))
                   for name, x in inputs]
        worst_name, worst = min(results, key=lambda r: (r[1].passed, r[1].argmax_agreement))
        if not worst.passed:
            raise ExportError(f"{bundle.path}: INT8 refused on {worst_name}: {worst.reason()}")
        target = bundle.path / INT8_FILE
        quantised.replace(target)
    block = {"file": INT8_FILE, "sha256": sha256_file(target),
             "samples": {"method": "percentile 0.001-99.999", "fields": [p.name for p in samples],
                         "reference_tiles": len(tiles)},
             "parity": {name: _summary(result) for name, result in results}, "worst": worst.record()}
    write_manifest(bundle.path, {**bundle.manifest, "int8": block})
    return block


def _summary(result: GateResult) -> dict[str, Any]:
    return {"argmax_agreement": result.argmax_agreement, "max_fraction_diff_pp": result.max_fraction_diff_pp,
            "passed": result.passed}
