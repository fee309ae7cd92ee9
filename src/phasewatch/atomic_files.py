"""Files written atomically: a reader, the web page or a crash never sees half a file.

Every file is written to a temporary name in its destination folder, flushed to disk
(fsync) and renamed over the final name (``os.replace``), so that a name either holds the
previous complete file or the new one. Files get the mode the process umask gives (0644
under the usual 022), as any other file the service writes, so that whoever shares the
results folder (a backup, a web server, the lab's file share) can read them.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

import numpy as np

from phasewatch.errors import PhasewatchError


class OutputError(PhasewatchError, OSError):
    """An output file that could not be written; the message is one line naming it.

    Built as ``OutputError(errno, message)`` where the cause has an errno, so that the
    daemon can tell a full or read-only disk (retried) from a bad output (failed).
    """

    def __str__(self) -> str:
        # OSError would print "[Errno 28] ..."; the user reads the message alone.
        return self.strerror if self.errno is not None and self.strerror else super().__str__()


def _create_temporary(path: Path) -> tuple[int, str]:
    """A new file beside ``path`` to write it under, created with the umask's mode
    (``tempfile.mkstemp`` would make it 0600 whatever the umask)."""
    while True:
        name = str(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), name
        except FileExistsError:  # a left-over of a crash took the name; draw another
            continue


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp_name = None
    try:
        fd, tmp_name = _create_temporary(path)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
        tmp_name = None
        # Make the rename itself durable, not only the data.
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise OutputError(exc.errno, f"{path}: cannot write: {exc.strerror or exc}") from exc
    finally:
        if tmp_name is not None and os.path.exists(tmp_name):
            os.unlink(tmp_name)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_json_atomic(path: Path, obj: Any) -> None:
    """JSON (indented, NaN refused so that every reader can parse it); numpy values allowed."""
    try:
        text = json.dumps(obj, indent=2, allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: record is not valid JSON: {exc}") from exc
    write_bytes_atomic(path, (text + "\n").encode("utf-8"))
