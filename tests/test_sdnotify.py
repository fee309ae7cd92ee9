"""sd_notify over a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Iterator

import pytest

from phasewatch.service import sdnotify


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def _drain(sock: socket.socket) -> list[str]:
    sock.setblocking(False)
    messages = []
    try:
        while True:
            messages.append(sock.recv(4096).decode())
    except BlockingIOError:
        return messages


@pytest.fixture
def systemd(tmp_path, monkeypatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify"
    sock = _receiver(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def test_messages_reach_the_socket(systemd):
    assert sdnotify.ready()
    assert sdnotify.status("segmenting\nfield_07.tif")
    assert sdnotify.watchdog_ping()
    assert sdnotify.reloading()
    assert sdnotify.stopping()
    received = [systemd.recv(4096).decode() for _ in range(5)]
    assert received == [
        "READY=1",
        "STATUS=segmenting field_07.tif",
        "WATCHDOG=1",
        "RELOADING=1",
        "STOPPING=1",
    ]


def test_abstract_socket(monkeypatch):
    name = f"phasewatch-test-{uuid.uuid4().hex}"
    sock = _receiver("\0" + name)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    try:
        assert sdnotify.ready()
        assert sock.recv(4096) == b"READY=1"
    finally:
        sock.close()


def test_without_systemd_nothing_is_sent(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    assert sdnotify.ready() is False


def test_unreachable_socket_is_reported_not_raised(tmp_path, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert sdnotify.ready() is False


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", None, 30.0),
        ("1500000", "self", 1.5),
        ("30000000", "1", None),  # meant for another process (pid 1 is never a test)
        ("0", None, None),
        ("junk", None, None),
        (None, None, None),
    ],
)
def test_watchdog_interval(monkeypatch, usec, pid, expected):
    for key, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, str(os.getpid()) if value == "self" else value)
    assert sdnotify.watchdog_interval_s() == expected


def test_watchdog_pings_only_while_healthy(systemd, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "20000")  # 20 ms: pings every 10 ms
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    answers = iter([True, True, True, False, False])
    checked_five_times = threading.Event()
    calls = 0

    def healthy() -> bool:
        nonlocal calls
        calls += 1
        if calls == 5:
            checked_five_times.set()
        return next(answers, False)

    watchdog = sdnotify.Watchdog(healthy)
    assert watchdog.period_s == pytest.approx(0.01)
    watchdog.start()
    assert checked_five_times.wait(5)
    watchdog.stop()
    # One ping per healthy answer, none once the service reported itself wedged.
    assert _drain(systemd) == ["WATCHDOG=1"] * 3


def test_watchdog_withholds_pings_when_the_check_raises(systemd):
    raised = threading.Event()

    def healthy() -> bool:
        raised.set()
        raise RuntimeError("worker thread is gone")

    watchdog = sdnotify.Watchdog(healthy, interval_s=0.02)
    watchdog.start()
    assert raised.wait(5)
    watchdog.stop()
    assert _drain(systemd) == []


def test_watchdog_without_interval_does_not_start(monkeypatch):
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    watchdog = sdnotify.Watchdog(lambda: True)
    assert not watchdog.enabled
    watchdog.start()
    assert not watchdog.is_alive()
    watchdog.stop()
