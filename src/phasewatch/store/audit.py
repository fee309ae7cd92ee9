"""The audit record: who did what, when, to what, from what to what, and why.

One append-only table (``audit``) for every step a person takes that changes what the
appliance measures or with what: labels saved, materials made, teach jobs, models activated
and rolled back, exclusions and acceptances, specimens started, edited, made current,
closed with a signature and reopened, specification limits and their templates. SQLite
triggers refuse an UPDATE or DELETE of a row, so the only way to change the record is to edit the file
outside phasewatch; the hash chain shows that too: each row's ``hash`` is the sha256 of the
canonical JSON (sorted keys, no spaces, UTF-8) of its fields and the previous row's hash,
so changing, removing or reordering a row breaks every hash from there on, and
:meth:`AuditLog.verify` names the first row that does not match. (Cutting rows off the end
leaves a shorter, valid chain; the newest hash, printed by ``phasewatch audit verify``, is
what a QA engineer notes down to catch that.)
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from phasewatch.store.database import Database, StoreError, _one_line

GENESIS = "0" * 64  # the previous hash of the first row
FIELDS = ("seq", "at", "actor", "action", "subject", "before", "after", "reason", "prev_hash")


def canonical(value: Any) -> str:
    """The one JSON text of ``value`` that is hashed: sorted keys, no spaces, UTF-8 kept."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def row_hash(row: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a row's :data:`FIELDS` (``before``/``after`` as stored text)."""
    return hashlib.sha256(canonical({k: row[k] for k in FIELDS}).encode()).hexdigest()


@dataclass(frozen=True)
class Verification:
    """What :meth:`AuditLog.verify` found: ``rows`` checked, the first bad row's ``seq``
    (None when every row is sound) and why, and the newest hash."""

    rows: int
    first_bad: int | None
    reason: str
    head: str

    @property
    def ok(self) -> bool:
        return self.first_bad is None


class AuditLog:
    """The audit record of one store (module doc); ``store.audit``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def record(self, actor: str, action: str, subject: str, before: Any = None, after: Any = None,
               reason: str = "") -> dict[str, Any]:
        """Append one row and return it; ``before``/``after`` are any JSON-able values."""
        with self._db._write() as conn:
            return self.append(conn, actor, action, subject, before, after, reason)

    def append(self, conn: sqlite3.Connection, actor: str, action: str, subject: str, before: Any = None,
               after: Any = None, reason: str = "") -> dict[str, Any]:
        """:meth:`record` inside the caller's write transaction ``conn``, so that a change and
        its audit row are committed together or not at all."""
        actor, action, subject = _one_line(actor), _one_line(action), _one_line(subject)
        if not actor or not action or not subject:
            raise StoreError(f"{self._db.path}: an audit row needs who (actor), what (action) and to what (subject)")
        last = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        row = {"seq": (last["seq"] + 1) if last else 1, "at": time.time(), "actor": actor, "action": action,
               "subject": subject, "before": None if before is None else canonical(before),
               "after": None if after is None else canonical(after), "reason": _one_line(reason),
               "prev_hash": last["hash"] if last else GENESIS}
        row["hash"] = row_hash(row)
        conn.execute(f"INSERT INTO audit ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                     tuple(row.values()))
        return row

    def specimen_rows(self, specimen_id: int, limit: int = 1000) -> list[dict[str, Any]]:
        """The rows about a specimen (``specimen:ID``) and about its fields (``image:ID``),
        oldest first, like :meth:`rows`."""
        found = self._db._read(
            """SELECT * FROM audit WHERE subject = ? OR subject IN
                   (SELECT 'image:' || id FROM files WHERE specimen_id = ?)
               ORDER BY seq DESC LIMIT ?""", [f"specimen:{specimen_id}", specimen_id, limit])
        return _decoded(found)

    def rows(self, subject: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """The newest ``limit`` rows (of ``subject`` only, when given), oldest first, with
        ``before``/``after`` decoded."""
        where, args = ("WHERE subject = ?", [subject]) if subject is not None else ("", [])
        found = self._db._read(f"SELECT * FROM audit {where} ORDER BY seq DESC LIMIT ?", [*args, limit])
        return _decoded(found)

    def verify(self) -> Verification:
        """Recompute the chain from the first row (module doc)."""
        previous, expected_seq, count = GENESIS, 1, 0
        for raw in self._db._read("SELECT * FROM audit ORDER BY seq"):
            row = dict(raw)
            count += 1
            problem = None
            if row["seq"] != expected_seq:
                problem = f"row {expected_seq} is missing (next is {row['seq']})"
            elif row["prev_hash"] != previous:
                problem = "its previous hash is not the hash of the row before it"
            elif row_hash(row) != row["hash"]:
                problem = "its content does not match its hash (changed after it was written)"
            if problem is not None:
                return Verification(count, row["seq"], f"audit row {row['seq']}: {problem}", previous)
            previous, expected_seq = row["hash"], expected_seq + 1
        return Verification(count, None, f"{count} row(s), chain intact", previous)


def _decoded(newest_first: list[sqlite3.Row]) -> list[dict[str, Any]]:
    """Rows oldest first, ``before``/``after`` decoded from their JSON."""
    out = []
    for raw in reversed(newest_first):
        row = dict(raw)
        for key in ("before", "after"):
            row[key] = None if row[key] is None else json.loads(row[key])
        out.append(row)
    return out


class Audited(Database):
    """The store's :class:`AuditLog` as ``store.audit``."""

    @property
    def audit(self) -> AuditLog:
        return AuditLog(self)
