"""The folder watcher with real watchdog observers on tmp_path (no durations asserted)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from phasewatch.service.config import WatchConfig
from phasewatch.service.watcher import (
    FolderWatcher,
    choose_observer,
    filesystem_type,
    is_candidate,
)

SETTLE_S = 0.2
TIMEOUT_S = 10.0


def wait_for(condition: Callable[[], bool], timeout: float = TIMEOUT_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


class Collector:
    def __init__(self) -> None:
        self.reports: list[tuple[Path, int]] = []
        self._lock = threading.Lock()

    def __call__(self, path: Path, st: os.stat_result) -> None:
        with self._lock:
            self.reports.append((path, st.st_size))

    def names(self) -> list[str]:
        with self._lock:
            return [p.name for p, _ in self.reports]

    def wait_for_name(self, name: str) -> None:
        assert wait_for(lambda: name in self.names()), f"{name} never reported: {self.names()}"


@pytest.fixture
def watch(tmp_path) -> Iterator[Callable[..., tuple[FolderWatcher, Collector, Path]]]:
    started: list[FolderWatcher] = []

    def start(**settings) -> tuple[FolderWatcher, Collector, Path]:
        root = tmp_path / "incoming"
        root.mkdir(exist_ok=True)
        settings.setdefault("settle_s", SETTLE_S)
        settings.setdefault("poll_interval_s", 0.1)
        collector = Collector()
        watcher = FolderWatcher(root, WatchConfig(dir=root, **settings), collector,
                                retry_initial_s=0.1)
        watcher.start()
        started.append(watcher)
        return watcher, collector, root

    yield start
    for watcher in started:
        watcher.stop()


def settle_longer() -> None:
    """Time for anything wrongly reported to show up: several settle periods."""
    time.sleep(SETTLE_S * 4)


@pytest.mark.parametrize("observer", ["native", "polling"])
def test_a_new_file_is_reported_once(watch, observer):
    watcher, collector, root = watch(observer=observer)
    assert watcher.healthy and watcher.observer_kind == observer
    (root / "a.tif").write_bytes(b"x" * 1000)
    collector.wait_for_name("a.tif")
    settle_longer()
    assert collector.reports == [(root / "a.tif", 1000)]


@pytest.mark.parametrize("observer", ["native", "polling"])
def test_slow_write_is_reported_once_after_the_last_chunk(watch, observer):
    _, collector, root = watch(observer=observer)
    with open(root / "slow.tif", "wb") as fh:
        for _ in range(6):
            fh.write(b"y" * 4096)
            fh.flush()
            time.sleep(SETTLE_S / 4)  # well under the settle time
    collector.wait_for_name("slow.tif")
    settle_longer()
    assert collector.reports == [(root / "slow.tif", 6 * 4096)]


def test_temporary_dot_and_excluded_names_are_ignored(watch):
    _, collector, root = watch(exclude=("*_overview.tif",))
    for name in ("~$a.tif", "b.tmp", "c.part", "d.crdownload", ".e.tif", "f_overview.tif",
                 "notes.txt"):
        (root / name).write_bytes(b"z")
    (root / "sentinel.TIF").write_bytes(b"s")  # include patterns ignore case
    collector.wait_for_name("sentinel.TIF")
    settle_longer()
    assert collector.names() == ["sentinel.TIF"]


@pytest.mark.parametrize("observer", ["native", "polling"])
def test_rename_from_partial_name_is_reported(watch, observer):
    _, collector, root = watch(observer=observer)
    (root / "x.part").write_bytes(b"p" * 10)
    settle_longer()
    assert collector.reports == []
    os.rename(root / "x.part", root / "x.tif")
    collector.wait_for_name("x.tif")
    settle_longer()
    assert collector.reports == [(root / "x.tif", 10)]


def test_rewrite_with_new_content_is_reported_again(watch):
    _, collector, root = watch()
    (root / "a.png").write_bytes(b"1")
    collector.wait_for_name("a.png")
    (root / "a.png").write_bytes(b"22")
    assert wait_for(lambda: len(collector.reports) == 2)
    assert collector.reports[1] == (root / "a.png", 2)


# watchdog warns when it adds a watch for a folder that its scan of a new parent already
# added (mkdir -p races its inotify setup); the watch is simply replaced.
@pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning")
@pytest.mark.parametrize("observer", ["native", "polling"])
def test_recursive_reports_files_in_sub_folders(watch, observer):
    _, collector, root = watch(recursive=True, observer=observer)
    (root / "lot-1" / "day2").mkdir(parents=True)
    (root / "lot-1" / "day2" / "f.tif").write_bytes(b"f")
    collector.wait_for_name("f.tif")
    assert collector.reports[0][0] == root / "lot-1" / "day2" / "f.tif"


def test_folder_moved_in_with_files_is_scanned(watch, tmp_path):
    _, collector, root = watch(recursive=True)
    outside = tmp_path / "staging"
    outside.mkdir()
    (outside / "m.tif").write_bytes(b"m")
    os.rename(outside, root / "staging")
    collector.wait_for_name("m.tif")


def test_not_recursive_ignores_sub_folders(watch):
    _, collector, root = watch(recursive=False)
    (root / "sub").mkdir()
    (root / "sub" / "deep.tif").write_bytes(b"d")
    (root / "top.tif").write_bytes(b"t")
    collector.wait_for_name("top.tif")
    settle_longer()
    assert collector.names() == ["top.tif"]


def test_startup_scan_finds_files_already_there(tmp_path, watch):
    root = tmp_path / "incoming"
    (root / "sub").mkdir(parents=True)
    (root / "old.tif").write_bytes(b"o")
    (root / "sub" / "older.tif").write_bytes(b"o")
    _, collector, _ = watch(recursive=True)
    collector.wait_for_name("old.tif")
    collector.wait_for_name("older.tif")


def test_vanished_folder_is_reported_unhealthy_and_recovered(watch):
    watcher, collector, root = watch()
    root.rmdir()
    assert wait_for(lambda: not watcher.healthy)
    assert str(root) in watcher.last_error
    root.mkdir()
    assert wait_for(lambda: watcher.healthy)
    assert watcher.last_error is None
    (root / "after.tif").write_bytes(b"a")
    collector.wait_for_name("after.tif")


def test_missing_folder_at_start_is_unhealthy_not_a_crash(tmp_path):
    root = tmp_path / "absent"
    collector = Collector()
    watcher = FolderWatcher(root, WatchConfig(dir=root, settle_s=SETTLE_S), collector,
                            retry_initial_s=0.1)
    watcher.start()
    try:
        assert not watcher.healthy
        assert watcher.last_error.startswith(f"{root}: cannot watch the folder")
        root.mkdir()
        (root / "late.tif").write_bytes(b"l")
        collector.wait_for_name("late.tif")
        assert watcher.healthy
    finally:
        watcher.stop()


def test_failing_consumer_does_not_stop_the_watcher(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    seen: list[str] = []

    def on_ready(path: Path, st: os.stat_result) -> None:
        seen.append(path.name)
        if path.name == "bad.tif":
            raise RuntimeError("consumer bug")

    watcher = FolderWatcher(root, WatchConfig(dir=root, settle_s=SETTLE_S), on_ready)
    watcher.start()
    try:
        (root / "bad.tif").write_bytes(b"b")
        assert wait_for(lambda: "bad.tif" in seen)
        (root / "good.tif").write_bytes(b"g")
        assert wait_for(lambda: "good.tif" in seen)
    finally:
        watcher.stop()


def test_is_candidate_rules(tmp_path):
    root = tmp_path
    flat = WatchConfig(dir=root, exclude=("calibration/*",))
    deep = WatchConfig(dir=root, recursive=True, exclude=("calibration/*",))
    assert is_candidate(root / "a.tiff", root, flat)
    assert is_candidate(root / "A.JPG", root, flat)
    assert not is_candidate(root / "a.txt", root, flat)
    assert not is_candidate(root / "s" / "a.tif", root, flat)
    assert is_candidate(root / "s" / "a.tif", root, deep)
    assert not is_candidate(root / ".cache" / "a.tif", root, deep)
    assert not is_candidate(root / "calibration" / "a.tif", root, deep)
    assert not is_candidate(tmp_path.parent / "a.tif", root, flat)


MOUNTS = """\
/dev/sda1 / ext4 rw,relatime 0 0
server:/export /mnt/nfs nfs4 rw 0 0
//scope-pc/Images /mnt/micro\\040scope cifs rw 0 0
/dev/sdb1 /mnt/nfs/local ext4 rw 0 0
"""


def test_filesystem_type_and_auto_observer(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text(MOUNTS)
    assert filesystem_type("/mnt/nfs/run1", mounts) == "nfs4"
    assert filesystem_type("/mnt/nfs/local/x", mounts) == "ext4"  # longest prefix wins
    assert filesystem_type("/mnt/micro scope/day1", mounts) == "cifs"
    assert filesystem_type("/mnt/nfsother", mounts) == "ext4"  # not under /mnt/nfs
    assert choose_observer("/mnt/micro scope", "auto", mounts) == "polling"
    assert choose_observer("/mnt/nfs/local", "auto", mounts) == "native"
    assert choose_observer("/mnt/nfs", "native", mounts) == "native"
    assert filesystem_type("/x", tmp_path / "no-mounts") is None


def ignored_links(caplog: pytest.LogCaptureFixture) -> dict[str, str]:
    """The watcher's log lines about links it did not follow, by the name they name."""
    return {Path(r.getMessage().split(": ", 1)[0]).name: r.getMessage() for r in list(caplog.records)
            if r.name == "phasewatch.service.watcher" and "symbolic link" in r.getMessage()}


