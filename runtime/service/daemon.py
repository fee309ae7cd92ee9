"""The daemon's work: from a settled file in the watch folder to a served result.

Four stages run in threads joined by bounded queues, so that hashing, decoding,
inference and writing overlap and the backend sees full batches when a burst arrives:

``intake``  hashes each settled file and queues it in the store (SQLite, durable);
``decode``  claims queued files and decodes them (a bad file fails here, one line);
``infer``   segments every decoded image that is ready, tiles of several images in a
            batch; a backend error puts the images back in the queue and backs off;
``write``   measures, writes the outputs atomically, marks the file done and
            publishes the event that the web page shows.

A file whose processing was interrupted (crash, ``kill -9``) is retried at the next
start by ``Store.recover_after_crash``; one that keeps crashing the worker ends failed.
Outputs of file ``ID`` go to ``results/ID/`` under the data folder; the watch folder is
only ever read.

A multi-page TIFF is one queue row: each page is segmented and written
(``NAME.pNNNN.*``), and the row's fractions are the valid-area-weighted mean over the
pages, which is what one field of a specimen contributes.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from phasewatch.runtime.backends import Backend, open_backend
from phasewatch.runtime.bundle import Bundle, load_bundle, sha256_file
from phasewatch.runtime.errors import one_line
from phasewatch.runtime.imageio import Field, ImageReadError, read_fields
from phasewatch.runtime.outputs import OutputError, preview, write_png_atomic
from phasewatch.runtime.pipeline import field_record, field_stem, segment_images, write_field
from phasewatch.runtime.service.config import Config
from phasewatch.runtime.service.logs import fields as log_fields
from phasewatch.runtime.service.metrics import DaemonMetrics
from phasewatch.runtime.service.store import Store
from phasewatch.runtime.service.watcher import FolderWatcher

log = logging.getLogger("phasewatch.daemon")

DEFAULT_MODEL = "superalloy"
DECODED_IMAGES_AHEAD = 16  # decoded images waiting for inference: bounds memory, keeps batches full
MIN_FREE_DISK_BYTES = 200 * 1024 * 1024
BACKGROUND_NICENESS = 10
BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 60.0
_STOP = object()

Publish = Callable[[str, dict[str, Any]], None]


@dataclass
class _Work:
    """One claimed file travelling through decode -> infer -> write."""

    row: dict[str, Any]
    path: Path
    fields: list[Field] = field(default_factory=list)
    maps: list[np.ndarray] = field(default_factory=list)
    infer_s: float = 0.0


def combine_pages(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One field's measurement from the pages of a stack: fractions weighted by valid area."""
    if len(records) == 1:
        return records[0]
    areas = np.array([r["valid_area_px"] for r in records], float)
    weights = areas / areas.sum() if areas.sum() > 0 else np.full(len(records), 1 / len(records))
    names = records[0]["fractions"].keys()
    fractions = {n: float(sum(w * r["fractions"][n] for w, r in zip(weights, records, strict=True)))
                 for n in names}
    return {**records[0], "page": None, "fractions": fractions,
            "valid_area_px": int(areas.sum()), "pages": records}


def lower_priority() -> None:
    """Run the calling thread at a lower CPU priority than inference.

    On a CPU backend the inference threads work in lock-step: a core taken by hashing,
    decoding or PNG writing stalls every operator. Nice threads run in inference's gaps
    instead, which keeps a burst's throughput close to the bare engine's (bench/daemon_burst.py).
    """
    with contextlib.suppress(AttributeError, OSError):  # not Linux: same priority, still correct
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICENESS)


class Backoff:
    """Exponential backoff for a failing resource (disk, backend)."""

    def __init__(self) -> None:
        self.delay = 0.0

    def failed(self) -> float:
        self.delay = min(BACKOFF_MAX_S, max(BACKOFF_INITIAL_S, self.delay * 2))
        return self.delay

    def succeeded(self) -> None:
        self.delay = 0.0


