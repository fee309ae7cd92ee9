"""Running an archive re-analysis on a pool of worker processes: local, or a Dask cluster's.

Each worker opens the model once (:func:`_model`, cached per process) and runs every file it
is given through ``pipeline.process_file``, the daemon's path from decoding to written
outputs (a Z stack through the daemon's volume path, ``volume_views.record_volume``), into
the daemon's layout (``OUT/results/ID/``). Only the driver touches the store:
a worker returns an :class:`Outcome` and :func:`drain` records it, so that the workers of a
cluster need to see the archive and ``OUT`` at the same paths as the driver, but never the
database (SQLite over a network file system is unsafe).

Pools. :func:`open_pool` gives a ``concurrent.futures`` executor either way: a
``ProcessPoolExecutor`` by default, or, given a scheduler's address, the executor of a
``dask.distributed`` client (the ``cluster`` extra). The same loop drives both.

Interruption. Ctrl-C or SIGTERM (the caller sets :func:`drain`'s ``stop``) stops it from
taking more files; files already inside a worker are waited for and recorded, those not
started are put back in the queue. The store is never left mid-transaction by a signal; a
kill that leaves rows ``processing`` is mended by the next run (``src/phasewatch/service/archive.py``).
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import multiprocessing.queues
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, Executor, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from phasewatch.core.pipeline import Model, open_model, process_file
from phasewatch.core.provenance import model_identity
from phasewatch.core.records import FieldRecord, ModelIdentity
from phasewatch.core.volume import open_volume, says_volume
from phasewatch.core.volume_views import record_volume
from phasewatch.errors import PhasewatchError, one_line
from phasewatch.service.config import DataConfig, PixelSizeConfig
from phasewatch.store import Store
from phasewatch.store.rows import FileRow

INTERRUPTED = "the re-analysis was interrupted before this file"
POLL_S = 0.2  # how late a stop request may be seen while every worker is busy
IN_WORKER = "analysing"  # the store's stage of a file in a worker's hands (a crash's reason names it)
QUEUE_WAIT_S = 60.0  # a starting worker waits this long for its device id from the driver


@dataclass(frozen=True)
class ModelSpec:
    """How every worker opens the model (``pipeline.open_model``'s arguments)."""

    ref: str
    backend: str = "auto"
    batch: int = 8
    threads: int | None = None
    tta: str = "none"


@dataclass(frozen=True)
class Job:
    """What every file of a run shares: the model, the output folder, a pixel size that
    overrides the files' own (None: what each file says), and the daemon's pixel sizes
    (``[calibration]``) for files that say none, its folders relative to the archive ``root``."""

    model: ModelSpec
    out: Path
    pixel_size_um: float | None = None
    pixel_sizes: PixelSizeConfig = PixelSizeConfig()
    root: Path = Path()


@dataclass(frozen=True)
class Outcome:
    """One file's result as a worker returns it: the record, outputs and model identity the
    daemon stores (``Store.mark_done``), or the one-line reason it failed."""

    file_id: int
    record: FieldRecord | None = None
    outputs: dict[str, str] | None = None
    model: ModelIdentity | None = None
    error: str | None = None


@functools.lru_cache(maxsize=1)
def _model(spec: ModelSpec) -> Model:
    return open_model(spec.ref, spec.backend, spec.batch, spec.threads, spec.tta)


# (file id, path, job) -> its outcome, run in a worker: :func:`analyse`
Task = Callable[[int, str, Job], Outcome]


def analyse(file_id: int, path: str, job: Job) -> Outcome:
    """Segment, measure and write one file, in a worker (module doc); a Z stack as one volume,
    as the daemon records it (``volume_views.record_volume``)."""
    out_dir = DataConfig(dir=job.out).result_dir(file_id)
    try:
        model = _model(job.model)
        if says_volume(Path(path)):
            result, _ = record_volume(open_volume(Path(path)), model, out_dir)
        else:
            result = process_file(Path(path), model, out_dir, job.pixel_size_um,
                                  fallback_pixel_size_um=job.pixel_sizes.pixel_size_for(Path(path), job.root))
    except PhasewatchError as exc:
        return Outcome(file_id, error=str(exc))
    except Exception as exc:  # one odd file must not stop the run (the daemon's rule too)
        return Outcome(file_id, error=f"{path}: unexpected error: {one_line(exc)}")
    return Outcome(file_id, result.record, result.outputs, model_identity(result.model))


def _start_worker(devices: multiprocessing.queues.Queue[str] | None) -> None:
    # Ctrl-C reaches the whole process group: the driver decides, the workers finish their file.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if devices is not None:
        # One GPU each: set before CUDA is loaded (the model opens on the first file), so that
        # this process's device 0, the one every GPU backend uses, is its own. A blocking get:
        # the driver's puts reach the pipe through a feeder thread, so get_nowait can find it
        # empty on a loaded machine (seen in CI).
        os.environ["CUDA_VISIBLE_DEVICES"] = devices.get(timeout=QUEUE_WAIT_S)


@contextlib.contextmanager
def open_pool(workers: int, cluster: str | None, devices: Sequence[str] = ()) -> Iterator[tuple[Executor, int]]:
    """An executor and how many files it runs at once: ``workers`` local processes, or the
    threads of the Dask cluster whose scheduler is at ``cluster`` (e.g. ``tcp://host:8786``).
    ``devices`` (CUDA device ids, one per worker): each local worker sees only its own."""
    if cluster is None:
        # spawn: a fresh interpreter per worker, not a fork of a driver holding SQLite connections
        context = multiprocessing.get_context("spawn")
        queue: multiprocessing.queues.Queue[str] | None = None
        if devices:
            if len(devices) != workers:
                raise PhasewatchError(f"{workers} worker(s) for {len(devices)} GPU(s): one each")
            queue = context.Queue()
            for device in devices:
                queue.put(device)
        with ProcessPoolExecutor(workers, context, _start_worker, (queue,)) as executor:
            yield executor, workers
        return
    try:
        from distributed import Client
    except ImportError as exc:
        raise PhasewatchError("--cluster needs Dask: pip install 'phasewatch[cluster]'") from exc
    try:
        client = Client(cluster, timeout="30s")
    except OSError as exc:  # no scheduler there, or it did not answer in time
        raise PhasewatchError(f"{cluster}: cannot reach the Dask scheduler: {one_line(exc)}") from exc
    with client:
        # pure=False: two runs of the same file are two tasks, never one cached result
        yield client.get_executor(pure=False), max(1, sum(client.nthreads().values()))


def run_queue(store: Store, workers: int, cluster: str | None, job: Job, recorded: Callable[[Outcome], None],
              stop: threading.Event, crashed: Callable[[dict[str, int]], None], task: Task = analyse,
              devices: Sequence[str] = ()) -> None:
    """:func:`drain` the queue on a pool (:func:`open_pool`). A local worker that dies (a native
    crash in a decoder, the OOM killer) breaks the pool: the files it had in hand are charged a
    crash as the daemon charges them (``Store.recover_after_crash``: those in hand together run
    alone from then on, a file fails after three crashes), ``crashed`` is told the counts, and
    a new pool goes on. (Dask retries a lost task on other workers itself, then fails it.)
    ``devices``: :func:`open_pool`'s, one GPU per local worker."""
    while True:
        try:
            with open_pool(workers, cluster, devices) as (executor, slots):
                # two files per worker in flight: a worker never waits for the driver to hand it the next
                drain(store, executor, 2 * slots, job, recorded, stop, task)
            return
        except BrokenExecutor as exc:
            counts = store.recover_after_crash(charge=True)
            if not counts["charged"]:  # died with nothing in hand: a new pool would die the same way
                raise PhasewatchError(f"the worker processes died before taking a file: {one_line(exc)}") from exc
            crashed(counts)


def drain(store: Store, executor: Executor, slots: int, job: Job, recorded: Callable[[Outcome], None],
          stop: threading.Event, task: Task = analyse) -> None:
    """Run ``task`` on the queue's pending files on ``executor``, ``slots`` of them in flight (a
    file marked ``alone`` with nothing beside it), recording each outcome in ``store`` and telling
    ``recorded``. Once ``stop`` is set (Ctrl-C, SIGTERM), take no more: finish what the workers
    hold, put back what they have not started. A broken pool raises ``BrokenExecutor`` once every
    file in flight has ended, its files left in hand (:func:`run_queue`)."""
    running: dict[Future[Outcome], FileRow] = {}
    held: FileRow | None = None  # claimed, but to run alone once the others are done
    broken = False
    while True:
        while not (stop.is_set() or broken) and len(running) < slots and not any(r["alone"] for r in running.values()):
            if held is None:
                claimed = store.claim_next(1)
                if not claimed:
                    break
                held = claimed[0]
            if held["alone"] and running:
                break
            store.set_stage([held["id"]], IN_WORKER)  # what a crash of the pool charges
            running[executor.submit(task, held["id"], held["path"], job)] = held
            held = None
        if not running:
            break
        if stop.is_set():
            for future in running:
                future.cancel()  # a file a local worker has started cannot be, and is waited for
        finished, _ = wait(running, POLL_S, FIRST_COMPLETED)
        for future in finished:
            row = running.pop(future)
            if future.cancelled():
                store.release(row["id"], INTERRUPTED)
            elif isinstance(future.exception(), BrokenExecutor):
                broken = True
            else:
                _record(store, row["id"], future, recorded)
    if held is not None:
        store.release(held["id"], INTERRUPTED)
    if broken:
        raise BrokenExecutor("a worker process died")


def _record(store: Store, file_id: int, future: Future[Outcome], recorded: Callable[[Outcome], None]) -> None:
    try:
        outcome = future.result()
    except Exception as exc:  # the cluster lost the task (its worker died each time Dask tried it)
        outcome = Outcome(file_id, error=f"file {file_id}: its worker was lost: {one_line(exc)}")
    if outcome.error is None:
        assert outcome.record is not None
        store.mark_done(file_id, outcome.record, outcome.outputs, outcome.model)
    else:
        store.mark_failed(file_id, outcome.error)
    recorded(outcome)
