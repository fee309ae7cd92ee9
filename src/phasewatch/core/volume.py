"""Volumes: stacks of slices segmented as one specimen, streamed slice by slice.

What is a volume (``phasewatch segment``):

* a multi-page TIFF whose metadata call it a Z stack: ImageJ ``slices`` > 1, or OME-TIFF
  ``SizeZ`` > 1;
* with ``--volume``: any multi-page TIFF (without it, a plain multi-page TIFF stays separate
  fields), and any folder, whose image files are the slices, one per file, in the order of the
  numbers in their names (natural order: ``slice_2`` before ``slice_10``).

Spacing (z, y, x) in µm, first match wins: ``--spacing Z,Y,X`` (source ``user``); the TIFF's
ImageJ ``spacing`` + ``unit`` with the resolution tags for Y and X (``imagej``); OME
``PhysicalSizeZ/Y/X`` (``ome``); else none (``none``: 3D measurements in voxels). A folder's
spacing comes from ``--spacing`` only. Every slice is recorded with the X spacing as its pixel
size.

Reading is one slice at a time, never the whole volume: a TIFF's pages through
:func:`~phasewatch.imageio.stacks.micrograph_slices` (the one stack reader, ImageJ stacks over
4 GB included; each page's size checked from its header before it is decoded; converted by
:func:`~phasewatch.imageio.formats.page_pixels` so that a slice is the same image as the same
page read as a field), in this process or in the daemon's bounded decoder process; a folder's
files one at a time through :func:`~phasewatch.imageio.formats.read_pages`. Every slice must
have the first one's size.

Segmenting (:func:`segment_volume`): the slices go through the sliding window of fields
(:func:`~phasewatch.core.pipeline.segment_images`, tiles of consecutive slices sharing
batches); as each class map comes out it is recorded like a field
(:func:`~phasewatch.core.pipeline.assessed_record`: fractions, trust), fed to
:class:`~phasewatch.core.measure3d.VolumeMeasurer` and written as the next page of
``NAME.classes.tif``. Memory is a few slices, whatever the depth. A 2.5D bundle (manifest
``input.slices`` = k) is fed each slice with its k - 1 neighbours as channels, mirrored at the
ends (:func:`~phasewatch.core.normalise.sliding_stacks`): k prepared slices are held, never
the volume.
"""

from __future__ import annotations

import collections
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from phasewatch.atomic_files import write_json_atomic
from phasewatch.bundle import ClassInfo
from phasewatch.core.measure3d import VolumeMeasurer
from phasewatch.core.normalise import ModelInput
from phasewatch.core.pipeline import Model, assessed_record, segment_images
from phasewatch.core.provenance import model_classes
from phasewatch.core.records import FieldRecord, SliceRecord, VolumeRecord
from phasewatch.imageio.formats import (
    DEFAULT_MAX_PIXELS,
    ImageReadError,
    Page,
    check_ifd_chain,
    check_size,
    images_in,
    read_pages,
)
from phasewatch.imageio.stacks import (
    CLASSES_PROPERTY,
    StackHeader,
    micrograph_slices,
    open_label_stack,
    open_micrograph_stack,
)

TIFF_SUFFIXES = (".tif", ".tiff")
Spacing = tuple[float, float, float]


