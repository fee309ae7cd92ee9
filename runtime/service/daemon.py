"""The daemon's work: from a settled file in the watch folder to a served result.

Four :class:`~phasewatch.runtime.service.stages.Stage` objects, joined by queues, run
the steps of :mod:`phasewatch.runtime.pipeline` so that hashing, decoding, inference
and writing overlap and the backend sees full batches when a burst arrives:

``intake``  hashes each settled file and queues it in the store (SQLite, durable);
``decode``  claims queued files and decodes them (``pipeline.decode_file``; a bad file
            fails here, one line);
``infer``   segments every decoded file that is ready, tiles of several files in a
            batch (``pipeline.segment_files``); a backend error puts the files back in
            the queue and backs off; a model reload (SIGHUP) happens here, between
            batches, and each result carries the model that produced it;
``write``   measures, writes the outputs atomically (``pipeline.record_file``), marks
            the file done and publishes the event that the web page shows.

Decoded pixels in flight are bounded (``[workers] in_flight_megapixels``), not files:
one 20000 x 20000 image weighs what 1500 small ones do. Each stage reports a heartbeat;
a stage that holds an item without progress for ``[workers] stall_timeout_s`` makes
:meth:`Daemon.health` report a ``worker`` problem, which stops the watchdog pings.

A file whose processing was interrupted (crash, ``kill -9``) is retried at the next
start by ``Store.recover_after_crash``; one that keeps crashing the worker ends failed.
Outputs of file ``ID`` go to ``results/ID/`` under the data folder; the watch folder is
only ever read. A multi-page TIFF is one queue row and one field of its specimen
(``measure.combine_pages``).
"""

from __future__ import annotations

import errno
import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from phasewatch.runtime.backends import Backend
from phasewatch.runtime.bundle import sha256_file
from phasewatch.runtime.errors import PhasewatchError, one_line
from phasewatch.runtime.outputs import OutputError
from phasewatch.runtime.pipeline import Decoded, Model, Segmented, decode_file, open_model, record_file, segment_files
from phasewatch.runtime.service.config import Config
from phasewatch.runtime.service.logs import fields as log_fields
from phasewatch.runtime.service.metrics import DaemonMetrics
from phasewatch.runtime.service.stages import Backoff, Stage
from phasewatch.runtime.service.store import Store
from phasewatch.runtime.service.watcher import FolderWatcher

log = logging.getLogger("phasewatch.daemon")

DEFAULT_MODEL = "superalloy"
MIN_FREE_DISK_BYTES = 200 * 1024 * 1024
# Write faults that go away by themselves (space freed, disk remounted): retried, not failed.
TRANSIENT_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)

Publish = Callable[[str, dict[str, Any]], None]
ModelFactory = Callable[[], Model]


@dataclass
class _Work:
    """One claimed file travelling through decode -> infer -> write."""

    row: dict[str, Any]
    decoded: Decoded | None = None
    segmented: Segmented | None = None
    error: str | None = None
    pixels: int = 0

    @property
    def path(self) -> Path:
        return Path(self.row["path"])


