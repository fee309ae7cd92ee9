"""``phasewatch demo``: the appliance in one command, on micrographs whose truth is known.

It runs the service itself (``serve.start_service``: store, daemon, web page) on a
temporary workspace, with a simulated microscope (:mod:`microscope`) that writes a newly
drawn micrograph of the model's material into the watch folder every few seconds and its
true phase fractions beside the watch folder, so the page fills with overlays and
statistics while the terminal prints each field's measured against true main-phase
fraction. Ctrl-C or SIGTERM stops it and removes the workspace (one given with
``--workspace`` is kept).

Trust, honestly. A bundled model's trust is calibrated on its real training images, and a
drawn micrograph is unlike all of them (it was drawn, not imaged): the service would flag
every field and keep it out of the statistics. So the demo first checks on a few drawn
micrographs (seeds the microscope never uses) that the model agrees with their truth on
at least 90 % of the pixels, and then calibrates a copy of the bundle in the workspace on
them (``calibration.calibrate_bundle``): the page then judges each new field against the
demo microscope's own images, and the copy's manifest says so. Where the model's own
calibration already trusts the drawn micrographs (the ebc model does), it is kept. The
bundled files are only read.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from phasewatch.app.wiring import ServiceError, start_service, stop_service
from phasewatch.backends.registry import KINDS
from phasewatch.bundle import Bundle, load_bundle, write_manifest
from phasewatch.core.microscope import Microscope, Truth, calibration_seeds, capture, fields_in
from phasewatch.core.pipeline import decode_file, open_model, segment_files
from phasewatch.core.synthetic import MATERIALS, Material, material_for
from phasewatch.core.trust import assess, unsure_fraction
from phasewatch.core.trust_calibration import calibrate_bundle
from phasewatch.errors import PhasewatchError
from phasewatch.service.config import (
    Config,
    DataConfig,
    LoggingConfig,
    ModelConfig,
    ServerConfig,
    WatchConfig,
    WorkersConfig,
)
from phasewatch.service.logs import setup_logging
from phasewatch.store import Store

CALIBRATION_FIELDS = 4  # trust.calibrate needs 3; each costs two segmentations at start
MIN_AGREEMENT = 0.9  # below this the drawn fields are no fair test of the model
POLL_S = 0.5  # how often the terminal looks for finished fields
SETTLE_S = 0.2  # the microscope renames each field into place: it is complete when it appears
# Decoded pixels waiting for inference: a stop finishes those, so a small budget keeps
# Ctrl-C prompt whatever the microscope has written ahead of the model.
IN_FLIGHT_MEGAPIXELS = 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="superalloy",
                        help=f"bundle folder or bundled model name whose material the demo can draw "
                             f"({', '.join(MATERIALS)}; default superalloy)")
    parser.add_argument("--port", type=int, default=8650, help="port of the page (default 8650; 0: any free port)")
    parser.add_argument("--interval", type=float, default=5.0, metavar="SECONDS",
                        help="seconds between two fields of the microscope (default 5)")
    parser.add_argument("--fields", type=int, default=None, metavar="N",
                        help="stop the microscope after N fields (default: at Ctrl-C); the page stays up")
    parser.add_argument("--workspace", type=Path, default=None, metavar="DIR",
                        help="keep the watch folder, truth, model copy and database here "
                             "(default: a temporary folder, removed at exit)")
    parser.add_argument("--backend", choices=KINDS, default="auto")


def run(args: argparse.Namespace) -> int:
    if args.interval <= 0 or (args.fields is not None and args.fields < 1) or not 0 <= args.port <= 65535:
        print("phasewatch demo: --interval must be > 0, --fields >= 1 and --port 0-65535", file=sys.stderr)
        return 2
    try:
        bundle = load_bundle(args.model)
    except PhasewatchError as exc:
        print(f"phasewatch demo: {exc}", file=sys.stderr)
        return 2
    material = material_for([c.name for c in bundle.classes])
    if material is None:
        print(f"phasewatch demo: the demo draws {' or '.join(MATERIALS)} micrographs; {bundle.name}'s classes "
              f"({', '.join(c.name for c in bundle.classes)}) are none of them", file=sys.stderr)
        return 2
    # Ctrl-C and SIGTERM only ask the demo to stop, so that it always stops in order and
    # removes its workspace: a preparation step under way is finished first (seconds).
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with _workspace(args.workspace) as workspace:
        try:
            return _demo(args, bundle, material, workspace, stop)
        except (PhasewatchError, OSError) as exc:
            print(f"phasewatch demo: {exc}", file=sys.stderr)
            return 1


def _percent(fraction: float, digits: int = 1) -> str:
    return f"{100 * fraction:.{digits}f} %"


def _say(text: str) -> None:
    # flushed at once: the terminal (or a test reading the pipe) follows the demo live
    print(text, flush=True)


@contextlib.contextmanager
def _workspace(given: Path | None) -> Iterator[Path]:
    """The given folder (created, kept), else a temporary one removed at the end."""
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        _say(f"workspace: {given.resolve()} (kept)")
        yield given.resolve()
        return
    path = Path(tempfile.mkdtemp(prefix="phasewatch-demo-"))
    _say(f"workspace: {path} (removed at exit)")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        _say(f"removed {path}")


def _demo(args: argparse.Namespace, bundle: Bundle, material: Material, workspace: Path,
          stop: threading.Event) -> int:
    model_ref = _trusted_model(bundle, material, workspace, args.backend)
    if stop.is_set():
        return 0
    config = Config(
        watch=WatchConfig(dir=workspace / "microscope", settle_s=SETTLE_S),
        data=DataConfig(dir=workspace / "data"),
        model=ModelConfig(path=str(model_ref), backend=args.backend),
        workers=WorkersConfig(in_flight_megapixels=IN_FLIGHT_MEGAPIXELS),
        server=ServerConfig(port=args.port),  # loopback, no token
        logging=LoggingConfig(level="WARNING"),  # the terminal is the demo's; problems still show
    )
    truth_dir = workspace / "truth"
    config.watch.dir.mkdir(parents=True, exist_ok=True)
    setup_logging(config.logging.level)
    try:
        service = start_service(config)
    except ServiceError as exc:
        print(f"phasewatch demo: {exc}", file=sys.stderr)
        return 1
    microscope: Microscope | None = None
    try:
        notes = _TruthNotes(service.store, material, truth_dir)
        microscope = Microscope(material, config.watch.dir, truth_dir, args.interval, args.fields,
                                first=fields_in(truth_dir) + 1, on_truth=notes.add)
        _announce(service.url, material, args, truth_dir)
        report = _Report(service.store, truth_dir, material, args.fields)
        microscope.start()
        while not stop.wait(POLL_S):
            report.poll()
    finally:
        _say("stopping: finishing the fields in hand")
        if microscope is not None:
            microscope.stop()
        stop_service(service)
    return 0


def _announce(url: str, material: Material, args: argparse.Namespace, truth_dir: Path) -> None:
    rule = "=" * (len(url) + 24)
    _say(f"\n{rule}\n  the page: open {url}\n{rule}")
    count = f"{args.fields} fields" if args.fields else "fields until Ctrl-C"
    _say(f"microscope: a drawn {material.name} field every {args.interval:g} s, {count}; "
         f"their truth in {truth_dir}")
    _say("Ctrl-C stops the demo\n")


def _trusted_model(bundle: Bundle, material: Material, workspace: Path, backend: str) -> Path:
    """The bundle to serve: a copy in ``workspace`` calibrated on drawn micrographs when
    its own calibration flags them and the model agrees with their truth well enough,
    else the bundle itself."""
    folder = workspace / "calibration"
    folder.mkdir(parents=True, exist_ok=True)
    seeds = calibration_seeds(CALIBRATION_FIELDS)
    paths = [folder / f"calibration-{seed}.tif" for seed in seeds]
    truths = [capture(material, seed, path) for seed, path in zip(seeds, paths, strict=True)]
    _say(f"model {bundle.name}: segmenting {len(paths)} drawn {material.name} micrographs to check it and "
         "calibrate its trust ...")
    agreement, flagged = _check(bundle, paths, truths, backend)
    _say(f"model {bundle.name} agrees with their truth on {_percent(agreement)} of the pixels "
         f"(the demo needs >= {_percent(MIN_AGREEMENT, 0)}); its own calibration (its training images) flags "
         f"{flagged} of {len(paths)}")
    if agreement < MIN_AGREEMENT or not flagged:
        why = "it trusts the drawn micrographs" if flagged == 0 else "the model is no match for the drawn truth"
        _say(f"trust: {bundle.name}'s own calibration judges each field ({why})")
        return bundle.path
    copy = workspace / "model"
    shutil.copytree(bundle.path, copy, dirs_exist_ok=True)
    write_manifest(copy, {**bundle.manifest, "name": f"{bundle.name} (demo calibration)"})
    model = open_model(copy, backend)
    try:
        calibrate_bundle(model, paths, f"demo microscope: {len(paths)} drawn {material.name} micrographs "
                                       f"(phasewatch demo, seeds {seeds.start}-{seeds.stop - 1})")
    finally:
        model.close()
    _say(f"trust: the demo's copy of {bundle.name} ({copy}) is calibrated on these drawn micrographs, "
         "not on its training images, so the page judges each field against the demo microscope's own")
    return copy


def _check(bundle: Bundle, paths: list[Path], truths: list[np.ndarray], backend: str) -> tuple[float, int]:
    """The share of pixels where ``bundle``'s model agrees with the truth over ``paths``,
    and how many of them its own trust calibration flags."""
    model = open_model(bundle.path, backend)
    try:
        maps = [s.maps[0] for s in segment_files([decode_file(p) for p in paths], model)]
    finally:
        model.close()
    agreement = float(np.mean([np.mean(m.classes == t) for m, t in zip(maps, truths, strict=True)]))
    flagged = sum(not assess(m.features, unsure_fraction(m.margin), bundle)["ok"] for m in maps)
    return agreement, flagged


class _Report:
    """Prints each field of this run as it ends: measured against true main-phase fraction
    and the trust verdict, read from the store and the truth files."""

    def __init__(self, store: Store, truth_dir: Path, material: Material, expected: int | None) -> None:
        self.store, self.truth_dir, self.material, self.expected = store, truth_dir, material, expected
        newest = store.list_images(limit=1)
        self.after = newest[0]["id"] if newest else 0  # fields of an earlier run in the same workspace
        self.reported: set[int] = set()
        self.errors: list[float] = []

    def poll(self) -> None:
        for image in reversed(self.store.list_images(limit=100)):
            if image["id"] > self.after and image["id"] not in self.reported and image["state"] in ("done", "failed"):
                self.reported.add(image["id"])
                _say(self._line(image))
                if len(self.reported) == self.expected:
                    self._summary()

    def _line(self, image: dict[str, Any]) -> str:
        name = Path(image["path"]).name
        if image["state"] == "failed":
            return f"{name}  failed: {image['error']}"
        phase = self.material.main_phase
        measured = image["fractions"][phase]
        trust = image["trust"] or {}
        verdict = "trusted" if trust.get("ok") else "FLAGGED: " + "; ".join(trust.get("reasons", []))
        truth = self._truth(name)
        if truth is None:
            return f"{name}  {phase}: measured {_percent(measured)} (no truth)  {verdict}"
        true = truth["fractions"][phase]
        self.errors.append(measured - true)
        return (f"{name}  {phase}: measured {_percent(measured):>6}  true {_percent(true):>6}  "
                f"({100 * (measured - true):+.1f} points)  {verdict}")

    def _truth(self, name: str) -> dict[str, Any] | None:
        try:
            truth: dict[str, Any] = json.loads((self.truth_dir / f"{Path(name).stem}.json").read_text())
        except (OSError, ValueError):
            return None
        return truth

    def _summary(self) -> None:
        if self.errors:
            _say(f"{len(self.reported)} fields done: measured - true {self.material.main_phase} fraction "
                 f"{100 * float(np.mean(self.errors)):+.1f} points on average "
                 f"(largest {100 * max(self.errors, key=abs):+.1f}); the page stays up until Ctrl-C")


class _TruthNotes:
    """The demo specimen, whose notes say the true main-phase fraction of the fields drawn
    so far: the page shows a specimen's notes beside its statistics, so measured and true
    stand side by side there. Each field's truth is added before the field is written, so
    the notes are in place when its result reaches the page."""

    SHOWN = 6  # the newest fields listed one by one, as the page's recent fields

    def __init__(self, store: Store, material: Material, truth_dir: Path) -> None:
        self.store, self.material, self.truth_dir = store, material, truth_dir
        self.specimen_id = store.start_specimen(f"demo microscope: drawn {material.name} fields",
                                                notes=f"known truth in {truth_dir}")
        self.values: list[tuple[str, float]] = []

    def add(self, truth: Truth) -> None:
        self.values.append((Path(truth["file"]).stem, truth["fractions"][self.material.main_phase]))
        self.store.update_specimen(self.specimen_id, notes=self._text())

    def _text(self) -> str:
        mean = float(np.mean([value for _, value in self.values]))
        newest = ", ".join(f"{name} {_percent(value)}" for name, value in reversed(self.values[-self.SHOWN:]))
        more = ", ..." if len(self.values) > self.SHOWN else ""
        return (f"known truth: {self.material.main_phase} {_percent(mean)} on average over the "
                f"{len(self.values)} fields drawn ({newest}{more}); truth files in {self.truth_dir}")