@pytest.mark.parametrize("observer", ["native", "polling"])
def test_symbolic_links_are_not_followed_and_say_so(watch, tmp_path, caplog, observer):
    caplog.set_level(logging.INFO, logger="phasewatch.service.watcher")
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    _, collector, root = watch(observer=observer)
    (root / "real.tif").write_bytes(b"r")
    (root / "out.tif").symlink_to(secret)  # what the issue saw: another file's bytes served
    (root / "in.tif").symlink_to(root / "real.tif")  # reported as itself, as real.tif
    assert wait_for(lambda: ignored_links(caplog).keys() == {"out.tif", "in.tif"}), ignored_links(caplog)
    collector.wait_for_name("real.tif")
    settle_longer()
    assert collector.names() == ["real.tif"]
    lines = ignored_links(caplog)
    assert str(secret) in lines["out.tif"] and str(root / "real.tif") in lines["in.tif"]
    assert all(r.levelno == logging.WARNING for r in caplog.records if "symbolic link" in r.getMessage())


def test_a_link_already_there_at_start_is_ignored(tmp_path, watch, caplog):
    caplog.set_level(logging.INFO, logger="phasewatch.service.watcher")
    root = tmp_path / "incoming"
    root.mkdir()
    (root / "old.tif").write_bytes(b"o")
    (root / "link.tif").symlink_to("/etc/passwd")
    _, collector, _ = watch()
    collector.wait_for_name("old.tif")
    assert wait_for(lambda: "link.tif" in ignored_links(caplog))
    settle_longer()
    assert collector.names() == ["old.tif"]


