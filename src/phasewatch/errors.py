"""The one error type the user sees, and the one way to shorten any error to a line.

Every error that reaches a user (a command's stderr, a failed file's reason, ``/healthz``)
is a :class:`PhasewatchError` whose message is one line naming the file or thing and the
reason (:class:`~phasewatch.service.config.ConfigError` is the one exception: one
such line per wrong key). Commands catch this one type. Errors raised while handling
another keep it as ``__cause__`` (``raise ... from exc``) so the logs have the whole
story while the user reads one line.
"""

from __future__ import annotations


class PhasewatchError(Exception):
    """Base class of phasewatch's own errors; ``str(error)`` is what the user reads."""


MAX_LINE = 300  # a decoder can put a whole buffer in its message


def one_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name when it has none.

    Third-party libraries (ONNX Runtime, torch, decoders) raise multi-line messages; a
    queue row, a log line or ``/healthz`` needs one line.
    """
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()[:MAX_LINE]
    return type(exc).__name__
