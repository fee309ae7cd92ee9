"""What the daemon records for one file: run a real daemon (real store, watch folder, bundled
model on the CPU) on it and return the store's image row, timings and run-specific values aside.

Run as a script it prints that row as JSON, under either the import names of this tree
(``new``) or those of the tree before the src/ layout (``old``, commit f19764f: phasewatch.runtime...),
which is how the first ``tests/data/daemon_record.json`` was made (see tests/test_record_unchanged.py)::

    git worktree add --detach /tmp/old f19764f
    mkdir -p /tmp/oldpkg/phasewatch && touch /tmp/oldpkg/phasewatch/__init__.py
    for d in runtime export webui; do ln -s /tmp/old/$d /tmp/oldpkg/phasewatch/$d; done
    PYTHONPATH=/tmp/oldpkg python tests/daemon_record.py old IMAGE > tests/data/daemon_record.json
"""

from __future__ import annotations

import importlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODEL = "superalloy"
SHARED_IMAGE = "superalloy/val/images/spot1_0d_0.tif"  # relative to ../shared/data
# Values that differ from run to run (times, the copy's mtime), and the software's version;
# the run's own folder is written as WORK.
VOLATILE = {"created", "updated", "mtime_ns", "processed", "stage_since", "timing_ms", "software"}
MODULES = {
    "new": ("phasewatch.service.config", "phasewatch.service.daemon", "phasewatch.store"),
    "old": ("phasewatch.runtime.service.config", "phasewatch.runtime.service.daemon",
            "phasewatch.runtime.service.store"),
}


def without_volatile(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_volatile(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [without_volatile(v) for v in value]
    return value


def daemon_record(image: Path, work: Path, names: str = "new", deadline_s: float = 120.0,
                  model: str = MODEL) -> dict[str, Any]:
    """``model``: a bundled name, or a bundle folder (an older copy of the bundled model)."""
    config_module, daemon_module, store_module = (importlib.import_module(m) for m in MODULES[names])
    (work / "watch").mkdir(parents=True)
    config_file = work / "phasewatch.toml"
    which = f'path = "{model}"' if "/" in model else f'name = "{model}"'
    config_file.write_text(f'[watch]\nsettle_s = 0.05\n[model]\n{which}\nbackend = "cpu"\n')
    config = config_module.load_config(config_file, {"watch": work / "watch", "data": work / "data"})
    store = store_module.Store(config.data.database, max_attempts=config.queue.max_attempts)
    daemon = daemon_module.Daemon(config, store, daemon_module.model_factory(config))
    daemon.start()
    try:
        staged = work / image.name
        staged.write_bytes(image.read_bytes())
        staged.replace(work / "watch" / image.name)  # arrives whole
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            rows = [r for r in store.list_images(10) if r["state"] in ("done", "failed")]
            if rows:
                row = json.dumps(store.get_image(rows[0]["id"]), default=str).replace(str(work), "WORK")
                return without_volatile(json.loads(row))
            time.sleep(0.1)
        raise TimeoutError(f"{image}: no result in {deadline_s:.0f} s")
    finally:
        daemon.stop()
        store.close()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        json.dump(daemon_record(Path(sys.argv[2]), Path(tmp), sys.argv[1]), sys.stdout, indent=1, sort_keys=True)
        print()
