"""Untrusted files are read under limits by :class:`IsolatedReader` (the daemon does): in a
child process with a bounded address space and a time limit, so that a decoder bug, a
decompression bomb or a hostile file costs the child its life and the file one line,
never the service its memory, its time or its process. Every byte of a file is decoded
there: the pages of a field, and a volume's metadata and slices, streamed one at a time.

The pixels come back raw after a message that gives their shape and type, read straight into
the array: ``Connection.recv_bytes_into`` reads a message into a BytesIO chunk by chunk and
copies it out again, 3.5 ms of the service's CPU for a 1024 x 1024 RGB field against 1 ms
(issue 25: the service's CPU outside the network is taken from the network).
"""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from phasewatch.errors import one_line
from phasewatch.imageio.decoder_messages import caught_stderr, log_said, setup_child_logging
from phasewatch.imageio.formats import DEFAULT_MAX_PIXELS, ImageReadError, Page, read_pages
from phasewatch.imageio.stacks import StackHeader, StackReadError, micrograph_slices, open_micrograph_stack

# --- reading under limits ------------------------------------------------------------

# One thread per numeric library and few malloc arenas in the child: every thread's stack
# and arena count against its address-space limit, which would then depend on the core count.
_CHILD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}
_CHILD_MAIN = "import sys; from phasewatch.imageio.isolated import serve_reads; serve_reads(*map(int, sys.argv[1:]))"
CHILD_START_TIMEOUT_S = 120.0  # importing numpy, OpenCV and tifffile on a busy machine
_READY = "ready"


class DecoderUnavailable(Exception):
    """No child to decode in (it would not start); not the file's fault, try again later."""


class DecoderClosed(DecoderUnavailable):
    """The reader was closed while a file was being read (the service is stopping)."""


class DecodeAborted(ImageReadError):
    """The child gave no answer for the file: it took longer than the time limit, or it died.
    Unlike the decoder's verdict on the content, another attempt may go otherwise (a busy
    machine, a child killed from outside), so the daemon charges the file an attempt."""


class _Child(NamedTuple):
    process: subprocess.Popen[bytes]
    conn: Connection


