"""Teach jobs of the running service: each one a ``phasewatch teach`` process of its own.

The web API (``webui/teach_api.py``) asks for a job; this runner starts
``python -m phasewatch.app.cli teach ... --json --nice 19 --idle --threads T`` (the command line's own
code path, ``export/teach.py``), one job at a time (the others wait, ``queued``), reads its
progress lines, and keeps each job's state: ``queued``, ``running``, ``done`` (the model was
made; its gate passed or not), ``failed`` (the one line the command wrote) or ``cancelled``.
The process is niced, in the idle scheduling class, and trains on fewer CPUs than the
machine has, so that the daemon's inference keeps its threads (``bench/teach_load.py``
measures it); it imports torch, the service never does. Every change of a job is handed to
``on_change`` (the service publishes it as a ``teach`` event, what the page's progress bar
follows); a cancel is audited here.
It is what the web app's teach routes call (``webui.context.Teaching``): besides the jobs,
``reload_model`` (the daemon's, after an activation) and the re-analyses of specimens
(``service/reanalysis_jobs.py``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phasewatch.errors import one_line
from phasewatch.service.reanalysis_jobs import Reanalyses
from phasewatch.store import Store

log = logging.getLogger(__name__)

DEFAULT_NICE = 19
KILL_AFTER_S = 10.0  # a cancelled job that ignores SIGTERM this long is killed
KEEP_JOBS = 50  # finished jobs remembered for GET /api/teach/{job}


@dataclass
class TeachJob:
    id: str
    material: str
    base: str
    fields: list[int] | None
    budget_min: float
    name: str | None
    who: str
    state: str = "queued"
    stage: str = ""
    progress: float = 0.0
    message: str = ""
    warnings: list[str] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    model: str | None = None
    gate: dict[str, Any] | None = None
    error: str | None = None
    process: subprocess.Popen[str] | None = field(default=None, repr=False)
    cancel_requested: bool = False

    def view(self) -> dict[str, Any]:
        """What ``GET /api/teach/{job}`` answers (the issue's names first)."""
        elapsed = (self.finished or time.time()) - self.started if self.started else 0.0
        eta = None
        if self.state == "running" and self.progress > 0.03:
            eta = round(elapsed * (1 - self.progress) / self.progress, 1)
        return {"job": self.id, "state": self.state, "progress": round(self.progress, 4), "model": self.model,
                "gate": self.gate, "error": self.error, "stage": self.stage, "message": self.message,
                "warnings": self.warnings, "eta_s": eta, "elapsed_s": round(elapsed, 1), "material": self.material,
                "base": self.base, "fields": self.fields, "budget_min": self.budget_min, "who": self.who,
                "created": self.created}


class TeachJobs:
    """The service's teach jobs (module doc)."""

    def __init__(self, data_dir: Path, store: Store, threads: int | None = None, nice: int = DEFAULT_NICE,
                 on_change: Callable[[dict[str, Any]], object] = lambda job: None,
                 command: list[str] | None = None, reload_model: Callable[[], None] = lambda: None) -> None:
        self.data_dir = Path(data_dir)
        self.store = store
        self.reload_model = reload_model  # the daemon reopens the active model between batches
        self.reanalyses = Reanalyses(self.data_dir, store)
        self.threads = threads or max(1, len(os.sched_getaffinity(0)) // 2)
        self.nice = nice
        self.on_change = on_change
        self.command = command or [sys.executable, "-m", "phasewatch.app.cli", "teach"]
        self._jobs: dict[str, TeachJob] = {}
        self._lock = threading.Lock()
        self._one_at_a_time = threading.Lock()
        self._closed = False

    def start(self, material: str, base: str, fields: list[int] | None, budget_min: float, name: str | None,
              who: str) -> str:
        job = TeachJob(uuid.uuid4().hex[:12], material, base, fields, budget_min, name, who)
        with self._lock:
            self._jobs[job.id] = job
            self._forget_old()
        self._changed(job)  # queued: told before its thread can make it running
        threading.Thread(target=self._run, args=(job,), name=f"teach-{job.id}", daemon=True).start()
        return job.id

    def job(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return job.view() if job else None

    def jobs(self) -> list[dict[str, Any]]:
        with self._lock:
            return [j.view() for j in sorted(self._jobs.values(), key=lambda j: j.created, reverse=True)]

    def cancel(self, job_id: str, who: str) -> dict[str, Any] | None:
        """Stop a queued or running job (SIGTERM, then SIGKILL); the job as it is now, or None."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if job.state in ("done", "failed", "cancelled"):
                return job.view()
            job.cancel_requested = True
            process = job.process
        if process is not None:
            _stop(process)
        self.store.audit.record(who, "teach.cancel", f"teach:{job_id}", {"state": job.state},
                                {"state": "cancelled"})
        return job.view()

    def reanalyse(self, model: str, specimen_id: int, who: str) -> str:
        return self.reanalyses.start(model, specimen_id, who)

    def reanalysis(self, job_id: str) -> dict[str, Any] | None:
        return self.reanalyses.get(job_id)

    def close(self) -> None:
        """Cancel every job (the service is stopping)."""
        self._closed = True
        self.reanalyses.close()
        with self._lock:
            running = [j for j in self._jobs.values() if j.state in ("queued", "running")]
        for job in running:
            job.cancel_requested = True
            if job.process is not None:
                _stop(job.process)

    # -- the job's thread ----------------------------------------------------------------

    def _arguments(self, job: TeachJob) -> list[str]:
        args = [*self.command, "--data", str(self.data_dir), "--material", job.material, "--base", job.base,
                "--budget-min", str(job.budget_min), "--who", job.who, "--threads", str(self.threads),
                "--nice", str(self.nice), "--idle", "--json"]
        if job.fields:
            args += ["--fields", ",".join(str(i) for i in job.fields)]
        if job.name:
            args += ["--name", job.name]
        return args

    def _run(self, job: TeachJob) -> None:
        with self._one_at_a_time:
            if job.cancel_requested or self._closed:
                self._end(job, "cancelled", None)
                return
            try:
                process = subprocess.Popen(self._arguments(job), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                           text=True, cwd=self.data_dir, start_new_session=True)
            except OSError as exc:
                self._end(job, "failed", f"cannot start the teach process: {one_line(exc)}")
                return
            with self._lock:
                job.process, job.state, job.started = process, "running", time.time()
                cancelled = job.cancel_requested
            if cancelled:  # asked for while the process was being started
                _stop(process)
            self._changed(job)
            errors: list[str] = []
            reader = threading.Thread(target=lambda: errors.extend(process.stderr or []), daemon=True)
            reader.start()
            result = self._follow(job, process)
            process.wait()
            reader.join()
            if job.cancel_requested:
                self._end(job, "cancelled", None)
            elif process.returncode == 0 and result is not None:
                with self._lock:
                    job.model, job.gate, job.progress = result["model"], result["gate"], 1.0
                self._end(job, "done", None)
            else:
                self._end(job, "failed", _reason(errors, process.returncode))

    def _follow(self, job: TeachJob, process: subprocess.Popen[str]) -> dict[str, Any] | None:
        """Read the command's JSON lines until it ends; its result, if it wrote one."""
        result = None
        for line in process.stdout or []:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a library's own print: not ours to parse
            if "result" in record:
                result = record["result"]
                continue
            with self._lock:
                job.stage, job.progress = record.get("stage", job.stage), float(record.get("progress", job.progress))
                job.message = record.get("message", "")
                if record.get("stage") == "plan" and job.message.startswith(("the gate", "trust")):
                    job.warnings.append(job.message)
            self._changed(job)
        return result

    def _end(self, job: TeachJob, state: str, error: str | None) -> None:
        with self._lock:
            job.state, job.error, job.finished, job.process = state, error, time.time(), None
        if state == "failed":
            log.warning("teach job %s failed: %s", job.id, error)
        self._changed(job)

    def _changed(self, job: TeachJob) -> None:
        try:
            self.on_change(job.view())
        except Exception:  # a listener's fault must not end the job
            log.exception("teach job %s: publishing its change failed", job.id)

    def _forget_old(self) -> None:
        ended = sorted((j for j in self._jobs.values() if j.state in ("done", "failed", "cancelled")),
                       key=lambda j: j.created)
        for job in ended[:max(0, len(ended) - KEEP_JOBS)]:
            del self._jobs[job.id]


def _stop(process: subprocess.Popen[str]) -> None:
    """SIGTERM to the job's process group, SIGKILL if it is still there after a while."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return

    def kill_later() -> None:
        try:
            process.wait(KILL_AFTER_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

    threading.Thread(target=kill_later, daemon=True).start()


def _reason(stderr: list[str], returncode: int) -> str:
    """The command's one-line reason: its last line that says ``phasewatch teach: ...``."""
    lines = [line.strip() for line in stderr if line.strip()]
    own = [line for line in lines if line.startswith("phasewatch teach: ")]
    if own:
        return own[-1].removeprefix("phasewatch teach: ")
    if lines:
        return f"the teach process ended with status {returncode}: {lines[-1]}"
    return f"the teach process ended with status {returncode} and said nothing"
