"""``phasewatch audit verify --data DIR``: check the audit record's hash chain
(``src/phasewatch/store/audit.py``); exit status 0 when intact, 1 naming the first bad row.
``phasewatch audit show --data DIR`` prints the newest rows."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from phasewatch.errors import PhasewatchError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("verify", "show"))
    parser.add_argument("--data", type=Path, required=True, help="the service's data folder")
    parser.add_argument("--limit", type=int, default=50, help="rows to show (show)")
    parser.add_argument("--json", action="store_true", help="as JSON")


def run(args: argparse.Namespace) -> int:
    from phasewatch.store import Store

    database = args.data / "phasewatch.sqlite3"
    if not database.is_file():
        print(f"phasewatch audit: {database}: no database there", file=sys.stderr)
        return 2
    try:
        store = Store(database)
        try:
            if args.action == "show":
                rows = store.audit.rows(limit=args.limit)
                for row in rows:
                    if args.json:
                        print(json.dumps(row, ensure_ascii=False))
                    else:
                        at = datetime.fromtimestamp(row["at"], timezone.utc).isoformat(timespec="seconds")
                        print(f"{row['seq']:>6} {at} {row['actor']:<16} {row['action']:<16} {row['subject']:<24} "
                              f"{json.dumps(row['before'])} -> {json.dumps(row['after'])}"
                              + (f"  ({row['reason']})" if row["reason"] else ""))
                return 0
            check = store.audit.verify()
        finally:
            store.close()
    except PhasewatchError as exc:
        print(f"phasewatch audit: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"ok": check.ok, "rows": check.rows, "first_bad": check.first_bad, "reason": check.reason,
                          "head": check.head}))
    elif check.ok:
        print(f"{database}: audit record intact: {check.rows} row(s); newest hash {check.head}")
    else:
        print(f"{database}: {check.reason}", file=sys.stderr)
    return 0 if check.ok else 1
