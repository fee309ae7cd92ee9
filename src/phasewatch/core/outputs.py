"""Per-image output files and the pictures that go in them, each written atomically
(``phasewatch.atomic_files``).

Pictures for people (overlay, preview) show 16-bit micrographs with a percentile
stretch (:data:`DISPLAY_PERCENTILES`) and are JPEGs (:func:`write_jpeg_atomic`); the class
map is a PNG with the exact ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from phasewatch.atomic_files import OutputError, write_bytes_atomic, write_json_atomic

DISPLAY_PERCENTILES = (0.5, 99.5)
_STRETCH_SAMPLES = 1 << 20  # percentiles from at most about this many pixels


def to_display_8bit(image: np.ndarray) -> np.ndarray:
    """uint8 as is; uint16 stretched so the display percentiles span 0..255 (clipped)."""
    if image.dtype == np.uint8:
        return image
    if image.dtype != np.uint16:
        raise ValueError(f"image must be uint8 or uint16 for display, got {image.dtype}")
    # Stride over pixels, not values, so that every channel of RGB is sampled alike.
    pixels = image.reshape(image.shape[0] * image.shape[1], -1)
    sample = pixels[:: max(1, len(pixels) // _STRETCH_SAMPLES)]
    low, high = np.percentile(sample, DISPLAY_PERCENTILES)
    if high <= low:  # flat image: keep it visible as mid-range instead of dividing by 0
        high = low + 1.0
    levels = np.arange(65536, dtype=np.float64)
    lut = np.clip(np.rint((levels - low) * (255.0 / (high - low))), 0, 255).astype(np.uint8)
    return lut[image]


def _display_rgb(image: np.ndarray) -> np.ndarray:
    image8 = to_display_8bit(image)
    if image8.ndim == 2:
        return cv2.cvtColor(image8, cv2.COLOR_GRAY2RGB)
    if image8.ndim == 3 and image8.shape[2] == 3:
        return image8
    raise ValueError(f"image must be H x W or H x W x 3, got shape {image.shape}")


def overlay(
    image: np.ndarray,
    classes: np.ndarray,
    palette: Sequence[tuple[int, int, int]],
    alpha: float = 0.45,
    skip: set[int] | None = None,
) -> np.ndarray:
    """RGB uint8 picture: the micrograph with each class's palette colour blended in.

    Every class is blended unless its id is in ``skip`` (the caller passes e.g. the
    background class ids to leave the matrix untinted). No legend is drawn.
    """
    if classes.shape != image.shape[:2]:
        raise ValueError(f"class map {classes.shape} does not match image {image.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be within 0..1, got {alpha}")
    lut = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    if classes.size and int(classes.max()) >= len(lut):
        raise ValueError(f"class map holds id {int(classes.max())} but the palette has {len(lut)}")
    base = _display_rgb(image)
    if len(lut) > 256:  # beyond what cv2.LUT indexes (no bundle has so many classes)
        colours = lut[classes]
    else:  # cv2.LUT: a fraction of the time of NumPy's fancy indexing on a large field
        table = np.zeros((256, 1, 3), np.uint8)
        table[: len(lut), 0] = lut
        colours = cv2.LUT(cv2.merge([classes.astype(np.uint8, copy=False)] * 3), table)
    blended = cv2.addWeighted(base, 1.0 - alpha, colours, alpha, 0.0)
    if skip:
        cv2.copyTo(base, _one_of(classes, skip), blended)
    return blended


def _one_of(classes: np.ndarray, ids: set[int]) -> np.ndarray:
    """uint8 mask, 1 where the class id is in ``ids``: a table lookup for a uint8 map (0.1 ms
    for a 1024 x 1024 field, where np.isin takes 2 ms), np.isin for wider ids."""
    if classes.dtype != np.uint8:
        return np.isin(classes, list(ids)).view(np.uint8)
    table = np.zeros(256, np.uint8)
    table[[i for i in ids if 0 <= i < 256]] = 1
    return cv2.LUT(classes, table)


def preview(image: np.ndarray, max_side: int = 1024) -> np.ndarray:
    """8-bit picture whose longer side is at most ``max_side``: gray when the image is gray,
    also when it is stored as RGB with three equal channels (as many SEMs save it), which
    encodes in a third of the time and space."""
    if image.ndim == 3 and image.shape[2] == 3 and _equal_channels(image):
        image = image[:, :, 0]
    height, width = image.shape[:2]
    factor = max_side / max(height, width)
    if factor < 1.0:
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return to_display_8bit(image)


def _equal_channels(image: np.ndarray) -> bool:
    red = image[:, :, 0]
    return bool(np.array_equal(red, image[:, :, 1]) and np.array_equal(red, image[:, :, 2]))


# The overlay and preview are written per field on the cores inference runs on: encoding them
# as PNG takes 3-6x the CPU time of this JPEG (libpng's filtering, at any compression level;
# bench/picture_writes.py). Full chroma (4:4:4): with the usual 4:2:0 the colour of a
# precipitate a few pixels wide or of a thin crack bleeds into its neighbours (a class's mean
# colour moves by 10-22 of 255 on the real test fields, < 1 with 4:4:4); quality 95, not 90:
# at 90 it moves by up to 3.
JPEG_QUALITY = 95
_ENCODINGS: dict[str, tuple[str, list[int]]] = {
    "PNG": (".png", []),
    "JPEG": (".jpg", [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY,
                      cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]),
}


def encode_picture(array: np.ndarray, kind: Literal["PNG", "JPEG"], name: str | Path = "picture") -> bytes:
    """The bytes of a 2-D (gray) or H x W x 3 RGB array as a lossless PNG (uint8 or uint16)
    or a JPEG (uint8, :data:`JPEG_QUALITY`, full chroma; gray stays one channel); ``name``
    says in errors what it is."""
    if kind == "JPEG" and array.dtype != np.uint8:
        raise ValueError(f"{name}: JPEG needs uint8, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    elif array.ndim != 2:
        raise ValueError(f"{name}: {kind} needs H x W or H x W x 3, got shape {array.shape}")
    suffix, params = _ENCODINGS[kind]
    ok, encoded = cv2.imencode(suffix, array, params)
    if not ok:
        raise OutputError(f"{name}: {kind} encoding failed for {array.dtype} {array.shape}")
    return encoded.tobytes()


def write_png_atomic(path: Path, array: np.ndarray) -> None:
    """Lossless PNG (:func:`encode_picture`): class maps and other data."""
    write_bytes_atomic(path, encode_picture(array, "PNG", path))


def write_jpeg_atomic(path: Path, array: np.ndarray) -> None:
    """JPEG (:func:`encode_picture`): pictures for people, already 8-bit."""
    write_bytes_atomic(path, encode_picture(array, "JPEG", path))


def write_preview(out_dir: Path, name: str, image: np.ndarray) -> Path:
    """``NAME.preview.jpg`` in ``out_dir``: the file's :func:`preview` for lists and the page."""
    path = Path(out_dir) / f"{name}.preview.jpg"
    write_jpeg_atomic(path, preview(image))
    return path