@dataclass(frozen=True)
class Volume:
    """A volume to segment: where it is, its depth and spacing, and its slices' reader."""

    path: Path
    n_slices: int
    spacing_um: Spacing | None
    spacing_source: str  # user, imagej, ome or none
    read: Callable[[], Iterator[np.ndarray]]  # the slices' images in order, one at a time
    files: tuple[Path, ...] = ()  # a folder's slice files, to name the one at fault
    max_pixels: int = DEFAULT_MAX_PIXELS

    @property
    def name(self) -> str:
        """Output name: a file's stem, a folder's name."""
        return self.path.name if self.files else self.path.stem

    def slices(self) -> Iterator[np.ndarray]:
        """The slices' images, each checked against the first (size and channels), and exactly
        ``n_slices`` of them: the classes TIFF is written with that many pages."""
        first: tuple[int, ...] | None = None
        count = 0
        for image in self.read():  # each reader's errors are one line naming the file and slice
            if count == self.n_slices:
                raise ImageReadError(self.path, f"more slices than the {self.n_slices} expected")
            first = self._check_shape(count, image, first)
            count += 1
            yield image
        if count != self.n_slices:
            raise ImageReadError(self.path, f"{count} slices read, {self.n_slices} expected")

    def _check_shape(self, index: int, image: np.ndarray, first: tuple[int, ...] | None) -> tuple[int, ...]:
        """The first slice's shape, once slice ``index`` is known to have it."""
        if first is None:
            check_size(self.path, image.shape[0], image.shape[1], self.max_pixels)
            return image.shape
        if image.shape != first:
            raise ImageReadError(self.path, f"slice {index}{self._file(index)} is {_size(image.shape)}, "
                                            f"slice 0 is {_size(first)}: a volume's slices are one size")
        return first

    def _file(self, index: int) -> str:
        return f" ({self.files[index].name})" if self.files else ""


def _size(shape: tuple[int, ...]) -> str:
    channels = f" x {shape[2]} channels" if len(shape) == 3 else ""
    return f"{shape[1]} x {shape[0]}{channels}"


def says_volume(path: Path) -> bool:
    """Whether a file's own metadata make it a volume (ImageJ slices > 1, OME SizeZ > 1)."""
    if path.suffix.lower() not in TIFF_SUFFIXES or not path.is_file():
        return False
    try:
        check_ifd_chain(path)  # a chain that loops is not walked here either
        return open_label_stack(path).says_volume
    except Exception:  # whatever it is, it is read as fields, whose (isolated) reader says what is wrong
        return False


def open_volume(path: Path, spacing_um: Spacing | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                header: Callable[[Path, int], StackHeader] = open_micrograph_stack,
                slices: Callable[[Path, int], Iterator[np.ndarray]] = micrograph_slices) -> Volume:
    """A multi-page TIFF or a folder of numbered slices as one :class:`Volume` (module doc);
    ``spacing_um`` overrides the file's. A TIFF's metadata come from ``header`` and its slices
    from ``slices`` (in this process by default; the daemon's come from its bounded decoder
    process, ``IsolatedReader.stack_header`` and ``stack_slices``), each page's size checked
    from its header before it is decoded. Raises a one-line ``PhasewatchError`` naming it."""
    path = Path(path)
    if path.is_dir():
        return _folder_volume(path, spacing_um, max_pixels)
    if path.suffix.lower() not in TIFF_SUFFIXES:
        raise ImageReadError(path, "a volume is a multi-page TIFF or a folder of numbered slices")
    stack = header(path, max_pixels)
    spacing, source = (spacing_um, "user") if spacing_um else (stack.spacing_um, stack.spacing_source)
    return Volume(path, stack.n_slices, spacing, source, lambda: slices(path, max_pixels), max_pixels=max_pixels)


def _folder_volume(folder: Path, spacing_um: Spacing | None, max_pixels: int) -> Volume:
    files = tuple(numbered_slices(folder))
    if not files:
        raise ImageReadError(folder, "no image files in the folder: a volume needs at least one slice")

    def read() -> Iterator[np.ndarray]:
        for file in files:
            fields = read_pages(file, None, max_pixels)
            if len(fields) != 1:
                raise ImageReadError(file, f"{len(fields)} pages: a folder's slices are one image per file")
            yield fields[0].image

    source = "user" if spacing_um else "none"
    return Volume(folder, len(files), spacing_um, source, read, files, max_pixels)


def numbered_slices(folder: Path) -> list[Path]:
    """The folder's image files in natural order: numbers compare as numbers (2 before 10)."""
    return sorted(images_in(folder), key=_natural_key)


