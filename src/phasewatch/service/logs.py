"""Structured logs on stderr, made for journald and still readable in a terminal.

Text (default), one line per record::

    INFO phasewatch.runtime.worker: done path=/srv/in/a.tif ms=412

JSON lines on request (``json=True`` or ``$PHASEWATCH_LOG_FORMAT=json``), for log shippers.
Structured fields ride on the standard ``extra`` argument::

    log.info("done", extra=fields(path=path, ms=412))

When stderr is connected to the journal (``$JOURNAL_STREAM`` names stderr's device:inode),
every line starts with the syslog priority ``<N>`` (sd-daemon(3)), so journald keeps the
level: ``journalctl -p warning`` works and errors show in red. The journal adds its own
timestamps, so the text format has none.

Libraries. Python warnings are logged (``py.warnings``), not printed. A line a library
logs while a file is being decoded (``imageio/decoder_messages.py``) names the file and is
logged once per file: ``ERROR tifffile: a.tif: <TiffTag 270 @70> invalid value offset``
with ``file=PATH`` (:class:`NamesTheFile`).
"""

from __future__ import annotations

import json as jsonlib
import logging
import os
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

from phasewatch.imageio import decoder_messages

FIELDS_ATTR = "fields"
FORMAT_ENV = "PHASEWATCH_LOG_FORMAT"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# syslog priorities (sd-daemon(3): SD_CRIT .. SD_DEBUG)
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
_DEBUG_PRIORITY = 7


def fields(**values: Any) -> dict[str, dict[str, Any]]:
    """``extra=fields(k=v, ...)`` attaches ``k=v`` pairs to a log record."""
    return {FIELDS_ATTR: values}


def syslog_priority(levelno: int) -> int:
    for threshold, priority in _PRIORITIES:
        if levelno >= threshold:
            return priority
    return _DEBUG_PRIORITY


def stream_is_journal(stream: TextIO) -> bool:
    """True when ``stream`` is the journal socket systemd connected (``$JOURNAL_STREAM``)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, inode = (int(part) for part in expected.split(":"))
        info = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        # unset or malformed variable, or a stream without a file descriptor (a test capture)
        return False
    return (info.st_dev, info.st_ino) == (dev, inode)


def _logfmt_value(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    if not text or any(ch in text for ch in ' ="\n\t'):
        return jsonlib.dumps(text)
    return text


def _record_fields(record: logging.LogRecord) -> dict[str, Any]:
    values = getattr(record, FIELDS_ATTR, None)
    return dict(values) if isinstance(values, dict) else {}


class TextFormatter(logging.Formatter):
    """``LEVEL logger: message key=value ...``; a traceback follows on indented lines."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage().replace("\n", " ")
        pairs = "".join(f" {k}={_logfmt_value(v)}" for k, v in _record_fields(record).items())
        line = f"{record.levelname} {record.name}: {message}{pairs}"
        if record.exc_info:
            trace = self.formatException(record.exc_info)
            line += "\n" + "\n".join("  " + part for part in trace.splitlines())
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the fields, and exc if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _record_fields(record).items():
            entry.setdefault(key, value)  # a field never overwrites the record's own keys
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return jsonlib.dumps(entry, default=str)


class _JournalPriorityFormatter(logging.Formatter):
    """Prefixes every output line with ``<N>``: journald reads each line as its own entry."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self._inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        lines = self._inner.format(record).splitlines() or [""]
        return "\n".join(prefix + line for line in lines)


class NamesTheFile(logging.Filter):
    """A library's line logged while a file is decoded in this thread: prefixed with the
    file's name and its path as ``file=``, and dropped when the file has said it before
    (``decoder_messages.FileMessages``). Our own lines name their files already."""

    def filter(self, record: logging.LogRecord) -> bool:
        messages = decoder_messages.current()
        if messages is None or record.name.startswith("phasewatch"):
            return True
        text = record.getMessage()
        if not messages.admit(f"{record.name}: {text}"):
            return False
        record.msg, record.args = f"{messages.name}: {text}", None
        setattr(record, FIELDS_ATTR, {**_record_fields(record), "file": messages.path})
        return True


class _PhasewatchHandler(logging.StreamHandler):
    """Marks the handler this module installed, so that setting up twice replaces it."""


def setup_logging(
    level: str, json: bool | None = None, stream: TextIO | None = None
) -> logging.Handler:
    """Route all logging to ``stream`` (stderr) at ``level``; returns the installed handler.

    ``json=None`` takes the format from ``$PHASEWATCH_LOG_FORMAT`` (``json`` or ``text``,
    default text), so a unit file can switch it without a new flag.
    """
    name = level.upper()
    if name not in LEVELS:
        raise ValueError(f"logging level '{level}' is not one of {', '.join(LEVELS)}")
    if json is None:
        json = os.environ.get(FORMAT_ENV, "text").strip().lower() == "json"
    stream = sys.stderr if stream is None else stream
    formatter: logging.Formatter = JsonFormatter() if json else TextFormatter()
    if stream_is_journal(stream):
        formatter = _JournalPriorityFormatter(formatter)
    handler = _PhasewatchHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(NamesTheFile())
    logging.captureWarnings(True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _PhasewatchHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(name)
    return handler
