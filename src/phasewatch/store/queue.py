"""The durable queue: every file that arrives is a row of ``files`` whose ``state`` moves
``pending -> processing -> done | failed``; a file is never dropped, it ends ``done``
or ``failed`` with a reason, through crashes and restarts (:meth:`Queue.recover_after_crash`).

Attempts. A file whose own content made a step fail in a way that may not repeat (a
decoder that timed out or died, an exception inside inference, measurement or writing)
is charged an attempt (:meth:`Queue.charge`): back to ``pending`` with the attempt spent,
and ``failed`` with its reason once it has had ``max_attempts``. A fault of the machine
(full disk, locked database, backend down) is not the file's: :meth:`Queue.release` gives
the attempt back.

Crash accounting. A worker that dies (a native crash, the kernel's OOM killer, ``kill -9``)
leaves its rows ``processing``. Only a row that was inside a step that runs native code on
its pixels in the worker can have caused it, so the daemon marks rows ``stage`` (for
instance ``'segmenting'``, ``'measuring'``) just before such a step and clears the mark
after it (:meth:`Queue.set_stage`); at the next start those rows are charged a death
(``charge``: the daemon charges every death, since an OOM kill looks like any SIGKILL;
a tool whose workers are killed on purpose does not), and every other row goes back to
``pending`` free. Rows that were inside such a step are each run alone
from then on (``alone``), so that a file that kills the worker is soon charged by itself and
ends ``failed`` after ``max_attempts`` deaths (no crash loop), while its batch mates are
charged at most once. The daemon runs such a row by itself (nothing else in work meanwhile),
so that a file that keeps killing it exposes no bystander.

Duplicates. The same content (same sha256) is one result, whatever its path: a
second arrival becomes a ``done`` row with ``duplicate_of`` pointing at the first,
and shares its result (exclusion acts on the first). When the first fails, so do its
duplicates, with its reason: the same bytes would fail the same way. A file rewritten
with new content (same path, new sha256) is a new field. An arrival whose content
matches only a ``failed`` row is queued anew: copying a file again is how an operator
retries it. The same field re-saved (other bytes, the same pixels: ``core/pixel_hash.py``)
is measured, and :meth:`Queue.mark_done` notes the older done field of its specimen with the
same pixel hash in ``same_pixels_as``: "likely the same field as #ID", left out of the
statistics until an operator accepts it (``queries.awaits_acceptance``).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from phasewatch.core.records import FieldRecord, ModelIdentity
from phasewatch.store.database import STATES, StoreError, _db_path, _fail_duplicates, _file, _inserted, _one_line
from phasewatch.store.rows import FileRow
from phasewatch.store.specimens import Specimens

log = logging.getLogger(__name__)


class Queue(Specimens):
    """Enqueue, claim, finish and recover the rows of files."""


    def enqueue(
        self,
        path: Path | str,
        size: int,
        mtime_ns: int,
        sha256: str,
        specimen_id: int | None = None,
    ) -> FileRow:
        """The row for this version of the file, created ``pending`` (or ``done`` as a
        duplicate) when new; the same path, size, mtime and sha256 again is the same row."""
        stored_path = _db_path(str(path))
        with self._write() as conn:
            row = conn.execute(
                "SELECT * FROM files WHERE path = ? AND size = ? AND mtime_ns = ? AND sha256 = ?",
                (stored_path, size, mtime_ns, sha256),
            ).fetchone()
            if row is not None:
                return _file(row)
            if specimen_id is None:
                specimen_id = conn.execute(
                    "SELECT id FROM specimens WHERE is_current = 1"
                ).fetchone()["id"]
            original = conn.execute(
                """SELECT id FROM files WHERE sha256 = ? AND duplicate_of IS NULL
                   AND state != 'failed' ORDER BY id LIMIT 1""",
                (sha256,),
            ).fetchone()
            now = time.time()
            values: tuple[str, str | None, float | None, int | None]
            if original is None:
                values = ("pending", None, None, None)
            else:
                note = f"same content as file {original['id']}"
                values = ("done", note, now, original["id"])
            file_id = _inserted(conn.execute(
                """INSERT INTO files (path, size, mtime_ns, sha256, specimen_id, created,
                                      state, error, processed, duplicate_of)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (stored_path, size, mtime_ns, sha256, specimen_id, now, *values),
            ))
            return _file(conn.execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone())

    def claim_next(self, batch: int = 1) -> list[FileRow]:
        """Up to ``batch`` oldest pending rows, moved to ``processing`` with one more
        attempt, atomically: no two callers get the same row."""
        with self._write() as conn:
            rows = conn.execute(
                "SELECT id FROM files WHERE state = 'pending' ORDER BY id LIMIT ?", (batch,)
            ).fetchall()
            ids = [r["id"] for r in rows]
            marks = ",".join("?" * len(ids))
            if not ids:
                return []
            conn.execute(
                f"UPDATE files SET state = 'processing', attempts = attempts + 1 "
                f"WHERE id IN ({marks})",
                ids,
            )
            claimed = conn.execute(f"SELECT * FROM files WHERE id IN ({marks}) ORDER BY id", ids)
            return [_file(r) for r in claimed]

    def in_work(self) -> list[int]:
        """The rows left ``processing``: at start, before :meth:`recover_after_crash`, what the
        last run was doing when it ended (whose partial outputs the daemon removes)."""
        return [r["id"] for r in self._read("SELECT id FROM files WHERE state = 'processing' ORDER BY id")]

    def set_stage(self, file_ids: Iterable[int], stage: str | None) -> None:
        """Mark claimed rows as inside a step that can crash the worker (``'segmenting'``),
        or clear the mark (None): what :meth:`recover_after_crash` charges (module doc)."""
        ids = list(file_ids)
        marks = ",".join("?" * len(ids))
        with self._write() as conn:
            conn.execute(
                f"UPDATE files SET stage = ?, stage_since = ? WHERE state = 'processing' AND id IN ({marks})",
                (stage, None if stage is None else time.time(), *ids),
            )

    def _finish(
        self, conn: sqlite3.Connection, file_id: int, state: str, error: str | None
    ) -> None:
        updated = conn.execute(
            """UPDATE files SET state = ?, error = ?, processed = ?, stage = NULL, stage_since = NULL
               WHERE id = ? AND state = 'processing'""",
            (state, error, time.time(), file_id),
        ).rowcount
        if not updated:
            raise StoreError(f"{self.path}: file {file_id} is not being processed")

    def mark_done(
        self,
        file_id: int,
        result: FieldRecord,
        outputs: Mapping[str, str] | None = None,
        model: ModelIdentity | None = None,
    ) -> None:
        """Store a claimed file's measurement (``measure.measure``'s dict) and outputs;
        ``model`` is the identity of the model that measured it (``name``, ``onnx_sha256``
        and whatever else the caller records, JSON-able), which keeps each specimen to one
        model (module doc)."""
        with self._write() as conn:
            self._finish(conn, file_id, "done", None)
            if model is not None:
                self._keep_to_one_model(conn, file_id, model)
            conn.execute(
                """INSERT OR REPLACE INTO results (file_id, fractions, particles, valid_area_px,
                       valid_area_um2, pixel_size_um, measurement, outputs, model, pixel_sha256)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    file_id,
                    json.dumps(result.get("fractions", {})),
                    json.dumps(result.get("particles", {})),
                    result.get("valid_area_px"),
                    result.get("valid_area_um2"),
                    result.get("pixel_size_um"),
                    json.dumps(result),
                    json.dumps({k: str(v) for k, v in (outputs or {}).items()}),
                    None if model is None else json.dumps(model),
                    result.get("pixel_sha256"),
                ),
            )
            if result.get("pixel_sha256"):
                _note_same_pixels(conn, file_id, result["pixel_sha256"])

    def mark_failed(self, file_id: int, error: str) -> None:
        """A claimed file that cannot be processed; ``error`` is its one-line reason.
        Its duplicates fail with it."""
        with self._write() as conn:
            self._finish(conn, file_id, "failed", _one_line(error))
            _fail_duplicates(conn)

    def charge(self, file_id: int, reason: str) -> str:
        """A claimed file whose own content made a step fail (module doc): ``failed`` with
        ``reason`` (and its duplicates with it) once it has had ``max_attempts`` attempts, else
        back to ``pending`` with the attempt spent and ``reason`` kept. Returns the new state."""
        with self._write() as conn:
            row = conn.execute("SELECT attempts FROM files WHERE id = ? AND state = 'processing'",
                               (file_id,)).fetchone()
            if row is None:
                raise StoreError(f"{self.path}: file {file_id} is not being processed")
            if row["attempts"] >= self.max_attempts:
                self._finish(conn, file_id, "failed", _one_line(reason))
                _fail_duplicates(conn)
                return "failed"
            conn.execute(
                """UPDATE files SET state = 'pending', error = ?, stage = NULL, stage_since = NULL
                   WHERE id = ?""",
                (_one_line(reason), file_id),
            )
            return "pending"

    def release(self, file_id: int, reason: str) -> None:
        """Put a claimed file back in the queue without spending an attempt: the worker
        could not finish it for a reason outside the file (full disk, backend error)."""
        with self._write() as conn:
            updated = conn.execute(
                """UPDATE files SET state = 'pending', attempts = MAX(attempts - 1, 0), error = ?,
                       stage = NULL, stage_since = NULL
                   WHERE id = ? AND state = 'processing'""",
                (_one_line(reason), file_id),
            ).rowcount
            if not updated:
                raise StoreError(f"{self.path}: file {file_id} is not being processed")

    def requeue_failed(self) -> int:
        """Put every failed file back in the queue with its attempts and crashes forgiven, and
        its duplicates back to ``done`` beside it: how a re-analysis retries what failed last
        time (the daemon retries a file when it is copied again). Returns how many were requeued."""
        with self._write() as conn:
            requeued = conn.execute(
                """UPDATE files SET state = 'pending', error = NULL, processed = NULL, attempts = 0,
                       crashes = 0, alone = 0
                   WHERE state = 'failed' AND duplicate_of IS NULL"""
            ).rowcount
            conn.execute(
                """UPDATE files SET state = 'done', error = 'same content as file ' || duplicate_of
                   WHERE state = 'failed' AND duplicate_of IS NOT NULL"""
            )
        return requeued

    def recover_after_crash(self, max_attempts: int | None = None, charge: bool = True) -> dict[str, int]:
        """At start, the rows a dead worker left ``processing`` (module doc): those marked
        inside a step run alone from now on, and when ``charge`` are charged
        a death and fail, with their duplicates, after ``max_attempts`` deaths; every other row
        goes back to ``pending`` without spending its attempt. Returns how many rows were
        requeued, charged and failed."""
        limit = self.max_attempts if max_attempts is None else max_attempts
        with self._write() as conn:
            inside = conn.execute(
                "SELECT COUNT(*) FROM files WHERE state = 'processing' AND stage IS NOT NULL").fetchone()[0]
            charged = inside if charge else 0
            conn.execute(
                """UPDATE files SET crashes = crashes + ?, alone = 1
                   WHERE state = 'processing' AND stage IS NOT NULL""",
                (int(charge),),
            )
            failed = conn.execute(
                """UPDATE files SET state = 'failed', processed = ?, error = 'crashed the worker '
                       || CASE crashes WHEN 1 THEN 'once' ELSE crashes || ' times' END || ' while ' || stage
                   WHERE state = 'processing' AND stage IS NOT NULL AND crashes >= ?""",
                (time.time(), limit),
            ).rowcount
            # Also mends duplicates that older versions left done on a failed original.
            _fail_duplicates(conn)
            requeued = conn.execute(
                """UPDATE files SET state = 'pending', stage = NULL, stage_since = NULL,
                       attempts = CASE WHEN stage IS NULL OR NOT ? THEN MAX(attempts - 1, 0) ELSE attempts END
                   WHERE state = 'processing'""",
                (int(charge),),
            ).rowcount
        return {"requeued": requeued, "charged": charged, "failed": failed}

    def counts_by_state(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        rows = self._read("SELECT state, COUNT(*) AS n FROM files GROUP BY state")
        counts.update({r["state"]: r["n"] for r in rows})
        return counts


def _note_same_pixels(conn: sqlite3.Connection, file_id: int, pixel_sha256: str) -> None:
    """``same_pixels_as``: the oldest other done field of the file's specimen with these
    pixels (itself not such a copy, nor a byte duplicate); none when there is none."""
    conn.execute(
        """UPDATE files SET same_pixels_as = (
               SELECT o.id FROM files o JOIN results r ON r.file_id = o.id
               WHERE r.pixel_sha256 = ? AND o.id != files.id AND o.specimen_id = files.specimen_id
                 AND o.state = 'done' AND o.duplicate_of IS NULL AND o.same_pixels_as IS NULL
               ORDER BY o.id LIMIT 1)
           WHERE id = ?""", (pixel_sha256, file_id))
