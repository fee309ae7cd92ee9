"""The demo's simulated microscope: drawn micrographs of known truth, written like a capture.

A :class:`Microscope` is a thread that writes a newly drawn field (:mod:`synthetic`) into
a watch folder every few seconds, as a TIFF with an ImageJ pixel size, and its truth (true
area fraction per class name) as JSON into another folder, never the watch folder, where
the service would take it for a micrograph. Both are written atomically (a dot-named
temporary file renamed into place, ``outputs.write_bytes_atomic``): the watcher ignores
dot-files, so it never sees half a field, and the truth is in place before its field.

Field ``n`` (1, 2, ...) is drawn from seed ``n``; :func:`calibration_seeds` are seeds
the microscope never uses, so the fields a model's trust is calibrated on are never
the fields it is then judged on.
"""

from __future__ import annotations

import io
import itertools
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from phasewatch.atomic_files import write_bytes_atomic, write_json_atomic
from phasewatch.core.synthetic import Material

# Far above any field number a demo reaches (a field every second for 30 years).
CALIBRATION_SEED_BASE = 10**9
FIELD_PREFIX = "field-"


def calibration_seeds(count: int) -> range:
    """Seeds for drawing calibration fields, disjoint from every microscope field's."""
    return range(CALIBRATION_SEED_BASE, CALIBRATION_SEED_BASE + count)


def tiff_bytes(image: np.ndarray, pixel_size_um: float) -> bytes:
    """``image`` as a TIFF whose ImageJ metadata carry the pixel size, as microscope
    software writes it (so the service reads the scale from the file)."""
    buffer = io.BytesIO()
    scale = 1.0 / pixel_size_um
    tifffile.imwrite(buffer, image, imagej=True, resolution=(scale, scale), metadata={"unit": "um"})
    return buffer.getvalue()


Truth = dict[str, Any]


def capture(material: Material, seed: int, path: Path, record_truth: Callable[[Truth], None] | None = None,
            ) -> np.ndarray:
    """Draw the field of ``seed``, hand its truth to ``record_truth`` (when given) and then
    write the field atomically to ``path``; the field's labels."""
    image, labels = material.draw(seed)
    if record_truth is not None:
        record_truth(truth_record(material, seed, path.name, labels))
    write_bytes_atomic(path, tiff_bytes(image, material.pixel_size_um))
    return labels


def truth_record(material: Material, seed: int, name: str, labels: np.ndarray) -> Truth:
    """What the truth file of a drawn field says."""
    return {"file": name, "material": material.name, "seed": seed, "pixel_size_um": material.pixel_size_um,
            "main_phase": material.main_phase, "fractions": material.true_fractions(labels)}


def fields_in(truth_dir: Path) -> int:
    """How many fields a microscope has written into ``truth_dir`` before (a workspace
    used again goes on numbering, so no field repeats an earlier one's content)."""
    return len(list(truth_dir.glob(f"{FIELD_PREFIX}*.json")))


class Microscope:
    """Writes field after field of ``material`` into ``watch_dir`` every ``interval_s``
    seconds, the first at once, numbering on from ``first``; stops after ``count`` fields
    (None: only at :meth:`stop`). Each field's truth goes to ``truth_dir/NAME.json`` and to
    ``on_truth``, before the field itself appears."""

    def __init__(self, material: Material, watch_dir: Path, truth_dir: Path, interval_s: float,
                 count: int | None = None, first: int = 1, on_truth: Callable[[Truth], None] | None = None) -> None:
        self.material, self.watch_dir, self.truth_dir = material, watch_dir, truth_dir
        self.interval_s, self.count, self.first, self.on_truth = interval_s, count, first, on_truth
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="microscope", daemon=True)

    def start(self) -> None:
        self.watch_dir.mkdir(parents=True, exist_ok=True)
        self.truth_dir.mkdir(parents=True, exist_ok=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop capturing; a field being written is finished first."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        numbers = itertools.count(self.first) if self.count is None else range(self.first, self.first + self.count)
        for number in numbers:
            if number != self.first and self._stop.wait(self.interval_s):
                return
            capture(self.material, number, self.watch_dir / f"{FIELD_PREFIX}{number:04d}.tif", self._record_truth)

    def _record_truth(self, truth: Truth) -> None:
        write_json_atomic(self.truth_dir / f"{Path(truth['file']).stem}.json", truth)
        if self.on_truth is not None:
            self.on_truth(truth)
