"""What a field costs against the floor: each bundled model on a real held-out field of its size.

For each bundled model, one real micrograph from its held-out set is segmented, in this
process, with the same thread count throughout, by

- ``engine``: the runtime's path (``pipeline.segment_images`` with the model's tile plan:
  the whole field in one pass when it fits the memory budget), the time
  ``timing_ms.segment`` records;
- ``stitched``: the engine without the head in the graph (``export/head.py``): the same model's
  logits stitched in NumPy, as before issue 25 (only where the bundle has a head);
- ``floor``: one pass of the same ONNX Runtime session over the field's own model input,
  extended only to a multiple of the network's stride (no tiles, no overlap, no stitching);
- ``fixed_tiles``: the engine as it was before tiles were planned per field (the bundle's
  256-px tiles overlapping by 2 x halo), the named baseline;
- ``monai``: MONAI's ``sliding_window_inference`` at its defaults (roi 256, overlap 0.25,
  Gaussian window, batch 1) with the same weights in PyTorch (FP32, whatever ``--backend``).

``--backend cpu-int8`` runs the engine and the floor on the bundle's quantised model (the
bundles whose INT8 model passed its gate: ``phasewatch quantise``).

It prints each time, ``engine / floor`` and ``monai / engine``, and the machine's float32
matmul peak with the fraction of it the floor reaches (model FLOPs / time / peak).
Times are the best of ``--repeats`` after a warm-up.

Run: ``python bench/field_limit.py [--json]`` (needs the export and bench extras and the
shared data; ``$PHASEWATCH_DATA`` or ``../shared/data``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import phasewatch  # noqa: F401  before NumPy: its BLAS on one thread, as the service runs it

# isort: split
import numpy as np  # noqa: E402
from timing import best_of, best_of_interleaved, matmul_peak  # noqa: E402

# model -> held-out folder whose first image is the field
FIELDS = {
    "superalloy": "superalloy/test/images",
    "ebc": "ebc/test/images",
    "uhcs-microconstituent": "uhcs/validate/images",
    "uhcs-carbide": "uhcs/validate/images",
    "tomography": "tomography/validate/images",
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(FIELDS), choices=list(FIELDS))
    parser.add_argument("--threads", type=int, default=None, help="default: physical cores")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backend", choices=("cpu", "cpu-int8"), default="cpu",
                        help="the engine's and the floor's (cpu-int8: bundles with a quantised model only)")
    parser.add_argument("--no-monai", action="store_true", help="skip MONAI (slow on a small CPU)")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    return parser.parse_args()


def flops_per_pixel(onnx_path: Path, multiple: int) -> float:
    """Model FLOPs per input pixel: 2 x MACs of every Conv and ConvTranspose, from ONNX
    shape inference at one multiple-sized input (a U-Net's cost is linear in its area)."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(onnx_path))
    side = 16 * multiple
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for dim, value in zip(dims, (1, dims[1].dim_value, side, side), strict=True):
        dim.dim_value = value
    inferred = shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    weights = {w.name: list(w.dims) for w in model.graph.initializer}
    total = 0.0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose") or node.output[0] not in shapes:
            continue
        kernel = weights[node.input[1]]  # Conv: out, in, kh, kw; ConvTranspose: in, out, kh, kw
        out = shapes[node.output[0]]
        if node.op_type == "Conv":
            total += 2 * np.prod(out) * np.prod(kernel[1:])
        else:
            total += 2 * np.prod(shapes.get(node.input[0], [0])) * np.prod(kernel[1:])
    return total / side**2


def floor_input(inp: Any, multiple: int) -> np.ndarray:
    """The field's model input extended by mirroring at its far ends to the stride."""
    array = inp.region(0, inp.height, 0, inp.width)
    pad_h, pad_w = (-inp.height) % multiple, (-inp.width) % multiple
    if pad_h or pad_w:
        array = np.pad(array, ((0, 0), (0, pad_h), (0, pad_w)), mode="reflect")
    return np.ascontiguousarray(array[None], dtype=np.float32)


def torch_model(bundle: Any) -> Any:
    from phasewatch.export.finetune import load_parent_weights
    from phasewatch.export.models import build_model

    model = build_model(bundle.architecture, bundle.channels, bundle.num_classes, **bundle.manifest["model_kwargs"])
    load_parent_weights(model, bundle)
    return model.eval()


def measure(name: str, data: Path, backend_kind: str, threads: int, repeats: int, peak: float,
            monai: bool) -> dict[str, Any]:
    import torch

    from phasewatch.backends.base import fused_head
    from phasewatch.backends.onnxruntime import OrtBackend
    from phasewatch.core.normalise import prepare
    from phasewatch.core.pipeline import open_model, segment_images
    from phasewatch.imageio.formats import images_in, read_pages

    path = images_in(data / FIELDS[name])[0]
    image = read_pages(path)[0].image
    model = open_model(name, backend_kind, threads=threads)
    bundle, backend = model.bundle, model.backend
    if model.plan is None:
        raise SystemExit(f"{name}: the bundle runs fixed tiles only; re-export it (phasewatch export --bundle)")
    inp = prepare(image, bundle.channels, bundle.normalisation, bundle.scale)
    whole = floor_input(inp, bundle.spatial_multiple)
    runs = {"engine_s": lambda: list(segment_images([image], bundle, backend, plan=model.plan)),
            "floor_s": lambda: backend.run(whole)}
    stitched = None
    if fused_head(backend) is not None:  # before the head in the graph (issue 25): the same model, stitched in NumPy
        stitched = OrtBackend(bundle.onnx_path, "cpu", threads=threads)
        runs["stitched_s"] = lambda: list(segment_images([image], bundle, stitched, plan=model.plan))
    result: dict[str, Any] = {
        "field": f"{path.name} ({image.shape[1]}x{image.shape[0]}, model input {inp.width}x{inp.height})",
        "geometry": model.plan.geometry(inp.height, inp.width)._asdict(),
        **best_of_interleaved(repeats, runs),  # taken in turns: the machine's load falls on each alike
        "fixed_tiles_s": best_of(repeats, lambda: list(segment_images([image], bundle, backend))),
    }
    result["engine_over_floor"] = result["engine_s"] / result["floor_s"]
    if stitched is not None:
        result["stitched_over_floor"] = result["stitched_s"] / result["floor_s"]
        stitched.close()
    result["fixed_tiles_over_engine"] = result["fixed_tiles_s"] / result["engine_s"]
    flops = flops_per_pixel(bundle.onnx_path, bundle.spatial_multiple) * whole.shape[2] * whole.shape[3]
    result["floor_fraction_of_peak"] = flops / result["floor_s"] / peak
    if monai:
        from monai.inferers import sliding_window_inference

        torch.set_num_threads(threads)
        net, tensor = torch_model(bundle), torch.from_numpy(whole)
        with torch.no_grad():
            result["monai_s"] = best_of(repeats, lambda: sliding_window_inference(
                tensor, roi_size=(256, 256), sw_batch_size=1, predictor=net, overlap=0.25, mode="gaussian"))
        result["monai_over_engine"] = result["monai_s"] / result["engine_s"]
    model.close()
    return result


def main() -> int:
    args = parse_args()
    from phasewatch.backends.base import physical_cores

    threads = args.threads or physical_cores()
    env = os.environ.get("PHASEWATCH_DATA")
    data = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    if not data.is_dir():
        print(f"field_limit: no shared data at {data} (set PHASEWATCH_DATA)", file=sys.stderr)
        return 2
    peak = matmul_peak(threads=threads)
    report: dict[str, Any] = {"threads": threads, "backend": args.backend, "matmul_peak_gflops": peak / 1e9,
                              "models": {}}
    for name in args.models:
        report["models"][name] = measure(name, data, args.backend, threads, args.repeats, peak, not args.no_monai)
        if not args.json:
            r = report["models"][name]
            monai = (f", MONAI {r['monai_s']:.3f} s ({r['monai_over_engine']:.1f}x the engine)"
                     if "monai_s" in r else "")
            before = (f" (stitched in NumPy, as before the head: {r['stitched_s']:.3f} s = "
                      f"{r['stitched_over_floor']:.2f}x)" if "stitched_s" in r else "")
            print(f"{name:<22} {r['field']}: engine {r['engine_s']:.3f} s = {r['engine_over_floor']:.2f}x the "
                  f"floor {r['floor_s']:.3f} s{before} ({r['floor_fraction_of_peak']:.2f} of peak); fixed 256-px tiles "
                  f"{r['fixed_tiles_s']:.3f} s ({r['fixed_tiles_over_engine']:.1f}x){monai}", flush=True)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"backend {args.backend}, threads {threads}, float32 matmul peak {peak / 1e9:.0f} GFLOP/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
