"""runtime/daemon.py in process, with a fake backend whose class map is known by hand.

The fake backend labels a pixel class 1 where the normalised input is above 0 (brighter
than the manifest's mean of 0.5) and class 0 elsewhere; the logits of a pixel do not
depend on the tile it is seen in, so the stitched class map is exact and fractions of
half-bright images are exact too.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from onnx_graphs import make_bundle

import phasewatch.runtime.service.daemon as daemon_module
from phasewatch.runtime.outputs import OutputError
from phasewatch.runtime.service.config import load_config
from phasewatch.runtime.service.daemon import BACKOFF_MAX_S, Backoff, Daemon, combine_pages

DEADLINE_S = 30.0


class ThresholdBackend:
    """Class 1 where the input is above 0; raises on the first ``failures`` calls."""

    name = "fake"
    max_batch = 8

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls = 0

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError("device lost\nsecond line of a driver message")
        x = batch[:, :1]
        return np.concatenate([-x, x, np.zeros_like(x)], axis=1).astype(np.float32)

    def close(self) -> None:
        pass


def wait_for(condition: Callable[[], Any], what: str) -> Any:
    end = time.monotonic() + DEADLINE_S
    while time.monotonic() < end:
        if value := condition():
            return value
        time.sleep(0.02)
    pytest.fail(f"timed out after {DEADLINE_S:.0f} s waiting for {what}")


def drop(daemon: Daemon, name: str, write: Callable[[Path], Any]) -> Path:
    """Write a file beside the watch folder, then move it in: it arrives whole, however
    long the write took (the settle time here is short)."""
    staged = daemon.config.watch.dir.parent / name
    write(staged)
    return staged.replace(daemon.config.watch.dir / name)


def half_bright(height: int, width: int) -> np.ndarray:
    image = np.zeros((height, width), np.uint8)
    image[:, width // 2:] = 255
    return image


@pytest.fixture
def make_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    bundle = make_bundle(tmp_path / "bundle")
    (tmp_path / "watch").mkdir()
    config_file = tmp_path / "phasewatch.toml"
    config_file.write_text('[watch]\nsettle_s = 0.05\n')
    started: list[Daemon] = []

    def make(backend: ThresholdBackend | None = None) -> Daemon:
        backend = backend or ThresholdBackend()
        monkeypatch.setattr(daemon_module, "open_backend", lambda *args: backend)
        config = load_config(config_file, {"watch": tmp_path / "watch", "data": tmp_path / "data",
                                           "model": str(bundle)})
        daemon = Daemon(config)
        daemon.start()
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        daemon.stop()


def finished(daemon: Daemon, count: int) -> list[dict[str, Any]] | None:
    images = daemon.store.list_images(100)
    done = [i for i in images if i["state"] in ("done", "failed")]
    return images if len(done) >= count else None


def test_combine_pages_weights_fractions_by_valid_area() -> None:
    pages = [
        {"page": 0, "valid_area_px": 100, "fractions": {"a": 0.2, "b": 0.8}},
        {"page": 1, "valid_area_px": 300, "fractions": {"a": 0.6, "b": 0.4}},
    ]
    combined = combine_pages(pages)
    # a: 0.25 * 0.2 + 0.75 * 0.6 = 0.5; b: 0.25 * 0.8 + 0.75 * 0.4 = 0.5
    assert combined["fractions"] == pytest.approx({"a": 0.5, "b": 0.5})
    assert combined["valid_area_px"] == 400
    assert combined["page"] is None and combined["pages"] == pages
    assert combine_pages(pages[:1]) is pages[0]


def test_combine_pages_without_valid_area_weighs_pages_equally() -> None:
    pages = [{"page": i, "valid_area_px": 0, "fractions": {"a": f}} for i, f in enumerate((0.2, 0.4))]
    assert combine_pages(pages)["fractions"]["a"] == pytest.approx(0.3)


def test_backoff_doubles_up_to_the_cap_and_resets() -> None:
    backoff = Backoff()
    delays = [backoff.failed() for _ in range(8)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, BACKOFF_MAX_S, BACKOFF_MAX_S]
    backoff.succeeded()
    assert backoff.failed() == 1.0


def test_multi_page_tiff_is_one_field_with_area_weighted_fractions(make_daemon) -> None:
    daemon = make_daemon()

    def write_stack(path: Path) -> None:
        with tifffile.TiffWriter(path) as tif:
            tif.write(np.full((32, 32), 255, np.uint8))  # 1024 px, all class 1
            tif.write(half_bright(64, 32))  # 2048 px, half class 1

    drop(daemon, "stack.tif", write_stack)
    (image,) = wait_for(lambda: finished(daemon, 1), "the stack's result")
    assert image["state"] == "done"
    # (1024 * 1.0 + 2048 * 0.5) / 3072 = 2/3
    assert image["fractions"]["class1"] == pytest.approx(2 / 3)
    assert image["valid_area_px"] == 3072
    out_dir = daemon.config.data.results_dir / f"{image['id']:06d}"
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == ["preview.png", "stack.p0000.classes.png", "stack.p0000.json", "stack.p0000.overlay.png",
                     "stack.p0001.classes.png", "stack.p0001.json", "stack.p0001.overlay.png"]


def test_header_only_tiff_fails_with_a_reason_and_the_workers_live_on(make_daemon) -> None:
    daemon = make_daemon()
    # tifffile finds no page here, and raises nothing
    bad = drop(daemon, "header-only.tif", lambda p: p.write_bytes(b"II*\x00garbage"))
    (image,) = wait_for(lambda: finished(daemon, 1), "the bad file's result")
    assert image["state"] == "failed"
    assert image["error"] == f"{bad}: no image in the file"
    drop(daemon, "good.tif", lambda p: tifffile.imwrite(p, half_bright(16, 16)))
    images = wait_for(lambda: finished(daemon, 2), "the next file's result")
    assert images[0]["state"] == "done" and images[0]["fractions"]["class1"] == pytest.approx(0.5)
    assert daemon.health() == (True, {})


def test_backend_error_requeues_without_spending_an_attempt(make_daemon) -> None:
    backend = ThresholdBackend(failures=1)
    daemon = make_daemon(backend)
    drop(daemon, "a.tif", lambda p: tifffile.imwrite(p, half_bright(16, 16)))
    problem = wait_for(lambda: daemon.health()[1].get("backend"), "the backend problem to show")
    assert problem == "fake: device lost"
    (image,) = wait_for(lambda: finished(daemon, 1), "the retried result")
    assert image["state"] == "done" and image["attempts"] == 1
    assert image["fractions"]["class1"] == pytest.approx(0.5)
    assert "backend" not in daemon.health()[1]


def test_full_disk_requeues_and_recovers(make_daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write_field = daemon_module.write_field
    calls = []

    def write_field_once_full(out_dir: Path, stem: str, *args: Any) -> Any:
        calls.append(stem)
        if len(calls) == 1:
            raise OutputError(errno.ENOSPC, f"{out_dir / stem}: No space left on device")
        return real_write_field(out_dir, stem, *args)

    monkeypatch.setattr(daemon_module, "write_field", write_field_once_full)
    daemon = make_daemon()
    drop(daemon, "a.tif", lambda p: tifffile.imwrite(p, half_bright(16, 16)))
    assert "No space left" in wait_for(lambda: daemon.problems.get("disk"), "the disk problem to show")
    (image,) = wait_for(lambda: finished(daemon, 1), "the retried result")
    assert image["state"] == "done" and image["attempts"] == 1
    assert calls == ["a", "a"]
    assert "disk" not in daemon.problems


def test_vanished_data_folder_is_a_health_problem_not_a_crash(make_daemon) -> None:
    daemon = make_daemon()
    data = daemon.config.data.dir
    moved = data.with_name("data-unmounted")
    data.rename(moved)
    try:
        healthy, problems = daemon.health()
        assert not healthy and problems["disk"].startswith(f"{data}: ")
    finally:
        moved.rename(data)
    assert daemon.health() == (True, {})
