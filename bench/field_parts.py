"""What each part of the engine path costs per field, in CPU time, on one thread.

For each bundled model, one real held-out field is segmented as ``bench/field_limit.py``'s
``engine`` does (``pipeline.segment_images`` with the model's tile plan: one pass through the
head in the graph for these fields), and each part of that path is also run alone:

- ``prepare``: ``normalise.prepare`` (resize to the model's scale, the percentile statistics);
- ``features``: ``trust.input_features`` of the prepared field (the trust record's input measures);
- ``input``: the tiler's model input of the field (its band: converted, stretched, extended);
- ``head``: the ONNX Runtime call of the model with its post-processing in the graph;
- ``output``: the maps cut to the field and resized back to the image (scale != 1);
- ``floor``: the plain model's call on the field's own input (``field_limit.floor_input``);
- ``engine``: the whole path; ``other`` = engine - the parts (Python glue, copies between them).

Times are ``time.process_time`` (CPU time of this process, so the load of other processes on a
shared machine does not count as ours; one intra-op thread, so CPU time is the time a core
spends), the best of ``--repeats`` rounds taken in turns, after a warm-up. On a loaded machine
the same work still varies by 10-30 % (caches, and page faults: a fresh array of a few MB costs
about 1 ms of faults here), so compare runs taken one after another, several times.

Run: ``python bench/field_parts.py [--models NAME ...] [--repeats 9] [--json]`` (needs the
shared data; ``$PHASEWATCH_DATA`` or ``../shared/data``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):  # numpy's share of the one thread
        os.environ[name] = "1"

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from field_limit import FIELDS, floor_input  # noqa: E402  (FIELDS: the same field per model)

PARTS = ("prepare", "features", "input", "head", "output", "engine", "floor")


def cpu_ms(run: Callable[[], Any]) -> float:
    start = time.process_time()
    run()
    return (time.process_time() - start) * 1000


def measure(name: str, data: Path, repeats: int) -> dict[str, Any]:
    from phasewatch.backends.base import fused_head
    from phasewatch.core.normalise import prepare
    from phasewatch.core.pipeline import open_model, segment_images
    from phasewatch.core.tiling import _tiles
    from phasewatch.core.trust import input_features
    from phasewatch.imageio.formats import images_in, read_pages

    path = images_in(data / FIELDS[name])[0]
    image = read_pages(path)[0].image
    model = open_model(name, "cpu", threads=1)
    bundle, backend, plan = model.bundle, model.backend, model.plan
    head = fused_head(backend)
    if plan is None or head is None:
        raise SystemExit(f"{name}: the bundle has no tile plan or no head in the graph (phasewatch add-head)")
    inp = prepare(image, bundle.channels, bundle.normalisation, bundle.scale, slices=bundle.slices)
    geometry = plan.geometry(inp.height, inp.width)
    if not geometry.one_pass:
        raise SystemExit(f"{name}: {path.name} is not run in one pass; this benchmark times that path")
    _, _, _, pixels = next(_tiles([inp], lambda _: geometry, bundle.halo))
    batch = np.ascontiguousarray(pixels[None])
    classes, margin = (maps[0] for maps in head(batch))
    whole = floor_input(inp, bundle.spatial_multiple)

    def output() -> None:
        cut = [np.array(m[: inp.height, : inp.width]) for m in (classes, margin)]
        if cut[0].shape != image.shape[:2]:
            size = (image.shape[1], image.shape[0])
            [cv2.resize(m, size, interpolation=cv2.INTER_NEAREST) for m in cut]

    runs: dict[str, Callable[[], Any]] = {
        "prepare": lambda: prepare(image, bundle.channels, bundle.normalisation, bundle.scale, slices=bundle.slices),
        "features": lambda: input_features(inp.centre if hasattr(inp, "centre") else inp),
        "input": lambda: next(_tiles([inp], lambda _: geometry, bundle.halo)),
        "head": lambda: head(batch),
        "output": output,
        "engine": lambda: list(segment_images([image], bundle, backend, plan=plan)),
        "floor": lambda: backend.run(whole),
    }
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {part: [] for part in runs}
    for _ in range(repeats):
        for part, run in runs.items():
            times[part].append(cpu_ms(run))
    model.close()
    ms = {part: min(values) for part, values in times.items()}
    ms["other"] = ms["engine"] - sum(ms[p] for p in ("prepare", "features", "input", "head", "output"))
    return {"field": f"{path.name} ({image.shape[1]}x{image.shape[0]}, model input {inp.width}x{inp.height})",
            "cpu_ms": {k: round(v, 2) for k, v in ms.items()},
            "engine_over_floor": round(ms["engine"] / ms["floor"], 3),
            "outside_head_ms": round(ms["engine"] - ms["head"], 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(FIELDS), choices=list(FIELDS))
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    args = parser.parse_args()
    cv2.setNumThreads(0)  # OpenCV on the calling thread too: CPU time is then the work, not workers' spinning
    env = os.environ.get("PHASEWATCH_DATA")
    data = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    if not data.is_dir():
        print(f"field_parts: no shared data at {data} (set PHASEWATCH_DATA)", file=sys.stderr)
        return 2
    report = {name: measure(name, data, args.repeats) for name in args.models}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"CPU ms per field, one thread, best of {args.repeats}")
    print(f"{'model':<22} " + " ".join(f"{p:>8}" for p in (*PARTS, "other")) + "  outside-head  engine/floor")
    for name, r in report.items():
        ms = r["cpu_ms"]
        print(f"{name:<22} " + " ".join(f"{ms[p]:8.2f}" for p in (*PARTS, "other"))
              + f"  {r['outside_head_ms']:12.2f}  {r['engine_over_floor']:12.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
