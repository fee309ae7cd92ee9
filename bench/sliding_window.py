"""Sliding-window benchmark: the phasewatch engine vs MONAI vs a naive tile loop.

One 1536 x 2048 micrograph (a real one from the shared data, mirrored out to that
size, else synthetic) is segmented by

- phasewatch: ``engine.segment`` with ``OrtBackend`` on CPU, the U-Net exported to ONNX;
- MONAI: ``sliding_window_inference`` with the same PyTorch weights, tile, overlap,
  Gaussian window (sigma_scale 0.125) and batch, in this process;
- naive: one tile at a time through the same ONNX session into full-image accumulators.

Each path is warmed up once and timed best of ``--repeats``. Torch, ONNX Runtime and the
matmul used to measure the machine's peak all use ``--threads`` threads.
``fraction_of_peak`` = (model FLOPs of the tiles the engine ran / peak FLOP/s) / time.

``--huge N`` instead segments an N x N uint16 image, memory-mapped from a temporary
file, with a pointwise stand-in model, and reports peak RSS excluding the mapped file.

Run: ``python bench/sliding_window.py [--json]`` (needs the export and bench extras).
"""

from __future__ import annotations

import argparse
import os
import sys


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=64, help="pixels (MONAI gets overlap/tile)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--width", type=int, default=16, help="U-Net base channels")
    parser.add_argument("--depth", type=int, default=4, help="U-Net levels")
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="default: physical cores")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--height", type=int, default=1536)
    parser.add_argument("--image-width", type=int, default=2048)
    parser.add_argument("--huge", type=int, default=0, help="memory check on an N x N image")
    parser.add_argument("--plan-megapixels", type=float, default=0.0,
                        help="with --huge: tiles planned per image within this budget (0: fixed --tile tiles)")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    return parser.parse_args()


ARGS = _parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.threads:
    # OpenBLAS sizes its pool once, when numpy is first imported.
    os.environ["OPENBLAS_NUM_THREADS"] = str(ARGS.threads)

import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from timing import best_of, matmul_peak  # noqa: E402

from phasewatch.backends.base import physical_cores  # noqa: E402
from phasewatch.backends.onnxruntime import OrtBackend  # noqa: E402
from phasewatch.bundle import Normalisation  # noqa: E402
from phasewatch.core.normalise import prepare  # noqa: E402
from phasewatch.core.tiling import Plan, gaussian_window, segment, tile_starts  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
NORMALISATION = Normalisation(mean=(0.5,), std=(0.25,), sixteen_bit="percentile")


