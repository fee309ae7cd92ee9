"""The daemon's work: from a settled file in the watch folder to a served result.

Four :class:`~phasewatch.service.stages.Stage` objects, joined by queues, run
the steps of :mod:`phasewatch.core.pipeline` so that hashing, decoding, inference
and writing overlap and the backend sees full batches when a burst arrives:

``intake``  hashes each settled file and queues it in the store (SQLite, durable);
``decode``  claims queued files and decodes them in a child process under
            ``[limits]`` (``imageio.IsolatedReader``: a file that needs too much time or
            memory, or crashes the decoder, fails here with one line, and so does a
            field over ``[limits] max_megapixels``);
``infer``   segments the decoded files that are ready, up to ``[limits] max_megapixels``
            in all, tiles of several files in a batch (``pipeline.segment_files``), and hands
            each file on as soon as it is segmented (so that it is written while the next
            are segmented, not all after the last); a model reload (SIGHUP) happens here,
            between batches, and each result carries the model that produced it;
``write``   measures, writes the outputs atomically (``pipeline.measure_and_write``), marks
            the file done and publishes the event that the web page shows.

Decoded pixels in flight are bounded (``[workers] in_flight_megapixels``), not files:
one 20000 x 20000 image weighs what 1500 small ones do. Each stage reports a heartbeat;
a stage that holds an item without progress for ``[workers] stall_timeout_s`` makes
:meth:`Daemon.health` report a ``worker`` problem, which stops the watchdog pings.

Faults of a file are charged to the file, faults of the machine to nobody. The decoder's
verdict on a file's content fails it at once (the same bytes give the same verdict). Any
other error that a file's content can cause (a decoder that timed out or died; prepare,
the backend rejecting its input or stitching; measuring; writing its outputs) costs it an
attempt: back to the queue, failed with its one-line reason after ``[queue]
max_attempts`` (``Store.charge``). When a batch of several files fails, its halves are
tried one after the other down to the file at fault (bisect), so the others go on. A
failure of one file alone is the backend's only when the backend also fails a plain gray
ramp of one tile (:meth:`Daemon._backend_fails`).

Transient faults are retried, never charged to a file: a full disk or a read-only or
unwritable results folder (``disk``), a database that is locked, full or failing
(``database``), a backend that is down (``backend``). The stage that meets one keeps its
item, shows the fault in :meth:`Daemon.health` while it lasts and tries again with backoff
(``stages.TransientFault``); it resumes by itself when the cause goes.

Deaths. Rows are marked in the store while they are inside a step that runs native code
in this process on a file's pixels: ``segmenting`` (inference, a volume's slices
included) and ``measuring`` (measuring and writing the outputs). At the next start those
rows are charged a death, whatever killed the process: a native crash, and also a
SIGKILL, since the kernel's OOM killer sends nothing else; rows charged together each run
alone from then on, and a row charged ``[queue] max_attempts`` deaths ends failed
(``Store.recover_after_crash``), so a file that kills the service cannot keep it in a
crash loop. Every other row the process held goes back to the queue free, and the
temporary files that the death left in their results are removed. :class:`CrashRecord`
names the signal of a crash in the log.
Outputs of file ``ID`` go to ``results/ID/`` under the data folder; the watch folder is
only ever read. A multi-page TIFF is one queue row and one field of its specimen
(``measure.combine_pages``).

Volumes. A TIFF whose metadata call it a Z stack (ImageJ ``slices`` > 1, OME ``SizeZ`` > 1;
``[watch] volumes``) is one volume: ``decode`` only opens it (its metadata, read in the
decoder process: size and depth, nothing decoded); ``infer`` streams it slice by slice
through the sliding window (``volume.segment_volume``), writing its class-id stack, its display
stack and the 3D measurements as the slices come (``volume_views``), alone in its batches;
``write`` records it as one field of its specimen (``volume.field_like_record``). Its slices
are decoded in a second bounded decoder process (``IsolatedReader.stack_slices``), one at a
time, each page's size checked from its header against ``[limits] max_megapixels`` before
it is decoded: a slice that declares 40000 x 40000 fails the file with one line, a bomb costs
that child its life, a damaged slice fails the file with its reason, and memory stays a few
slices whatever the depth.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import errno
import faulthandler
import logging
import queue
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from phasewatch.atomic_files import OutputError
from phasewatch.backends.base import Backend, BackendError, BackendFatal, any_size, fused_head, return_free_memory
from phasewatch.bundle import resolve_bundle_path, sha256_file
from phasewatch.core.pipeline import (
    Decoded,
    FileResult,
    FileSegmentation,
    Model,
    decode_file,
    measure_and_write,
    open_model,
    segment_files,
    segment_images,
)
from phasewatch.core.provenance import model_identity
from phasewatch.core.volume import TIFF_SUFFIXES, Volume, open_volume
from phasewatch.core.volume_views import record_volume
from phasewatch.errors import PhasewatchError, one_line
from phasewatch.imageio.formats import ImageReadError
from phasewatch.imageio.isolated import DecodeAborted, DecoderClosed, DecoderUnavailable, IsolatedReader
from phasewatch.service.config import Config
from phasewatch.service.gpu import open_gpus
from phasewatch.service.logs import fields as log_fields
from phasewatch.service.prometheus import DaemonMetrics
from phasewatch.service.stages import POLL_S, Stage, TransientFault
from phasewatch.service.watcher import FolderWatcher
from phasewatch.store import Store, StoreError, StoreUnavailable
from phasewatch.store.rows import FileRow, ImageRow

log = logging.getLogger(__name__)

DEFAULT_MODEL = "superalloy"
MIN_FREE_DISK_BYTES = 200 * 1024 * 1024
# Write faults of the results folder, not of the file: a full disk or quota, a read-only
# remount, permissions taken away, a failing disk. Retried until they go.
TRANSIENT_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)
SEGMENTING = "segmenting"
MEASURING = "measuring"
# After a file this large, freed heap is handed back to the system (_return_free_memory).
TRIM_AFTER_PIXELS = 4_000_000


def _libc_malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to call
        return None
    return trim


_MALLOC_TRIM = _libc_malloc_trim()


def _return_free_memory() -> None:
    """glibc keeps what a huge field freed (its arenas, one per thread that allocated) for
    reuse, so the service's RSS stays near its peak for good (issue 21: ~1.9 GB after a
    50 MP field); ``malloc_trim`` hands the free pages back. NumPy's large arrays are mmapped
    and go back by themselves; the many mid-sized buffers of tiles and PNG writes do not."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)

