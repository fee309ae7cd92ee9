"""What the decoders say while they read a file, charged to that file.

tifffile logs through :mod:`logging` (``ERROR tifffile: <TiffTag 270 @70> invalid value
offset ...``), libraries warn through :mod:`warnings`, and C libraries (libpng inside
OpenCV, libtiff) write to file descriptor 2 themselves. None of them names the file, and a
damaged file may repeat the same complaint for every page. So:

* :func:`attributed` wraps the reading of one file's pages: while its decoder runs (and
  only then: never across a ``yield``, so a caller's own lines are never taken for the
  file's) :func:`current` is that file's :class:`FileMessages`. The service's log handler
  (``service/logs.py``) prefixes every line of a library said in that time with the file's
  name and drops a line the file has already said: once per file, at most
  :data:`MAX_DISTINCT` different ones, then one line saying how many more were dropped.
* In the decoder child (``imageio/isolated.py``) descriptor 2 itself is caught around each
  file with :func:`caught_stderr`, as the child reads one file at a time; the lines go back
  to the service with the file's pages and are logged there, once each, with its name. In
  the service's own process descriptor 2 is left alone: it is shared by every thread.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TypeVar

MAX_DISTINCT = 20  # different lines one file may put in the log
MAX_COUNTED = 10_000  # different lines beyond those that are counted (the count's memory)
MAX_LINE = 300  # characters of one line a library said
MAX_CAUGHT_BYTES = 64 << 10  # of what the child's decoders write to descriptor 2 for one file

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class FileMessages:
    """The lines said about one file so far: each is admitted once, up to :data:`MAX_DISTINCT`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.name = Path(self.path).name
        self._seen: set[str] = set()
        self._dropped: set[int] = set()  # hashes of the different lines beyond MAX_DISTINCT

    def admit(self, line: str) -> bool:
        """Whether ``line`` goes into the log: not said before about this file, and room left."""
        if line in self._seen:
            return False
        if len(self._seen) >= MAX_DISTINCT:
            if len(self._dropped) < MAX_COUNTED:
                self._dropped.add(hash(line))
            return False
        self._seen.add(line)
        return True

    def said(self, line: str) -> str | None:
        """``line`` as the log shows it (``NAME: line``, one line, capped), or None if not admitted."""
        line = " ".join(line.split())[:MAX_LINE]
        if not line or not self.admit(line):
            return None
        return f"{self.name}: {line}"

    def close(self) -> None:
        if self._dropped:
            more = f"{len(self._dropped)}" if len(self._dropped) < MAX_COUNTED else f"at least {MAX_COUNTED}"
            log.warning("%s: %s more different decoder messages not logged", self.name, more)


_current: ContextVar[FileMessages | None] = ContextVar("phasewatch_decoding", default=None)


def current() -> FileMessages | None:
    """The file whose decoder is running in this thread, if any."""
    return _current.get()


def attributed(path: str | os.PathLike[str], pages: Iterator[_T]) -> Iterator[_T]:
    """``pages``, with :func:`current` naming ``path`` while each is decoded."""
    messages = FileMessages(path)
    try:
        while True:
            token = _current.set(messages)
            try:
                page = next(pages)
            except StopIteration:
                return
            finally:
                _current.reset(token)
            yield page
    finally:
        close = getattr(pages, "close", None)  # a generator left early: its files closed now
        if close is not None:
            close()
        messages.close()


def log_said(path: str | os.PathLike[str], lines: list[str]) -> None:
    """Log what a decoder wrote about ``path`` elsewhere (the child's descriptor 2): each
    different line once, with the file's name."""
    messages = FileMessages(path)
    for line in lines:
        shown = messages.said(line)
        if shown is not None:
            log.warning("%s", shown)
    messages.close()


def setup_child_logging() -> None:
    """The decoder child's logging: a library's record as one line on descriptor 2, with
    its level and logger (``ERROR tifffile: ...``), warnings included; :func:`caught_stderr`
    takes them from there with the C libraries' lines."""
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.captureWarnings(True)


@contextmanager
def caught_stderr() -> Iterator[list[str]]:
    """Descriptor 2 goes to a temporary file for the block; the list gets its lines after
    (at most :data:`MAX_CAUGHT_BYTES` of them). Only for a process that reads one file at
    a time (the decoder child): the descriptor is the whole process's."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read(MAX_CAUGHT_BYTES).decode("utf-8", "replace")
            lines += [line for line in text.splitlines() if line.strip()]
