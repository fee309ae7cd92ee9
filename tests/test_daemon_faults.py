"""Issue 21: one bad file never stops the queue. A fault that a file's content causes is
charged to that file, at whichever step it shows (decode, prepare, the shape of its pixels,
the backend rejecting its input, measuring, writing its outputs): the file fails with its
one-line reason after ``[queue] max_attempts`` attempts (or at once for the decoder's verdict
on its content), the file behind it is done, and no fault is shown on ``/healthz``. A batch
of several files that fails is split until the culprit is alone (bisect).

The daemon runs in process on a real store and folders, with test_daemon's threshold
backend; each fault is injected where that step runs, and only for the bad file.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import test_daemon
import tifffile
from test_daemon import ThresholdBackend, drop, finished, half_bright, wait_for

import phasewatch.core.pipeline as pipeline_module
from phasewatch.atomic_files import OutputError
from phasewatch.bundle import sha256_file
from phasewatch.imageio.formats import Page
from phasewatch.imageio.isolated import DecodeAborted
from phasewatch.service.daemon import Daemon
from phasewatch.store import Store

make_daemon = test_daemon.make_daemon  # the in-process daemon fixture, shared
MAX_ATTEMPTS = 3  # [queue] max_attempts by default
BAD_SIDE = 24  # the bad file is 24 x 24; the good ones are 16 x 16


def is_bad(image: np.ndarray) -> bool:
    return image.shape[:2] == (BAD_SIDE, BAD_SIDE)


def wrap_reader(daemon: Daemon, pages: Callable[[Path, list[Page]], list[Page]]) -> None:
    """The daemon's isolated reader, with what it returns for each file passed through ``pages``."""
    real = daemon.decoder.read_pages

    def read(path: Any, *args: Any) -> list[Page]:
        return pages(Path(path), real(path, *args))

    daemon.decoder.read_pages = read  # type: ignore[method-assign]


