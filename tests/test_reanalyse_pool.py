"""``archive_pool.run_queue`` on a real local pool whose task kills its worker process on one
file (what a native crash in a decoder does to a pool): the file fails after three crashes, the
files beside it are analysed, and the run goes on with a new pool each time."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from phasewatch.service.archive_pool import Job, ModelSpec, Outcome, run_queue
from phasewatch.store import Store

RECORD = {"fractions": {"phase": 0.5}, "particles": {}, "valid_area_px": 10}


def die_on_poison(file_id: int, path: str, job: Job) -> Outcome:
    if "poison" in path:
        os._exit(1)  # the worker process is gone, as after a segfault
    return Outcome(file_id, RECORD, {}, {"name": "m", "onnx_sha256": "x"})


def test_a_file_that_kills_its_worker_fails_after_three_crashes_and_the_others_are_done(tmp_path: Path) -> None:
    store = Store(tmp_path / "phasewatch.sqlite3", max_attempts=3)
    names = ["a.tif", "b.tif", "poison.tif", "c.tif", "d.tif"]
    for name in names:
        store.enqueue(tmp_path / name, 1, 1, f"sha-{name}")
    recorded: list[Outcome] = []
    crashes: list[dict[str, int]] = []
    try:
        run_queue(store, 2, None, Job(ModelSpec("unused"), tmp_path), recorded.append, threading.Event(),
                  crashes.append, task=die_on_poison)
        images = {Path(i["path"]).name: i for i in store.list_images(100)}
    finally:
        store.close()
    poison = images.pop("poison.tif")
    assert (poison["state"], poison["error"]) == ("failed", "crashed the worker 3 times while analysing")
    assert {i["state"] for i in images.values()} == {"done"}
    assert len(crashes) == 3 and [c["failed"] for c in crashes] == [0, 0, 1]
    assert crashes[-1]["charged"] == 1  # by then it ran alone: nothing beside it was charged
    assert sorted(o.file_id for o in recorded) == sorted(i["id"] for i in images.values())
