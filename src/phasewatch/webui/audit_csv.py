"""Audit rows (``store/audit.py``) as CSV: one row each, times in UTC (ISO 8601) beside the
epoch seconds, before/after as their canonical JSON, and each row's hashes, so that the
file can be checked against ``phasewatch audit verify`` later."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from phasewatch.store.audit import canonical

COLUMNS = ("seq", "at_utc", "at", "actor", "action", "subject", "before", "after", "reason", "prev_hash", "hash")


def audit_csv(rows: Iterable[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for row in rows:
        at_utc = datetime.fromtimestamp(row["at"], timezone.utc).isoformat(timespec="seconds")
        writer.writerow([row["seq"], at_utc, repr(row["at"]), row["actor"], row["action"], row["subject"],
                         "" if row["before"] is None else canonical(row["before"]),
                         "" if row["after"] is None else canonical(row["after"]), row["reason"],
                         row["prev_hash"], row["hash"]])
    return out.getvalue()