def _natural_key(path: Path) -> tuple[tuple[int, int | str], ...]:
    # (0, number) and (1, text) so that numbers and text never compare with each other
    return tuple((0, int(part)) if part.isdigit() else (1, part.lower())
                 for part in re.split(r"(\d+)", path.name) if part)


# --- segmenting ----------------------------------------------------------------------------


# (slice index, its image, its class map, its record): what else is made of each slice on the way
SliceSink = Callable[[int, np.ndarray, np.ndarray, FieldRecord], None]


def segment_volume(volume: Volume, model: Model, out_dir: Path, overlap: int | None = None,
                   batch: int | None = None,
                   window: collections.deque[tuple[int, ModelInput]] | None = None,
                   on_slice: SliceSink | None = None) -> VolumeRecord:
    """Segment every slice, write ``NAME.classes.tif`` and ``NAME.volume.json`` in ``out_dir``
    and return the volume's record (what the JSON holds). A 2.5D bundle sees each slice with its
    neighbours, mirrored at the ends, from a sliding ``window`` of its ``slices`` prepared slices.
    ``on_slice`` sees every slice as it comes out (the daemon's display stack)."""
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    measurer = VolumeMeasurer(model.bundle.classes, volume.spacing_um)
    records: list[SliceRecord] = []
    classes_path = out_dir / f"{volume.name}.classes.tif"
    _write_stack(classes_path, _class_maps(volume, model, overlap, batch, measurer, records, window, on_slice),
                 volume.n_slices, volume.spacing_um, model.bundle.classes)
    seconds = time.perf_counter() - started
    json_path = out_dir / f"{volume.name}.volume.json"
    record = volume_record(volume, model, records, measurer.result(), seconds)
    record["outputs"] = {"classes": str(classes_path), "json": str(json_path)}
    write_json_atomic(json_path, record)
    return record


def _class_maps(volume: Volume, model: Model, overlap: int | None, batch: int | None,
                measurer: VolumeMeasurer, records: list[SliceRecord],
                window: collections.deque[tuple[int, ModelInput]] | None = None,
                on_slice: SliceSink | None = None) -> Iterator[np.ndarray]:
    """Each slice's class map as it comes out of the sliding window, recorded and measured on the way."""
    pixel_size = volume.spacing_um[2] if volume.spacing_um else None
    source = volume.spacing_source if volume.spacing_um else "none"
    in_flight: collections.deque[Page] = collections.deque()  # slices in the sliding window's batches

    def images() -> Iterator[np.ndarray]:
        for index, image in enumerate(volume.slices()):
            in_flight.append(Page(image, index, pixel_size, source))
            yield image

    for segmentation in segment_images(images(), model.bundle, model.backend, overlap, batch, plan=model.plan,
                                       volume=True, window=window):
        field = in_flight.popleft()
        record = assessed_record(volume.path, field, segmentation, model)
        records.append({"slice": field.page, "fractions": record["fractions"], "trust": record["trust"]})
        measurer.add(segmentation.classes)
        if on_slice is not None:
            on_slice(field.page, field.image, segmentation.classes, record)
        yield segmentation.classes