class PixelBudget:
    """Decoded pixels allowed in flight; one item larger than the budget passes alone."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0
        self._changed = threading.Condition()

    def acquire(self, pixels: int) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self.in_use == 0 or self.in_use + pixels <= self.limit)
            self.in_use += pixels

    def release(self, pixels: int) -> None:
        with self._changed:
            self.in_use -= pixels
            self._changed.notify_all()


class _Beating:
    """A backend that reports progress to its stage after every batch, so a slow image
    (many batches) is told apart from a hung call (no batch returns)."""

    def __init__(self, backend: Backend, beat: Callable[[], None]) -> None:
        self.inner, self.beat = backend, beat
        self.name, self.max_batch = backend.name, backend.max_batch

    def run(self, batch: np.ndarray) -> np.ndarray:
        logits = self.inner.run(batch)
        self.beat()
        return logits

    def close(self) -> None:
        self.inner.close()


def model_factory(config: Config) -> ModelFactory:
    """What the service opens at start and at every reload: the configured bundle and backend."""
    model = config.model
    return lambda: open_model(model.ref or DEFAULT_MODEL, model.backend, model.batch, tta=model.tta)


class Daemon:
    """Owns the watcher, the model and the stages; the store is the caller's (module doc)."""

    def __init__(self, config: Config, store: Store, open_model: ModelFactory, publish: Publish | None = None) -> None:
        self.config = config
        self.store = store
        self.publish = publish or (lambda event, data: None)
        self.started = time.time()
        config.data.results_dir.mkdir(parents=True, exist_ok=True)
        self.metrics = DaemonMetrics(self.store.counts_by_state)
        self._open_model = open_model
        self.model = self._load_model()
        self.problems: dict[str, str] = {}  # component -> one-line reason, while unhealthy
        self._settled_at: dict[str, float] = {}
        self._arrivals: queue.Queue[tuple[Path, Any, float]] = queue.Queue()
        self._decoded: queue.Queue[_Work] = queue.Queue()
        self._segmented: queue.Queue[_Work] = queue.Queue()
        self._budget = PixelBudget(int(config.workers.in_flight_megapixels * 1e6))
        self._work_ready = threading.Event()
        self._reload = threading.Event()
        self._in_flight = 0
        self._lock = threading.Lock()
        self._infer_backoff, self._write_backoff = Backoff(), Backoff()
        self.watcher = FolderWatcher(config.watch.dir, config.watch, self._on_settled)
        self.intake = Stage("intake", self._take_arrival, self._intake, niced=True)
        self.decode = Stage("decode", self._take_row, self._decode, niced=True)
        self.infer = Stage("infer", self._take_decoded, self._infer)
        self.write = Stage("write", self._take_segmented, self._write, niced=True)
        self.stages = (self.intake, self.decode, self.infer, self.write)

    # -- life cycle ----------------------------------------------------------------

    def _load_model(self) -> Model:
        model = self._open_model()
        self.metrics.set_backend(model.backend.name, model.bundle.name)
        log.info("model loaded", extra=log_fields(model=model.bundle.name, backend=model.backend.name,
                                                    tile=model.bundle.tile, halo=model.bundle.halo))
        return model

    def start(self) -> None:
        recovered = self.store.recover_after_crash()
        if any(recovered.values()):
            log.warning("recovered interrupted work", extra=log_fields(**recovered))
        for stage in self.stages:
            stage.start()
        self._work_ready.set()  # rows left pending by the last run
        self.watcher.start()

    def stop(self) -> None:
        """Stop taking new files, finish the fields in hand (stage by stage, in order), then
        close the model. The store stays open: its owner closes it after the web server."""
        self.watcher.stop()
        for stage in self.stages:
            stage.stop()
        self.model.close()

    def reload_model(self) -> None:
        """Ask the inference stage to reopen the model between batches (SIGHUP)."""
        self._reload.set()
        self._work_ready.set()

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
        problems = dict(self.problems)
        if not self.watcher.healthy:
            problems["watch"] = self.watcher.last_error or "watch folder not being watched"
        try:
            free = shutil.disk_usage(self.config.data.dir).free
        except OSError as exc:  # the data folder itself vanished or was unmounted
            problems["disk"] = f"{self.config.data.dir}: {exc.strerror or exc}"
        else:
            if free < MIN_FREE_DISK_BYTES:
                problems["disk"] = f"{self.config.data.dir}: only {free // 2**20} MiB free"
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
        self._arrivals.put((path, st, time.time()))

    def _take_arrival(self, timeout: float) -> tuple[Path, Any, float] | None:
        try:
            return self._arrivals.get(timeout=timeout)
        except queue.Empty:
            return None

    def _intake(self, item: tuple[Path, Any, float]) -> None:
        path, st, settled = item
        try:
            digest = sha256_file(path)
        except OSError as exc:  # vanished between settling and hashing: nothing to queue
            log.warning("%s: cannot read to hash it: %s", path, exc.strerror or exc)
            return
        specimen = None
        if self.config.specimen.per_subfolder:
            specimen = self.store.specimen_for_path(path, self.config.watch.dir)
        row = self.store.enqueue(path, st.st_size, st.st_mtime_ns, digest, specimen_id=specimen)
        if row["state"] == "pending":
            self._settled_at[digest] = settled
            self._work_ready.set()
        elif row["duplicate_of"] is not None and row["created"] >= settled:
            self._announce(row["id"])

    # -- decode ------------------------------------------------------------------------

    def _take_row(self, timeout: float) -> dict[str, Any] | None:
        if self.decode.stopping:  # queued files wait for the next start
            return None
        rows = self.store.claim_next(1)
        if rows:
            return rows[0]
        self._work_ready.wait(timeout)
        self._work_ready.clear()
        return None

    def _decode(self, row: dict[str, Any]) -> None:
        with self._lock:
            self._in_flight += 1
            self.metrics.queue_depth.set(self._in_flight)
        work = _Work(row=row)
        try:
            configured = self.config.calibration.pixel_size_for(work.path, self.config.watch.dir)
            work.decoded = decode_file(work.path, fallback_pixel_size_um=configured)
        except PhasewatchError as exc:
            work.error = str(exc)
        except Exception as exc:  # one odd file must not stop the decode stage
            log.exception("%s: unexpected error while decoding", work.path)
            work.error = f"{work.path}: unexpected error while decoding: {one_line(exc)}"
        if work.decoded is not None:
            work.pixels = sum(f.image.shape[0] * f.image.shape[1] for f in work.decoded.fields)
            self._budget.acquire(work.pixels)
        self._decoded.put(work)

    # -- inference ----------------------------------------------------------------------

    def _take_decoded(self, timeout: float) -> list[_Work] | None:
        try:
            batch = [self._decoded.get(timeout=timeout)]
        except queue.Empty:  # an idle service reloads at once, not at the next field
            return [] if self._reload.is_set() else None
        while True:  # everything decoded by now shares the backend's batches
            try:
                batch.append(self._decoded.get_nowait())
            except queue.Empty:
                return batch

    def _infer(self, batch: list[_Work]) -> None:
        if self._reload.is_set():
            self._reload_model()
        ready = [w for w in batch if w.decoded is not None]
        model = self.model  # what segments this batch is what its results record
        try:
            if ready:
                started = time.perf_counter()
                beating = Model(model.bundle, _Beating(model.backend, self.infer.beat))
                segmented = segment_files([w.decoded for w in ready if w.decoded is not None], beating,
                                          self.config.model.overlap or None, self.config.model.batch)
                for w, s in zip(ready, segmented, strict=True):
                    w.segmented = Segmented(s.decoded, model, s.maps, s.segment_ms)
                    self.metrics.observe_inference(s.segment_ms / 1000)
                log.debug("segmented %d file(s) in %.2f s", len(ready), time.perf_counter() - started)
            self._infer_backoff.succeeded()
            self.problems.pop("backend", None)
        except Exception as exc:  # a backend error must not take the service down
            delay = self._infer_backoff.failed()
            self.problems["backend"] = f"{model.backend.name}: {one_line(exc)}"
            log.error("inference failed, retrying in %.0f s: %s", delay, exc)
            for w in ready:
                self._give_back(w, self.problems["backend"])
            batch = [w for w in batch if w.decoded is None]
            self._work_ready.set()
            self.infer.pause(delay)
        for w in batch:
            self._segmented.put(w)

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
        file_id = work.row["id"]
        try:
            if work.segmented is None:
                self._fail(work, work.error or f"{work.path}: not segmented")
                return
            out_dir = self.config.data.results_dir / f"{file_id:06d}"
            result = record_file(work.segmented, out_dir)
            self.store.mark_done(file_id, result.record, result.outputs)
            settled = self._settled_at.pop(work.row["sha256"], work.row["created"])
            self.metrics.result_done(max(0.0, time.time() - settled))
            self.problems.pop("disk", None)
            self._write_backoff.succeeded()
        except OutputError as exc:
            if exc.errno not in TRANSIENT_WRITE_ERRNOS:
                self._fail(work, str(exc))
                return
            delay = self._write_backoff.failed()
            self.problems["disk"] = str(exc)
            log.error("cannot write results, retrying in %.0f s: %s", delay, exc)
            self._give_back(work, str(exc))
            self.write.pause(delay)
            self._work_ready.set()
            return
        except Exception as exc:  # one odd field must not stop the write stage
            log.exception("%s: unexpected error while measuring or writing", work.path)
            self._fail(work, f"{work.path}: unexpected error while writing: {one_line(exc)}")
            return
        self._finished(work)
        self._announce(file_id)

    def _fail(self, work: _Work, reason: str) -> None:
        self.store.mark_failed(work.row["id"], reason)
        self._settled_at.pop(work.row["sha256"], None)  # only done results read it
        self.metrics.result_failed()
        log.warning("%s", reason, extra=log_fields(file_id=work.row["id"]))
        self._finished(work)
        self._announce(work.row["id"])

    def _give_back(self, work: _Work, reason: str) -> None:
        """Back to the queue without spending an attempt: the fault was not the file's."""
        self.store.release(work.row["id"], reason)
        self._finished(work)

    def _finished(self, work: _Work) -> None:
        self._budget.release(work.pixels)
        work.pixels = 0
        with self._lock:
            self._in_flight -= 1
            self.metrics.queue_depth.set(self._in_flight)

    def _announce(self, file_id: int) -> None:
        image = self.store.get_image(file_id)
        if image is not None:
            self.publish("field", image)