class Daemon:
    """Owns the store, the model, the watcher and the worker threads (module doc)."""

    def __init__(self, config: Config, publish: Publish | None = None) -> None:
        self.config = config
        self.publish = publish or (lambda event, data: None)
        self.started = time.time()
        config.data.results_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(config.data.database, max_attempts=config.queue.max_attempts)
        self.metrics = DaemonMetrics(self.store.counts_by_state)
        self.bundle, self.backend = self._open_model()
        self.problems: dict[str, str] = {}  # component -> one-line reason, while unhealthy
        self._settled_at: dict[str, float] = {}
        self._arrivals: queue.Queue = queue.Queue()
        self._decoded: queue.Queue = queue.Queue(maxsize=DECODED_IMAGES_AHEAD)
        self._measured: queue.Queue = queue.Queue(maxsize=DECODED_IMAGES_AHEAD)
        self._work_ready = threading.Event()
        self._stopping = threading.Event()
        self._reload = threading.Event()
        self._in_flight = 0
        self._lock = threading.Lock()
        self.watcher = FolderWatcher(config.watch.dir, config.watch, self._on_settled)
        self._threads = [
            threading.Thread(target=self._intake_loop, name="phasewatch-intake", daemon=True),
            threading.Thread(target=self._decode_loop, name="phasewatch-decode", daemon=True),
            threading.Thread(target=self._infer_loop, name="phasewatch-infer", daemon=True),
            threading.Thread(target=self._write_loop, name="phasewatch-write", daemon=True),
        ]

    # -- life cycle ----------------------------------------------------------------

    def _open_model(self) -> tuple[Bundle, Backend]:
        bundle = load_bundle(self.config.model.ref or DEFAULT_MODEL)
        backend = open_backend(bundle, self.config.model.backend, self.config.model.batch)
        self.metrics.set_backend(backend.name, bundle.name)
        log.info("model loaded", extra=log_fields(model=bundle.name, backend=backend.name,
                                                    tile=bundle.tile, halo=bundle.halo))
        return bundle, backend

    def start(self) -> None:
        recovered = self.store.recover_after_crash()
        if any(recovered.values()):
            log.warning("recovered interrupted work", extra=log_fields(**recovered))
        for thread in self._threads:
            thread.start()
        self._work_ready.set()  # rows left pending by the last run
        self.watcher.start()

    def stop(self) -> None:
        """Stop taking new files, finish the fields in hand, then return."""
        self._stopping.set()
        self.watcher.stop()
        self._arrivals.put(_STOP)
        self._work_ready.set()
        for thread in self._threads:
            thread.join()
        self.backend.close()
        self.store.close()

    def reload_model(self) -> None:
        """Ask the inference stage to reopen the model between batches (SIGHUP)."""
        self._reload.set()

    # -- health and status ---------------------------------------------------------

    def status(self) -> dict[str, Any]:
        counts = self.store.counts_by_state()
        healthy, problems = self.health()
        return {"queued": counts["pending"], "processing": counts["processing"], "done": counts["done"],
                "failed": counts["failed"], "backend": self.backend.name, "model": self.bundle.name,
                "uptime_s": round(time.time() - self.started, 1), "healthy": healthy, "problems": problems}

    def health(self) -> tuple[bool, dict[str, str]]:
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
        dead = [t.name for t in self._threads if t.ident is not None and not t.is_alive()]
        if dead and not self._stopping.is_set():
            problems["worker"] = f"worker threads stopped: {', '.join(dead)}"
        return not problems, problems

    # -- intake: settled file -> queue row -------------------------------------------

    def _on_settled(self, path: Path, st: Any) -> None:
        self._arrivals.put((path, st, time.time()))

    def _intake_loop(self) -> None:
        lower_priority()
        while (item := self._arrivals.get()) is not _STOP:
            path, st, settled = item
            try:
                digest = sha256_file(path)
            except OSError as exc:  # vanished between settling and hashing: nothing to queue
                log.warning("%s: cannot read to hash it: %s", path, exc.strerror or exc)
                continue
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

    def _decode_loop(self) -> None:
        lower_priority()
        while not self._stopping.is_set():
            self._work_ready.wait(timeout=1.0)
            self._work_ready.clear()
            while not self._stopping.is_set() and (rows := self.store.claim_next(1)):
                with self._lock:
                    self._in_flight += 1
                    self.metrics.queue_depth.set(self._in_flight)
                self._decoded.put(self._decode(rows[0]))
        self._decoded.put(_STOP)

    def _decode(self, row: dict[str, Any]) -> _Work:
        work = _Work(row=row, path=Path(row["path"]))
        try:
            work.fields = read_fields(work.path)
        except ImageReadError as exc:
            work.row = {**row, "error": str(exc)}
        except Exception as exc:  # one odd file must not stop the decode stage
            log.exception("%s: unexpected error while decoding", work.path)
            work.row = {**row, "error": f"{work.path}: unexpected error while decoding: {one_line(exc)}"}
        return work

    # -- inference ----------------------------------------------------------------------

    def _infer_loop(self) -> None:
        backoff = Backoff()
        done = False
        while not done:
            batch = [self._decoded.get()]
            while True:  # everything decoded by now shares the backend's batches
                try:
                    batch.append(self._decoded.get_nowait())
                except queue.Empty:
                    break
            done = batch[-1] is _STOP
            work = [w for w in batch if w is not _STOP]
            if self._reload.is_set():
                self._reload_model()
            ready = [w for w in work if w.fields]
            try:
                self._segment(ready)
                backoff.succeeded()
                self.problems.pop("backend", None)
            except Exception as exc:  # a backend error must not take the service down
                delay = backoff.failed()
                self.problems["backend"] = f"{self.backend.name}: {one_line(exc)}"
                log.error("inference failed, retrying in %.0f s: %s", delay, exc)
                for w in ready:
                    self.store.release(w.row["id"], self.problems["backend"])
                    self._finished()
                work = [w for w in work if not w.fields]
                self._work_ready.set()
                self._stopping.wait(delay)
            for w in work:
                self._measured.put(w)
        self._measured.put(_STOP)

    def _segment(self, work: list[_Work]) -> None:
        if not work:
            return
        started = time.perf_counter()
        images = (f.image for w in work for f in w.fields)
        maps = segment_images(images, self.bundle, self.backend,
                              self.config.model.overlap or None, self.config.model.batch)
        for w in work:
            w.maps = [next(maps) for _ in w.fields]
        per_image = (time.perf_counter() - started) / sum(len(w.fields) for w in work)
        for w in work:
            w.infer_s = per_image * len(w.fields)
            self.metrics.observe_inference(w.infer_s)

    def _reload_model(self) -> None:
        self._reload.clear()
        try:
            bundle, backend = self._open_model()
        except Exception as exc:
            log.error("model reload failed, keeping %s: %s", self.bundle.name, exc)
            return
        self.backend.close()
        self.bundle, self.backend = bundle, backend

    # -- measure, write, announce ---------------------------------------------------------

    def _write_loop(self) -> None:
        lower_priority()
        backoff = Backoff()
        while (work := self._measured.get()) is not _STOP:
            file_id = work.row["id"]
            try:
                if not work.fields:
                    self.store.mark_failed(file_id, work.row["error"])
                    self._settled_at.pop(work.row["sha256"], None)  # only done results read it
                    self.metrics.result_failed()
                    log.warning("%s", work.row["error"], extra=log_fields(file_id=file_id))
                else:
                    self._write(work)
                    self.problems.pop("disk", None)
                    backoff.succeeded()
            except OutputError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO):
                    delay = backoff.failed()
                    self.problems["disk"] = str(exc)
                    log.error("cannot write results, retrying in %.0f s: %s", delay, exc)
                    self.store.release(file_id, str(exc))
                    self._finished()
                    self._stopping.wait(delay)
                    self._work_ready.set()
                    continue
                self.store.mark_failed(file_id, str(exc))
                self.metrics.result_failed()
            except Exception as exc:  # one odd field must not stop the write stage
                log.exception("%s: unexpected error while measuring or writing", work.path)
                self.store.mark_failed(file_id, f"{work.path}: unexpected error while writing: {exc}")
                self.metrics.result_failed()
            self._finished()
            self._announce(file_id)

    def _write(self, work: _Work) -> None:
        out_dir = self.config.data.results_dir / f"{work.row['id']:06d}"
        out_dir.mkdir(parents=True, exist_ok=True)
        records, outputs = [], {}
        for field_, classes in zip(work.fields, work.maps, strict=True):
            stem = field_stem(work.path, field_, len(work.fields))
            record = field_record(work.path, field_, classes, self.bundle, self.backend.name)
            record["timing_ms"] = {"segment": round(1000 * work.infer_s / len(work.fields), 2)}
            written = write_field(out_dir, stem, field_, classes, self.bundle, record)
            records.append(record)
            if not outputs:  # the first page stands for the file on the web page
                write_png_atomic(out_dir / "preview.png", preview(field_.image))
                outputs = {**{k: str(v) for k, v in written.items()}, "preview": str(out_dir / "preview.png")}
        self.store.mark_done(work.row["id"], combine_pages(records), outputs)
        settled = self._settled_at.pop(work.row["sha256"], work.row["created"])
        self.metrics.result_done(max(0.0, time.time() - settled))

    def _finished(self) -> None:
        with self._lock:
            self._in_flight -= 1
            self.metrics.queue_depth.set(self._in_flight)

    def _announce(self, file_id: int) -> None:
        image = self.store.get_image(file_id)
        if image is not None:
            self.publish("field", image)
