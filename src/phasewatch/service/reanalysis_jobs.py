"""Re-analysing a specimen that was measured with a new model, compared old against new.

A job runs the model over the specimen's measured files (each file through the archive
re-analysis's per-file path, ``archive_pool.analyse``: the daemon's own) into a data folder
of its own, ``DATA/reanalyses/JOB/`` (the books of ``phasewatch reanalyse``), on one thread
with one inference thread beside the daemon's; then compares it with what the daemon
measured (``archive_compare.compare``: per class old and new with their CIs and the paired
difference, fields paired by content). Flagged fields count on both sides here (a
re-analysis is asked for to see what changes, and a field the old model flagged is what
it is mostly asked for), and the fields the old model flagged that the new one trusts are
listed. The job is audited when it starts.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from phasewatch.bundle import load_bundle
from phasewatch.errors import PhasewatchError, one_line
from phasewatch.service.archive import open_books
from phasewatch.service.archive_compare import compare
from phasewatch.service.archive_pool import Job, ModelSpec, Outcome, drain
from phasewatch.store import Store, flagged
from phasewatch.store.rows import ImageRow

log = logging.getLogger(__name__)


class Reanalyses:
    """The service's re-analysis jobs (module doc)."""

    def __init__(self, data_dir: Path, store: Store) -> None:
        self.data_dir, self.store = Path(data_dir), store
        self._jobs: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def start(self, model: str, specimen_id: int, who: str) -> str:
        job_id = uuid.uuid4().hex[:12]
        with self._lock:
            self._jobs[job_id] = {"job": job_id, "state": "running", "progress": 0.0, "model": model,
                                  "specimen": specimen_id, "comparison": None, "error": None, "created": time.time()}
        self.store.audit.record(who, "reanalysis.start", f"specimen:{specimen_id}", None,
                                {"model": model, "job": job_id})
        threading.Thread(target=self._run, args=(job_id, model, specimen_id), name=f"reanalysis-{job_id}",
                         daemon=True).start()
        return job_id

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return dict(job) if job else None

    def close(self) -> None:
        self._stop.set()

    def _update(self, job_id: str, **values: Any) -> None:
        with self._lock:
            self._jobs[job_id].update(values)

    def _run(self, job_id: str, model: str, specimen_id: int) -> None:
        try:
            comparison = self._reanalyse(job_id, model, specimen_id)
        except PhasewatchError as exc:
            self._update(job_id, state="failed", error=str(exc))
        except Exception as exc:  # the service must outlive a job
            log.exception("re-analysis %s failed", job_id)
            self._update(job_id, state="failed", error=f"unexpected error: {one_line(exc)}")
        else:
            self._update(job_id, state="done", progress=1.0, comparison=comparison)

    def _reanalyse(self, job_id: str, model: str, specimen_id: int) -> dict[str, Any]:
        bundle = load_bundle(model, models_dir=self.data_dir / "models")
        specimen = self.store.get_specimen(specimen_id)
        fields = self.store.field_results(specimen_id, count_flagged=True)
        if specimen is None or not fields:
            raise PhasewatchError(f"specimen {specimen_id}: no measured field to re-analyse")
        out = self.data_dir / "reanalyses" / job_id
        new = open_books(out, bundle, max_crashes=1)
        try:
            into = new.start_specimen(specimen["name"])
            for f in fields:
                new.enqueue(f["path"], f["size"], f["mtime_ns"], f["sha256"], specimen_id=into)
            done = 0

            def recorded(outcome: Outcome) -> None:
                nonlocal done
                done += 1
                self._update(job_id, progress=round(done / len(fields), 4))

            job = Job(ModelSpec(str(bundle.path), "cpu", batch=4, threads=1), out)
            with ThreadPoolExecutor(1) as executor:
                drain(new, executor, 1, job, recorded, self._stop)
            report = compare(self.store, new, count_flagged=True)
            report["newly_trusted"] = _newly_trusted(fields, new)
            report["model"], report["specimen"] = bundle.name, specimen_id
            return report
        finally:
            new.close()


def _newly_trusted(old_fields: list[ImageRow], new: Store) -> list[dict[str, Any]]:
    """Fields the old model flagged (by content) that the new one trusts: old id and file name."""
    new_by_sha = {f["sha256"]: f for s in new.list_specimens() for f in new.field_results(s["id"], count_flagged=True)}
    found = []
    for old in old_fields:
        mine = new_by_sha.get(old["sha256"])
        if mine is not None and flagged(old) and not flagged(mine):
            found.append({"id": old["id"], "file": Path(old["path"]).name})
    return found