class IsolatedReader:
    """:func:`read_pages` in a child process, under a memory and a time limit.

    A file whose decoding needs more than ``memory_bytes`` of address space (beyond what
    the child's Python and libraries hold), takes longer than ``timeout_s``, or crashes the
    decoder fails with one line, and the next file gets a fresh child. The child is kept
    between files, so the common path costs a round trip through a socket, not a start of
    Python; the pixels come back as raw bytes read straight into the array. One file at a time.
    """

    def __init__(self, memory_bytes: int, timeout_s: float) -> None:
        self.memory_bytes, self.timeout_s = memory_bytes, timeout_s
        self._lock = threading.Lock()
        self._child: _Child | None = None
        self._busy = False
        self._closed = False

    def read_pages(
        self, path: str | Path, pixel_size_um: float | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> list[Page]:
        """Every page of the file, as :func:`read_pages` gives them."""
        with self._asking(path, ("pages", os.fspath(path), pixel_size_um, max_pixels)) as child:
            return _receive_pages(path, child.conn, self._answer(child, path))

    def stack_header(self, path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> StackHeader:
        """A TIFF stack's metadata (:func:`~phasewatch.imageio.stacks.open_micrograph_stack`)."""
        with self._asking(path, ("stack", os.fspath(path), max_pixels)) as child:
            header: StackHeader = self._answer(child, path)
            return header

    def stack_slices(self, path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[np.ndarray]:
        """A TIFF stack's slices streamed from the child one at a time
        (:func:`~phasewatch.imageio.stacks.micrograph_slices`): each within the time limit, and
        a few in the connection's buffer at most, whatever the depth. The child is held until
        the last slice; a stream left unfinished ends the child (the next read gets a fresh one)."""
        with self._asking(path, ("slices", os.fspath(path), max_pixels)) as child:
            finished = False
            try:
                while (reply := self._answer(child, path)) is not None:
                    shape, dtype = reply
                    image = np.empty(shape, dtype)
                    _read_into(child.conn, image)
                    yield image
                finished = True
            except ImageReadError as exc:  # the child's reason is its last word on this file
                finished = not isinstance(exc, DecodeAborted)
                raise
            finally:
                if not finished:
                    self._discard(child)

    @contextlib.contextmanager
    def _asking(self, path: str | Path, request: tuple[Any, ...]) -> Iterator[_Child]:
        """The child, sent ``request`` about ``path``, held while its answer is read; its death
        or a close meanwhile becomes one line."""
        child = self._acquire()
        try:
            child.conn.send(request)
            yield child
        except (EOFError, OSError) as exc:  # the child died, or close() ended it
            died = _death(child.process)
            self._discard(child)
            if self._closed:
                raise DecoderClosed(f"{path}: decoding cut short: the reader was closed") from exc
            raise DecodeAborted(path, f"the decoder died reading it ({died})") from exc
        finally:
            with self._lock:
                self._busy = False

    def _answer(self, child: _Child, path: str | Path) -> Any:
        """The child's next answer about ``path`` within the time limit, what its decoders said
        logged with the file's name; its reason for refusing the file raised as one line."""
        while True:
            if not child.conn.poll(self.timeout_s):
                self._discard(child)
                raise DecodeAborted(path, f"decoding took longer than the limit of {self.timeout_s:g} s")
            reply = child.conn.recv()
            if isinstance(reply, _Said):
                log_said(path, list(reply.lines))
                continue
            if isinstance(reply, str):
                raise ImageReadError(path, reply)
            return reply

    def close(self) -> None:
        """End the child; a read in progress ends with :class:`DecoderClosed`."""
        with self._lock:
            self._closed = True
            child, busy = self._child, self._busy
        if child is not None:
            child.process.kill()
            child.process.wait()
            if not busy:  # else the reading thread closes its end when it sees the child gone
                self._discard(child)

    def _acquire(self) -> _Child:
        with self._lock:
            if self._closed:
                raise DecoderClosed("the reader is closed")
            if self._child is None:
                self._child = _start_child(self.memory_bytes)
            self._busy = True
            return self._child

    def _discard(self, child: _Child) -> None:
        child.process.kill()
        child.process.wait()
        child.conn.close()
        with self._lock:
            if self._child is child:
                self._child = None


def _start_child(memory_bytes: int) -> _Child:
    ours, theirs = Pipe()
    try:
        process = subprocess.Popen(
            [sys.executable, "-c", _CHILD_MAIN, str(theirs.fileno()), str(memory_bytes)],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env={**os.environ, **_CHILD_ENV})
    except OSError as exc:  # no memory or no process slot left to start it
        ours.close()
        raise DecoderUnavailable(f"cannot start a decoder process: {exc.strerror or exc}") from exc
    finally:
        theirs.close()
    child = _Child(process, ours)
    try:
        if ours.poll(CHILD_START_TIMEOUT_S) and ours.recv() == _READY:
            return child
    except (EOFError, OSError):
        pass
    died = _death(process)
    process.kill()
    process.wait()
    ours.close()
    raise DecoderUnavailable(f"the decoder process did not start ({died})")


def _death(process: subprocess.Popen[bytes]) -> str:
    """How a child that closed its end ended, in words."""
    try:
        code = process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        return "no answer"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


class _Said(NamedTuple):
    """What the child's decoders wrote to descriptor 2 while reading the file; sent before the answer."""

    lines: tuple[str, ...]


def _receive_pages(path: str | Path, conn: Connection, reply: Any) -> list[Page]:
    fields = []
    for shape, dtype, page, pixel_size_um, source in reply:
        image = np.empty(shape, dtype)
        _read_into(conn, image)
        fields.append(Page(image, page, pixel_size_um, source))
    return fields


def _read_into(conn: Connection, image: np.ndarray) -> None:
    """The child's raw pixels (:func:`_write_pixels`) into ``image``, which has their shape and type."""
    view = image.reshape(-1).view(np.uint8).data
    while view:
        count = os.readv(conn.fileno(), [view])
        if count == 0:
            raise EOFError("the decoder closed its end in the middle of a field's pixels")
        view = view[count:]


def _write_pixels(conn: Connection, image: np.ndarray) -> None:
    """``image``'s bytes, raw, after the message that gave its shape and type."""
    view = np.ascontiguousarray(image).data.cast("B")
    while view:
        view = view[os.write(conn.fileno(), view):]


def serve_reads(fd: int, memory_bytes: int) -> None:
    """The child's side of :class:`IsolatedReader`: read each file asked for over the
    connection ``fd``, and answer with its fields or the reason it cannot be read."""
    # The service's stop signals reach the child too (systemd signals the whole control
    # group, a terminal the whole process group): a read in progress must not end as a
    # decoder death blamed on its file. The service ends the child itself.
    for stop in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(stop, signal.SIG_IGN)
    conn = Connection(fd)
    setup_child_logging()
    memory_bytes = _limit_address_space(memory_bytes)  # what its reasons name: the limit it got
    try:
        _answer_reads(conn, memory_bytes)
    except (EOFError, ConnectionError):  # the service closed its end, or died (kill -9)
        return


def _answer_reads(conn: Connection, memory_bytes: int) -> None:
    conn.send(_READY)
    while True:
        op, path, *args = conn.recv()
        if op == "slices":
            _stream_slices(conn, path, memory_bytes, *args)
            continue
        read = functools.partial(read_pages, path, *args) if op == "pages" else \
            functools.partial(open_micrograph_stack, Path(path), *args)
        answer = _said_while(conn, memory_bytes, read)
        if isinstance(answer, list):
            _send_pages(conn, answer)
        else:
            conn.send(answer)  # a StackHeader or the reason
        del answer  # before the next file is read: the limit is for one file


def _said_while(conn: Connection, memory_bytes: int, read: Callable[[], Any]) -> Any:
    """``read()``, or the reason it failed; what the decoders said meanwhile goes back first,
    to be logged with the file's name."""
    with caught_stderr() as said:
        try:
            answer = read()
        except Exception as exc:
            answer = _failure_reason(exc, memory_bytes)
    if said:
        conn.send(_Said(tuple(said)))
    return answer


def _send_pages(conn: Connection, fields: list[Page]) -> None:
    conn.send([(f.image.shape, f.image.dtype.str, f.page, f.pixel_size_um, f.pixel_size_source) for f in fields])
    for f in fields:
        _write_pixels(conn, f.image)


def _stream_slices(conn: Connection, path: str, memory_bytes: int, max_pixels: int) -> None:
    """One message and one buffer per slice, then None; or the reason it stopped."""
    slices = micrograph_slices(Path(path), max_pixels)
    while True:
        image = _said_while(conn, memory_bytes, lambda: next(slices, None))
        if image is None or isinstance(image, str):
            conn.send(image)
            return
        conn.send((image.shape, image.dtype.str))
        _write_pixels(conn, image)
        del image  # before the next slice is read: the limit is for one slice


def _failure_reason(exc: Exception, memory_bytes: int) -> str:
    if isinstance(exc, MemoryError) or isinstance(exc.__cause__, MemoryError):
        return f"decoding needs more memory than the limit of {memory_bytes >> 20} MiB"
    if isinstance(exc, ImageReadError):
        return exc.reason
    if isinstance(exc, StackReadError):  # one line that names the file already
        return one_line(exc).partition(": ")[2]
    return f"cannot decode: {one_line(exc)}"


def _limit_address_space(extra_bytes: int) -> int:
    """Allow the child ``extra_bytes`` of address space beyond what its Python and
    libraries hold now, within the limit it inherited: a service started under a lower hard
    limit (``prlimit --as``, ``LimitAS=``) could not raise it, and no decoder would start.
    Returns the bytes allowed beyond what it holds."""
    with open("/proc/self/statm") as fh:
        held = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    inherited = resource.getrlimit(resource.RLIMIT_AS)[1]
    limit = held + extra_bytes if inherited == resource.RLIM_INFINITY else min(held + extra_bytes, inherited)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return limit - held
