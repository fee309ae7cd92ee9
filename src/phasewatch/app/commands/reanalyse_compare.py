"""``phasewatch reanalyse-compare OLD NEW``: two models' results on the same archive, per specimen.

OLD and NEW are data folders of ``reanalyse`` (or the daemon's ``--data``); fields are paired
by content, specimens are NEW's sub-folders, and each class's area % is shown old and new with
the paired difference and its 95 % CI (``src/phasewatch/service/archive_compare.py``).
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

from phasewatch.atomic_files import write_bytes_atomic
from phasewatch.errors import PhasewatchError
from phasewatch.service.archive_compare import COLUMNS, compare, rows, table
from phasewatch.service.config import DataConfig
from phasewatch.store import Store


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("old", type=Path, help="data folder of the old model's results")
    parser.add_argument("new", type=Path, help="data folder of the new model's results")
    parser.add_argument("--count-flagged", action="store_true",
                        help="count fields the model flagged as outside its experience (default: leave them out, "
                             "as the specimen statistics do)")
    parser.add_argument("--csv", type=Path, metavar="FILE", help="also write the comparison as CSV")


def open_results(folder: Path) -> Store:
    database = DataConfig(dir=folder).database
    if not database.is_file():  # a Store would create an empty one
        raise PhasewatchError(f"{folder}: no results here (no {database.name})")
    return Store(database)


def run(args: argparse.Namespace) -> int:
    try:
        old = open_results(args.old)
        new = open_results(args.new)
    except PhasewatchError as exc:
        print(f"phasewatch reanalyse-compare: {exc}", file=sys.stderr)
        return 2
    try:
        report = compare(old, new, args.count_flagged)
    finally:
        old.close()
        new.close()
    print(table(report))
    if args.csv:
        out = io.StringIO()
        csv.writer(out).writerows([COLUMNS, *([("" if v is None else v) for v in row] for row in rows(report))])
        write_bytes_atomic(args.csv, out.getvalue().encode())
    return 0
