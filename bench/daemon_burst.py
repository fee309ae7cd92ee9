"""Daemon benchmark: ``phasewatch serve`` on a burst of real micrographs vs the bare engine.

The burst is every test and val image of ``--material`` (superalloy: 512 x 512, ebc:
1024 x 1024), ``--copies`` times, each copy with one pixel changed so that no two files
share a sha256 (the daemon would answer a repeat from its store). Each file is staged in a temporary folder first, then:

1. engine (baseline, in this process, daemon not running): the staged files decoded
   once, then ``pipeline.segment_images`` over all of them with the same bundle, backend
   and batch as the daemon, after one warm-up image; decoding is not timed;
2. burst: the daemon (a ``phasewatch serve`` subprocess) is started on empty folders and
   every staged file is copied into its watch folder at once. Throughput is files per
   second from the first copy to the last result (the store's ``processed`` time);
3. paced: ``--paced`` more files are dropped one at a time, each after the previous
   result, as a microscope writes them. Latency is from the end of a file's copy to its
   result, at the daemon's default settings (a local copy is picked up when it is closed,
   not after a settle time); the burst's latencies (mostly queueing) are printed too.

The floor is one pass of the network over a field's own pixels (model input extended to the
stride, one backend call, no tiles or stitching), measured in this process on the first file.
A second baseline, ``in_process``, runs ``pipeline.process_file`` on the burst's files one after
another in this process: the daemon's own work (decode, segment, measure, write the outputs)
without its stages, queue, store and web server.

Ratios: ``throughput_ratio`` = daemon files/s / engine files/s (target >= 0.90);
``throughput_ratio_in_process`` = daemon files/s / in-process files/s;
``p95_over_floor_s`` = paced p95 latency - floor (target <= 0.3 s). The model is ``--model``
(bundle folder or bundled name), else the material's bundled model when installed, else a
stand-in conv net from ``tests/onnx_graphs.py``.

Run: ``python bench/daemon_burst.py [--copies 3] [--json]`` (needs the shared data).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import phasewatch  # noqa: F401  before NumPy: its BLAS on one thread, as the service runs it

# isort: split
import numpy as np  # noqa: E402
import tifffile

from phasewatch.backends.registry import KINDS
from phasewatch.bundle import bundled_model_names
from phasewatch.core.normalise import prepare
from phasewatch.core.pipeline import open_model, process_file, segment_images
from phasewatch.imageio.formats import read_pages

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MATERIALS = ("superalloy", "ebc")  # each bundled model's name is its material's
STAND_IN = {"width": 32, "layers": (1, 2, 4)}  # ~0.3 s per 512 x 512 image on one laptop core
DEADLINE_S = 600.0
POLL_S = 0.25  # the daemon serves these polls on the same cores it segments on
THROUGHPUT_TARGET = 0.90
LATENCY_OVER_FLOOR_TARGET_S = 0.3


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("PHASEWATCH_DATA", PROJECT_ROOT.parent
                                                                         / "shared" / "data")))
    parser.add_argument("--material", choices=MATERIALS, default="superalloy", help="whose test+val images")
    parser.add_argument("--model", help="bundle folder or bundled name (default: see the module doc)")
    parser.add_argument("--backend", choices=KINDS, default="auto")
    parser.add_argument("--batch", type=int, default=8, help="tiles per batch, daemon and engine alike")
    parser.add_argument("--copies", type=int, default=3, help="times each image is in the burst")
    parser.add_argument("--paced", type=int, default=8, help="files dropped one at a time for latency")
    parser.add_argument("--settle", type=float, default=None, help="watch.settle_s of the daemon (default: its own)")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    return parser.parse_args()


def resolve_model(model: str | None, material: str, workdir: Path) -> tuple[str, str]:
    """(what to load, how to name it in the output)."""
    if model:
        return model, model
    if material in bundled_model_names():
        return material, f"bundled {material}"
    sys.path.insert(0, str(PROJECT_ROOT / "tests"))
    from onnx_graphs import make_bundle

    path = make_bundle(workdir / "stand-in", in_channels=1, num_classes=3, **STAND_IN)
    return str(path), f"stand-in conv net (tests/onnx_graphs.py, {STAND_IN}), no bundled model installed"


def stage_files(data: Path, material: str, copies: int, extra: int, staging: Path) -> list[Path]:
    """Burst files then paced files, all with distinct content (one pixel differs)."""
    sources = sorted((data / material / "test" / "images").glob("*.tif"))
    sources += sorted((data / material / "val" / "images").glob("*.tif"))
    if not sources:
        raise SystemExit(f"{data}: no {material} test/val images (set PHASEWATCH_DATA or --data)")
    staging.mkdir()
    staged = []
    for n in range(copies * len(sources) + extra):
        source = sources[n % len(sources)]
        image = tifffile.imread(source)
        image.flat[0] = (int(image.flat[0]) + 1 + n // len(sources)) % 256
        path = staging / f"{source.stem}.c{n // len(sources):02d}.tif"
        tifffile.imwrite(path, image)
        staged.append(path)
    return staged


def engine_seconds(paths: list[Path], model: str, backend_kind: str, batch: int,
                   out_dir: Path) -> tuple[float, float, float, str]:
    """Seconds ``segment_images`` takes for all of ``paths`` (decoded beforehand, tiles planned as
    the daemon plans them); seconds ``process_file`` takes for them one after another (decode,
    segment, measure, write the outputs into ``out_dir``: the daemon's work without its
    machinery); the floor of the first (best of 3); and the backend."""
    from field_limit import floor_input

    opened = open_model(model, backend_kind, batch)
    bundle, backend = opened.bundle, opened.backend
    images = [read_pages(p)[0].image for p in paths]
    try:
        list(segment_images(images[:1], bundle, backend, batch=batch, plan=opened.plan))  # warm-up
        started = time.perf_counter()
        for _ in segment_images(images, bundle, backend, batch=batch, plan=opened.plan):
            pass
        engine = time.perf_counter() - started
        started = time.perf_counter()
        for n, path in enumerate(paths):
            process_file(path, opened, out_dir / f"{n:04d}", batch=batch)
        pipeline = time.perf_counter() - started
        whole = floor_input(prepare(images[0], bundle.channels, bundle.normalisation, bundle.scale),
                            bundle.spatial_multiple or 1)
        floors = []
        for _ in range(4):
            begun = time.perf_counter()
            backend.run(whole)
            floors.append(time.perf_counter() - begun)
        return engine, pipeline, min(floors[1:]), backend.name
    finally:
        backend.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def start_daemon(root: Path, model: str, backend: str, batch: int, settle: float | None,
                 ) -> tuple[subprocess.Popen, str]:
    (root / "watch").mkdir(parents=True)
    config = root / "phasewatch.toml"
    watch = "" if settle is None else f"[watch]\nsettle_s = {settle}\n\n"
    config.write_text(f"{watch}[model]\nbatch = {batch}\n")
    log = root / "serve.log"
    command = [sys.executable, "-m", "phasewatch.app.cli", "serve", "--config", str(config),
               "--watch", str(root / "watch"), "--data", str(root / "data"), "--model", model,
               "--backend", backend, "--port", str(_free_port())]
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM")}
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=out, env=env)
    end = time.monotonic() + DEADLINE_S
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"phasewatch serve exited with {proc.returncode}:\n{log.read_text()}")
        if found := re.search(r"serving url=(\S+)", log.read_text()):
            return proc, found.group(1)
        time.sleep(POLL_S)
    proc.kill()
    raise SystemExit("phasewatch serve did not start")


def wait_finished(url: str, count: int) -> list[dict[str, Any]]:
    """Rows once ``count`` files have ended done or failed."""
    end = time.monotonic() + DEADLINE_S
    while time.monotonic() < end:
        status = _get_json(f"{url}/api/status")
        if status["done"] + status["failed"] >= count:
            return _get_json(f"{url}/api/images?limit=1000")
        time.sleep(POLL_S)
    raise SystemExit(f"timed out waiting for {count} results")


def percentiles(values: list[float]) -> dict[str, float]:
    return {"p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95))}


def run_daemon(staged: list[Path], burst: int, root: Path, model: str, args: argparse.Namespace) -> dict[str, Any]:
    proc, url = start_daemon(root, model, args.backend, args.batch, args.settle)
    watch = root / "watch"
    written: dict[str, float] = {}
    try:
        first_copy = time.time()
        for path in staged[:burst]:
            shutil.copyfile(path, watch / path.name)
            written[path.name] = time.time()
        rows = wait_finished(url, burst)
        for n, path in enumerate(staged[burst:], start=burst + 1):
            shutil.copyfile(path, watch / path.name)
            written[path.name] = time.time()
            rows = wait_finished(url, n)
        with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
            metrics = response.read().decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    by_name = {Path(r["path"]).name: r for r in rows}
    failed = [r for r in rows if r["state"] != "done"]
    if failed or len(by_name) != len(staged):
        raise SystemExit(f"daemon did not finish every file: {failed or len(by_name)}")
    burst_rows = [by_name[p.name] for p in staged[:burst]]
    last_result = max(r["processed"] for r in burst_rows)
    inference = re.search(r"^phasewatch_inference_seconds_sum (\S+)$", metrics, re.M)
    return {
        "backend": re.search(r'phasewatch_backend_info\{backend="([^"]+)"', metrics).group(1),
        "burst_seconds": last_result - first_copy,
        "burst_latency_s": percentiles([by_name[p.name]["processed"] - written[p.name] for p in staged[:burst]]),
        "paced_latency_s": percentiles([by_name[p.name]["processed"] - written[p.name] for p in staged[burst:]]),
        "queue_latency_s": percentiles([r["processed"] - r["created"] for r in burst_rows]),
        "inference_seconds_sum": float(inference.group(1)) if inference else None,
    }


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="phasewatch-bench-") as tmp:
        workdir = Path(tmp)
        load_before = os.getloadavg()
        model, model_name = resolve_model(args.model, args.material, workdir)
        staged = stage_files(args.data, args.material, args.copies, args.paced, workdir / "staging")
        burst = len(staged) - args.paced
        engine_s, pipeline_s, floor_s, engine_backend = engine_seconds(
            staged[:burst], model, args.backend, args.batch, workdir / "in-process")
        daemon = run_daemon(staged, burst, workdir / "daemon", model, args)
        load_after = os.getloadavg()
    engine_per_image = engine_s / burst
    daemon_fps, engine_fps = burst / daemon["burst_seconds"], burst / engine_s
    result = {
        "model": model_name,
        "backend": {"daemon": daemon["backend"], "engine": engine_backend},
        "batch": args.batch,
        "files": {"burst": burst, "paced": args.paced},
        "settle_s": args.settle if args.settle is not None else "default",
        "engine": {"seconds": engine_s, "files_per_s": engine_fps, "seconds_per_image": engine_per_image},
        "in_process": {"seconds": pipeline_s, "files_per_s": burst / pipeline_s},
        "floor_s": floor_s,
        "daemon": {"burst_seconds": daemon["burst_seconds"], "files_per_s": daemon_fps,
                   "inference_seconds_sum": daemon["inference_seconds_sum"],
                   "burst_latency_s": daemon["burst_latency_s"], "queue_latency_s": daemon["queue_latency_s"],
                   "paced_latency_s": daemon["paced_latency_s"]},
        "throughput_ratio": daemon_fps / engine_fps,
        "throughput_ratio_in_process": daemon_fps * pipeline_s / burst,
        "throughput_target": THROUGHPUT_TARGET,
        "p95_over_floor_s": daemon["paced_latency_s"]["p95"] - floor_s,
        "p95_over_floor_target_s": LATENCY_OVER_FLOOR_TARGET_S,
        "loadavg": {"before": load_before, "after": load_after},
        "cpu_count": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(result))
        return 0
    lat = result["daemon"]
    print(f"model: {model_name}; backend daemon {daemon['backend']}, engine {engine_backend}; batch {args.batch}")
    print(f"burst of {burst} files ({args.copies} x {args.material} test+val, distinct content), settle "
          f"{result['settle_s']}")
    print(f"engine (baseline): {engine_s:.2f} s, {engine_fps:.2f} files/s, {engine_per_image:.3f} s/image; "
          f"floor (one pass over a field) {floor_s:.3f} s")
    print(f"in process:        {pipeline_s:.2f} s, {burst / pipeline_s:.2f} files/s (decode, segment, measure, "
          "write outputs, one file after another)")
    print(f"daemon burst:      {daemon['burst_seconds']:.2f} s, {daemon_fps:.2f} files/s "
          f"(daemon inference total {daemon['inference_seconds_sum']:.2f} s)")
    print(f"throughput ratio daemon/engine: {result['throughput_ratio']:.2f} (target >= {THROUGHPUT_TARGET}); "
          f"daemon/in process: {result['throughput_ratio_in_process']:.2f}")
    print(f"burst latency write->result p50 {lat['burst_latency_s']['p50']:.2f} s, "
          f"p95 {lat['burst_latency_s']['p95']:.2f} s (queueing behind the burst)")
    print(f"paced latency write->result ({args.paced} files) p50 {lat['paced_latency_s']['p50']:.2f} s, "
          f"p95 {lat['paced_latency_s']['p95']:.2f} s")
    print(f"paced p95 - floor: {result['p95_over_floor_s']:.2f} s (target <= {LATENCY_OVER_FLOOR_TARGET_S} s)")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
