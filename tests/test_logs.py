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
