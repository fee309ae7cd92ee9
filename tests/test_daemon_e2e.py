"""End to end: the real ``phasewatch serve`` process on real micrographs.

Each test starts the daemon as a subprocess on temporary folders with a tiny ONNX model,
drives it only through the watch folder, signals and HTTP, and checks the results
through the API, the files on disk and the SQLite file itself. Every wait polls up to
:data:`DEADLINE_S`; no test asserts a duration.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import tifffile
from onnx_graphs import make_bundle

DEADLINE_S = 60.0
SETTLE_S = 0.3
STOP_TIMEOUT_S = 30.0  # TimeoutStopSec of systemd/phasewatch.service
CHUNK_PAUSE_S = 0.2
# Heavier than make_bundle's default, so that a burst takes long enough to be killed halfway.
MODEL_WIDTH = 16
MODEL_LAYERS = (1, 2, 4)
NUM_CLASSES = 3
# Variables that would change how the daemon logs or whom it notifies.
ENV_DROPPED = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM", "PHASEWATCH_LOG_FORMAT")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], Any], what: str, deadline_s: float = DEADLINE_S) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what``."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out after {deadline_s:.0f} s waiting for {what}")


class ServeProcess:
    """One ``phasewatch serve`` on ``root/watch`` and ``root/data``; restartable."""

    launcher: tuple[str, ...] = ("-m", "phasewatch.app.cli")  # what runs the CLI
    backend_args: tuple[str, ...] = ("--backend", "cpu")

    def __init__(self, root: Path, bundle: Path) -> None:
        self.root = root
        self.watch = root / "watch"
        self.data = root / "data"
        self.watch.mkdir()
        self.config = root / "phasewatch.toml"
        self.config.write_text(f"[watch]\nsettle_s = {SETTLE_S}\n\n[logging]\nlevel = \"INFO\"\n")
        self.bundle = bundle
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None
        self.log: Path | None = None
        self.runs = 0

    def start(self) -> ServeProcess:
        self.runs += 1
        self.log = self.root / f"serve.{self.runs}.log"
        env = {k: v for k, v in os.environ.items() if k not in ENV_DROPPED}
        command = [sys.executable, *self.launcher, "serve", "--config", str(self.config),
                   "--watch", str(self.watch), "--data", str(self.data), "--model", str(self.bundle),
                   *self.backend_args, "--port", str(self.port)]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, env=env)
        url = wait_for(self._served_url, "the 'serving url=...' log line")
        assert url == f"http://127.0.0.1:{self.port}"
        return self

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def _served_url(self) -> str | None:
        if self.proc.poll() is not None:
            pytest.fail(f"phasewatch serve exited with {self.proc.returncode}:\n{self.log_text()}")
        found = re.search(r"serving url=(\S+)", self.log_text())
        return found.group(1) if found else None

    def request(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=DEADLINE_S)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def get_json(self, path: str) -> Any:
        status, body = self.request(path)
        assert status == 200, f"GET {path}: {status} {body[:200]!r}"
        return json.loads(body)

    def images(self) -> list[dict[str, Any]]:
        return self.get_json("/api/images?limit=1000")

    def idle_with(self, expected: int) -> list[dict[str, Any]] | None:
        """All rows, once ``expected`` files are queued and none is waiting or in work. The
        list is read before the counts: a file queued between the two reads shows in the
        counts, where read the other way round it would appear in the list still pending."""
        images = self.images()
        if len(images) < expected or any(i["state"] not in ("done", "failed") for i in images):
            return None
        status = self.get_json("/api/status")
        return None if status["queued"] + status["processing"] else images

    def wait_idle(self, expected: int) -> list[dict[str, Any]]:
        return wait_for(lambda: self.idle_with(expected), f"{expected} files to be finished")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=DEADLINE_S)

    def terminate(self) -> int:
        """SIGTERM; the exit code once it exits (fails if not within the stop timeout)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"phasewatch serve did not exit within {STOP_TIMEOUT_S:.0f} s of SIGTERM")

    def stop_if_running(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=DEADLINE_S)

    def rows(self) -> list[dict[str, Any]]:
        """The ``files`` table with each row's own result outputs, read from the SQLite file directly."""
        conn = sqlite3.connect(f"file:{self.data / 'phasewatch.sqlite3'}?mode=ro", uri=True)
        try:
            conn.row_factory = sqlite3.Row
            return [dict(r) for r in conn.execute(
                "SELECT f.*, r.outputs FROM files f LEFT JOIN results r ON r.file_id = f.id ORDER BY f.id")]
        finally:
            conn.close()


