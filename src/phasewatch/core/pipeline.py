"""The one path a file takes: decode -> prepare -> segment -> measure -> record -> write.

`phasewatch segment`, `demo`, `evaluate` and the daemon all go through here, so that a
fraction means the same thing, under the same record keys, wherever it is shown. The
path is three steps so that the daemon can run each in its own stage (and share the
backend's batches between files) while the one-off commands chain them in
:func:`process_file`:

``decode_file``        read every page of a file: :class:`Decoded`;
``segment_files``      class maps for the pages of several files, tiles sharing batches,
                       each :class:`FileSegmentation` carrying the :class:`Model` that produced it;
``measure_and_write``  measure each page as a field, build its record (with its trust record,
                       ``src/phasewatch/core/trust.py``), combine the pages, and write the outputs
                       when given a folder: :class:`FileResult`.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from phasewatch.backends.base import Backend, any_size, call_pixels, max_side
from phasewatch.backends.registry import Settings, open_backend
from phasewatch.backends.tta import TtaBackend
from phasewatch.bundle import Bundle, load_bundle
from phasewatch.core.measure import combine_pages, measure
from phasewatch.core.normalise import ModelInput, StackInput, prepare, sliding_stacks
from phasewatch.core.outputs import write_outputs, write_png_atomic, write_preview
from phasewatch.core.pixel_hash import pixel_sha256
from phasewatch.core.records import FieldRecord
from phasewatch.core.tiling import Plan, default_overlap, segment_many
from phasewatch.core.trust import InputFeatures, assess, input_features, unsure_fraction
from phasewatch.imageio.formats import DEFAULT_MAX_PIXELS, Page, read_pages


@dataclass(frozen=True)
class Model:
    """A bundle and the backend running it: what a result records as its producer."""

    bundle: Bundle
    backend: Backend
    plan: Plan | None = None  # tiles per field (None: the bundle's fixed tile)

    def close(self) -> None:
        self.backend.close()


# Model-input pixels one backend call may hold. On the CPU backend the bundled U-Nets (width 12)
# peak at about 0.5 KB per pixel in flight (2.2 GB measured for a 2000 x 2000 field), so 2 MP
# is about 1 GB: whole 1024 x 1024 fields fit, larger ones go in tiles of about 1400 px.
DEFAULT_TILE_MEGAPIXELS = 2.0


def open_model(
    ref: str | Path, kind: str = "auto", batch: int = 8, threads: int | None = None, tta: str = "none",
    tile_megapixels: float = DEFAULT_TILE_MEGAPIXELS, settings: Settings | None = None,
) -> Model:
    """Load a bundle (folder or bundled name) and open a backend for it, with test-time
    augmentation ``tta`` (``src/phasewatch/backends/tta.py``) unless it is ``none``; tiles are planned per
    field within ``tile_megapixels`` when the bundle and backend take any size; ``settings``
    holds the backends' own ``[model.<kind>]`` tables (the ``triton`` server, ...)."""
    bundle = load_bundle(ref)
    backend: Backend = open_backend(bundle, kind, batch, threads, settings)
    if tta != "none":
        backend = TtaBackend(backend, tta, bundle.spatial_multiple)
    return Model(bundle, backend, tile_plan(bundle, backend, tile_megapixels))


def tile_plan(bundle: Bundle, backend: Backend, megapixels: float) -> Plan | None:
    """The per-field tile plan for ``bundle`` on ``backend``, or None for fixed tiles."""
    if not bundle.spatial_multiple or not any_size(backend):
        return None
    return Plan(bundle.spatial_multiple, int(megapixels * 1e6), bundle.halo, max_side(backend), call_pixels(backend))


@dataclass
class Decoded:
    """The fields of one file, decoded."""

    path: Path
    fields: list[Page]
    decode_ms: float


class PageSegmentation(NamedTuple):
    """The sliding window's result for one image at the image's own size, and what its input
    looked like to the model (for the trust record)."""

    classes: np.ndarray  # uint8 class ids
    margin: np.ndarray  # uint8 softmax margin, 255 = certain
    features: InputFeatures


@dataclass
class FileSegmentation:
    """The segmentations of one file's fields and the model that produced them."""

    decoded: Decoded
    model: Model
    maps: list[PageSegmentation]
    segment_ms: float


@dataclass
class FieldResult:
    field: Page
    classes: np.ndarray
    margin: np.ndarray
    record: FieldRecord
    outputs: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclass
class FileResult:
    """One file's outcome: per-field results and the file's record (pages combined)."""

    path: Path
    model: Model
    fields: list[FieldResult]
    record: FieldRecord
    outputs: dict[str, str]


# (path, pixel_size_um, max_pixels) -> fields: imageio.read_pages, or an IsolatedReader's
PageReader = Callable[[Path, float | None, int], list[Page]]


