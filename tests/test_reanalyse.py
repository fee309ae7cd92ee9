"""``phasewatch reanalyse`` on the shared micrographs: on a local Dask cluster of two worker
processes and on the local process pool, killed or stopped part-way and rerun, and recording
what the daemon records for the same files.

Per-run fields, left out of the comparisons: a record's ``timing_ms`` (decode, segment and
measure milliseconds), and the CSV's ``id`` (queue order), ``processed`` (when) and ``path``
(where the file was: archive or watch folder).
"""

from __future__ import annotations

import csv
import io
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from phasewatch.app.cli import main
from phasewatch.core.pipeline import open_model, process_file
from phasewatch.service.archive_compare import compare
from phasewatch.service.config import load_config
from phasewatch.service.daemon import Daemon
from phasewatch.store import Store
from phasewatch.webui.csv_export import store_csv

pytestmark = pytest.mark.slow
DEADLINE_S = 120.0
PER_RUN_RECORD = {"timing_ms"}
PER_RUN_CSV = {"id", "processed", "path"}
VIEWS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "": lambda a: a, "-lr": np.fliplr, "-ud": np.flipud, "-rot": lambda a: np.rot90(a, 2),
}


@pytest.fixture(scope="module")
def archive(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 superalloy fields in 4 specimen folders: each test image and three mirror images of
    it (other fields to the model, other content to the store's duplicate check)."""
    root = tmp_path_factory.mktemp("archive")
    images = sorted((shared_data / "superalloy" / "test" / "images").glob("*.tif"))
    if not images:
        pytest.skip(f"no superalloy test images in {shared_data}")
    for index, (suffix, view) in enumerate(VIEWS.items()):
        folder = root / f"specimen-{index + 1}"
        folder.mkdir()
        for image in images:
            tifffile.imwrite(folder / f"{image.stem}{suffix}.tif", np.ascontiguousarray(view(tifffile.imread(image))))
    return root


def states(out: Path) -> dict[int, tuple[str, float | None]]:
    """id -> (state, processed) of every file in a re-analysis's store (read beside the writer: WAL)."""
    database = out / "phasewatch.sqlite3"
    if not database.exists():
        return {}
    with sqlite3.connect(database, timeout=10) as conn:
        try:
            return {i: (s, p) for i, s, p in conn.execute("SELECT id, state, processed FROM files")}
        except sqlite3.OperationalError:  # the first run has not created its tables yet
            return {}


def done(out: Path) -> dict[int, float | None]:
    return {i: p for i, (s, p) in states(out).items() if s == "done"}


def reanalyse(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "phasewatch.app.cli", "reanalyse", *args],
                            stderr=subprocess.PIPE, text=True)


def stop_after(run: subprocess.Popen[str], out: Path, files: int, how: signal.Signals) -> str:
    """Send ``how`` once ``files`` files are done; the run's stderr."""
    end = time.monotonic() + DEADLINE_S
    while len(done(out)) < files and run.poll() is None and time.monotonic() < end:
        time.sleep(0.02)
    run.send_signal(how)
    _, stderr = run.communicate(timeout=DEADLINE_S)
    return stderr


def csv_rows(text: str) -> dict[str, dict[str, str]]:
    """file name -> CSV row without the per-run columns."""
    return {row["file"]: {k: v for k, v in row.items() if k not in PER_RUN_CSV}
            for row in csv.DictReader(io.StringIO(text))}


def without(record: dict[str, Any], keys: set[str]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in keys}


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    distributed = pytest.importorskip("distributed", reason="dask.distributed not installed (the 'cluster' extra)")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as local:
        yield local.scheduler_address


def test_killed_on_a_dask_cluster_and_resumed_it_records_what_process_file_does(
        archive: Path, cluster: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = (str(archive), "--model", "superalloy", "--out", str(out), "--cluster", cluster, "--threads", "1")
    stop_after(reanalyse(*args), out, 2, signal.SIGKILL)
    first = done(out)
    assert 2 <= len(first) < 16, "killed too late to show a resume"
    assert any(s == "processing" for s, _ in states(out).values()), "a kill leaves files in hand"

    rerun = reanalyse(*args)
    _, stderr = rerun.communicate(timeout=DEADLINE_S)
    assert rerun.returncode == 0, stderr
    assert f"{len(first)} of 16 already done" in stderr
    final = done(out)
    assert len(final) == 16
    assert {i: final[i] for i in first} == first  # done before the kill: not analysed again

    store = Store(out / "phasewatch.sqlite3")
    model = open_model("superalloy", "cpu", threads=1)
    try:
        images = {Path(i["path"]).name: i for i in store.list_images(100)}
        assert {i["specimen"] for i in images.values()} == {f"specimen-{n}" for n in range(1, 5)}
        for name, image in images.items():
            expected_dir = tmp_path / "process_file" / name
            expected = process_file(Path(image["path"]), model, expected_dir)
            assert image["measurement"].keys() == expected.record.keys()
            assert without(image["measurement"], PER_RUN_RECORD) == without(expected.record, PER_RUN_RECORD)
            written = Path(image["outputs"]["json"])
            assert written.parent == out / "results" / f"{image['id']:06d}"
            assert sorted(p.name for p in written.parent.iterdir()) == sorted(p.name for p in expected_dir.iterdir())
            assert without(json.loads(written.read_text()), PER_RUN_RECORD) == \
                without(json.loads((expected_dir / written.name).read_text()), PER_RUN_RECORD)
        assert (out / "fields.csv").read_bytes() == store_csv(store).encode()
    finally:
        model.close()
        store.close()


def test_the_daemon_and_a_reanalysis_give_the_same_csv_rows(archive: Path, tmp_path: Path) -> None:
    watch = tmp_path / "watch"
    (watch / "specimen-1").mkdir(parents=True)
    for image in (archive / "specimen-1").iterdir():
        (watch / "specimen-1" / image.name).write_bytes(image.read_bytes())
    # a Z stack (ImageJ metadata): the daemon records it as one volume, and so must reanalyse
    field = tifffile.imread(next((archive / "specimen-1").iterdir()))
    slices = np.stack([field[y:y + 128, 64:192] for y in (0, 96, 192, 288, 384)])
    tifffile.imwrite(watch / "specimen-1" / "stack.tif", slices, imagej=True, metadata={"axes": "ZYXS"})
    config_file = tmp_path / "phasewatch.toml"
    # the test fields carry no pixel size: the daemon's [calibration] gives them one, and reanalyse --config
    config_file.write_text("[watch]\nsettle_s = 0.05\nrecursive = true\n[specimen]\nper_subfolder = true\n"
                           '[calibration.folders]\n"specimen-1" = 0.05\n')
    config = load_config(config_file, {"watch": watch, "data": tmp_path / "daemon"})
    store = Store(config.data.database)
    daemon = Daemon(config, store, lambda: open_model("superalloy", "cpu"))
    daemon.start()
    try:
        end = time.monotonic() + DEADLINE_S
        while store.counts_by_state()["done"] < 5 and time.monotonic() < end:
            time.sleep(0.05)
        served = csv_rows(store_csv(store))
    finally:
        daemon.stop()
        store.close()

    out = tmp_path / "out"
    assert main(["reanalyse", str(watch), "--model", "superalloy", "--out", str(out), "--workers", "1",
                 "--backend", "cpu", "--config", str(config_file)]) == 0
    reanalysed = csv_rows((out / "fields.csv").read_text())
    assert len(served) == 5 and served["stack.tif"]["state"] == "done"
    assert reanalysed == served

    # reanalyse-compare pairs them by content: the same model, so no difference at all
    old, new = Store(config.data.database), Store(out / "phasewatch.sqlite3")
    try:
        report = compare(old, new, count_flagged=True)
        (stack,) = [i for i in new.list_images(100) if i["path"].endswith("stack.tif")]
        fields = [i for i in new.list_images(100) if not i["path"].endswith("stack.tif")]
    finally:
        old.close()
        new.close()
    (specimen,) = report["specimens"]
    assert (specimen["name"], specimen["fields"], specimen["new_only"], report["old_only"]) == ("specimen-1", 5, 0, 0)
    assert {c["difference"]["mean"] for c in specimen["classes"].values()} == {0.0}
    assert stack["measurement"]["volume"]["shape"] == [5, 128, 128]  # one volume, not five fields
    calibrated = {(i["measurement"]["pixel_size_um"], i["measurement"]["pixel_size_source"]) for i in fields}
    assert calibrated == {(0.05, "config")}


def test_a_bad_file_fails_with_its_reason_a_sigterm_stops_cleanly_and_a_rerun_retries(
        archive: Path, tmp_path: Path) -> None:
    tree = tmp_path / "archive"
    for folder in ("specimen-1", "specimen-2"):
        (tree / folder).mkdir(parents=True)
        for image in (archive / folder).iterdir():
            (tree / folder / image.name).write_bytes(image.read_bytes())
    (tree / "specimen-2" / "truncated.tif").write_bytes(b"II*\x00\x08\x00\x00\x00")
    out = tmp_path / "out"
    args = (str(tree), "--model", "superalloy", "--out", str(out), "--workers", "2")

    run = reanalyse(*args)
    stderr = stop_after(run, out, 1, signal.SIGTERM)
    assert run.returncode == 130, stderr
    assert "interrupted" in stderr
    stopped = states(out)
    assert not any(s == "processing" for s, _ in stopped.values())  # finished or put back
    assert 1 <= sum(s == "done" for s, _ in stopped.values()) < 8

    def rerun() -> tuple[int, str, list[str]]:
        run = reanalyse(*args)
        _, stderr = run.communicate(timeout=DEADLINE_S)
        return run.returncode, stderr, [line for line in stderr.splitlines() if line.startswith("error:")]

    returncode, stderr, errors = rerun()
    assert returncode == 1, stderr
    assert len(errors) == 1 and "truncated.tif" in errors[0]
    assert sum(s == "done" for s, _ in states(out).values()) == 8
    returncode, stderr, errors = rerun()  # only the failure is retried
    assert returncode == 1, stderr
    assert "1 earlier failure(s) retried" in stderr and "0 of 1 file(s) analysed (1 failed)" in stderr
    store = Store(out / "phasewatch.sqlite3")
    try:
        (failed,) = [i for i in store.list_images(100) if i["state"] == "failed"]
        assert failed["path"].endswith("truncated.tif") and "\n" not in failed["error"]
        assert errors == [f"error: {failed['error']}"]
    finally:
        store.close()