Publish = Callable[[str, ImageRow], None]  # the image row of a field that has just ended
ModelFactory = Callable[[], Model]


@dataclass
class _Arrival:
    """A settled file on its way into the store; its hash is kept across retries."""

    path: Path
    st: Any
    settled: float
    digest: str | None = None


@dataclass
class _Work:
    """One claimed file travelling through decode -> infer -> write."""

    row: FileRow
    decoded: Decoded | None = None
    volume: Volume | None = None  # a Z stack: opened in decode, segmented (and written) in infer
    segmented: FileSegmentation | None = None
    result: FileResult | None = None  # outputs written, not yet marked done
    error: str | None = None
    retry: bool = False  # the error may not repeat: charge an attempt (Store.charge), do not fail at once
    pixels: int = 0
    staged: bool = False  # marked as inside inference in the store
    handed_on: bool = False  # segmented and given to the write stage: no longer the infer stage's
    claimed: float = dataclasses.field(default_factory=time.perf_counter)  # taken from the queue

    @property
    def path(self) -> Path:
        return Path(self.row["path"])

    @property
    def id(self) -> int:
        file_id: int = self.row["id"]
        return file_id


@contextlib.contextmanager
def _database() -> Iterator[None]:
    """A store call whose transient fault the stage retries (stages.TransientFault)."""
    try:
        yield
    except StoreUnavailable as exc:
        raise TransientFault("database", str(exc)) from exc


