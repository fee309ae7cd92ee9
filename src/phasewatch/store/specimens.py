"""Specimens: the sets of fields whose statistics are reported together.

Specimens. There is always a current specimen (a first one, ``default``, is created
with the database); a new field belongs to it unless ``enqueue`` names another, e.g.
the sub-folder specimen of :meth:`Store.specimen_for_path`. A specimen holds the fields
of one model only: its classes and calibration are what its statistics compare. The
first field recorded with a model identity (:meth:`Store.mark_done`'s ``model``: name and
ONNX sha256) claims the specimen for that model; a field of another model is moved to a
specimen derived from it for that model (``"<name> (model X)"``, created on first need,
current when the original was, with its operator), so that restarting the service with
another model on the same data folder never mixes two models' classes in one set of
statistics. A closed specimen is signed off (``signoff.py``): it cannot be made current or
edited. A specimen's ``operator`` is who prepared and imaged it ("" when nobody said), one
line like an acceptance's ``accepted_by``. Starting, editing and making current are written
to the audit record (``audit.py``) in the same transaction, with ``who`` did it.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any, cast

from phasewatch.store.audit import Audited
from phasewatch.store.database import (
    _MODEL_SUFFIX,
    Refused,
    StoreError,
    _db_path,
    _inserted,
    _one_line,
    _specimen,
    display_text,
)
from phasewatch.store.rows import SpecimenRow, SpecimenSummary

log = logging.getLogger(__name__)


class Specimens(Audited):
    """Creating and editing specimens, and keeping each to one model."""

    def start_specimen(self, name: str, notes: str = "", operator: str = "", who: str = "phasewatch") -> int:
        """A new specimen that becomes the current one; returns its id."""
        with self._write() as conn:
            return self._start(conn, name, notes, operator, who)

    def _start(self, conn: sqlite3.Connection, name: str, notes: str, operator: str, who: str) -> int:
        if not name.strip():
            raise StoreError(f"{self.path}: a specimen needs a name")
        conn.execute("UPDATE specimens SET is_current = 0 WHERE is_current = 1")
        row = {"name": display_text(name.strip()), "notes": display_text(notes), "operator": _one_line(operator)}
        specimen_id = _inserted(conn.execute(
            "INSERT INTO specimens (name, notes, operator, created, is_current) VALUES (?, ?, ?, ?, 1)",
            (*row.values(), time.time()),
        ))
        self.audit.append(conn, who, "specimen.start", f"specimen:{specimen_id}", None, row)
        return specimen_id

    def current_specimen(self) -> SpecimenRow:
        rows = self._read("SELECT * FROM specimens WHERE is_current = 1")
        if not rows:  # _migrate creates one and every change keeps exactly one current
            raise StoreError(f"{self.path}: no current specimen")
        return _specimen(rows[0])

    def get_specimen(self, specimen_id: int) -> SpecimenRow | None:
        row = self._conn().execute("SELECT * FROM specimens WHERE id = ?", (specimen_id,)).fetchone()
        return _specimen(row) if row is not None else None

    def list_specimens(self) -> list[SpecimenSummary]:
        """Newest first, each with its number of files, of measured and of failed ones,
        and when its last file arrived."""
        rows = self._read(
            """SELECT s.*, COUNT(f.id) AS files, COALESCE(SUM(f.state = 'done'), 0) AS done,
                      COALESCE(SUM(f.state = 'failed'), 0) AS failed, MAX(f.created) AS last_file
               FROM specimens s LEFT JOIN files f ON f.specimen_id = s.id GROUP BY s.id ORDER BY s.id DESC"""
        )
        return [cast(SpecimenSummary, _specimen(r)) for r in rows]  # with the counts the query adds

    def update_specimen(
        self, specimen_id: int, name: str | None = None, notes: str | None = None, operator: str | None = None,
        who: str = "phasewatch",
    ) -> None:
        """Rename a specimen and/or replace its notes or operator (None: leave as is); not
        once it is closed."""
        if name is not None and not name.strip():
            raise StoreError(f"{self.path}: a specimen needs a name")
        wanted = {"name": None if name is None else display_text(name.strip()),
                  "notes": None if notes is None else display_text(notes),
                  "operator": None if operator is None else _one_line(operator)}
        with self._write() as conn:
            specimen = self._open_specimen(conn, specimen_id)
            changed = {k: v for k, v in wanted.items() if v is not None and v != specimen[k]}
            for key, value in changed.items():  # keys from ``wanted`` only
                conn.execute(f"UPDATE specimens SET {key} = ? WHERE id = ?", (value, specimen_id))
            if changed:
                self.audit.append(conn, who, "specimen.edit", f"specimen:{specimen_id}",
                                  {k: specimen[k] for k in changed}, changed)

    def make_current(self, specimen_id: int, who: str = "phasewatch") -> None:
        """New fields go to this open specimen from now on."""
        with self._write() as conn:
            self._open_specimen(conn, specimen_id)
            before = conn.execute("SELECT id FROM specimens WHERE is_current = 1").fetchone()
            conn.execute("UPDATE specimens SET is_current = 0 WHERE is_current = 1")
            conn.execute("UPDATE specimens SET is_current = 1 WHERE id = ?", (specimen_id,))
            self.audit.append(conn, who, "specimen.current", f"specimen:{specimen_id}",
                              {"current": before["id"] if before else None}, {"current": specimen_id})

    def _existing_specimen(self, conn: sqlite3.Connection, specimen_id: int) -> sqlite3.Row:
        row: sqlite3.Row | None = conn.execute("SELECT * FROM specimens WHERE id = ?", (specimen_id,)).fetchone()
        if row is None:
            raise StoreError(f"{self.path}: no specimen {specimen_id}")
        return row

    def _open_specimen(self, conn: sqlite3.Connection, specimen_id: int) -> sqlite3.Row:
        """A specimen that may change: it exists and is not closed (signed off)."""
        row = self._existing_specimen(conn, specimen_id)
        if row["closed"] is not None:
            raise Refused(f"{self.path}: specimen {specimen_id} is closed (signed off by {row['closed_by'] or '?'}); "
                          "reopen it first")
        return row

    def _keep_to_one_model(self, conn: sqlite3.Connection, file_id: int, model: Mapping[str, Any]) -> None:
        """Claim the field's specimen for ``model``, or move the field to the specimen
        derived from it for that model (module doc)."""
        name, sha256 = str(model["name"]), str(model["onnx_sha256"])
        specimen = conn.execute(
            "SELECT s.* FROM specimens s JOIN files f ON f.specimen_id = s.id WHERE f.id = ?", (file_id,)
        ).fetchone()
        if specimen["model_name"] is None:
            conn.execute("UPDATE specimens SET model_name = ?, model_sha256 = ? WHERE id = ?",
                         (name, sha256, specimen["id"]))
            return
        if (specimen["model_name"], specimen["model_sha256"]) == (name, sha256):
            return
        derived = conn.execute(
            """SELECT id FROM specimens WHERE derived_from = ? AND model_name = ? AND model_sha256 = ?
               AND closed IS NULL ORDER BY id DESC LIMIT 1""",
            (specimen["id"], name, sha256),
        ).fetchone()
        if derived is not None:
            target: int = derived["id"]
        else:
            target = self._derive_specimen(conn, specimen, name, sha256)
        conn.execute("UPDATE files SET specimen_id = ? WHERE id = ?", (target, file_id))

    def _derive_specimen(self, conn: sqlite3.Connection, specimen: sqlite3.Row, name: str, sha256: str) -> int:
        # "S-1 (model ebc)" from "S-1 (model superalloy)" too, not a growing chain of suffixes.
        base = _MODEL_SUFFIX.sub("", specimen["name"]) or specimen["name"]
        if specimen["is_current"]:
            conn.execute("UPDATE specimens SET is_current = 0 WHERE is_current = 1")
        derived = _inserted(conn.execute(
            """INSERT INTO specimens (name, notes, operator, created, is_current, model_name, model_sha256,
                                      derived_from)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
            (f"{base} (model {name})", f"started automatically: the model changed from "
             f"{specimen['model_name']} to {name}", specimen["operator"], time.time(), specimen["is_current"],
             name, sha256, specimen["id"]),
        ))
        log.warning("specimen %d (%s) holds fields of model %s (%s); fields of model %s (%s) go to a new "
                    "specimen %d", specimen["id"], specimen["name"], specimen["model_name"],
                    specimen["model_sha256"][:12], name, sha256[:12], derived)
        return derived

    def specimen_for_path(self, path: Path | str, watch_root: Path | str) -> int:
        """The specimen of a file when every sub-folder is a specimen: the one named after
        the first folder below ``watch_root`` (created on first use); a file directly in
        the root belongs to the current specimen."""
        try:
            parts = PurePath(path).relative_to(watch_root).parts
        except ValueError as exc:
            raise StoreError(f"{path}: not inside the watch folder {watch_root}") from exc
        if len(parts) < 2:
            return self.current_specimen()["id"]
        folder = _db_path(parts[0])
        with self._write() as conn:
            row = conn.execute("SELECT id FROM specimens WHERE folder = ?", (folder,)).fetchone()
            if row is not None:
                return row["id"]
            return _inserted(conn.execute(
                "INSERT INTO specimens (name, folder, created) VALUES (?, ?, ?)",
                (display_text(parts[0]), folder, time.time()),
            ))
