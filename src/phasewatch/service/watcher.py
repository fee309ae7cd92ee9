"""The folder watcher: reports each micrograph once the microscope has finished writing it.

Events come from watchdog: the native observer (inotify), or the polling observer
where inotify sees nothing, on network shares (SMB/CIFS, NFS, sshfs: another machine
writes there). ``observer = "auto"`` picks polling when the watch folder's file system
in ``/proc/mounts`` is a network one.

An event only makes a file a *candidate*. A settle thread re-stats candidates every
``settle_s / 4``; a file has *arrived* once its size and mtime have not changed for
``settle_s`` and it opens for reading. With ``close_write`` (default) a file that inotify
reports closed after writing, or that was renamed into the folder (the write-then-rename
of careful writers), has arrived as soon as it opens for reading with the size and mtime it
had then: the settle thread is woken at once, so a local file is picked up in milliseconds,
not after ``settle_s``. Polling observers (network shares) see no closes and always settle.
Then ``on_ready(path, stat)`` is called, from
the settle thread: it should only hand the file on (hashing and queueing belong to the
daemon). A file is reported again only if it changes after that (a rewrite).

At start every file already present is a candidate too (the daemon dedups against its
store), so files that arrived while the service was down are not missed.

Symbolic links are never followed: a file is reported only when neither it nor a folder
on its way below the watch folder is a link (the watch folder itself may be one). A link
out of the folder would let whoever writes there have the service read, and show in its
error messages, any file it can read (the first bytes of /etc/passwd); a link to a file
inside the folder adds nothing, as that file is reported itself. Each link ignored is
logged as a warning, naming where it leads.

Every other file that is not processed leaves one log line too, once (again only after
it was deleted or moved), so that an operator can tell "ignored" from "never seen":
at debug level for names (temporary, hidden, not included or excluded), which busy
writers produce all day, and at info level for what is not a regular file (a FIFO, a
socket, a device).

Health. The settle thread also checks the watch folder: if it vanishes, is replaced or
remounted (another device/inode), or the observer dies, the watcher says so in
``healthy`` / ``last_error``, logs it, and retries with exponential backoff; once the
folder is back it rescans it. The watch folder is only ever read.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from watchdog.events import (
    EVENT_TYPE_CLOSED,
    EVENT_TYPE_CREATED,
    EVENT_TYPE_DELETED,
    EVENT_TYPE_MOVED,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from phasewatch.service.config import WatchConfig

log = logging.getLogger(__name__)

PROC_MOUNTS = Path("/proc/mounts")
NETWORK_FILESYSTEMS = frozenset({
    "cifs", "smb3", "smbfs", "nfs", "nfs4", "fuse.sshfs", "sshfs", "9p", "afs", "ceph",
    "glusterfs", "fuse.glusterfs", "davfs", "fuse.davfs2", "fuse.rclone", "lustre", "beegfs",
})
# Names that writers use while a file is incomplete (Office lock files, browsers,
# rsync/curl partial downloads); dot files and dot folders are skipped as well.
TEMPORARY_NAMES = ("~$*", "*.tmp", "*.part", "*.partial", "*.crdownload", "*.download", "*~")
# Events that can mean "this file has new content"; opened/closed-without-write (our
# own read check among them) cannot.
_CONTENT_EVENTS = frozenset({EVENT_TYPE_CREATED, EVENT_TYPE_MOVED, "modified", "closed"})
RETRY_INITIAL_S = 1.0
RETRY_MAX_S = 60.0

OnReady = Callable[[Path, os.stat_result], None]


def _unescape_mount_field(field: str) -> str:
    # /proc/mounts writes space, tab, newline and backslash as octal escapes.
    for code in ("040", "011", "012", "134"):
        field = field.replace("\\" + code, chr(int(code, 8)))
    return field


def filesystem_type(path: Path | str, mounts: Path = PROC_MOUNTS) -> str | None:
    """The type of the file system ``path`` lies on (longest mount point prefix; the
    last mount on a mount point wins), or None when ``mounts`` cannot be read."""
    target = os.path.realpath(path)
    try:
        lines = mounts.read_text().splitlines()
    except OSError:
        return None
    best, best_len = None, -1
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = _unescape_mount_field(fields[1])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= best_len:
            best, best_len = fields[2], len(point)
    return best


def choose_observer(path: Path | str, setting: str, mounts: Path = PROC_MOUNTS) -> str:
    """``native`` or ``polling`` for the ``observer`` setting ``auto|native|polling``."""
    if setting != "auto":
        return setting
    return "polling" if filesystem_type(path, mounts) in NETWORK_FILESYSTEMS else "native"


def is_candidate(path: Path, root: Path, config: WatchConfig) -> bool:
    """Whether a file name is one to process: below ``root`` (directly unless recursive),
    not a temporary or dot name, matching ``include`` and no ``exclude`` pattern (on the
    name or the path relative to the root); case-insensitive."""
    return ignored_because(path, root, config) is None


def ignored_because(path: Path, root: Path, config: WatchConfig) -> str | None:
    """Why a file name is not one to process (:func:`is_candidate`), or None."""
    try:
        relative = path.relative_to(root)
    except ValueError:
        return "outside the watch folder"
    if not relative.parts:
        return "the watch folder itself"
    if len(relative.parts) > 1 and not config.recursive:
        return "in a sub-folder, and [watch] recursive is off"
    if any(part.startswith(".") for part in relative.parts):
        return "a hidden (dot) name"
    name, rel = relative.name.lower(), relative.as_posix().lower()
    if any(fnmatchcase(name, p) for p in TEMPORARY_NAMES):
        return "a temporary name (a file still being written)"
    if not any(fnmatchcase(name, p.lower()) for p in config.include):
        return "matches no [watch] include pattern"
    if any(fnmatchcase(name, p.lower()) or fnmatchcase(rel, p.lower()) for p in config.exclude):
        return "matches a [watch] exclude pattern"
    return None


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((kind for test, kind in kinds if test(mode)), "not a file")


def _readable(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError:
        return False
    return True


@dataclass
class _Candidate:
    signature: tuple[int, int] | None = None  # (size, mtime_ns) at the last stat
    since: float = 0.0  # monotonic time the signature was first seen
    complete: tuple[int, int] | None = None  # (size, mtime_ns) when closed after writing or moved in


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: FolderWatcher) -> None:
        self._watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._watcher._on_event(event)


class FolderWatcher:
    """Watches ``root`` (module doc); ``start()`` / ``stop()``; ``healthy`` and
    ``last_error`` report on the watch itself, ``observer_kind`` on how it watches."""

    def __init__(
        self,
        root: Path | str,
        config: WatchConfig,
        on_ready: OnReady,
        retry_initial_s: float = RETRY_INITIAL_S,
    ) -> None:
        self.root = Path(root)
        self.config = config
        self.on_ready = on_ready
        self.healthy = False
        self.last_error: str | None = None
        self.observer_kind: str | None = None
        self._retry_initial_s = retry_initial_s
        self._retry_delay = retry_initial_s
        self._next_retry = 0.0
        self._observer: BaseObserver | None = None
        self._root_id: tuple[int, int] | None = None
        self._candidates: dict[Path, _Candidate] = {}
        self._reported: dict[Path, tuple[int, int]] = {}
        self._ignored: set[Path] = set()  # logged as ignored; forgotten when deleted or moved
        self._lock = threading.Lock()
        self._wake = threading.Event()  # a file is complete: settle now
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- life cycle ----------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("FolderWatcher.start() called twice")
        self._watch()
        self._thread = threading.Thread(target=self._run, name="phasewatch-settle", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        self._stop_observer()

    def _run(self) -> None:
        interval = max(0.02, self.config.settle_s / 4)
        while not self._stopping.is_set():
            self._wake.wait(interval)
            self._wake.clear()
            if self._stopping.is_set():
                return
            self._supervise()
            self._settle()

    # -- watching and health ----------------------------------------------------

    def _watch(self) -> bool:
        """Start an observer on the root and rescan it; False (and unhealthy) if not."""
        try:
            st = os.stat(self.root)
            if not stat.S_ISDIR(st.st_mode):
                raise NotADirectoryError(20, "not a folder")
            kind = choose_observer(self.root, self.config.observer)
            self._observer = (
                PollingObserver(timeout=self.config.poll_interval_s)
                if kind == "polling"
                else Observer()
            )
            self._observer.schedule(_Handler(self), str(self.root), recursive=self.config.recursive)
            self._observer.start()
            self._scan(self.root)
        except OSError as exc:
            self._stop_observer()
            self._unhealthy(f"{self.root}: cannot watch the folder: {exc.strerror or exc}")
            return False
        self.observer_kind, self._root_id = kind, (st.st_dev, st.st_ino)
        if not self.healthy:
            log.info("watching %s (%s observer)", self.root, kind)
        self.healthy, self.last_error = True, None
        self._retry_delay = self._retry_initial_s
        return True

    def _unhealthy(self, reason: str) -> None:
        if reason != self.last_error:
            log.warning("%s; retrying in %.1f s", reason, self._retry_delay)
        self.healthy, self.last_error = False, reason
        self._next_retry = time.monotonic() + self._retry_delay
        self._retry_delay = min(self._retry_delay * 2, RETRY_MAX_S)

    def _stop_observer(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            if self._observer.ident is not None:  # joining a thread never started raises
                self._observer.join()
            self._observer = None

    def _supervise(self) -> None:
        if self._observer is None:
            if time.monotonic() >= self._next_retry:
                self._watch()
            return
        problem: str | None
        try:
            st = os.stat(self.root)
        except OSError as exc:
            problem = f"{self.root}: watch folder unavailable: {exc.strerror or exc}"
        else:
            problem = None
            if (st.st_dev, st.st_ino) != self._root_id:
                problem = f"{self.root}: watch folder was replaced or remounted"
            elif not self._observer.is_alive() or not all(
                e.is_alive() for e in self._observer.emitters
            ):
                problem = f"{self.root}: the file system observer stopped"
        if problem:
            self._stop_observer()
            self._retry_delay = self._retry_initial_s
            self._unhealthy(problem)

    # -- candidates ----------------------------------------------------------------

    def _scan(self, folder: Path) -> None:
        """Every acceptable file below ``folder`` becomes a candidate."""
        walk: Iterable[tuple[str | Path, list[str], list[str]]] = (
            os.walk(folder) if self.config.recursive else [(folder, [], os.listdir(folder))])
        for dirpath, dirnames, filenames in walk:
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                self._touch(Path(dirpath) / name)

    def _touch(self, path: Path, complete: bool = False) -> None:
        reason = ignored_because(path, self.root, self.config)
        if reason is not None:
            self._ignore(path, logging.DEBUG, reason)
            return
        # A fresh candidate: the file must settle again from this event on, unless the event
        # says its writer is done with it.
        candidate = _Candidate(complete=_signature(path) if complete else None)
        with self._lock:
            self._candidates[path] = candidate
        if candidate.complete is not None:
            self._wake.set()

    def _ignore(self, path: Path, level: int, reason: str) -> None:
        """Log once why ``path`` is not processed (module doc)."""
        with self._lock:
            if path in self._ignored:
                return
            self._ignored.add(path)
        log.log(level, "%s: ignored: %s", path, reason)

    def _forget(self, path: Path) -> None:
        with self._lock:
            self._candidates.pop(path, None)
            self._reported.pop(path, None)
            self._ignored.discard(path)

    def _on_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in _CONTENT_EVENTS and event.event_type != EVENT_TYPE_DELETED:
            return
        source = Path(os.fsdecode(event.src_path))
        target = source
        if event.event_type in (EVENT_TYPE_DELETED, EVENT_TYPE_MOVED):
            self._forget(source)
            if event.event_type == EVENT_TYPE_DELETED:
                return
            target = Path(os.fsdecode(event.dest_path))
        if not event.is_directory:
            # Through polling (a network share) a rename may show before the other machine's
            # writes do: only the local, native observer's word is taken.
            done = (self.config.close_write and self.observer_kind == "native"
                    and event.event_type in (EVENT_TYPE_CLOSED, EVENT_TYPE_MOVED))
            self._touch(target, complete=done)
        elif self.config.recursive and event.event_type in (EVENT_TYPE_CREATED, EVENT_TYPE_MOVED):
            # Files inside a folder that is moved in (or filled before its watch was
            # added) produce no events of their own.
            try:
                self._scan(target)
            except OSError as exc:
                log.warning("%s: cannot scan new folder: %s", target, exc.strerror or exc)

    def _settle(self) -> None:
        now = time.monotonic()
        with self._lock:
            pending = list(self._candidates.items())
        for path, candidate in pending:
            try:
                st = os.lstat(path)
            except OSError:
                st = None
            if st is not None and (target := self._link_target(path)) is not None:
                if self._drop(path, candidate):
                    self._ignore(path, logging.WARNING,
                                 f"a symbolic link leads to {target}, and links are not followed")
                continue
            if st is None or not stat.S_ISREG(st.st_mode):
                if self._drop(path, candidate) and st is not None:
                    self._ignore(path, logging.INFO, f"not a regular file ({_file_kind(st.st_mode)})")
                continue
            signature = (st.st_size, st.st_mtime_ns)
            complete = candidate.complete == signature
            if signature != candidate.signature and not complete:
                candidate.signature, candidate.since = signature, now
                continue
            if now - candidate.since < self.config.settle_s and not complete:
                continue
            if self._reported.get(path) == signature:
                self._drop(path, candidate)  # an event without a change, e.g. a touch of atime
                continue
            if not _readable(path):
                candidate.since = now  # still locked by its writer; wait another settle time
                continue
            if self._drop(path, candidate):
                with self._lock:
                    self._reported[path] = signature
                self._report(path, st)

    def _link_target(self, path: Path) -> str | None:
        """Where ``path`` really is when a symbolic link below the watch folder (the file
        itself or a folder on its way) leads there; None for a file of the folder itself."""
        real = os.path.realpath(path)
        plain = os.path.join(os.path.realpath(self.root), os.path.relpath(path, self.root))
        return None if real == plain else real

    def _drop(self, path: Path, candidate: _Candidate) -> bool:
        """Remove ``candidate`` unless a newer event has replaced it meanwhile."""
        with self._lock:
            if self._candidates.get(path) is not candidate:
                return False
            del self._candidates[path]
            return True

    def _report(self, path: Path, st: os.stat_result) -> None:
        try:
            self.on_ready(path, st)
        except Exception:
            # The watcher must outlive a failing consumer; the daemon's rescan at the next
            # start catches what was lost here.
            log.exception("%s: on_ready failed", path)
