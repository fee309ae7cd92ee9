"""What a volume's slice costs against the floor: the bundled tomography model on a Z stack of
the shared tomography validate slices (852 x 852).

In this process, with the same thread count throughout, per slice:

- ``volume``: ``volume.segment_volume`` end to end, what ``phasewatch segment`` and the
  daemon run on a Z stack: slices read one page at a time from the TIFF, segmented, recorded
  with trust, measured in 3D, written to ``NAME.classes.tif`` and ``NAME.volume.json``;
- ``fields``: the named baseline, the same slices through the engine as separate 2D fields
  (``pipeline.segment_images``, decoded beforehand, nothing written or measured);
- ``floor``: one pass of the same ONNX Runtime session over each slice's own model input,
  extended only to the network's stride.

It prints seconds per slice, slices per second and ``volume / floor``, ``fields / floor``.
``--depth N`` repeats the 10 slices to N (the stack is written once, to a temporary folder).
Times are the best of ``--repeats``, the three taken in turns after a warm-up each.

Run: ``python bench/volume_slices.py [--depth 40] [--json]`` (the shared data:
``$PHASEWATCH_DATA`` or ``../shared/data``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from field_limit import floor_input
from timing import best_of_interleaved


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depth", type=int, default=10, help="slices in the stack (the 10 repeated)")
    parser.add_argument("--threads", type=int, default=None, help="default: physical cores")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    return parser.parse_args()


def slices_of(data: Path, depth: int) -> np.ndarray:
    from phasewatch.imageio.formats import images_in, read_pages

    images = [read_pages(path)[0].image for path in images_in(data / "tomography" / "validate" / "images")]
    gray = [image[..., 0] if image.ndim == 3 else image for image in images]  # gray stored as RGB
    return np.stack([gray[i % len(gray)] for i in range(depth)])


def measure(stack: np.ndarray, threads: int, repeats: int) -> dict[str, Any]:
    from phasewatch.core.normalise import prepare
    from phasewatch.core.pipeline import open_model, segment_images
    from phasewatch.core.volume import open_volume, segment_volume

    model = open_model("tomography", "cpu", threads=threads)
    bundle, backend = model.bundle, model.backend
    depth = len(stack)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stack.tif"
        tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "ZYX"})
        inputs = [floor_input(prepare(s, bundle.channels, bundle.normalisation, bundle.scale), bundle.spatial_multiple)
                  for s in stack]
        seconds = best_of_interleaved(repeats, {
            "volume": lambda: segment_volume(open_volume(path), model, Path(tmp) / "out"),
            "fields": lambda: list(segment_images(list(stack), bundle, backend, plan=model.plan)),
            "floor": lambda: [backend.run(x) for x in inputs],
        })
    model.close()
    per_slice = {k: v / depth for k, v in seconds.items()}
    return {"slices": depth, "slice": f"{stack.shape[2]}x{stack.shape[1]}", "threads": threads,
            "seconds_per_slice": per_slice, "slices_per_second": {k: 1 / v for k, v in per_slice.items()},
            "volume_over_floor": seconds["volume"] / seconds["floor"],
            "fields_over_floor": seconds["fields"] / seconds["floor"]}


def main() -> int:
    args = parse_args()
    from phasewatch.backends.base import physical_cores

    env = os.environ.get("PHASEWATCH_DATA")
    data = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    if not (data / "tomography").is_dir():
        print(f"volume_slices: no shared tomography data under {data} (set PHASEWATCH_DATA)", file=sys.stderr)
        return 2
    report = measure(slices_of(data, args.depth), args.threads or physical_cores(), args.repeats)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    s = report["seconds_per_slice"]
    print(f"tomography, {report['slices']} slices of {report['slice']}, {report['threads']} thread(s), per slice: "
          f"volume {s['volume']:.3f} s ({report['slices_per_second']['volume']:.2f} slices/s) = "
          f"{report['volume_over_floor']:.2f}x the floor {s['floor']:.3f} s; as separate fields "
          f"{s['fields']:.3f} s = {report['fields_over_floor']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
