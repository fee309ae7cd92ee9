"""What operators decide about a field: exclusions and acceptances, each with who and why."""

from __future__ import annotations

import logging
import sqlite3
import time

from phasewatch.store.database import Database, StoreError, _one_line

log = logging.getLogger(__name__)


class Curation(Database):
    """Exclude, include, accept and un-accept fields."""

    def exclude_field(self, file_id: int, reason: str) -> None:
        """Leave a field out of its specimen's statistics (a duplicate's original)."""
        self._set_excluded(file_id, 1, _one_line(reason) or "excluded by the operator")

    def include_field(self, file_id: int) -> None:
        self._set_excluded(file_id, 0, None)

    def accept_field(self, file_id: int, who: str, reason: str) -> None:
        """An operator vouches for a flagged field, so that it counts (a duplicate's
        original); ``who`` and ``reason`` are required: an acceptance is accountable."""
        who, reason = _one_line(who), _one_line(reason)
        if not who or not reason:
            raise StoreError(f"{self.path}: accepting file {file_id} needs who and why")
        self._set_accepted(file_id, 1, who, reason, time.time())

    def unaccept_field(self, file_id: int) -> None:
        self._set_accepted(file_id, 0, None, None, None)

    def _target(self, conn: sqlite3.Connection, file_id: int) -> int:
        """The row a field's exclusion or acceptance is kept on: a duplicate's original."""
        row = conn.execute(
            "SELECT COALESCE(duplicate_of, id) AS target FROM files WHERE id = ?", (file_id,)
        ).fetchone()
        if row is None:
            raise StoreError(f"{self.path}: no file {file_id}")
        target: int = row["target"]
        return target

    def _set_excluded(self, file_id: int, excluded: int, reason: str | None) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE files SET excluded = ?, exclude_reason = ? WHERE id = ?",
                (excluded, reason, self._target(conn, file_id)),
            )

    def _set_accepted(
        self, file_id: int, accepted: int, who: str | None, reason: str | None, at: float | None
    ) -> None:
        with self._write() as conn:
            conn.execute(
                """UPDATE files SET accepted = ?, accepted_by = ?, accept_reason = ?,
                       accepted_at = ? WHERE id = ?""",
                (accepted, who, reason, at, self._target(conn, file_id)),
            )