def write_outputs(
    out_dir: Path,
    stem: str,
    image: np.ndarray,
    classes: np.ndarray,
    palette: Sequence[tuple[int, int, int]],
    record: Mapping[str, Any],
    skip: set[int] | None = None,
) -> dict[str, Path]:
    """Write ``STEM.classes.png``, ``STEM.overlay.jpg`` and ``STEM.json`` into ``out_dir``.

    The JSON is written last, so its presence means the pictures are complete.
    Returns the paths keyed ``classes``, ``overlay``, ``json``.
    """
    if classes.dtype != np.uint8 or classes.shape != image.shape[:2]:
        raise ValueError(
            f"{stem}: class map must be uint8 of the image's size {image.shape[:2]}, "
            f"got {classes.dtype} {classes.shape}"
        )
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(exc.errno, f"{out_dir}: cannot create output folder: {exc.strerror or exc}") from exc
    paths = {
        "classes": out_dir / f"{stem}.classes.png",
        "overlay": out_dir / f"{stem}.overlay.jpg",
        "json": out_dir / f"{stem}.json",
    }
    write_png_atomic(paths["classes"], classes)
    write_jpeg_atomic(paths["overlay"], overlay(image, classes, palette, skip=skip))
    write_json_atomic(paths["json"], record)
    return paths
