"""An archive re-analysis's books: which files there are, which are done, which failed and why.

A re-analysis (``phasewatch reanalyse ARCHIVE --model M --out OUT``) keeps its books the way
the daemon does, in a data folder: the daemon's store (``OUT/phasewatch.sqlite3``, SQLite in
WAL mode, ``src/phasewatch/store/``) holds one row per file with its state, its record JSON
or its one-line failure reason, and each file's outputs go to ``OUT/results/ID/`` as the
daemon writes them. The CSV (``webui.csv_export.store_csv``) and the specimen statistics
(``src/phasewatch/core/stats.py``) of a re-analysis are therefore the daemon's own, and
``phasewatch serve --data OUT`` can show it.

Specimens. Every first-level sub-folder of the archive is a specimen, named after the folder
(``Store.specimen_for_path``, as the daemon's ``[specimen] per_subfolder``); files directly in
the archive's root belong to the store's ``default`` specimen.

Resuming. A file is known by its path, size, modification time and sha256
(``Store.enqueue``): a rerun finds its done row and skips it, and a file with the same
content as one already measured shares its result. Rows that a killed run left
``processing`` go back to the queue without being charged (``Store.recover_after_crash``),
and failed rows are queued again (``Store.requeue_failed``), so that a rerun retries them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from phasewatch.bundle import Bundle, sha256_file
from phasewatch.errors import one_line
from phasewatch.imageio.formats import SUPPORTED_SUFFIXES
from phasewatch.service.config import DataConfig
from phasewatch.store import Store, StoreError


@dataclass(frozen=True)
class Intake:
    """What a run found: ``files`` in the archive, ``queued`` of them in the store (fewer when
    stopped while hashing), ``done`` among those (measured by an earlier
    run, or the same content as another file: skipped), ``retried`` failures of an earlier run
    queued again, ``pending`` to analyse, and one line for each file it could not read."""

    files: int
    queued: int
    done: int
    retried: int
    pending: int
    unreadable: list[str]


def archive_files(root: Path) -> list[Path]:
    """Every file under ``root``, at any depth, with a suffix an image reader takes, sorted;
    hidden files and folders (``.thumbnails``, a sync tool's ``.stversions``) are left out."""
    found: list[Path] = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [s for s in subfolders if not s.startswith(".")]
        found += [Path(folder, n) for n in names
                  if not n.startswith(".") and Path(n).suffix.lower() in SUPPORTED_SUFFIXES]
    return sorted(found)


def open_books(out: Path, bundle: Bundle, max_crashes: int) -> Store:
    """The store of the re-analysis in ``out`` (created when new), where a file that crashes a
    worker ``max_crashes`` times fails; refused when it holds results of another model, whose
    done rows a rerun would otherwise skip."""
    store = Store(DataConfig(dir=out).database, max_attempts=max_crashes)
    for specimen in store.list_specimens():
        if specimen["model_sha256"] not in (None, bundle.onnx_sha256):
            store.close()
            raise StoreError(f"{out}: holds results of model {specimen['model_name']} "
                             f"({specimen['model_sha256'][:12]}), not of {bundle.name} "
                             f"({bundle.onnx_sha256[:12]}); give each model its own output folder")
    return store


def take_in(store: Store, root: Path, files: list[Path], hashed: Callable[[], None] = lambda: None,
            stop: threading.Event | None = None) -> Intake:
    """Queue ``files`` of the archive ``root`` in ``store`` (module doc: resuming); ``hashed``
    is called after each file (a progress bar); once ``stop`` is set, no more are queued."""
    store.recover_after_crash(charge=False)  # a killed run's files were not at fault
    retried = store.requeue_failed()
    done = queued = 0
    unreadable: list[str] = []
    for path in files:
        if stop is not None and stop.is_set():
            break
        try:
            stat = path.stat()
            digest = sha256_file(path)
        except OSError as exc:  # gone since the listing, or not ours to read: the others go on
            unreadable.append(f"{path}: cannot read: {exc.strerror or one_line(exc)}")
            continue
        finally:
            hashed()
        row = store.enqueue(path, stat.st_size, stat.st_mtime_ns, digest, store.specimen_for_path(path, root))
        done += row["state"] == "done"
        queued += 1
    return Intake(len(files), queued, done, retried, store.counts_by_state()["pending"], unreadable)
