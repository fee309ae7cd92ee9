"""``phasewatch dataset export --material NAME OUT --data DIR``: a material's labelled fields as
images + class-id label PNGs in the layout ``phasewatch train`` reads, with a manifest of who
labelled what and when (``src/phasewatch/store/dataset.py``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from phasewatch.errors import PhasewatchError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("export",))
    parser.add_argument("out", type=Path, help="new (or empty) folder to write the data set to")
    parser.add_argument("--material", required=True, help="the material whose labelled fields to write")
    parser.add_argument("--data", type=Path, required=True, help="the service's data folder")


def run(args: argparse.Namespace) -> int:
    from phasewatch.store import Store
    from phasewatch.store.dataset import export_dataset

    database = args.data / "phasewatch.sqlite3"
    if not database.is_file():
        print(f"phasewatch dataset: {database}: no database there", file=sys.stderr)
        return 2
    store = Store(database)
    try:
        manifest = export_dataset(store, args.material, args.out)
    except PhasewatchError as exc:
        print(f"phasewatch dataset: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(f"{args.out}: {len(manifest['fields'])} labelled field(s) of {args.material} "
          f"(images/, labels/, manifest.json)")
    return 0