def abort_decode(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    def pages(path: Path, read: list[Page]) -> list[Page]:
        if is_bad(read[0].image):
            raise DecodeAborted(path, "the decoder died reading it (killed by SIGKILL)")
        return read

    wrap_reader(daemon, pages)


def four_d_pixels(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    # what rdf.tif decoded to before the palette fix: (H, W, 2, 3)
    def pages(path: Path, read: list[Page]) -> list[Page]:
        if is_bad(read[0].image):
            return [Page(np.zeros((BAD_SIDE, BAD_SIDE, 2, 3), np.uint8), 0, None, "none")]
        return read

    wrap_reader(daemon, pages)


def failing_prepare(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    real = pipeline_module.prepare

    def prepare(image: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        if is_bad(image):
            raise FloatingPointError("percentiles of an image with no range")
        return real(image, *args, **kwargs)

    monkeypatch.setattr(pipeline_module, "prepare", prepare)


def failing_measure(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    real = pipeline_module.measure

    def measure(classes: np.ndarray, *args: Any) -> Any:
        if is_bad(classes):
            raise MemoryError("cannot allocate the particle table")
        return real(classes, *args)

    monkeypatch.setattr(pipeline_module, "measure", measure)


def unwritable_output(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    real = pipeline_module.write_field

    def write_field(out_dir: Path, stem: str, image: np.ndarray, *args: Any) -> Any:
        if is_bad(image):  # not a full or read-only disk: an output this file makes
            raise OutputError(errno.EINVAL, f"{out_dir / stem}.overlay.jpg: cannot write: Invalid argument")
        return real(out_dir, stem, image, *args)

    monkeypatch.setattr(pipeline_module, "write_field", write_field)


class RejectingBackend(ThresholdBackend):
    """Rejects a batch holding the bad file's input: a noise image has far more distinct
    values than the good files (two) or the daemon's test ramp (one per column)."""

    def run(self, batch: np.ndarray) -> np.ndarray:
        if np.unique(batch).size > 400:
            self.calls += 1
            raise ValueError("input rejected: values out of the calibrated range")
        return super().run(batch)


def noise(path: Path) -> None:
    tifffile.imwrite(path, np.random.default_rng(0).integers(0, 65535, (BAD_SIDE, BAD_SIDE), np.uint16))


def good_file(width: int) -> Callable[[Path], None]:
    return lambda path: tifffile.imwrite(path, half_bright(16, width))


def bad_file(path: Path) -> None:
    tifffile.imwrite(path, half_bright(BAD_SIDE, BAD_SIDE))


STEPS = {
    # step: (injection, the bad file, its reason ends with, attempts)
    "decode": (abort_decode, bad_file, "the decoder died reading it (killed by SIGKILL)", MAX_ATTEMPTS),
    "shape": (four_d_pixels, bad_file, "cannot segment: image must be H x W or H x W x 3, got shape (24, 24, 2, 3)",
              MAX_ATTEMPTS),
    "normalise": (failing_prepare, bad_file, "cannot segment: percentiles of an image with no range", MAX_ATTEMPTS),
    "backend": (None, noise, "cannot segment: input rejected: values out of the calibrated range", MAX_ATTEMPTS),
    "measure": (failing_measure, bad_file, "unexpected error while writing: cannot allocate the particle table",
                MAX_ATTEMPTS),
    "write": (unwritable_output, bad_file, "/bad.overlay.jpg: cannot write: Invalid argument", MAX_ATTEMPTS),
}


@pytest.mark.parametrize("step", STEPS)
def test_a_fault_of_one_file_fails_it_and_the_queue_moves_on(make_daemon, monkeypatch: pytest.MonkeyPatch,
                                                              step: str) -> None:
    inject, write_bad, reason, attempts = STEPS[step]
    daemon = make_daemon(RejectingBackend())
    if inject is not None:
        inject(daemon, monkeypatch)
    drop(daemon, "bad.tif", write_bad)
    drop(daemon, "good.tif", lambda p: tifffile.imwrite(p, half_bright(16, 16)))
    images = {Path(i["path"]).name: i for i in wait_for(lambda: finished(daemon, 2), "both results")}
    bad, good = images["bad.tif"], images["good.tif"]
    assert (bad["state"], bad["attempts"]) == ("failed", attempts), bad
    assert bad["error"].endswith(reason) and "\n" not in bad["error"]
    assert (good["state"], good["attempts"]) == ("done", 1)
    assert good["fractions"]["class1"] == pytest.approx(0.5)
    assert daemon.health() == (True, {})  # nothing was taken for a fault of the machine


class GatedBackend(RejectingBackend):
    """Holds its first call until ``gate`` is set, so that files pile up behind it."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.gate.wait(test_daemon.DEADLINE_S)
        return super().run(batch)


def test_a_failing_batch_of_several_files_is_split_until_the_culprit_is_alone(
        make_daemon, caplog: pytest.LogCaptureFixture) -> None:
    backend = GatedBackend()
    daemon = make_daemon(backend)
    drop(daemon, "first.tif", lambda p: tifffile.imwrite(p, half_bright(16, 16)))
    wait_for(lambda: daemon.infer.busy_since is not None, "inference to start (and wait at the gate)")
    names = ["good-1.tif", "good-2.tif", "bad.tif", "good-3.tif"]
    for width, name in enumerate(names, start=9):  # contents of their own: no duplicates
        drop(daemon, name, noise if name == "bad.tif" else good_file(2 * width))
    # all four decoded and waiting behind the held call: the next batch holds them all
    wait_for(lambda: daemon.store.counts_by_state()["processing"] == 5 and daemon._decoded.qsize() == 4,
             "the four files decoded behind the first")
    with caplog.at_level(logging.WARNING, logger="phasewatch.service.daemon"):
        backend.gate.set()
        images = {Path(i["path"]).name: i for i in wait_for(lambda: finished(daemon, 5), "every result")}
    assert "a batch of 4 files failed (input rejected: values out of the calibrated range); " \
           "trying them in halves to find the one at fault" in caplog.messages
    assert (images["bad.tif"]["state"], images["bad.tif"]["attempts"]) == ("failed", MAX_ATTEMPTS)
    for name in ["first.tif", *names]:
        if name != "bad.tif":
            assert (images[name]["state"], images[name]["attempts"]) == ("done", 1), images[name]
    assert daemon.health() == (True, {})


def test_partial_outputs_left_by_a_death_are_removed_at_start(make_daemon, tmp_path: Path) -> None:
    # Issue 21, also found 9: a kill -9 while writing left ".NAME.json.*.tmp" for ever.
    watched = tmp_path / "watch" / "a.tif"
    tifffile.imwrite(watched, half_bright(16, 16))
    store = Store(tmp_path / "data" / "phasewatch.sqlite3")
    st = watched.stat()
    row = store.enqueue(watched, st.st_size, st.st_mtime_ns, sha256_file(watched))
    store.claim_next()  # in work when the service died
    store.close()
    results = tmp_path / "data" / "results" / f"{row['id']:06d}"
    results.mkdir(parents=True)
    leftovers = [results / ".a.json.1a2b3c4d.tmp", results / ".a.classes.tif.partial"]
    for leftover in leftovers:
        leftover.write_bytes(b"half")
    daemon = make_daemon()
    (image,) = wait_for(lambda: finished(daemon, 1), "the interrupted file's result")
    assert image["state"] == "done"
    assert not any(leftover.exists() for leftover in leftovers)
    assert not list(results.glob(".*"))