class PixelBudget:
    """Decoded pixels allowed in flight; one item larger than the budget passes alone."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0
        self._changed = threading.Condition()

    def acquire(self, pixels: int, give_up: Callable[[], bool]) -> bool:
        """Wait for room for ``pixels``; False, without them, once ``give_up()`` says so
        (a stop must not wait for a write stage that may be retrying a full disk)."""
        with self._changed:
            while not (self.in_use == 0 or self.in_use + pixels <= self.limit):
                if give_up():
                    return False
                self._changed.wait(POLL_S)
            self.in_use += pixels
            return True

    def release(self, pixels: int) -> None:
        with self._changed:
            self.in_use -= pixels
            self._changed.notify_all()


class _Beating:
    """A backend that reports progress to its stage after every batch, so a slow image
    (many batches) is told apart from a hung call (no batch returns). The backend's head in
    the graph (``backends.base.fused_head``) is passed through: without it the daemon ran the
    plain model and NumPy's argmax and margin where the bare engine does not (issue 25)."""

    def __init__(self, backend: Backend, beat: Callable[[], None]) -> None:
        self.inner, self.beat = backend, beat
        self.name, self.max_batch = backend.name, backend.max_batch
        self.any_size = any_size(backend)
        self._head = fused_head(backend)
        self.has_head = self._head is not None

    def run(self, batch: np.ndarray) -> np.ndarray:
        logits = self.inner.run(batch)
        self.beat()
        return logits

    def run_head(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert self._head is not None  # asked only where has_head (fused_head)
        maps = self._head(batch)
        self.beat()
        return maps

    def close(self) -> None:
        self.inner.close()


class CrashRecord:
    """Names a crash of the last run in the log, across a restart.

    While armed, :mod:`faulthandler` writes into the record file when the process dies of
    SIGSEGV, SIGABRT (also what systemd's watchdog sends a hung service), SIGBUS, SIGFPE
    or SIGILL, with the threads' stacks. A ``kill -9``, the OOM killer or a power cut write
    nothing, and neither does a clean stop. Deaths are charged to the files in a marked
    step either way (module doc): the OOM killer's SIGKILL looks like any other.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: Any = None
        self._was_enabled = False

    def last_run(self) -> str | None:
        """The first line faulthandler wrote when the last run crashed, or None."""
        try:
            text = self.path.read_text(errors="replace")
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("%s: cannot read the crash record: %s", self.path, exc.strerror or exc)
            return None
        return next((line.strip() for line in text.splitlines() if line.strip()), None)

    def arm(self) -> None:
        try:
            self._file = open(self.path, "w")  # noqa: SIM115 - faulthandler writes to it until disarm()
        except OSError as exc:  # a crash of this run will then count as a kill
            log.warning("%s: cannot keep a crash record: %s", self.path, exc.strerror or exc)
            return
        self._was_enabled = faulthandler.is_enabled()
        faulthandler.enable(self._file, all_threads=True)

    def disarm(self) -> None:
        """A clean stop: an empty record."""
        if self._file is None:
            return
        faulthandler.disable()
        if self._was_enabled and sys.__stderr__ is not None:  # as python -X faulthandler or pytest had it
            faulthandler.enable(sys.__stderr__)
        self._file.close()
        self._file = None


def model_factory(config: Config, active: Callable[[], str | None] = lambda: None) -> ModelFactory:
    """What the service opens at start and at every reload: the model activated last (``active()``,
    e.g. one taught here, in the data folder's ``models``), else the configured bundle; and the backend."""
    model, models = config.model, config.data.dir / "models"
    bundle = lambda: resolve_bundle_path(active() or model.ref or DEFAULT_MODEL, models)  # noqa: E731
    return lambda: open_model(bundle(), model.backend, model.batch, tta=model.tta,
                              tile_megapixels=model.tile_megapixels, settings=config.backend_settings)


def _batches(works: list[_Work]) -> list[list[_Work]]:
    """What goes through the backend together: each file that once crashed the worker in
    a batch alone (so that a crash names the file), the others all together."""
    alone = [[w] for w in works if w.row["alone"]]
    together = [w for w in works if not w.row["alone"]]
    return alone + ([together] if together else [])


class Daemon:
    """Owns the watcher, the model, the decoder and the stages; the store is the caller's
    (module doc)."""

    def __init__(self, config: Config, store: Store, open_model: ModelFactory, publish: Publish | None = None) -> None:
        self.config = config
        self.store = store
        self.publish = publish or (lambda event, data: None)
        self.started = time.time()
        config.data.results_dir.mkdir(parents=True, exist_ok=True)
        self.gpus = open_gpus()  # None without NVML: no GPU series, no GPU health component
        self.metrics = DaemonMetrics(self.store.counts_by_state, self.gpus)
        self._open_model = open_model
        self.model = self._load_model()
        limits = config.limits
        self.decoder = IsolatedReader(limits.decode_memory_mb << 20, limits.decode_timeout_s)
        # a volume's slices stream from a child of their own while inference runs, so that the
        # decode stage goes on reading the next files meanwhile
        self.volume_decoder = IsolatedReader(limits.decode_memory_mb << 20, limits.decode_timeout_s)
        self._max_pixels = int(limits.max_megapixels * 1e6)
        self.crash_record = CrashRecord(config.data.dir / "crash-record.txt")
        self._settled_at: dict[str, float] = {}
        self._arrivals: queue.Queue[_Arrival] = queue.Queue()
        self._decoded: queue.Queue[_Work] = queue.Queue()
        self._held: _Work | None = None  # decoded, left for the next batch by the pixel bound
        self._suspect: int | None = None  # the file running by itself (_idle_for_suspect)
        self._segmented: queue.Queue[_Work] = queue.Queue()
        self._budget = PixelBudget(int(config.workers.in_flight_megapixels * 1e6))
        self._work_ready = threading.Event()
        self._reload = threading.Event()
        # A sticky CUDA error lost the GPU context for this process (BackendFatal): nothing more
        # runs on it, not even after a reload; ``fatal`` tells ``serve`` to exit non-zero.
        self.lost: str | None = None
        self.fatal = threading.Event()
        self._in_flight = 0
        self._lock = threading.Lock()
        self.watcher = FolderWatcher(config.watch.dir, config.watch, self._on_settled)
        self.intake = Stage("intake", self._take_arrival, self._intake, niced=True, abandon=self._leave_for_rescan)
        self.decode = Stage("decode", self._take_row, self._decode, niced=True)
        self.infer = Stage("infer", self._take_decoded, self._infer, abandon=self._give_back_all)
        self.write = Stage("write", self._take_segmented, self._write, niced=True, abandon=self._give_back)
        self.stages = (self.intake, self.decode, self.infer, self.write)

    # -- life cycle ----------------------------------------------------------------

    def _load_model(self) -> Model:
        model = self._open_model()
        self.metrics.set_backend(model.backend.name, model.bundle.name)
        log.info("model loaded", extra=log_fields(model=model.bundle.name, backend=model.backend.name,
                                                    tile=model.bundle.tile, halo=model.bundle.halo))
        return model

    def start(self) -> None:
        crash = self.crash_record.last_run()
        if crash is not None:
            log.error("the last run crashed: %s", crash)
        self._remove_partial_outputs(self.store.in_work())
        recovered = self.store.recover_after_crash(charge=True)  # every death: an OOM kill is a SIGKILL
        if any(recovered.values()):
            log.warning("recovered interrupted work", extra=log_fields(**recovered))
        self.crash_record.arm()
        for stage in self.stages:
            stage.start()
        self._work_ready.set()  # rows left pending by the last run
        self.watcher.start()

    def _remove_partial_outputs(self, file_ids: list[int]) -> None:
        """The temporary files (``.NAME.*.tmp`` of atomic writes, ``.NAME.partial`` of stacks)
        that a death left in the results of the files it interrupted: they are written again."""
        for file_id in file_ids:
            folder = self.config.data.result_dir(file_id)
            for leftover in [*folder.glob(".*.tmp"), *folder.glob(".*.partial")]:
                try:
                    leftover.unlink()
                except OSError as exc:
                    log.warning("%s: cannot remove a partial output: %s", leftover, exc.strerror or exc)
                else:
                    log.info("removed a partial output of the last run: %s", leftover)

    def stop(self) -> None:
        """Stop taking new files, finish the fields in hand (stage by stage, in order), then
        close the model. A decode in progress is cut short (its file goes back to the
        queue), and so is a fault's backoff. The store stays open: its owner closes it
        after the web server."""
        self.watcher.stop()
        self.intake.stop()
        self.decoder.close()
        self.volume_decoder.close()
        for stage in (self.decode, self.infer, self.write):
            stage.stop()
        self.model.close()
        self.crash_record.disarm()

    def reload_model(self) -> None:
        """Ask the inference stage to reopen the model between batches (SIGHUP); a backend
        fault's backoff ends at once, as the reload may be its cure."""
        log.info("model reload requested: the inference stage reopens the model between batches")
        self._reload.set()
        self._work_ready.set()
        self.infer.wake()

    # -- health and status ---------------------------------------------------------

    def status(self) -> dict[str, Any]:
        counts = self.store.counts_by_state()
        healthy, problems = self.health()
        model = self.model
        return {"queued": counts["pending"], "processing": counts["processing"], "done": counts["done"],
                "failed": counts["failed"], "backend": model.backend.name, "model": model.bundle.name,
                "uptime_s": round(time.time() - self.started, 1), "healthy": healthy, "problems": problems}

    def health(self) -> tuple[bool, dict[str, str]]:
        """(healthy, component -> one-line reason). A ``worker`` problem means a stage died or
        is stuck: only that one stops the watchdog pings (the rest is retried in process)."""
        problems = {s.fault.component: s.fault.reason for s in self.stages if s.fault is not None}
        if not self.watcher.healthy:
            problems["watch"] = self.watcher.last_error or "watch folder not being watched"
        try:
            free = shutil.disk_usage(self.config.data.dir).free
        except OSError as exc:  # the data folder itself vanished or was unmounted
            problems["disk"] = f"{self.config.data.dir}: {exc.strerror or exc}"
        else:
            if free < MIN_FREE_DISK_BYTES:
                problems.setdefault("disk", f"{self.config.data.dir}: only {free // 2**20} MiB free")
        if self.gpus is not None and (gpu := self.gpus.problem()) is not None:
            problems["gpu"] = gpu  # gone or erring (service/gpu.py); not a reason to stop the watchdog
        stuck = [p for s in self.stages if (p := s.problem(self.config.workers.stall_timeout_s))]
        if stuck:
            problems["worker"] = "; ".join(stuck)
        return not problems, problems

    def health_report(self) -> tuple[bool, dict[str, Any]]:
        """What ``/healthz`` answers: healthy, and the reasons as a list and by component."""
        ok, problems = self.health()
        return ok, {"reasons": list(problems.values()), "problems": problems}

    def alive(self) -> bool:
        """False when a stage died or is stuck: what withholds the systemd watchdog ping, so
        that systemd restarts us. A missing folder or a full disk is retried in process."""
        return "worker" not in self.health()[1]

    # -- intake: settled file -> queue row -------------------------------------------

    def _on_settled(self, path: Path, st: Any) -> None:
        self._arrivals.put(_Arrival(path, st, time.time()))

    def _take_arrival(self, timeout: float) -> _Arrival | None:
        try:
            return self._arrivals.get(timeout=timeout)
        except queue.Empty:
            return None

    def _intake(self, item: _Arrival) -> None:
        if item.digest is None:
            try:
                item.digest = sha256_file(item.path)
            except OSError as exc:  # vanished between settling and hashing: nothing to queue
                log.warning("%s: cannot read to hash it: %s", item.path, exc.strerror or exc)
                return
        with _database():
            specimen = None
            if self.config.specimen.per_subfolder:
                specimen = self.store.specimen_for_path(item.path, self.config.watch.dir)
            row = self.store.enqueue(item.path, item.st.st_size, item.st.st_mtime_ns, item.digest,
                                     specimen_id=specimen)
        if row["state"] == "pending":
            self._settled_at[item.digest] = item.settled
            self._work_ready.set()
        elif row["duplicate_of"] is not None and row["created"] >= item.settled:
            self._announce(row["id"])

    def _leave_for_rescan(self, item: _Arrival) -> None:
        log.warning("%s: not queued before the stop; the next start's scan queues it", item.path)

    # -- decode ------------------------------------------------------------------------

    def _take_row(self, timeout: float) -> FileRow | None:
        if self.decode.stopping:  # queued files wait for the next start
            return None
        if self._suspect is not None:  # a suspect of a death is in work: nothing else until it is finished
            self._work_ready.wait(timeout)
            self._work_ready.clear()
            return None
        with _database():
            rows = self.store.claim_next(1)
        if rows:
            return rows[0]
        self._work_ready.wait(timeout)
        self._work_ready.clear()
        return None

    def _decode(self, row: FileRow) -> None:
        work = _Work(row=row)
        try:
            work.volume = self._open_volume(work.path)
            if work.volume is None:
                configured = self.config.pixel_size.pixel_size_for(work.path, self.config.watch.dir)
                work.decoded = decode_file(work.path, fallback_pixel_size_um=configured,
                                           max_pixels=self._max_pixels, read=self.decoder.read_pages)
        except DecoderClosed:  # stopping: the file waits in the queue for the next start
            self._release(work, "the service stopped while decoding it")
            return
        except DecoderUnavailable as exc:
            raise TransientFault("decoder", str(exc)) from exc
        except DecodeAborted as exc:  # timed out or died: another attempt may go otherwise
            work.error, work.retry = str(exc), True
        except PhasewatchError as exc:  # the decoder's verdict on the content: the same every time
            work.error = str(exc)
        except Exception as exc:  # one odd file must not stop the decode stage
            log.exception("%s: unexpected error while decoding", work.path)
            work.error, work.retry = f"{work.path}: unexpected error while decoding: {one_line(exc)}", True
        if row["alone"] and not self._idle_for_suspect():
            self._release(work, "the service stopped while it waited to run it alone")
            return
        if work.decoded is not None:
            pixels = sum(f.image.shape[0] * f.image.shape[1] for f in work.decoded.fields)
            if not self._budget.acquire(pixels, lambda: self.decode.stopping):
                self._release(work, "the service stopped while it waited for inference")
                return
            work.pixels = pixels
        with self._lock:
            self._in_flight += 1
            self.metrics.queue_depth.set(self._in_flight)
            if row["alone"]:
                self._suspect = work.id
        self._decoded.put(work)

    def _open_volume(self, path: Path) -> Volume | None:
        """The file as a volume when its metadata (read in the decoder process) call it a Z
        stack and ``[watch] volumes`` is on; its slices will stream from the volume decoder.
        None otherwise, and for a TIFF whose metadata cannot be read: the pages' reader then
        says what is wrong with it."""
        if not self.config.watch.volumes or path.suffix.lower() not in TIFF_SUFFIXES:
            return None
        try:
            header = self.decoder.stack_header(path, self._max_pixels)
        except DecodeAborted:
            raise
        except ImageReadError:
            return None
        if not header.says_volume:
            return None
        return open_volume(path, max_pixels=self._max_pixels, header=lambda p, m: header,
                           slices=self.volume_decoder.stack_slices)

    def _idle_for_suspect(self) -> bool:
        """Wait until no other file is in work, for a file that was in a marked step when the
        service died (``alone``): it then runs by itself, so that a death while it is in work
        is charged to it and to no bystander. False when the service stops meanwhile."""
        while True:
            with self._lock:
                if self._in_flight == 0:
                    return True
            if self.decode.stopping:
                return False
            self.decode.beat()  # waiting for the others is progress, not a stall
            time.sleep(POLL_S / 10)

    # -- inference ----------------------------------------------------------------------

    def _take_decoded(self, timeout: float) -> list[_Work] | None:
        """What is decoded by now, up to ``[limits] max_megapixels`` in all (one larger file
        alone): files share the backend's batches, and inference's memory (maps, inputs) is
        bounded by what the largest allowed field needs, however many small files wait."""
        try:
            batch = [self._held or self._decoded.get(timeout=timeout)]
        except queue.Empty:  # an idle service reloads at once, not at the next field
            return [] if self._reload.is_set() else None
        self._held = None
        pixels = batch[0].pixels
        while True:
            try:
                work = self._decoded.get_nowait()
            except queue.Empty:
                return batch
            if pixels + work.pixels > self._max_pixels:
                self._held = work  # first in the next batch
                return batch
            batch.append(work)
            pixels += work.pixels

    def _infer(self, batch: list[_Work]) -> None:
        """Segment what the batch still needs (a retry after a fault skips what is done),
        then hand every file on to the write stage."""
        if self.lost is not None:  # held until the service stops and gives the batch back
            if self._reload.is_set():  # a reload would reopen on the lost context
                self._reload.clear()
                log.error("model reload refused: %s", self.lost)
            raise TransientFault("backend", self.lost)
        if self._reload.is_set():
            self._reload_model()
        self._leave_stage([w for w in batch if w.staged and not w.handed_on])  # a retry after a store fault
        model = self.model  # what segments this batch is what its results record
        try:
            for group in _batches([w for w in batch if w.decoded is not None and w.segmented is None
                                   and w.error is None]):
                self._segment(group, model)
            for w in batch:
                if w.volume is not None and w.result is None and w.error is None:
                    self._segment_volume(w, model)
        except BackendFatal as exc:  # charged to no file: the batch goes back to the queue at the stop
            self.lost = f"{model.backend.name}: {exc}; the service exits for systemd to restart it"
            log.critical("GPU context lost: %s", self.lost)
            self.fatal.set()
            raise TransientFault("backend", self.lost) from exc
        for w in batch:
            if not w.handed_on:  # failed, or a volume
                self._hand_on(w)

    def _hand_on(self, work: _Work) -> None:
        work.handed_on = True
        self._segmented.put(work)

    def _segment(self, group: list[_Work], model: Model) -> None:
        """Segment ``group`` together; when that fails, its halves one after the other (bisect),
        down to the file at fault, whose error is charged to it unless the backend fails on
        what no file sent (:meth:`_blame`): the others go on. Files segmented before the
        failure have been handed on already and are not segmented again."""
        group = [w for w in group if not w.handed_on]
        if not group:
            return
        try:
            self._segment_together(group, model)
        except (TransientFault, BackendFatal):
            raise
        except Exception as exc:  # prepare, the backend, stitching: whatever the pixels made fail
            if len(group) == 1:
                self._blame(group[0], model, "cannot segment", exc)
                return
            log.warning("a batch of %d files failed (%s); trying them in halves to find the one at fault",
                        len(group), one_line(exc))
            half = len(group) // 2
            self._segment(group[:half], model)
            self._segment(group[half:], model)

    def _segment_together(self, group: list[_Work], model: Model) -> None:
        """Segment ``group`` in shared batches, marked in the store as inside inference meanwhile;
        each file leaves that mark and goes to the write stage as soon as it is segmented."""
        self._enter_stage(group, SEGMENTING)
        try:
            started = time.perf_counter()
            beating = dataclasses.replace(model, backend=_Beating(model.backend, self.infer.beat))
            segmented = segment_files([w.decoded for w in group if w.decoded is not None], beating,
                                      self.config.model.overlap or None, self.config.model.batch)
            for w, s in zip(group, segmented, strict=True):
                w.segmented = FileSegmentation(s.decoded, model, s.maps, s.segment_ms)
                self.metrics.observe_inference(s.segment_ms / 1000)
                self._leave_stage([w])
                self._hand_on(w)
            log.debug("segmented %d file(s) in %.2f s", len(group), time.perf_counter() - started)
        finally:  # a file handed on is marked by the write stage now
            self._leave_stage([w for w in group if w.staged and not w.handed_on])

    def _blame(self, work: _Work, model: Model, what: str, exc: Exception) -> None:
        """A step failed on ``work`` alone: the file's fault, charged an attempt, when the backend
        still segments a plain test image; else the backend's (down, device lost), retried
        with backoff and charged to nobody."""
        broken = self._backend_fails(model)
        if broken is not None:
            raise TransientFault("backend", f"{model.backend.name}: {broken}") from exc
        work.error, work.retry = f"{work.path}: {what}: {one_line(exc)}", True

    def _backend_fails(self, model: Model) -> str | None:
        """Why the backend cannot segment a plain gray ramp of one tile, or None when it can."""
        side = model.bundle.tile
        ramp = np.tile(np.arange(side, dtype=np.uint8), (side, 1))
        try:
            next(segment_images([ramp], model.bundle, model.backend, self.config.model.overlap or None,
                                self.config.model.batch, plan=model.plan))
        except BackendFatal:
            raise
        except Exception as exc:
            return one_line(exc)
        return None

    def _segment_volume(self, work: _Work, model: Model) -> None:
        """Segment a volume slice by slice and write its outputs (module doc): its result is
        ready for the write stage, or its one-line reason is."""
        assert work.volume is not None
        self._enter_stage([work], SEGMENTING)
        try:
            beating = dataclasses.replace(model, backend=_Beating(model.backend, self.infer.beat))
            result, record = record_volume(work.volume, beating, self.config.data.result_dir(work.id),
                                           self.config.model.overlap or None, self.config.model.batch)
            self.metrics.observe_inference(record["timing"]["seconds"])
            work.result = dataclasses.replace(result, model=model)
        except DecodeAborted as exc:  # its decoder timed out or died: another attempt may go otherwise
            work.error, work.retry = str(exc), True
        except DecoderUnavailable as exc:  # no decoder process, or the service is stopping
            raise TransientFault("decoder", str(exc)) from exc
        except OSError as exc:  # OutputError included: a full or read-only disk is retried
            if exc.errno in TRANSIENT_WRITE_ERRNOS:
                raise TransientFault("disk", one_line(exc)) from exc
            work.error = f"{work.path}: {one_line(exc)}" if not isinstance(exc, PhasewatchError) else str(exc)
            work.retry = True
        except BackendFatal:
            raise
        except BackendError as exc:
            self._blame(work, model, "cannot segment", exc)
        except PhasewatchError as exc:  # the volume's own fault: a damaged slice, slices of two sizes
            work.error = str(exc)
        except Exception as exc:  # as for fields: a native error is the file's only if the backend still works
            self._blame(work, model, "cannot segment", exc)
        finally:
            self._leave_stage([work])

    def _enter_stage(self, works: list[_Work], stage: str) -> None:
        """Mark ``works`` as inside a step that runs native code on their pixels here: a death
        meanwhile is charged to them at the next start (``Store.recover_after_crash``)."""
        with _database():
            self.store.set_stage([w.id for w in works], stage)
        for w in works:
            w.staged = True

    def _leave_stage(self, works: list[_Work]) -> None:
        if works:
            with _database():
                self.store.set_stage([w.id for w in works], None)
            for w in works:
                w.staged = False

    def _reload_model(self) -> None:
        self._reload.clear()
        old = self.model
        try:
            self.model = self._load_model()
        except Exception as exc:
            log.error("model reload failed, keeping %s: %s", old.bundle.name, one_line(exc))
            return
        old.close()

    # -- measure, write, announce ---------------------------------------------------------

    def _take_segmented(self, timeout: float) -> _Work | None:
        try:
            return self._segmented.get(timeout=timeout)
        except queue.Empty:
            return None

    def _write(self, work: _Work) -> None:
        if work.segmented is None and work.result is None:
            self._fail(work, work.error or f"{work.path}: not segmented", charge=work.retry)
            return
        if work.result is None:
            work.result = self._record(work)
            if work.result is None:
                return
        with _database():
            self.store.mark_done(work.id, work.result.record, work.result.outputs,
                                 model=model_identity(work.result.model))
        settled = self._settled_at.pop(work.row["sha256"], work.row["created"])
        self.metrics.result_done(max(0.0, time.time() - settled))
        self._processed(work, "done")
        huge = work.pixels >= TRIM_AFTER_PIXELS
        self._finished(work)
        self._announce(work.id)
        if huge:  # its pixels, maps and outputs are no longer referenced once dropped here
            work.decoded = work.segmented = work.result = None
            _return_free_memory()
            model = self.model
            return_free_memory(model.backend, model.bundle)

    def _record(self, work: _Work) -> FileResult | None:
        """Measure and write the outputs, marked in the store as ``measuring`` meanwhile; None
        when the file was charged an attempt for an error there (a bad output, a measurement
        that fails)."""
        assert work.segmented is not None
        self._enter_stage([work], MEASURING)
        try:
            return measure_and_write(work.segmented, self.config.data.result_dir(work.id))
        except OutputError as exc:
            if exc.errno in TRANSIENT_WRITE_ERRNOS:
                self._leave_stage([work])  # the disk's fault: a death while it lasts is not the file's
                raise TransientFault("disk", str(exc)) from exc
            reason = str(exc)
        except Exception as exc:  # one odd field must not stop the write stage
            log.exception("%s: unexpected error while measuring or writing", work.path)
            reason = f"{work.path}: unexpected error while writing: {one_line(exc)}"
        self._fail(work, reason, charge=True)
        return None

    def _fail(self, work: _Work, reason: str, charge: bool = False) -> None:
        """Fail the file with its one-line reason; with ``charge`` (an error that may not repeat)
        only once it has had ``[queue] max_attempts``, else it goes back to the queue."""
        state = "failed"
        with _database():
            if charge:
                state = self.store.charge(work.id, reason)
            else:
                self.store.mark_failed(work.id, reason)
        if state == "pending":
            log.warning("%s (attempt %d of %d; tried again)", reason, work.row["attempts"], self.store.max_attempts,
                        extra=log_fields(file_id=work.id))
            self._finished(work)
            return
        self._settled_at.pop(work.row["sha256"], None)  # only done results read it
        self.metrics.result_failed()
        log.warning("%s", reason, extra=log_fields(file_id=work.id))
        self._processed(work, "failed")
        self._finished(work)
        self._announce(work.id)

    @staticmethod
    def _processed(work: _Work, result: str) -> None:
        """The one INFO line per image: which, how it ended, and its seconds since it left the queue."""
        seconds = time.perf_counter() - work.claimed
        log.info("%s: %s in %.2f s", work.path.name, result, seconds,
                 extra=log_fields(image=work.path.name, image_id=work.id, result=result, seconds=round(seconds, 3)))

    def _give_back(self, work: _Work) -> None:
        """A stage stopped during a fault: the file waits in the queue for the next start."""
        self._release(work, "the service stopped during a fault")
        self._finished(work)

    def _give_back_all(self, batch: list[_Work]) -> None:
        for work in batch:
            if not work.handed_on:  # those are the write stage's
                self._give_back(work)

    def _release(self, work: _Work, reason: str) -> None:
        """Back to the queue without spending an attempt: the fault was not the file's."""
        try:
            self.store.release(work.id, reason)
        except StoreError as exc:  # left processing: the next start requeues it free
            log.warning("%s: left for the next start: %s", work.path, exc)

    def _finished(self, work: _Work) -> None:
        self._budget.release(work.pixels)
        work.pixels = 0
        with self._lock:
            self._in_flight -= 1
            self.metrics.queue_depth.set(self._in_flight)
            if self._suspect == work.id:
                self._suspect = None
                self._work_ready.set()

    def _announce(self, file_id: int) -> None:
        try:
            image = self.store.get_image(file_id)
        except StoreUnavailable as exc:  # the page shows it at its next refresh
            log.warning("file %d: not announced: %s", file_id, exc)
            return
        if image is not None:
            self.publish("field", image)
