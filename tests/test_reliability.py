"""Issue 9, unattended for months: faults outside a file are retried, never charged to it.

The daemon runs in process on a real store, watch folder and results folder with the fake
threshold backend of ``test_daemon``; faults are real where the machine allows it (another
SQLite connection holding the lock, a FIFO, a dangling link, a folder without write
permission when not root) and injected at the boundary otherwise (the errno of a read-only
file system, SQLite's "database or disk is full"), always below the code under test.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import stat
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from onnx_graphs import make_bundle
from test_daemon import ThresholdBackend, drop, finished, half_bright, wait_for, web_app

from phasewatch.atomic_files import write_bytes_atomic
from phasewatch.bundle import load_bundle
from phasewatch.core.pipeline import Model
from phasewatch.service.config import WatchConfig, load_config
from phasewatch.service.daemon import Daemon
from phasewatch.service.watcher import FolderWatcher
from phasewatch.store import Store

BUSY_TIMEOUT_S = 0.3
FAULT_S = 2.5  # how long a fault lasts: longer than the busy timeout and the first backoffs


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """``start(config_text)``: a daemon on ``tmp_path``'s folders whose store gives up on a
    lock after BUSY_TIMEOUT_S; each call starts a new one on the same folders."""
    bundle = load_bundle(make_bundle(tmp_path / "bundle"))
    (tmp_path / "watch").mkdir()
    running: list[Daemon] = []

    def start(config_text: str = "") -> Daemon:
        config_file = tmp_path / "phasewatch.toml"
        config_file.write_text("[watch]\nsettle_s = 0.05\n" + config_text)
        config = load_config(config_file, {"watch": tmp_path / "watch", "data": tmp_path / "data"})
        store = Store(config.data.database, max_attempts=config.queue.max_attempts, busy_timeout_s=BUSY_TIMEOUT_S)
        daemon = Daemon(config, store, lambda: Model(bundle, ThresholdBackend()))
        daemon.start()
        running.append(daemon)
        return daemon

    yield start
    for daemon in running:
        if daemon.write._thread.is_alive():
            daemon.stop()
        daemon.store.close()


def good_tiff(path: Path) -> None:
    tifffile.imwrite(path, half_bright(16, 16) // 2 + zlib.crc32(path.name.encode()) % 64)  # content per name


def states(daemon: Daemon) -> dict[str, str]:
    return {Path(i["path"]).name: i["state"] for i in daemon.store.list_images(100)}


def assert_working_despite(daemon: Daemon, component: str) -> str:
    """The fault shows as ``component``'s problem (and on /healthz), every stage lives on and
    the watchdog keeps pinging; returns the problem."""
    problem = wait_for(lambda: daemon.health()[1].get(component), f"the {component} problem to show")
    response = web_app(daemon).test_client().get("/healthz")
    assert response.status_code == 503 and response.get_json()["problems"][component] == problem
    assert daemon.alive()
    assert all(stage._thread.is_alive() for stage in daemon.stages)
    return problem


def assert_all_done(daemon: Daemon, names: list[str]) -> None:
    wait_for(lambda: all(states(daemon).get(n) == "done" for n in names), f"{names} to be done")
    assert daemon.store.counts_by_state()["failed"] == 0
    wait_for(lambda: daemon.health() == (True, {}), "the problem to clear")


# --- the results folder -------------------------------------------------------------------


@pytest.mark.parametrize(("code", "words"), [(errno.EROFS, "Read-only file system"),
                                             (errno.EACCES, "Permission denied"),
                                             (errno.ENOSPC, "No space left on device")])
def test_an_unwritable_results_folder_holds_files_until_it_is_writable(
        start_daemon, monkeypatch: pytest.MonkeyPatch, code: int, words: str) -> None:
    daemon = start_daemon()
    results = daemon.config.data.results_dir
    blocked = threading.Event()
    blocked.set()
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *args: Any, **kwargs: Any) -> None:
        if blocked.is_set() and self.parent == results:  # remounted read-only, or the like
            raise OSError(code, os.strerror(code), str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    names = ["a.tif", "b.tif"]
    for name in names:
        drop(daemon, name, good_tiff)
    problem = assert_working_despite(daemon, "disk")
    assert problem.startswith(f"{results}/") and problem.endswith(words)
    time.sleep(FAULT_S)
    assert "failed" not in states(daemon).values() and "done" not in states(daemon).values()
    blocked.clear()
    assert_all_done(daemon, names)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a folder without write permission")
def test_a_results_folder_without_write_permission_holds_files_until_it_has_it(start_daemon) -> None:
    daemon = start_daemon()
    results = daemon.config.data.results_dir
    results.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        drop(daemon, "a.tif", good_tiff)
        assert assert_working_despite(daemon, "disk").endswith("Permission denied")
        time.sleep(FAULT_S)
        assert states(daemon) == {"a.tif": "processing"}
    finally:
        results.chmod(stat.S_IRWXU)
    assert_all_done(daemon, ["a.tif"])


# --- the database -------------------------------------------------------------------------


def hold_lock(database: Path) -> sqlite3.Connection:
    """Another process's connection that holds the write lock until it rolls back."""
    other = sqlite3.connect(database, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    return other


def test_a_database_locked_past_the_busy_timeout_holds_files_until_it_is_free(start_daemon) -> None:
    daemon = start_daemon()
    drop(daemon, "before.tif", good_tiff)
    wait_for(lambda: states(daemon).get("before.tif") == "done", "the first file")
    other = hold_lock(daemon.config.data.database)
    try:
        drop(daemon, "during.tif", good_tiff)
        assert assert_working_despite(daemon, "database").endswith("database is locked")
        time.sleep(FAULT_S)
        assert_working_despite(daemon, "database")
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert_all_done(daemon, ["before.tif", "during.tif"])


def test_a_stop_while_the_database_is_locked_is_prompt_and_loses_nothing(start_daemon) -> None:
    daemon = start_daemon()
    other = hold_lock(daemon.config.data.database)
    try:
        drop(daemon, "during.tif", good_tiff)
        assert_working_despite(daemon, "database")
        started = time.monotonic()
        daemon.stop()
        assert time.monotonic() - started < BUSY_TIMEOUT_S + 5.0
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert_all_done(start_daemon(), ["during.tif"])  # the next start's scan finds it


class FullDisk:
    """Store connections whose writes fail as SQLite's do when the disk is full, while set."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full = threading.Event()
        real_conn = Store._conn
        monkeypatch.setattr(Store, "_conn", lambda store: _FullableConnection(real_conn(store), self.full))


class _FullableConnection:
    def __init__(self, conn: sqlite3.Connection, full: threading.Event) -> None:
        self._conn, self._full = conn, full

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if self._full.is_set() and sql.lstrip().upper().startswith(("INSERT", "UPDATE")):
            raise sqlite3.OperationalError("database or disk is full")
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def test_files_that_arrive_while_the_database_disk_is_full_are_processed_when_space_returns(
        start_daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = FullDisk(monkeypatch)
    daemon = start_daemon()
    disk.full.set()
    names = ["a.tif", "b.tif", "c.tif"]
    for name in names:
        drop(daemon, name, good_tiff)
    assert assert_working_despite(daemon, "database").endswith("database or disk is full")
    time.sleep(FAULT_S)
    assert states(daemon) == {}  # nothing could be written, and nothing was dropped ...
    disk.full.clear()
    assert_all_done(daemon, names)  # ... so all of them are done once space returns


def test_a_full_database_while_files_are_in_work_fails_none_of_them(
        start_daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = FullDisk(monkeypatch)
    daemon = start_daemon()
    real_set_stage = daemon.store.set_stage

    def set_stage_then_fill(ids: Any, stage: str | None) -> None:
        real_set_stage(ids, stage)
        if stage is not None:
            disk.full.set()  # the disk fills while the file is inside inference

    daemon.store.set_stage = set_stage_then_fill  # type: ignore[method-assign]
    drop(daemon, "a.tif", good_tiff)
    assert_working_despite(daemon, "database")
    time.sleep(FAULT_S)
    assert states(daemon) == {"a.tif": "processing"}
    daemon.store.set_stage = real_set_stage  # type: ignore[method-assign]
    disk.full.clear()
    assert_all_done(daemon, ["a.tif"])
    assert daemon.store.get_image(1)["stage"] is None


# --- decoding under limits ---------------------------------------------------------------


def zlib_bomb(path: Path, shape: tuple[int, ...]) -> None:
    tifffile.imwrite(path, np.zeros(shape, np.uint16 if len(shape) == 3 else np.uint8), compression="zlib",
                     photometric="rgb" if len(shape) == 3 else "minisblack")


def test_an_8000_square_zlib_image_is_refused_by_the_pixel_limit_and_holds_nothing(start_daemon) -> None:
    daemon = start_daemon()  # the default [limits] max_megapixels
    path = drop(daemon, "big.tif", lambda p: zlib_bomb(p, (8000, 8000)))
    drop(daemon, "next.tif", good_tiff)
    wait_for(lambda: finished(daemon, 2), "both results")
    image = {Path(i["path"]).name: i for i in daemon.store.list_images()}
    assert image["big.tif"]["state"] == "failed"
    assert image["big.tif"]["error"] == (f"{path}: image is 8000 x 8000 = 64000000 pixels, more than the limit of "
                                         f"50000000 (max_pixels)")
    assert image["next.tif"]["state"] == "done"


def test_a_decode_over_the_memory_limit_fails_the_file_with_one_line(start_daemon) -> None:
    daemon = start_daemon("[limits]\nmax_megapixels = 100\ndecode_memory_mb = 256\n")
    path = drop(daemon, "bomb.tif", lambda p: zlib_bomb(p, (8000, 8000, 3)))
    drop(daemon, "next.tif", good_tiff)
    wait_for(lambda: finished(daemon, 2), "both results")
    image = {Path(i["path"]).name: i for i in daemon.store.list_images()}
    assert (image["bomb.tif"]["state"], image["bomb.tif"]["error"]) == (
        "failed", f"{path}: decoding needs more memory than the limit of 256 MiB")
    assert image["next.tif"]["state"] == "done"
    assert daemon.health() == (True, {})


# --- outputs and the watch folder ----------------------------------------------------------


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_outputs_are_written_with_the_process_umask(tmp_path: Path, umask: int, mode: int) -> None:
    before = os.umask(umask)
    try:
        write_bytes_atomic(tmp_path / "a.json", b"{}")
    finally:
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == mode
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary left


def test_the_daemons_outputs_are_readable_by_the_group_and_others_under_umask_022(start_daemon) -> None:
    before = os.umask(0o022)
    try:
        daemon = start_daemon()
        drop(daemon, "a.tif", good_tiff)
        (image,) = wait_for(lambda: finished(daemon, 1), "the result")
    finally:
        os.umask(before)
    assert image["state"] == "done"
    assert {stat.S_IMODE(Path(p).stat().st_mode) for p in image["outputs"].values()} == {0o644}


def test_each_ignored_file_is_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    watch = tmp_path / "watch"
    watch.mkdir()
    seen: list[Path] = []
    watcher = FolderWatcher(watch, WatchConfig(dir=watch, settle_s=0.05), lambda path, st: seen.append(path))
    caplog.set_level(logging.DEBUG, logger="phasewatch.service.watcher")
    watcher.start()
    try:
        os.mkfifo(watch / "pipe.tif")
        (watch / "gone.tif").symlink_to(watch / "deleted.tif")
        (watch / "notes.txt").write_text("lab note")
        partial = watch / "c.tif.part"
        for _ in range(3):  # a copy in progress: an event per chunk
            with open(partial, "ab") as fh:
                fh.write(b"x" * 100)
            time.sleep(0.1)
        drop_into = tmp_path / "good.tif"
        good_tiff(drop_into)
        drop_into.replace(watch / "good.tif")
        wait_for(lambda: seen, "the good file")
        time.sleep(0.5)  # several settle rounds more
    finally:
        watcher.stop()
    assert seen == [watch / "good.tif"]
    ignored = sorted((r.levelname, r.getMessage()) for r in caplog.records if ": ignored: " in r.getMessage())
    assert ignored == [
        ("DEBUG", f"{partial}: ignored: a temporary name (a file still being written)"),
        ("DEBUG", f"{watch / 'notes.txt'}: ignored: matches no [watch] include pattern"),
        ("INFO", f"{watch / 'pipe.tif'}: ignored: not a regular file (a FIFO)"),
        ("WARNING", f"{watch / 'gone.tif'}: ignored: a symbolic link leads to {watch / 'deleted.tif'}, "
                    "and links are not followed"),
    ]
