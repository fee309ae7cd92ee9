"""Closing a specimen with an electronic signature, reopening it, and the reports served.

Closing. A person closes a specimen by signing: their name and what the signature means
(:data:`MEANINGS`). The specimen is then read-only (no exclusions, acceptances, limits or
edits: ``curation.py``, ``specs.py``, ``specimens.py`` refuse them) until it is reopened,
which is itself signed: a name and a reason. Closing the current specimen starts the next
one, which takes the new fields. Both acts go to the audit record (``specimen.close``,
``specimen.reopen``) in the same transaction; the closing's who, when and meaning are kept
on the specimen as well, where the report reads them.

Reports. Every report served (PDF or HTML) is recorded by the sha256 of its bytes, with the
sign-off it shows, so that a printed or mailed copy can be checked (``GET
/api/reports/SHA256``): a hash the appliance never served is not one of its reports.
"""

from __future__ import annotations

import time
from typing import Any

from phasewatch.store.database import Refused, StoreError, _one_line
from phasewatch.store.specimens import Specimens

MEANINGS = ("reviewed and released", "rejected")


class SignOff(Specimens):
    """Signed close and reopen; reports by hash."""

    def close_specimen(self, specimen_id: int, who: str, meaning: str, next_name: str = "") -> int | None:
        """Sign a specimen off (module doc); the id of the specimen started after it when it
        was the current one (named ``next_name``, else after it), else None."""
        who = _one_line(who)
        if not who:
            raise Refused(f"{self.path}: closing specimen {specimen_id} needs the signer's name")
        if meaning not in MEANINGS:
            raise Refused(f"{self.path}: the meaning of a signature is one of {', '.join(MEANINGS)}, got {meaning!r}")
        with self._write() as conn:
            specimen = self._open_specimen(conn, specimen_id)
            at = time.time()
            conn.execute("UPDATE specimens SET closed = ?, closed_by = ?, close_meaning = ?, is_current = 0 "
                         "WHERE id = ?", (at, who, meaning, specimen_id))
            following = None
            if specimen["is_current"]:
                following = self._start(conn, _one_line(next_name) or f"after {specimen['name']}", "",
                                        specimen["operator"], who)
            self.audit.append(conn, who, "specimen.close", f"specimen:{specimen_id}", {"closed": None},
                              {"closed": at, "closed_by": who, "meaning": meaning, "next": following}, meaning)
        return following

    def reopen_specimen(self, specimen_id: int, who: str, reason: str) -> None:
        """Open a closed specimen again; a signed act: who and why are required."""
        who, reason = _one_line(who), _one_line(reason)
        if not who or not reason:
            raise Refused(f"{self.path}: reopening specimen {specimen_id} needs who and why")
        with self._write() as conn:
            specimen = self._existing_specimen(conn, specimen_id)
            if specimen["closed"] is None:
                raise Refused(f"{self.path}: specimen {specimen_id} is not closed")
            conn.execute("UPDATE specimens SET closed = NULL, closed_by = NULL, close_meaning = NULL WHERE id = ?",
                         (specimen_id,))
            self.audit.append(conn, who, "specimen.reopen", f"specimen:{specimen_id}",
                              {"closed": specimen["closed"], "closed_by": specimen["closed_by"],
                               "meaning": specimen["close_meaning"]}, {"closed": None}, reason)

    def record_report(self, sha256: str, specimen_id: int, kind: str, size: int, verdict: str | None) -> None:
        """Note a report served (module doc); the same bytes again keep their first record."""
        specimen = self.get_specimen(specimen_id)
        if specimen is None:
            raise StoreError(f"{self.path}: no specimen {specimen_id}")
        with self._write() as conn:
            conn.execute(
                """INSERT OR IGNORE INTO reports (sha256, specimen_id, kind, size, created, closed, closed_by,
                       close_meaning, verdict) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (sha256.lower(), specimen_id, kind, size, time.time(), specimen["closed"], specimen["closed_by"],
                 specimen["close_meaning"], verdict))

    def report(self, sha256: str) -> dict[str, Any] | None:
        """The record of the report whose bytes hash to ``sha256``; None when never served."""
        rows = self._read("SELECT * FROM reports WHERE sha256 = ?", (sha256.lower(),))
        return dict(rows[0]) if rows else None