def decode_file(
    path: Path,
    pixel_size_um: float | None = None,
    fallback_pixel_size_um: float | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    read: PageReader = read_pages,
) -> Decoded:
    """Every field of ``path``, read by ``read``; raises ``ImageReadError`` (one line) for
    a bad file.

    ``pixel_size_um`` overrides what the file says (source ``user``);
    ``fallback_pixel_size_um`` fills in only where the file says nothing (source ``config``).
    """
    started = time.perf_counter()
    fields = read(path, pixel_size_um, max_pixels)
    if fallback_pixel_size_um:
        fields = [f if f.pixel_size_um is not None
                  else dataclasses.replace(f, pixel_size_um=fallback_pixel_size_um, pixel_size_source="config")
                  for f in fields]
    return Decoded(Path(path), fields, (time.perf_counter() - started) * 1000)


def segment_files(
    decoded: list[Decoded],
    model: Model,
    overlap: int | None = None,
    batch: int | None = None,
) -> Iterator[FileSegmentation]:
    """Class maps for every field of every file; tiles of all of them share batches. Each file
    is yielded as soon as its last field is done, so that the daemon measures and writes it
    while the next ones are segmented, not all of them after the last.

    A file's time is from the previous file's end to its own (the first's from the start): the
    times add up to the whole, and a backend call that finishes several files at once is
    counted in the first of them.
    """
    maps = segment_images((f.image for d in decoded for f in d.fields), model.bundle, model.backend, overlap, batch,
                          plan=model.plan)
    started = time.perf_counter()
    for d in decoded:
        fields = [next(maps) for _ in d.fields]
        done = time.perf_counter()
        yield FileSegmentation(d, model, fields, (done - started) * 1000)
        started = time.perf_counter()  # not the time the caller took with this file


def measure_and_write(segmented: FileSegmentation, out_dir: Path | None) -> FileResult:
    """Measure, record and (when ``out_dir`` is given) write every field of one file.

    Outputs are ``STEM.classes.png``, ``STEM.overlay.jpg``, ``STEM.json`` per field and
    ``NAME.preview.jpg`` (the first field, downscaled) per file; the file's record
    combines the pages (:func:`measure.combine_pages`).
    """
    decoded, model = segmented.decoded, segmented.model
    count = len(decoded.fields)
    results: list[FieldResult] = []
    outputs: dict[str, str] = {}
    for field_, segmentation in zip(decoded.fields, segmented.maps, strict=True):
        classes, margin = segmentation.classes, segmentation.margin
        started = time.perf_counter()
        record = assessed_record(decoded.path, field_, segmentation, model)
        measured = time.perf_counter()
        record["timing_ms"] = {"decode": round(decoded.decode_ms / count, 2),
                               "segment": round(segmented.segment_ms / count, 2),
                               "measure": round((measured - started) * 1000, 2)}
        result = FieldResult(field_, classes, margin, record)
        if out_dir is not None:
            stem = field_stem(decoded.path, field_, count)
            written = write_field(out_dir, stem, field_.image, classes, record, model.bundle)
            # Where the model hesitates, for the page's "unsure" view: bright = unsure.
            unsure_path = out_dir / f"{stem}.unsure.png"
            write_png_atomic(unsure_path, 255 - result.margin)
            written["unsure"] = unsure_path
            result.outputs = {k: str(v) for k, v in written.items()}
            if not outputs:  # the first page stands for the file on the web page
                preview_path = write_preview(out_dir, field_stem(decoded.path, field_, 1), field_.image)
                outputs = {**result.outputs, "preview": str(preview_path)}
        results.append(result)
    record = combine_pages([r.record for r in results])
    record["pixel_sha256"] = pixel_sha256(f.image for f in decoded.fields)  # the same field re-saved: core/pixel_hash
    return FileResult(decoded.path, model, results, record, outputs)


def process_file(
    path: Path,
    model: Model,
    out_dir: Path | None = None,
    pixel_size_um: float | None = None,
    overlap: int | None = None,
    batch: int | None = None,
    fallback_pixel_size_um: float | None = None,
) -> FileResult:
    """The whole path for one file (what the daemon's stages do, in one call); the pixel sizes
    as :func:`decode_file` takes them."""
    (segmented,) = segment_files([decode_file(path, pixel_size_um, fallback_pixel_size_um)], model, overlap, batch)
    return measure_and_write(segmented, out_dir)


