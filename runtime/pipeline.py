"""From decoded micrographs to class maps, measurements and the per-field record.

`phasewatch segment`, `demo`, `evaluate` and the daemon share this path, so that a
fraction means the same thing wherever it is shown.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from phasewatch.runtime.backends import Backend
from phasewatch.runtime.bundle import Bundle
from phasewatch.runtime.engine import default_overlap, segment_many
from phasewatch.runtime.imageio import Field
from phasewatch.runtime.measure import measure
from phasewatch.runtime.normalise import prepare
from phasewatch.runtime.outputs import write_outputs


def segment_images(
    images: Iterable[np.ndarray],
    bundle: Bundle,
    backend: Backend,
    overlap: int | None = None,
    batch: int | None = None,
    timings: dict[str, float] | None = None,
) -> Iterator[np.ndarray]:
    """Yield a uint8 class map per image, at the image's own width and height.

    Tiles of consecutive images share backend batches; the model's ``scale`` is applied
    on the way in and undone (nearest neighbour, so ids stay ids) on the way out.
    """
    overlap = default_overlap(bundle.tile, bundle.halo) if overlap is None else overlap
    shapes: collections.deque[tuple[int, int]] = collections.deque()

    def inputs() -> Iterator[Any]:
        for image in images:
            shapes.append(image.shape[:2])
            yield prepare(image, bundle.channels, bundle.normalisation, bundle.scale)

    for classes in segment_many(inputs(), backend, bundle.tile, overlap, batch, timings, halo=bundle.halo):
        height, width = shapes.popleft()
        if classes.shape != (height, width):
            classes = cv2.resize(classes, (width, height), interpolation=cv2.INTER_NEAREST)
        yield classes


def segment_array(image: np.ndarray, bundle: Bundle, backend: Backend, **options: Any) -> np.ndarray:
    """Class map of one image (see :func:`segment_images`)."""
    return next(segment_images([image], bundle, backend, **options))


def field_stem(path: Path, field: Field, fields_in_file: int) -> str:
    """Output name of a field: the file's stem, plus the page for multi-page files."""
    return path.stem if fields_in_file == 1 else f"{path.stem}.p{field.page:04d}"


def field_record(
    path: Path,
    field: Field,
    classes: np.ndarray,
    bundle: Bundle,
    backend_name: str,
) -> dict[str, Any]:
    """The per-field JSON record: identity, pixel size and its source, measurements."""
    measured = measure(classes, bundle.classes, field.pixel_size_um)
    return {
        "image": str(path),
        "page": field.page,
        "model": bundle.name,
        "backend": backend_name,
        "width": int(classes.shape[1]),
        "height": int(classes.shape[0]),
        "pixel_size_um": field.pixel_size_um,
        "pixel_size_source": field.pixel_size_source,
        **measured,
    }


def background_ids(bundle: Bundle) -> set[int]:
    """Classes left untinted in overlays, so the phases stand out."""
    return {c.id for c in bundle.classes if c.role == "background"}


def write_field(out_dir: Path, stem: str, field: Field, classes: np.ndarray, bundle: Bundle,
                record: dict[str, Any]) -> dict[str, Path]:
    """Write class map, overlay and JSON of one field atomically."""
    return write_outputs(out_dir, stem, field.image, classes, bundle.palette(), record,
                         skip=background_ids(bundle))
