"""Log line formats, and the syslog priority prefix when stderr is the journal."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator

import pytest

from phasewatch.service.logs import fields, setup_logging, stream_is_journal, syslog_priority


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)  # setup_logging captured them; pytest resets showwarning after each test


@pytest.fixture
def no_journal(monkeypatch):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    monkeypatch.delenv("PHASEWATCH_LOG_FORMAT", raising=False)


def _journal_file(tmp_path, monkeypatch):
    """A real file whose dev:inode is advertised as the journal stream."""
    stream = open(tmp_path / "journal", "w")  # noqa: SIM115 - closed by the caller
    info = os.fstat(stream.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
    return stream


def test_text_line_with_fields(no_journal):
    out = io.StringIO()
    setup_logging("info", stream=out)
    log = logging.getLogger("phasewatch.worker")
    log.info("done %s", "a.tif", extra=fields(path="/srv/in/my field.tif", ms=412, ok=True))
    log.debug("hidden at INFO")
    assert out.getvalue() == (
        'INFO phasewatch.worker: done a.tif path="/srv/in/my field.tif" ms=412 ok=True\n'
    )


def test_text_traceback_follows_on_indented_lines(no_journal):
    out = io.StringIO()
    setup_logging("ERROR", stream=out)
    try:
        raise ValueError("bad tile")
    except ValueError:
        logging.getLogger("w").exception("segmenting failed")
    first, *rest = out.getvalue().splitlines()
    assert first == "ERROR w: segmenting failed"
    assert rest[0] == "  Traceback (most recent call last):"
    assert rest[-1] == "  ValueError: bad tile"


def test_json_lines(no_journal):
    out = io.StringIO()
    setup_logging("DEBUG", json=True, stream=out)
    logging.getLogger("phasewatch.store").warning("requeued", extra=fields(n=3, message="x"))
    entry = json.loads(out.getvalue())
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "phasewatch.store"
    assert entry["message"] == "requeued"  # a field may not overwrite the record's message
    assert entry["n"] == 3
    assert entry["time"].endswith("+00:00")


def test_json_from_environment(no_journal, monkeypatch):
    monkeypatch.setenv("PHASEWATCH_LOG_FORMAT", "json")
    out = io.StringIO()
    setup_logging("INFO", stream=out)
    logging.getLogger("x").info("hello")
    assert json.loads(out.getvalue())["message"] == "hello"


def test_journal_lines_carry_the_priority(tmp_path, monkeypatch):
    monkeypatch.delenv("PHASEWATCH_LOG_FORMAT", raising=False)
    with _journal_file(tmp_path, monkeypatch) as stream:
        assert stream_is_journal(stream)
        setup_logging("DEBUG", stream=stream)
        log = logging.getLogger("svc")
        log.debug("d")
        log.info("i", extra=fields(k="v"))
        log.warning("w")
        log.error("e")
        log.critical("c")
        try:
            raise OSError("disk full")
        except OSError:
            log.exception("write failed")
    lines = (tmp_path / "journal").read_text().splitlines()
    assert lines[:5] == [
        "<7>DEBUG svc: d",
        "<6>INFO svc: i k=v",
        "<4>WARNING svc: w",
        "<3>ERROR svc: e",
        "<2>CRITICAL svc: c",
    ]
    # every traceback line keeps the record's priority, or journald would file it as info
    assert lines[5] == "<3>ERROR svc: write failed"
    assert len(lines) > 6 and all(line.startswith("<3>  ") for line in lines[6:])


def test_no_prefix_when_journal_stream_names_another_file(tmp_path, monkeypatch):
    with _journal_file(tmp_path, monkeypatch), open(tmp_path / "other", "w") as stream:
        assert not stream_is_journal(stream)
        setup_logging("INFO", stream=stream)
        logging.getLogger("svc").info("plain")
    assert (tmp_path / "other").read_text() == "INFO svc: plain\n"


def test_setting_up_twice_replaces_the_handler(no_journal):
    first, second = io.StringIO(), io.StringIO()
    setup_logging("INFO", stream=first)
    setup_logging("INFO", stream=second)
    logging.getLogger("x").info("once")
    assert first.getvalue() == ""
    assert second.getvalue() == "INFO x: once\n"


def test_bad_level_is_one_clear_line():
    with pytest.raises(ValueError, match="logging level 'LOUD' is not one of DEBUG"):
        setup_logging("LOUD")


@pytest.mark.parametrize(
    ("level", "priority"),
    [(logging.DEBUG, 7), (logging.INFO, 6), (logging.WARNING, 4), (logging.ERROR, 3),
     (logging.CRITICAL, 2)],
)
def test_syslog_priority(level, priority):
    assert syslog_priority(level) == priority


def _closed_stream_lines(level: str) -> list[str]:
    """Serve a real endless stream with waitress, read its first chunk, close the socket, and
    return the service's log output at ``level`` once waitress has noticed the disconnect."""
    import socket
    import time

    from phasewatch.webui.server import serve_in_thread

    def endless(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        for _ in range(200):
            yield b"data: x\n\n"
            time.sleep(0.02)

    out = io.StringIO()
    setup_logging(level, json=False, stream=out)
    handle = serve_in_thread(endless)
    try:
        with socket.create_connection((handle.host, handle.port)) as sock:
            sock.sendall(b"GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert sock.recv(1024).startswith(b"HTTP/1.1 200")
        deadline = time.monotonic() + 4.0  # the stream runs 200 x 20 ms; its next write fails at once
        while "Client disconnected" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        handle.stop()
    return out.getvalue().splitlines()


def test_a_closed_event_stream_is_logged_at_debug_only(no_journal):
    debug = [line for line in _closed_stream_lines("DEBUG") if "Client disconnected" in line]
    assert len(debug) == 1 and "DEBUG" in debug[0] and "/events" in debug[0], debug
    assert not [line for line in _closed_stream_lines("INFO") if "Client disconnected" in line]


# -- what libraries say while a file is decoded (issue 21, also-found 7) ---------------------


def tiff_with_a_bad_tag(path, pages: int = 1):
    """A TIFF that decodes, but whose ImageDescription points beyond the end of the file:
    tifffile logs ``ERROR tifffile: <TiffTag.fromfile> raised ... invalid value offset``
    (for each page)."""
    import struct

    import numpy as np
    import tifffile

    tifffile.imwrite(path, np.zeros((pages, 32, 32), np.uint8), photometric="minisblack", description="x" * 40,
                     metadata=None)
    data = bytearray(path.read_bytes())
    ifd = struct.unpack("<I", data[4:8])[0]
    while ifd:
        count = struct.unpack("<H", data[ifd:ifd + 2])[0]
        for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
            if struct.unpack("<H", data[entry:entry + 2])[0] == 270:  # ImageDescription
                data[entry + 8:entry + 12] = struct.pack("<I", 10_000_000)
        ifd = struct.unpack("<I", data[ifd + 2 + 12 * count:ifd + 6 + 12 * count])[0]
    path.write_bytes(bytes(data))
    return path


def test_a_library_line_names_the_file_once_per_file(tmp_path, no_journal):
    from phasewatch.imageio.formats import read_pages

    out = io.StringIO()
    setup_logging("INFO", stream=out)
    first = tiff_with_a_bad_tag(tmp_path / "first.tif")
    second = tiff_with_a_bad_tag(tmp_path / "second.tif")
    for path in (first, first, second):
        assert len(read_pages(path)) == 1
    lines = out.getvalue().splitlines()
    said = "<TiffTag.fromfile> raised TiffFileError('<tifffile.TiffTag 270 @"
    assert [line.split(" @")[0] for line in lines] == [
        f"ERROR tifffile: first.tif: {said.split(' @')[0]}",
        f"ERROR tifffile: first.tif: {said.split(' @')[0]}",  # read again: said again, once
        f"ERROR tifffile: second.tif: {said.split(' @')[0]}",
    ]
    assert lines[0].endswith(f"invalid value offset 10000000') file={first}")


def test_a_file_saying_many_things_is_capped(tmp_path, no_journal, monkeypatch):
    import warnings

    import numpy as np

    from phasewatch.imageio import decoder_messages
    from phasewatch.imageio.formats import FORMATS, ImageFormat, Page, read_pages

    def chatty(path, pixel_size_um, max_pixels):
        for page in range(3):
            for n in range(decoder_messages.MAX_DISTINCT + 5):
                logging.getLogger("PIL.TiffImagePlugin").warning("tag %d of page %d is odd", n, 0)
            warnings.warn("Possibly corrupt EXIF data", UserWarning, stacklevel=1)
            yield Page(np.zeros((32, 32), np.uint8), page, None, "none")

    monkeypatch.setitem(FORMATS, "CHATTY", ImageFormat((".tif",), (b"CHAT",), chatty))
    path = tmp_path / "chatty.tif"
    path.write_bytes(b"CHAT" + bytes(60))
    out = io.StringIO()
    setup_logging("INFO", stream=out)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert len(read_pages(path)) == 3
    lines = out.getvalue().splitlines()
    assert len(lines) == decoder_messages.MAX_DISTINCT + 1
    assert lines[0] == f"WARNING PIL.TiffImagePlugin: chatty.tif: tag 0 of page 0 is odd file={path}"
    assert lines[-1] == ("WARNING phasewatch.imageio.decoder_messages: chatty.tif: "
                         "6 more different decoder messages not logged")
    assert all("chatty.tif: " in line for line in lines)


def test_a_warning_while_decoding_is_logged_with_the_file(tmp_path, no_journal, monkeypatch):
    import warnings

    import numpy as np

    from phasewatch.imageio.formats import FORMATS, ImageFormat, Page, read_pages

    def warns(path, pixel_size_um, max_pixels):
        warnings.warn("Possibly corrupt EXIF data", UserWarning, stacklevel=1)
        yield Page(np.zeros((32, 32), np.uint8), 0, None, "none")

    monkeypatch.setitem(FORMATS, "WARNS", ImageFormat((".tif",), (b"WARN",), warns))
    path = tmp_path / "warns.tif"
    path.write_bytes(b"WARN" + bytes(60))
    out = io.StringIO()
    setup_logging("INFO", stream=out)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        read_pages(path)
    [line] = out.getvalue().splitlines()
    assert line.startswith("WARNING py.warnings: warns.tif: ") and "UserWarning: Possibly corrupt EXIF data" in line


def test_lines_outside_a_decode_are_left_alone(no_journal):
    out = io.StringIO()
    setup_logging("INFO", stream=out)
    for _ in range(2):
        logging.getLogger("waitress").warning("queue depth 5")
    assert out.getvalue().splitlines() == ["WARNING waitress: queue depth 5"] * 2


def png_with_a_bad_chunk(path):
    """A PNG that decodes, with a text chunk whose CRC is wrong: libpng (inside OpenCV)
    writes ``libpng warning: tEXt: CRC error`` to descriptor 2 itself."""
    import struct
    import zlib

    import cv2
    import numpy as np

    data = bytes(cv2.imencode(".png", np.zeros((32, 32), np.uint8))[1])
    payload = b"Comment\x00hello"
    chunk = struct.pack(">I", len(payload)) + b"tEXt" + payload + struct.pack(">I", zlib.crc32(b"tEXt" + payload) ^ 1)
    ihdr_end = 8 + 8 + 13 + 4
    path.write_bytes(data[:ihdr_end] + chunk + data[ihdr_end:])
    return path


def test_the_decoder_child_s_messages_are_logged_by_the_service_with_the_file(tmp_path, no_journal, capfd):
    from phasewatch.imageio.isolated import IsolatedReader

    out = io.StringIO()
    setup_logging("INFO", stream=out)
    tiff = tiff_with_a_bad_tag(tmp_path / "tagged.tif", pages=3)
    png = png_with_a_bad_chunk(tmp_path / "crc.png")
    reader = IsolatedReader(memory_bytes=1 << 30, timeout_s=60)
    try:
        for path in (tiff, png, png):
            assert len(reader.read_pages(path)) in (1, 3)
    finally:
        reader.close()
    lines = out.getvalue().splitlines()
    child = "WARNING phasewatch.imageio.decoder_messages: "
    assert [line.split(" @")[0] for line in lines] == [
        f"{child}tagged.tif: ERROR tifffile: <TiffTag.fromfile> raised TiffFileError('<tifffile.TiffTag 270",
        f"{child}crc.png: libpng warning: tEXt: CRC error",
        f"{child}crc.png: libpng warning: tEXt: CRC error",
    ]
    # Nothing reached the service's own descriptor 2 raw (the child inherits it).
    assert "libpng" not in capfd.readouterr().err