def micrograph(height: int, width: int) -> tuple[np.ndarray, str]:
    """A real gray micrograph mirrored out to height x width, or a synthetic one."""
    candidates = sorted((DATA / "ebc" / "train" / "images").glob("*.tif"))
    source = cv2.imread(str(candidates[0]), cv2.IMREAD_GRAYSCALE) if candidates else None
    if source is None:
        from phasewatch.core.synthetic import superalloy_micrograph

        rgb, _ = superalloy_micrograph(height, width)
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), "synthetic superalloy"
    reps = (-(-height // source.shape[0]), -(-width // source.shape[1]))
    tiled = np.pad(source, [(0, (r - 1) * s) for r, s in zip(reps, source.shape, strict=True)], "symmetric")
    return np.ascontiguousarray(tiled[:height, :width]), f"{candidates[0].name} mirrored"


def model_flops(onnx_path: Path) -> float:
    """FLOPs of one tile: 2 x MACs of every Conv, ConvTranspose and Gemm (batch 1)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path)))
    shapes = {
        v.name: [d.dim_value if d.HasField("dim_value") else 1 for d in v.type.tensor_type.shape.dim]
        for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]
    }
    shapes.update({t.name: list(t.dims) for t in model.graph.initializer})
    macs = 0
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose"):
            weight = shapes[node.input[1]]
            per_point = int(np.prod(weight[1:]))  # Conv: C_in/g*kh*kw; ConvT: C_out/g*kh*kw
            points = shapes[node.output[0] if node.op_type == "Conv" else node.input[0]]
            macs += int(np.prod(points)) * per_point
        elif node.op_type == "Gemm":
            trans_a = any(a.name == "transA" and a.i for a in node.attribute)
            inner = shapes[node.input[0]][0 if trans_a else 1]
            macs += int(np.prod(shapes[node.output[0]])) * inner
    return 2.0 * macs


def naive(inp, session_backend, tile: int, overlap: int, classes: int) -> np.ndarray:
    """Textbook sliding window: whole padded image in memory, one tile per run."""
    margin = overlap // 2
    rows, cols = tile_starts(inp.height, tile, overlap), tile_starts(inp.width, tile, overlap)
    image = np.pad(inp.region(0, inp.height, 0, inp.width), [(0, 0), (margin, tile), (margin, tile)], "reflect")
    logits = np.zeros((classes, *image.shape[1:]), np.float32)
    weights = np.zeros(image.shape[1:], np.float32)
    window = gaussian_window(tile)
    for y in rows + margin:
        for x in cols + margin:
            out = session_backend.run(image[None, :, y : y + tile, x : x + tile])[0]
            logits[:, y : y + tile, x : x + tile] += out * window
            weights[y : y + tile, x : x + tile] += window
    inside = (slice(margin, margin + inp.height), slice(margin, margin + inp.width))
    return np.argmax(logits[:, inside[0], inside[1]] / weights[inside], axis=0)


def export_unet(args, threads: int, folder: Path):
    import torch

    from phasewatch.export.models import build_model
    from phasewatch.export.onnx_export import export_onnx

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    model = build_model("unet", 1, args.classes, width=args.width, depth=args.depth).eval()
    onnx_path = folder / "unet.onnx"
    export_onnx(model, 1, args.tile, onnx_path)
    return model, onnx_path


def compare(args, threads: int) -> dict:
    import torch
    from monai.inferers import sliding_window_inference

    load = [round(v, 2) for v in os.getloadavg()]
    image, source = micrograph(args.height, args.image_width)
    with tempfile.TemporaryDirectory() as tmp:
        model, onnx_path = export_unet(args, threads, Path(tmp))
        flops_per_tile = model_flops(onnx_path)
        backend = OrtBackend(onnx_path, "cpu", max_batch=args.batch, threads=threads)
        single = OrtBackend(onnx_path, "cpu", max_batch=1, threads=threads)

    timings: dict[str, float] = {}

    def phasewatch_run():
        return segment(prepare(image, 1, NORMALISATION), backend, args.tile, args.overlap, timings=timings)

    inp = prepare(image, 1, NORMALISATION)
    tensor = torch.from_numpy(inp.region(0, inp.height, 0, inp.width)[None])

    def monai_run():
        with torch.inference_mode():
            logits = sliding_window_inference(
                tensor, (args.tile, args.tile), args.batch, model,
                overlap=args.overlap / args.tile, mode="gaussian", sigma_scale=0.125,
            )
            return logits.argmax(1)[0].numpy().astype(np.uint8)

    phasewatch_s = best_of(args.repeats, phasewatch_run)
    runs = args.repeats + 1
    stage_ms = {k: round(v / runs, 1) for k, v in timings.items()}
    monai_s = best_of(args.repeats, monai_run)
    naive_s = best_of(args.repeats, lambda: naive(inp, single, args.tile, args.overlap, args.classes))

    peak = matmul_peak()
    tiles = len(tile_starts(args.height, args.tile, args.overlap)) * len(
        tile_starts(args.image_width, args.tile, args.overlap)
    )
    at_peak_s = flops_per_tile * tiles / peak
    return {
        "phasewatch_s": round(phasewatch_s, 4),
        "monai_s": round(monai_s, 4),
        "naive_s": round(naive_s, 4),
        "ratio_vs_monai": round(monai_s / phasewatch_s, 3),
        "fraction_of_peak": round(at_peak_s / phasewatch_s, 3),
        "at_peak_s": round(at_peak_s, 4),
        "ratio_vs_naive": round(naive_s / phasewatch_s, 3),
        "phasewatch_stage_ms_mean": stage_ms,
        "tiles": tiles,
        "gflops_per_tile": round(flops_per_tile / 1e9, 3),
        "peak_gflops": round(peak / 1e9, 1),
        "image": f"{args.height}x{args.image_width} ({source})",
        "model": f"unet width={args.width} depth={args.depth}",
        "tile": args.tile, "overlap": args.overlap, "batch": args.batch, "threads": threads,
        "load_average_at_start": load,
    }


class Pointwise:
    """Stand-in model for the memory check: cost-free, so that only the engine is measured."""

    name, max_batch = "pointwise", 16

    def run(self, batch: np.ndarray) -> np.ndarray:
        return np.concatenate([batch[:, :1], -batch[:, :1], 0.5 * batch[:, :1]], axis=1)

    def close(self) -> None:
        pass


def rss_anon_bytes() -> int:
    """Private resident memory (RssAnon): excludes the memory-mapped input file's pages."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no RssAnon (not Linux?)")


def huge(args) -> dict:
    import threading

    size = args.huge
    peak = [rss_anon_bytes()]
    stop = threading.Event()

    def sample():
        while not stop.wait(0.02):
            peak[0] = max(peak[0], rss_anon_bytes())

    with tempfile.TemporaryDirectory() as tmp:
        image = np.lib.format.open_memmap(Path(tmp) / "huge.npy", "w+", np.uint16, (size, size))
        for y in range(0, size, 1024):  # a gradient with texture, written band by band
            rows = np.arange(y, min(y + 1024, size), dtype=np.uint32)[:, None]
            image[y : y + len(rows)] = ((rows * 7 + np.arange(size, dtype=np.uint32)) % 65536).astype(np.uint16)
        image.flush()
        del image
        image = np.load(Path(tmp) / "huge.npy", mmap_mode="r")
        baseline = rss_anon_bytes()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        plan = Plan(16, int(args.plan_megapixels * 1e6), halo=0) if args.plan_megapixels else None
        classes = segment(prepare(image, 1, NORMALISATION), Pointwise(), args.tile, args.overlap, plan=plan).classes
        seconds = time.perf_counter() - start
        stop.set()
        sampler.join()
    return {
        "image": f"{size}x{size} uint16 memmap",
        "geometry": str(plan.geometry(size, size)) if plan else f"fixed {args.tile}-px tiles",
        "peak_rss_anon_mb": round(peak[0] / 2**20, 1),
        "baseline_rss_anon_mb": round(baseline / 2**20, 1),
        "class_map_mb": round(classes.nbytes / 2**20, 1),
        "seconds": round(seconds, 1),
    }


def main() -> int:
    args = ARGS
    threads = args.threads or physical_cores()
    result = huge(args) if args.huge else compare(args, threads)
    if args.json:
        print(json.dumps(result))
        return 0
    for key, value in result.items():
        print(f"{key:>26}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