def segment_images(
    images: Iterable[np.ndarray],
    bundle: Bundle,
    backend: Backend,
    overlap: int | None = None,
    batch: int | None = None,
    timings: dict[str, float] | None = None,
    plan: Plan | None = None,
    volume: bool = False,
    window: collections.deque[tuple[int, ModelInput]] | None = None,
) -> Iterator[PageSegmentation]:
    """Yield an :class:`PageSegmentation` per image, at the image's own width and height.

    ``volume``: the images are the slices of one volume in Z order; a 2.5D bundle then sees each
    slice with its neighbours (``normalise.sliding_stacks``, holding its ``slices`` prepared
    slices in ``window``); otherwise each image is a field of its own (a 2.5D bundle sees it
    repeated as its own neighbours, ``normalise.prepare``).

    Tiles of consecutive images share backend batches; the model's ``scale`` is applied
    on the way in and undone (nearest neighbour, so ids stay ids) on the way out. With a
    ``plan`` (:func:`tile_plan`) each field gets its own tiles; ``overlap`` is then unused.
    """
    overlap = default_overlap(bundle.tile, bundle.halo) if overlap is None else overlap
    pending: collections.deque[tuple[tuple[int, int], InputFeatures]] = collections.deque()
    shapes: collections.deque[tuple[int, int]] = collections.deque()

    def features_of(inp: ModelInput | StackInput) -> InputFeatures:
        return input_features(inp.centre if isinstance(inp, StackInput) else inp)  # the slice predicted

    def fields() -> Iterator[ModelInput | StackInput]:
        for image in images:
            shapes.append((image.shape[0], image.shape[1]))
            yield prepare(image, bundle.channels, bundle.normalisation, bundle.scale, slices=bundle.slices)

    def slices() -> Iterator[ModelInput]:
        for image in images:
            shapes.append((image.shape[0], image.shape[1]))
            yield prepare(image, bundle.channels, bundle.normalisation, bundle.scale)

    def inputs() -> Iterator[ModelInput | StackInput]:
        stream = sliding_stacks(slices(), bundle.slices, window) if volume and bundle.slices > 1 else fields()
        for inp in stream:
            pending.append((shapes.popleft(), features_of(inp)))
            yield inp

    for classes, margin in segment_many(inputs(), backend, bundle.tile, overlap, batch, timings, halo=bundle.halo,
                                        plan=plan):
        (height, width), features = pending.popleft()
        if classes.shape != (height, width):
            classes = cv2.resize(classes, (width, height), interpolation=cv2.INTER_NEAREST)
            margin = cv2.resize(margin, (width, height), interpolation=cv2.INTER_NEAREST)
        yield PageSegmentation(classes, margin, features)


# A file name has at most 255 bytes: outputs add up to 12 to a field's stem
# (".classes.png") and the atomic writers 14 more for their temporary names.
MAX_STEM_BYTES = 200


def field_stem(path: Path, field: Page, fields_in_file: int) -> str:
    """Output name of a field: the file's stem, plus the page for multi-page files.

    A stem that is not UTF-8 (a Latin-1 name from an SMB client: its pictures could not be
    served) or too long for the outputs' names is shown with U+FFFD for each byte that is
    not UTF-8, cut on a character boundary, and followed by a hash of the whole stem, so
    that names that differ only where they were cut or replaced keep outputs of their own.
    """
    page = "" if fields_in_file == 1 else f".p{field.page:04d}"
    raw = os.fsencode(path.stem)
    text = raw.decode("utf-8", "replace")
    if text == path.stem and len(raw) + len(page) <= MAX_STEM_BYTES:
        return path.stem + page
    tag = "~" + hashlib.sha256(raw).hexdigest()[:12]
    budget = MAX_STEM_BYTES - len(tag) - len(page)
    kept = sum(1 for used in itertools.accumulate(len(c.encode()) for c in text) if used <= budget)
    return text[:kept] + tag + page


def field_record(path: Path, field: Page, classes: np.ndarray, model: Model) -> FieldRecord:
    """The per-field record: identity, producer, pixel size and its source, measurements."""
    measured = measure(classes, model.bundle.classes, field.pixel_size_um)
    return {
        "image": str(path),
        "page": field.page,
        "model": model.bundle.name,
        "backend": model.backend.name,
        "width": int(classes.shape[1]),
        "height": int(classes.shape[0]),
        "pixel_size_um": field.pixel_size_um,
        "pixel_size_source": field.pixel_size_source,
        **measured,
    }


def assessed_record(path: Path, field: Page, segmentation: PageSegmentation, model: Model) -> FieldRecord:
    """:func:`field_record` with its trust record (``src/phasewatch/core/trust.py``): what every field,
    and every slice of a volume, is recorded as."""
    classes = segmentation.classes
    record = field_record(path, field, classes, model)
    excluded = [c.id for c in model.bundle.classes if c.role == "excluded"]
    unsure = unsure_fraction(segmentation.margin, ~np.isin(classes, excluded) if excluded else None)
    record["trust"] = assess(segmentation.features, unsure, model.bundle, field.pixel_size_um)
    return record


def write_field(out_dir: Path, stem: str, image: np.ndarray, classes: np.ndarray, record: FieldRecord,
                bundle: Bundle) -> dict[str, Path]:
    """Write class map, overlay and JSON of one field (or one slice) atomically; background
    classes stay untinted in the overlay so the phases stand out."""
    background = {c.id for c in bundle.classes if c.role == "background"}
    return write_outputs(out_dir, stem, image, classes, bundle.palette(), record, skip=background)