class EventStream:
    """An SSE client on ``/events`` that collects ``(event, data)`` pairs in a thread."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE_S)
        self.conn.request("GET", "/events")
        self.response = self.conn.getresponse()
        assert self.response.status == 200
        assert self.response.getheader("Content-Type", "").startswith("text/event-stream")
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        event, data = None, None
        try:
            for raw in self.response:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("event:"):
                    event = line.partition(":")[2].strip()
                elif line.startswith("data:"):
                    data = json.loads(line.partition(":")[2])
                elif not line and event is not None:
                    self.events.append((event, data))
                    event, data = None, None
        except (OSError, ValueError):  # the server went away (or the socket timed out)
            pass

    def fields(self) -> list[dict[str, Any]]:
        return [data for event, data in self.events if event == "field"]

    def close(self) -> None:
        self.conn.close()


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "tiny", in_channels=1, num_classes=NUM_CLASSES,
                       layers=MODEL_LAYERS, width=MODEL_WIDTH)


@pytest.fixture
def serve(tmp_path: Path, tiny_bundle: Path):
    process = ServeProcess(tmp_path, tiny_bundle)
    yield process
    process.stop_if_running()


def _images(folder: Path, count: int) -> list[Path]:
    return sorted(folder.glob("*.tif"))[:count]


def burst_sources(data: Path) -> list[Path]:
    """All superalloy test and val images, a few UHCS and two EBC: three sizes, gray and RGB."""
    return (_images(data / "superalloy" / "test" / "images", 100) + _images(data / "superalloy" / "val" / "images", 100)
            + _images(data / "uhcs" / "train" / "images", 3) + _images(data / "ebc" / "test" / "images", 2))


def corrupt_files(real_tiff: Path) -> dict[str, bytes]:
    """Name -> content of files that look like micrographs and are not."""
    png_ok, one_pixel = cv2.imencode(".png", np.zeros((1, 1), np.uint8))
    assert png_ok
    tiff = real_tiff.read_bytes()
    return {
        "zero-bytes.tif": b"",
        "text-named.tif": b"this is a lab note, not an image\n",
        "truncated.tif": tiff[: len(tiff) // 2],
        "one-pixel.png": one_pixel.tobytes(),
        "header-only.tif": b"II*\x00garbage",  # a TIFF magic whose first page offset points nowhere
    }


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of a micrograph on disk."""
    shape = tifffile.imread(path).shape
    return shape[0], shape[1]


def one_pixel_changed(path: Path) -> bytes:
    """The micrograph at ``path`` with one pixel changed, as TIFF bytes: new content, same size."""
    image = tifffile.imread(path)
    image.flat[0] ^= 1
    out = io.BytesIO()
    tifffile.imwrite(out, image)
    return out.getvalue()


def check_outputs(image_row: dict[str, Any], db_row: dict[str, Any], serve: ServeProcess,
                  size: tuple[int, int]) -> None:
    """A done field has every output on disk; its class map is the image's size."""
    outputs = json.loads(db_row["outputs"])
    assert set(outputs) == {"classes", "overlay", "unsure", "json", "preview"}
    for path in outputs.values():
        assert Path(path).is_file() and Path(path).is_relative_to(serve.data)
    classes = cv2.imread(outputs["classes"], cv2.IMREAD_UNCHANGED)
    assert classes.shape == size, image_row["file"]
    assert classes.max() < NUM_CLASSES
    status, png = serve.request(f"/api/images/{image_row['id']}/classes.png")
    assert status == 200
    assert cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED).shape == size
    record = json.loads(Path(outputs["json"]).read_text())
    assert (record["height"], record["width"]) == size


