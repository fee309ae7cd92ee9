"""The daemon (src/phasewatch/service/daemon.py) in process, with a fake backend whose class map is known by hand.

The fake backend labels a pixel class 1 where the normalised input is above 0 (brighter
than the manifest's mean of 0.5) and class 0 elsewhere; the logits of a pixel do not
depend on the tile it is seen in, so the stitched class map is exact and fractions of
half-bright images are exact too.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from flask import Flask
from onnx_graphs import make_bundle

import phasewatch.core.pipeline as pipeline_module
from phasewatch.app.cli import main
from phasewatch.atomic_files import OutputError
from phasewatch.bundle import load_bundle
from phasewatch.core.measure import combine_pages
from phasewatch.core.pipeline import Model, open_model, tile_plan
from phasewatch.service import sdnotify
from phasewatch.service.config import load_config
from phasewatch.service.daemon import Daemon
from phasewatch.service.logs import FIELDS_ATTR
from phasewatch.service.stages import BACKOFF_MAX_S, Backoff
from phasewatch.store import Store
from phasewatch.webui.app import AppContext, create_app
from phasewatch.webui.events import EventBroker

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
def make_daemon(tmp_path: Path):
    """``make(backend, config_text, models)`` starts a daemon on a real store and watch folder,
    with the tiny bundle on ``backend``, or with what the model factory ``models`` opens."""
    bundle = load_bundle(make_bundle(tmp_path / "bundle"))
    (tmp_path / "watch").mkdir()
    config_file = tmp_path / "phasewatch.toml"
    started: list[tuple[Daemon, Store]] = []

    def make(backend: Any = None, config_text: str = "", models: Callable[[], Model] | None = None) -> Daemon:
        backend = backend or ThresholdBackend()
        config_file.write_text('[watch]\nsettle_s = 0.05\n' + config_text)
        config = load_config(config_file, {"watch": tmp_path / "watch", "data": tmp_path / "data"})
        store = Store(config.data.database, max_attempts=config.queue.max_attempts)
        daemon = Daemon(config, store, models or (lambda: Model(bundle, backend)))
        daemon.start()
        started.append((daemon, store))
        return daemon

    yield make
    for daemon, store in started:
        daemon.stop()
        store.close()


def finished(daemon: Daemon, count: int) -> list[dict[str, Any]] | None:
    images = daemon.store.list_images(100)
    done = [i for i in images if i["state"] in ("done", "failed")]
    return images if len(done) >= count else None


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
    assert names == ["stack.p0000.classes.png", "stack.p0000.json", "stack.p0000.overlay.jpg",
                     "stack.p0000.unsure.png", "stack.p0001.classes.png", "stack.p0001.json",
                     "stack.p0001.overlay.jpg", "stack.p0001.unsure.png", "stack.preview.jpg"]


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


def test_each_processed_image_is_one_info_line_with_its_result_and_seconds(make_daemon, caplog) -> None:
    caplog.set_level(logging.INFO, logger="phasewatch.service.daemon")
    daemon = make_daemon()
    drop(daemon, "header-only.tif", lambda p: p.write_bytes(b"II*\x00garbage"))
    drop(daemon, "good.tif", lambda p: tifffile.imwrite(p, half_bright(16, 16)))

    def lines() -> list[logging.LogRecord] | None:
        found = [r for r in caplog.records if r.levelno == logging.INFO and " in " in r.getMessage()
                 and r.getMessage().split(":")[0] in ("header-only.tif", "good.tif")]
        return found if len(found) >= 2 else None

    records = wait_for(lines, "two processed-image lines")
    by_name = {r.getMessage().split(":")[0]: r for r in records}
    assert len(records) == 2 and set(by_name) == {"header-only.tif", "good.tif"}
    for name, result in (("header-only.tif", "failed"), ("good.tif", "done")):
        fields = getattr(by_name[name], FIELDS_ATTR)  # the structured fields the JSON log format writes
        assert (fields["image"], fields["result"]) == (name, result)
        assert 0 < fields["seconds"] < 60
        assert re.fullmatch(rf"{re.escape(name)}: {result} in \d+\.\d\d s", by_name[name].getMessage())


def test_backend_error_requeues_without_spending_an_attempt(make_daemon) -> None:
    # The file's call and the daemon's test ramp both fail: the backend's fault, not the file's.
    backend = ThresholdBackend(failures=2)
    daemon = make_daemon(backend)
    drop(daemon, "a.tif", lambda p: tifffile.imwrite(p, half_bright(16, 16)))
    problem = wait_for(lambda: daemon.health()[1].get("backend"), "the backend problem to show")
    assert problem == "fake: device lost"
    (image,) = wait_for(lambda: finished(daemon, 1), "the retried result")
    assert image["state"] == "done" and image["attempts"] == 1
    assert image["fractions"]["class1"] == pytest.approx(0.5)
    assert "backend" not in daemon.health()[1]


def test_a_backend_error_on_one_file_only_costs_that_file_an_attempt(make_daemon) -> None:
    # Only the file's call fails; the test ramp after it passes: charged to the file, tried again.
    backend = ThresholdBackend(failures=1)
    daemon = make_daemon(backend)
    drop(daemon, "a.tif", lambda p: tifffile.imwrite(p, half_bright(16, 16)))
    (image,) = wait_for(lambda: finished(daemon, 1), "the retried result")
    assert image["state"] == "done" and image["attempts"] == 2
    assert backend.calls == 3  # the file, the ramp, the file again
    assert daemon.health() == (True, {})


def test_full_disk_is_retried_and_recovers(make_daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write_field = pipeline_module.write_field
    calls = []

    def write_field_once_full(out_dir: Path, stem: str, *args: Any) -> Any:
        calls.append(stem)
        if len(calls) == 1:
            raise OutputError(errno.ENOSPC, f"{out_dir / stem}: No space left on device")
        return real_write_field(out_dir, stem, *args)

    # Fault injection: the first write of the pictures meets a full disk.
    monkeypatch.setattr(pipeline_module, "write_field", write_field_once_full)
    daemon = make_daemon()
    drop(daemon, "a.tif", lambda p: tifffile.imwrite(p, half_bright(16, 16)))
    assert "No space left" in wait_for(lambda: daemon.health()[1].get("disk"), "the disk problem to show")
    (image,) = wait_for(lambda: finished(daemon, 1), "the retried result")
    assert image["state"] == "done" and image["attempts"] == 1
    assert calls == ["a", "a"]
    assert "disk" not in daemon.health()[1]


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


class GatedBackend(ThresholdBackend):
    """Every pixel ``label``; the first ``run`` blocks until ``gate`` is set (an inference in
    progress, or a hung device call when the gate never opens)."""

    def __init__(self, name: str, label: int) -> None:
        super().__init__()
        self.name, self.label = name, label
        self.gate = threading.Event()

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls == 1:
            self.gate.wait()
        logits = np.zeros((len(batch), 3, *batch.shape[2:]), np.float32)
        logits[:, self.label] = 1.0
        return logits


class HeadBackend(ThresholdBackend):
    """A backend of any size with the post-processing in its graph (``backends.base.fused_head``):
    class 1 where the input is above 0, every pixel certain."""

    any_size, has_head = True, True

    def __init__(self) -> None:
        super().__init__()
        self.head_calls = 0

    def run_head(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.head_calls += 1
        above = (batch[:, 0] > 0).astype(np.uint8)
        return above, np.full_like(above, 255)


def test_the_daemon_runs_the_head_in_the_graph_as_the_engine_does(make_daemon) -> None:
    # issue 25: the stage's progress wrapper hid the head, so the daemon ran the plain model and
    # NumPy's argmax and margin per field where the bare engine did not
    bundle, backend = load_bundle("superalloy"), HeadBackend()  # a bundle of any size: fields in one pass
    daemon = make_daemon(models=lambda: Model(bundle, backend, tile_plan(bundle, backend, 2.0)))
    drop(daemon, "half.tif", lambda p: tifffile.imwrite(p, half_bright(64, 96)))
    (image,) = wait_for(lambda: finished(daemon, 1), "the result")
    assert image["state"] == "done", image["error"]
    assert (backend.head_calls, backend.calls) == (1, 0)


class CallGates(ThresholdBackend):
    """Call ``n`` (1-based) waits for ``gates[n]`` where there is one."""

    def __init__(self, gated: tuple[int, ...]) -> None:
        super().__init__()
        self.gates = {n: threading.Event() for n in gated}

    def run(self, batch: np.ndarray) -> np.ndarray:
        gate = self.gates.get(self.calls + 1)
        if gate is not None:
            gate.wait(DEADLINE_S)
        return super().run(batch)


def test_a_file_is_written_while_the_next_of_its_batch_is_segmented(make_daemon) -> None:
    # issue 25: the infer stage hands each file on when it is segmented; it used to hold every file
    # of a batch until the last was done, so their writes all came after the burst's inference
    backend = CallGates(gated=(1, 3))  # one tile per call: 1 = first.tif, 2 = second.tif, 3 = third.tif
    daemon = make_daemon(backend, "[model]\nbatch = 1\n")
    drop(daemon, "first.tif", lambda p: tifffile.imwrite(p, half_bright(16, 16)))
    wait_for(lambda: daemon.infer.busy_since is not None, "first.tif in the infer stage")
    for name, width in (("second.tif", 17), ("third.tif", 18)):  # other content: not duplicates
        drop(daemon, name, lambda p, w=width: tifffile.imwrite(p, half_bright(16, w)))
    wait_for(lambda: daemon._decoded.qsize() == 2, "second and third decoded, waiting for inference together")
    backend.gates[1].set()
    state = lambda: {Path(i["path"]).name: i["state"] for i in daemon.store.list_images(10)}  # noqa: E731
    wait_for(lambda: state()["second.tif"] == "done", "second.tif done while third.tif is in the backend")
    assert state()["third.tif"] == "processing" and backend.calls == 2
    backend.gates[3].set()
    wait_for(lambda: finished(daemon, 3), "all three")
    assert set(state().values()) == {"done"}


def test_segment_command_and_daemon_record_the_same_for_the_same_file(make_daemon, tmp_path: Path) -> None:
    bundle_dir = tmp_path / "bundle"  # the fixture's tiny ONNX bundle, on the real CPU backend
    daemon = make_daemon(models=lambda: open_model(str(bundle_dir), "cpu"))

    def write_stack(path: Path) -> None:
        rng = np.random.default_rng(3)
        with tifffile.TiffWriter(path) as tif:
            tif.write(rng.integers(0, 256, (48, 40), np.uint8), resolution=(4.0, 4.0), resolutionunit="MICROMETER")
            tif.write(rng.integers(0, 256, (48, 40), np.uint8))

    path = drop(daemon, "stack.tif", write_stack)
    (image,) = wait_for(lambda: finished(daemon, 1), "the daemon's result")
    assert image["state"] == "done"
    out = tmp_path / "segment-out"
    assert main(["segment", str(path), "--model", str(bundle_dir), "--out", str(out), "--backend", "cpu"]) == 0

    served_dir = daemon.config.data.results_dir / f"{image['id']:06d}"
    assert sorted(p.name for p in served_dir.iterdir()) == sorted(p.name for p in out.iterdir())
    pages = []
    for stem in ("stack.p0000", "stack.p0001"):
        served = json.loads((served_dir / f"{stem}.json").read_text())
        segmented = json.loads((out / f"{stem}.json").read_text())
        assert served.keys() == segmented.keys()
        assert served["timing_ms"].keys() == segmented["timing_ms"].keys() == {"decode", "segment", "measure"}
        assert {k: v for k, v in served.items() if k != "timing_ms"} == \
            {k: v for k, v in segmented.items() if k != "timing_ms"}
        pages.append(segmented)
    assert image["fractions"] == pytest.approx(combine_pages(pages)["fractions"])


def test_reload_in_flight_records_each_field_under_the_model_that_segmented_it(
        make_daemon, tmp_path: Path) -> None:
    old = Model(load_bundle(make_bundle(tmp_path / "old", name="old")), GatedBackend("old-backend", label=1))
    new = Model(load_bundle(make_bundle(tmp_path / "new", name="new")), GatedBackend("new-backend", label=0))
    new.backend.gate.set()
    loads = iter([old, new])
    daemon = make_daemon(models=lambda: next(loads))

    drop(daemon, "first.tif", lambda p: tifffile.imwrite(p, half_bright(16, 16)))
    wait_for(lambda: old.backend.calls, "the first field to be in inference")
    for name in ("second.tif", "third.tif"):
        drop(daemon, name, lambda p: tifffile.imwrite(p, half_bright(16, 16) // 2 + len(p.name)))
    wait_for(lambda: daemon.store.counts_by_state()["processing"] == 3, "all three files in flight")
    daemon.reload_model()  # SIGHUP while the first field is inside the old backend
    old.backend.gate.set()

    images = {Path(i["path"]).name: i for i in wait_for(lambda: finished(daemon, 3), "three results")}
    assert daemon.model is new
    for name, (model, backend, class1) in {"first.tif": ("old", "old-backend", 1.0),
                                            "second.tif": ("new", "new-backend", 0.0),
                                            "third.tif": ("new", "new-backend", 0.0)}.items():
        image = images[name]
        assert image["state"] == "done"
        assert (image["measurement"]["model"], image["measurement"]["backend"]) == (model, backend), name
        assert image["fractions"]["class1"] == class1, name  # the labels say who really segmented it


def test_a_stage_stuck_in_the_backend_fails_healthz_and_stops_watchdog_pings(
        make_daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    hung = GatedBackend("hung", label=1)
    stall_s = 0.5
    daemon = make_daemon(hung, config_text=f"[workers]\nstall_timeout_s = {stall_s}\n")
    app = create_app(AppContext(store=daemon.store, events=EventBroker(), status=daemon.status,
                                health=daemon.health_report, metrics=daemon.metrics.render,
                                target_ra=0.1, data_dir=daemon.config.data.dir))
    pings: list[float] = []  # arrival times, read at once: systemd never leaves pings queued
    listening = threading.Event()
    listener = threading.Thread(target=receive_pings, args=(notify, pings, listening))
    listener.start()
    watchdog = sdnotify.Watchdog(healthy=daemon.alive, interval_s=0.1)
    watchdog.start()
    try:
        assert app.test_client().get("/healthz").status_code == 200
        drop(daemon, "a.tif", lambda p: tifffile.imwrite(p, half_bright(16, 16)))
        wait_for(lambda: hung.calls, "the backend call to hang")
        stuck_at = time.monotonic()
        problem = wait_for(lambda: daemon.health()[1].get("worker"), "the stuck stage to be reported")
        assert time.monotonic() - stuck_at < stall_s + 1.0
        assert problem.startswith("infer stage stuck: no progress for ")
        response = app.test_client().get("/healthz")
        assert response.status_code == 503 and response.get_json()["problems"]["worker"].startswith("infer stage")
        reported_at = time.monotonic()
        time.sleep(0.5)  # ten watchdog periods
        assert pings[0] < stuck_at  # it pinged while healthy ...
        assert [t for t in pings if t > reported_at + 0.1] == []  # ... and not once the stall showed
    finally:
        watchdog.stop()
        hung.gate.set()  # let the stage drain so the daemon can stop
        listening.set()
        listener.join()
        notify.close()
    (image,) = wait_for(lambda: finished(daemon, 1), "the released field's result")
    assert image["state"] == "done"
    assert wait_for(lambda: daemon.alive(), "the stage to report progress again")


def receive_pings(sock: socket.socket, pings: list[float], done: threading.Event) -> None:
    sock.settimeout(0.05)
    while not done.is_set():
        with contextlib.suppress(TimeoutError):
            if sock.recv(64) == b"WATCHDOG=1":
                pings.append(time.monotonic())


def web_app(daemon: Daemon) -> Flask:
    """The web app over a running daemon, as ``serve`` wires it."""
    return create_app(AppContext(store=daemon.store, events=EventBroker(), status=daemon.status,
                                 health=daemon.health_report, metrics=daemon.metrics.render,
                                 target_ra=0.1, data_dir=daemon.config.data.dir))


def test_a_file_name_that_is_not_utf8_is_processed_and_shown(make_daemon) -> None:
    daemon = make_daemon()
    # Latin-1 names, as an SMB client writes them: Python gives them with surrogate escapes.
    good = drop(daemon, os.fsdecode(b"caf\xe9.tif"), lambda p: tifffile.imwrite(p, half_bright(16, 16)))
    bad = drop(daemon, os.fsdecode(b"cass\xe9.tif"), lambda p: p.write_bytes(b"II*\x00garbage"))
    images = {i["path"]: i for i in wait_for(lambda: finished(daemon, 2), "both results")}
    assert images[str(good)]["state"] == "done"
    assert images[str(good)]["fractions"]["class1"] == pytest.approx(0.5)
    assert images[str(bad)]["state"] == "failed"
    assert images[str(bad)]["error"] == f"{daemon.config.watch.dir}/cass\ufffd.tif: no image in the file"
    drop(daemon, "next.tif", lambda p: tifffile.imwrite(p, half_bright(16, 16)))
    assert wait_for(lambda: finished(daemon, 3), "the next file's result")[0]["state"] == "done"

    app = web_app(daemon)
    response = app.test_client().get("/api/images")
    assert response.status_code == 200
    shown = {i["id"]: i for i in response.get_json()}
    good_json, bad_json = shown[images[str(good)]["id"]], shown[images[str(bad)]["id"]]
    assert (good_json["file"], bad_json["file"]) == ("caf\ufffd.tif", "cass\ufffd.tif")
    assert good_json["path"] == f"{daemon.config.watch.dir}/caf\ufffd.tif"
    assert bad_json["error"] == images[str(bad)]["error"]
    for kind in ("classes", "overlay"):
        assert app.test_client().get(good_json["pictures"][kind]).status_code == 200, kind


@pytest.mark.parametrize("url", ["/api/images/1/preview.jpg", "/export.csv"])
def test_the_preview_and_the_csv_of_a_file_name_that_is_not_utf8(make_daemon, url: str) -> None:
    daemon = make_daemon()
    drop(daemon, os.fsdecode(b"caf\xe9.tif"), lambda p: tifffile.imwrite(p, half_bright(16, 16)))
    (image,) = wait_for(lambda: finished(daemon, 1), "the result")
    assert image["id"] == 1 and image["state"] == "done"
    assert web_app(daemon).test_client().get(url).status_code == 200


def test_an_idle_service_reloads_its_model_without_waiting_for_a_field(make_daemon, tmp_path: Path) -> None:
    first = Model(load_bundle(make_bundle(tmp_path / "first", name="first")), ThresholdBackend())
    second = Model(load_bundle(make_bundle(tmp_path / "second", name="second")), ThresholdBackend())
    loads = iter([first, second])
    daemon = make_daemon(models=lambda: next(loads))
    daemon.reload_model()
    wait_for(lambda: daemon.model is second, "the reload with no field in the queue")
    assert daemon.status()["model"] == "second"
