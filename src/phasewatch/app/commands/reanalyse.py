"""``phasewatch reanalyse ARCHIVE --model M --out OUT``: a model over a folder tree of micrographs.

Each first-level sub-folder of ARCHIVE is a specimen. OUT is a data folder as the daemon's
(``src/phasewatch/service/archive.py``): its store, ``results/ID/`` per file, and ``fields.csv``, the web
page's CSV export of it, rewritten at the end of every run. A rerun skips what is done and
retries what failed. Files run on a local process pool (``--workers``), or on a Dask
cluster (``--cluster ADDRESS``; ``src/phasewatch/service/archive_pool.py``); Ctrl-C or SIGTERM stops after
the files in hand, with everything finished recorded (a second one quits at once).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from tqdm import tqdm

from phasewatch.atomic_files import write_bytes_atomic
from phasewatch.backends.registry import BACKENDS, KINDS
from phasewatch.backends.tta import MODES
from phasewatch.bundle import Bundle, load_bundle
from phasewatch.errors import PhasewatchError
from phasewatch.service.archive import Intake, archive_files, open_books, take_in
from phasewatch.service.archive_pool import Job, ModelSpec, Outcome, run_queue
from phasewatch.service.config import PixelSizeConfig, load_config
from phasewatch.service.gpu import open_gpus, visible_devices
from phasewatch.store import Store
from phasewatch.webui.csv_export import store_csv

INTERRUPTED_RC = 130  # the shell's code for a run ended by SIGINT
MAX_CRASHES = 3  # a file that crashes a worker this often fails (the daemon's [queue] max_attempts default)
# Kinds that run on this machine's GPU: each worker holds a CUDA context (and a TensorRT one) on
# its device, so more workers than devices only share a device and its memory (out of memory
# on a Jetson, no speed-up anywhere).
GPU_KINDS = ("tensorrt", "tensorrt-ep", "cuda")


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def on_gpu(backend: str, bundle: Bundle) -> bool:
    """Whether ``backend`` runs on this machine's GPU: a GPU kind, or 'auto' where one of the GPU
    kinds it may take is available (it may still fall to the CPU, if an engine is missing and
    ONNX Runtime has no CUDA: the run then has fewer workers than cores, never too many contexts)."""
    if backend in GPU_KINDS:
        return True
    return backend == "auto" and any(not BACKENDS[k].manual and BACKENDS[k].unavailable(bundle) is None
                                     for k in GPU_KINDS)


def gpu_devices() -> list[str]:
    """The CUDA device ids a worker each: ``CUDA_VISIBLE_DEVICES``'s entries, else NVML's
    indices; one device where neither says (a Jetson: one integrated GPU, no NVML)."""
    count = visible_devices(open_gpus())
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [e.strip() for e in listed.split(",") if e.strip()][:count]
    return [str(i) for i in range(count)] if count is not None else ["0"]


def default_workers(backend: str, bundle: Bundle) -> tuple[int, list[str]]:
    """Workers and their devices when ``--workers`` is not given: one per GPU on a GPU backend
    (each pinned to its own), else one per core."""
    if on_gpu(backend, bundle):
        devices = gpu_devices()
        return max(1, len(devices)), devices
    return cores(), []


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("archive", type=Path, help="folder tree of micrographs; each sub-folder is a specimen")
    parser.add_argument("--model", required=True, help="bundle folder or bundled model name")
    parser.add_argument("--out", required=True, type=Path,
                        help="data folder for this model's results (the same folder resumes a run)")
    parser.add_argument("--workers", type=int, default=None,
                        help="local worker processes (default: one per core, or with a GPU backend one per "
                             "visible GPU, each on its own); ignored with --cluster")
    parser.add_argument("--cluster", metavar="ADDRESS",
                        help="Dask scheduler to run on, e.g. tcp://host:8786 (needs the 'cluster' extra; "
                             "workers must see ARCHIVE and OUT at the same paths)")
    parser.add_argument("--threads", type=int, default=None,
                        help="inference threads per worker (default: the cores shared out among the local "
                             "workers; on a cluster, ONNX Runtime's own choice)")
    parser.add_argument("--backend", choices=KINDS, default="auto")
    parser.add_argument("--batch", type=int, default=8, help="tiles per inference batch")
    parser.add_argument("--tta", choices=MODES, default="none",
                        help="test-time augmentation: average probabilities over flips (4 passes) or d4 (8)")
    parser.add_argument("--pixel-size", type=float, default=None, metavar="UM",
                        help="pixel size in µm, overriding what the files say")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="the daemon's config file: its [calibration] pixel sizes apply to files that carry "
                             "none, its folders taken relative to ARCHIVE")


def _stop_on_signals(stop: threading.Event) -> None:
    """Ctrl-C or SIGTERM sets ``stop``: the run ends after the files in hand; a second one
    ends the process at once (the next run puts back the files it held)."""
    def stopping(signum: int, frame: FrameType | None) -> None:
        stop.set()
        tqdm.write("stopping after the files in hand (again to quit now)", file=sys.stderr)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    signal.signal(signal.SIGINT, stopping)
    signal.signal(signal.SIGTERM, stopping)


def run(args: argparse.Namespace) -> int:
    try:
        bundle = load_bundle(args.model)
        devices: list[str] = []
        if args.workers is None:
            args.workers, devices = default_workers(args.backend, bundle)
        threads = args.threads or (None if args.cluster else max(1, cores() // max(1, args.workers)))
        pixel_sizes = load_config(args.config).pixel_size if args.config else PixelSizeConfig()
        job = Job(ModelSpec(args.model, args.backend, args.batch, threads, args.tta), args.out.resolve(),
                  args.pixel_size, pixel_sizes, args.archive.resolve())
        if not args.archive.is_dir():
            raise PhasewatchError(f"{args.archive}: not a folder")
        if args.workers < 1:
            raise PhasewatchError(f"--workers {args.workers}: needs at least one worker")
        store = open_books(job.out, bundle, MAX_CRASHES)
    except PhasewatchError as exc:
        print(f"phasewatch reanalyse: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    _stop_on_signals(stop)
    try:
        return _run(store, job.root, job, args, stop, devices)
    finally:
        write_bytes_atomic(job.out / "fields.csv", store_csv(store).encode())
        store.close()


def _run(store: Store, archive: Path, job: Job, args: argparse.Namespace, stop: threading.Event,
         devices: list[str]) -> int:
    files = archive_files(archive)
    failed = 0

    def recorded(outcome: Outcome) -> None:
        nonlocal failed
        if outcome.error is not None:
            failed += 1
            progress.write(f"error: {outcome.error}", file=sys.stderr)
        progress.update()

    def crashed(counts: dict[str, int]) -> None:
        nonlocal failed
        failed += counts["failed"]
        progress.update(counts["failed"])
        progress.write(f"error: a worker process died with {counts['charged']} file(s) in hand; "
                       f"{counts['failed']} of them failed for crashing it {MAX_CRASHES} times, the others "
                       "run again (alone); a new pool goes on", file=sys.stderr)

    started = time.monotonic()
    with tqdm(total=len(files), unit="file", desc="hashing", file=sys.stderr, disable=len(files) < 2) as hashing:
        intake = take_in(store, archive, files, hashing.update, stop)
    for line in intake.unreadable:
        print(f"error: {line}", file=sys.stderr)
    try:
        with tqdm(total=intake.pending, unit="file", desc="analysing", file=sys.stderr) as progress:
            run_queue(store, args.workers, args.cluster, job, recorded, stop, crashed, devices=devices)
    except PhasewatchError as exc:
        print(f"phasewatch reanalyse: {exc}", file=sys.stderr)
        return 2
    print(_summary(intake, progress.n, failed, time.monotonic() - started, job.out, stop.is_set()), file=sys.stderr)
    if stop.is_set():
        return INTERRUPTED_RC
    return 1 if failed or intake.unreadable else 0


def _summary(intake: Intake, analysed: int, failed: int, seconds: float, out: Path, interrupted: bool) -> str:
    rate = f"{analysed / seconds:.2f} files/s" if analysed and seconds > 0 else "-"
    left = intake.pending - analysed + intake.files - intake.queued
    stopped = f"interrupted, {left} file(s) left for the next run; " if interrupted else ""
    return (f"{stopped}{analysed - failed} of {analysed} file(s) analysed ({failed} failed) in {seconds:.1f} s "
            f"({rate}); {intake.done} of {intake.files} already done, {intake.retried} earlier failure(s) "
            f"retried; results in {out} (fields.csv)")