@pytest.mark.parametrize("observer", ["native", "polling"])
def test_files_in_a_linked_folder_are_not_followed(watch, tmp_path, caplog, observer):
    caplog.set_level(logging.INFO, logger="phasewatch.service.watcher")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "secret.tif").write_bytes(b"s")
    _, collector, root = watch(recursive=True, observer=observer)
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)
    (root / "plain.tif").write_bytes(b"p")
    collector.wait_for_name("plain.tif")
    settle_longer()
    assert collector.names() == ["plain.tif"]


# A settle time no test waits for: a report before it can only come from close-write or a rename.
LONG_SETTLE_S = 600.0


def test_a_file_closed_after_writing_is_reported_without_the_settle_wait(watch):
    watcher, got, root = watch(observer="native", settle_s=LONG_SETTLE_S)
    assert wait_for(lambda: watcher.observer_kind == "native")
    with open(root / "field.tif", "wb") as fh:
        fh.write(b"II*\0" + bytes(1000))
        fh.flush()
        time.sleep(0.5)
        assert got.names() == []  # open for writing: not complete yet
    got.wait_for_name("field.tif")
    assert got.reports == [(root / "field.tif", 1004)]


def test_a_file_renamed_into_the_folder_is_reported_without_the_settle_wait(watch, tmp_path):
    watcher, got, root = watch(observer="native", settle_s=LONG_SETTLE_S)
    assert wait_for(lambda: watcher.observer_kind == "native")
    (root / ".field.tif.part").write_bytes(b"II*\0" + bytes(10))
    os.rename(root / ".field.tif.part", root / "field.tif")
    got.wait_for_name("field.tif")


def test_without_close_write_every_file_waits_its_settle_time(watch):
    watcher, got, root = watch(observer="native", settle_s=LONG_SETTLE_S, close_write=False)
    assert wait_for(lambda: watcher.observer_kind == "native")
    (root / "field.tif").write_bytes(b"II*\0" + bytes(10))
    assert not wait_for(lambda: got.names() != [], timeout=1.5)


def test_polling_never_takes_a_close_for_completion(watch):
    watcher, got, root = watch(observer="polling", settle_s=LONG_SETTLE_S)
    (root / ".field.tif.part").write_bytes(b"II*\0" + bytes(10))
    os.rename(root / ".field.tif.part", root / "field.tif")
    assert not wait_for(lambda: got.names() != [], timeout=1.5)