def test_burst_with_corrupt_files_survives_kill_and_restart(serve: ServeProcess, shared_data: Path) -> None:
    sources = burst_sources(shared_data)
    corrupt = corrupt_files(sources[0])
    names = [p.name for p in sources] + list(corrupt)
    assert len(set(names)) == len(names)
    serve.start()

    for source in sources:
        shutil.copyfile(source, serve.watch / source.name)
    for name, content in corrupt.items():
        (serve.watch / name).write_bytes(content)
    wait_for(lambda: serve.get_json("/api/status")["done"] >= 2, "the first results")
    serve.kill()
    finished_at_kill = [r for r in serve.rows() if r["state"] in ("done", "failed")]
    assert len(finished_at_kill) < len(names), "the burst was over before the kill; nothing to recover"

    serve.start()
    images = serve.wait_idle(len(names))
    assert Counter(i["file"] for i in images) == Counter(names)  # every file exactly once
    rows = {r["id"]: r for r in serve.rows()}
    assert len(rows) == len(names)
    assert Counter(r["path"] for r in rows.values()) == Counter(str(serve.watch / n) for n in names)
    by_name = {i["file"]: i for i in images}
    for source in sources:
        image = by_name[source.name]
        assert image["state"] == "done" and image["error"] is None, image
        assert rows[image["id"]]["state"] == "done"
        check_outputs(image, rows[image["id"]], serve, image_size(source))
    for name in corrupt:
        image = by_name[name]
        assert image["state"] == "failed", image
        assert name in image["error"] and "\n" not in image["error"], image["error"]
        assert rows[image["id"]]["error"] == image["error"]
    assert serve.get_json("/api/status")["healthy"] is True

    assert serve.terminate() == 0
    assert "stopped" in serve.log_text()


def test_slow_write_duplicate_rewrite_events_metrics(serve: ServeProcess, shared_data: Path) -> None:
    source = burst_sources(shared_data)[0]
    content = source.read_bytes()
    slow = serve.watch / "slow.tif"
    serve.start()
    events = EventStream(serve.port)
    try:
        # The microscope writes a file in pieces, each one shorter than the settle time apart.
        with open(slow, "wb") as fh:
            third = len(content) // 3 + 1
            for start in range(0, len(content), third):
                fh.write(content[start:start + third])
                fh.flush()
                time.sleep(CHUNK_PAUSE_S)
        serve.wait_idle(1)
        (first,) = [r for r in serve.rows() if r["path"] == str(slow)]
        assert first["state"] == "done" and first["size"] == len(content)
        check_outputs(serve.get_json(f"/api/images/{first['id']}"), first, serve, image_size(source))

        (serve.watch / "copy-of-slow.tif").write_bytes(content)
        serve.wait_idle(2)
        (copy,) = [r for r in serve.rows() if r["path"] == str(serve.watch / "copy-of-slow.tif")]
        assert copy["state"] == "done" and copy["duplicate_of"] == first["id"]
        assert copy["outputs"] is None  # one result: the original's, shown for both
        copy_image, first_image = (serve.get_json(f"/api/images/{r['id']}") for r in (copy, first))
        assert copy_image["fractions"] == first_image["fractions"] is not None

        slow.write_bytes(one_pixel_changed(source))
        (serve.watch / "broken.tif").write_bytes(b"lab note")
        images = serve.wait_idle(4)
        rows = serve.rows()
        versions = [r for r in rows if r["path"] == str(slow)]
        assert len(versions) == 2 and versions[0]["id"] == first["id"]
        assert versions[1]["state"] == "done" and versions[1]["duplicate_of"] is None
        assert versions[1]["sha256"] != first["sha256"]
        assert {i["id"]: i["state"] for i in images} == {r["id"]: r["state"] for r in rows}
        assert Counter(r["state"] for r in rows) == {"done": 3, "failed": 1}

        wait_for(lambda: len(events.fields()) >= len(rows), "a field event per finished field")
        assert sorted(e["id"] for e in events.fields()) == [r["id"] for r in rows]
        assert {e["id"]: e["state"] for e in events.fields()} == {r["id"]: r["state"] for r in rows}
        # Events carry what /api/images shows, so the page can use them as they come.
        by_id = {i["id"]: i for i in images}
        assert all(e["file"] == by_id[e["id"]]["file"] for e in events.fields())
        assert all("overlay" in e["pictures"] for e in events.fields() if e["state"] == "done"
                   and e["duplicate_of"] is None)

        status, metrics = serve.request("/metrics")
        assert status == 200
        assert re.search(rb'^phasewatch_files\{state="done"\} 3\.0$', metrics, re.M)
        assert re.search(rb'^phasewatch_files\{state="failed"\} 1\.0$', metrics, re.M)
        status, health = serve.request("/healthz")
        assert status == 200 and json.loads(health)["ok"] is True
    finally:
        events.close()
    assert serve.terminate() == 0
    assert "stopped" in serve.log_text()
