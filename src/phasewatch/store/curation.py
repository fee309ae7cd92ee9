"""What operators decide about a field: exclusions and acceptances, each with who and why.

Every decision is written to the audit record (``audit.py``, subject ``image:ID`` of the
row it is kept on) in the same transaction; none is allowed on a field of a closed
(signed-off) specimen, whose record is then read-only.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Any

from phasewatch.store.audit import Audited
from phasewatch.store.database import Refused, StoreError, _one_line

log = logging.getLogger(__name__)

_DECISION = ("excluded", "exclude_reason", "accepted", "accepted_by", "accept_reason")


class Curation(Audited):
    """Exclude, include, accept and un-accept fields."""

    def exclude_field(self, file_id: int, reason: str, who: str = "phasewatch") -> None:
        """Leave a field out of its specimen's statistics (a duplicate's original)."""
        reason = _one_line(reason) or "excluded by the operator"
        self._decide(file_id, who, "field.exclude", reason, excluded=1, exclude_reason=reason)

    def include_field(self, file_id: int, who: str = "phasewatch") -> None:
        self._decide(file_id, who, "field.include", "", excluded=0, exclude_reason=None)

    def accept_field(self, file_id: int, who: str, reason: str) -> None:
        """An operator vouches for a flagged field, so that it counts (a duplicate's
        original); ``who`` and ``reason`` are required: an acceptance is accountable."""
        who, reason = _one_line(who), _one_line(reason)
        if not who or not reason:
            raise StoreError(f"{self.path}: accepting file {file_id} needs who and why")
        self._decide(file_id, who, "field.accept", reason, accepted=1, accepted_by=who, accept_reason=reason,
                     accepted_at=time.time())

    def unaccept_field(self, file_id: int, who: str = "phasewatch") -> None:
        self._decide(file_id, who, "field.unaccept", "", accepted=0, accepted_by=None, accept_reason=None,
                     accepted_at=None)

    def _target(self, conn: sqlite3.Connection, file_id: int) -> sqlite3.Row:
        """The row a field's exclusion or acceptance is kept on (a duplicate's original),
        with its specimen's sign-off."""
        row: sqlite3.Row | None = conn.execute(
            """SELECT t.*, s.closed, s.closed_by FROM files f JOIN files t ON t.id = COALESCE(f.duplicate_of, f.id)
               LEFT JOIN specimens s ON s.id = f.specimen_id WHERE f.id = ?""", (file_id,)
        ).fetchone()
        if row is None:
            raise StoreError(f"{self.path}: no file {file_id}")
        if row["closed"] is not None:
            raise Refused(f"{self.path}: file {file_id} belongs to a closed specimen (signed off by "
                          f"{row['closed_by'] or '?'}): reopen it to change what counts")
        return row

    def _decide(self, file_id: int, who: str, action: str, reason: str, **values: Any) -> None:
        """Set the decision ``values`` (columns of files) and audit them, before and after."""
        with self._write() as conn:
            target = self._target(conn, file_id)
            conn.execute(f"UPDATE files SET {', '.join(f'{k} = ?' for k in values)} WHERE id = ?",
                         (*values.values(), target["id"]))
            self.audit.append(conn, who, action, f"image:{target['id']}",
                              {k: target[k] for k in _DECISION}, {k: v for k, v in values.items() if k in _DECISION},
                              reason)