def _write_stack(path: Path, maps: Iterator[np.ndarray], n_slices: int, spacing_um: Spacing | None,
                 classes: Sequence[ClassInfo]) -> None:
    """A uint8 ImageJ stack written page by page, with the spacing where known and the
    classes its ids stand for (what ``measure-volume`` reads back; :data:`CLASSES_PROPERTY`),
    their colours as its lookup table (ImageJ and Fiji show the classes in them); under a
    temporary name until the last page is in."""
    first = next(maps)
    lut = np.zeros((3, 256), np.uint8)
    for c in classes:
        lut[:, c.id] = c.colour
    metadata: dict[str, Any] = {"axes": "ZYX", "LUTs": [lut],
                                "Properties": {CLASSES_PROPERTY: json.dumps(model_classes(classes))}}
    resolution = None
    if spacing_um:
        metadata.update(spacing=spacing_um[0], unit="um")
        resolution = (1 / spacing_um[2], 1 / spacing_um[1])
    partial = path.with_name(f".{path.name}.partial")
    try:
        tifffile.imwrite(partial, chain([first], maps), shape=(n_slices, *first.shape), dtype=np.uint8,
                         imagej=True, resolution=resolution, metadata=metadata)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def volume_record(volume: Volume, model: Model, slices: Sequence[SliceRecord], measured: dict[str, Any],
                  seconds: float) -> VolumeRecord:
    """The volume's JSON: producer (as a field's record names it), geometry, per-slice fractions
    and trust, the 3D measurements and the time per slice."""
    count = len(slices)
    scores = [score for s in slices if (score := s["trust"].get("score")) is not None]
    return {
        "volume": str(volume.path),
        "model": model.bundle.name,
        "backend": model.backend.name,
        "slices": count,
        "shape": measured["shape"],
        "spacing_um": list(volume.spacing_um) if volume.spacing_um else None,
        "spacing_source": volume.spacing_source if volume.spacing_um else "none",
        # the volume is trusted when every slice is: the worst score, the slices that are not
        "trust": {"ok": all(s["trust"]["ok"] for s in slices), "score": max(scores) if scores else None,
                  "slices_not_ok": [s["slice"] for s in slices if not s["trust"]["ok"]]},
        "per_slice": list(slices),
        "measurements_3d": measured,
        "timing": {"seconds": round(seconds, 4), "seconds_per_slice": round(seconds / count, 4),
                   "slices_per_second": round(count / seconds, 3) if seconds > 0 else None},
        "classes": model_classes(model.bundle.classes),
    }


def summary_line(record: VolumeRecord) -> str:
    """One line per volume: its size and the slice throughput."""
    z, y, x = record["shape"]
    timing = record["timing"]
    return (f"{record['volume']}: {z} slices of {x} x {y} segmented with {record['model']} on {record['backend']} "
            f"in {timing['seconds']:.2f} s: {timing['seconds_per_slice']:.4f} s per slice, "
            f"{timing['slices_per_second'] or 0:.3g} slices/s; {record['outputs']['classes']}")


def field_like_record(record: VolumeRecord, classes: Sequence[ClassInfo]) -> FieldRecord:
    """A segmented volume (:func:`volume_record`) as one field of its specimen, by the rule of
    multi-page files (``measure.combine_pages``): fractions over all its valid voxels, its valid
    area the sum of its slices' valid areas (so the specimen weighs it by them), no 2D particles
    (its 3D components are under ``volume``). The volume's whole record is kept under ``volume``;
    trust is the volume's, with the reason of each slice not trusted."""
    measured = record["measurements_3d"]
    _, height, width = measured["shape"]
    spacing = record["spacing_um"]
    pixel_size = spacing[2] if spacing else None
    valid = measured["valid_voxels"]
    per_class = measured["classes"]
    fractions = {c.name: per_class[c.name]["volume_fraction"] if c.name in per_class else 0.0
                 for c in classes if c.role != "excluded"}
    reasons = [f"slice {s['slice']}: {reason}" for s in record["per_slice"] for reason in s["trust"]["reasons"]]
    return {
        "image": record["volume"],
        "page": None,
        "model": record["model"],
        "backend": record["backend"],
        "width": width,
        "height": height,
        "pixel_size_um": pixel_size,
        "pixel_size_source": record["spacing_source"],
        "fractions": fractions,
        "particles": {},
        "valid_area_px": valid,
        "valid_area_um2": valid * spacing[1] * spacing[2] if spacing else None,
        "trust": {**record["trust"], "reasons": reasons},
        "volume": record,
    }
