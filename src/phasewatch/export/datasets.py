"""Labelled micrographs: pairing images with labels and reading every label format in use.

Label formats (``../shared/data/README.md``):

- ``index``: single-channel TIFF/PNG, pixel value = class id;
- ``palette``: RGB(A) colour masks; a palette maps colours to class ids and every other
  colour is the ``default`` class (the superalloy masks: blue = secondary γ′, red =
  tertiary γ′, anything else = matrix);
- ``npy``: NumPy arrays of class ids.

Images and labels pair by file stem, a ``_mask`` suffix on the label ignored. Images are
read with the runtime's own decoder and normalised with the runtime's own
``normalise.prepare``, so training sees exactly what inference will.

Volumes (2.5D models, ``slices`` = k > 1): each image file is a volume, a multi-page TIFF
read as ``phasewatch segment`` reads one (``volume.open_volume``, any multi-page TIFF), its
label a multi-page TIFF of class ids with one page per slice (or a ``.npy`` Z x H x W array).
Every slice is one sample (``NAME:zINDEX``): its k-slice stack, each slice prepared on its own
and the neighbours mirrored at the ends (``normalise.window_indices``), as the runtime feeds
the bundle. A single-page image is a volume of one slice, its own neighbours. The stacks are
held in memory (k x the volume's float32 size): training volumes are small crops.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import tifffile

from phasewatch.bundle import Normalisation
from phasewatch.core.normalise import StackInput, prepare, window_indices
from phasewatch.errors import PhasewatchError, one_line
from phasewatch.imageio.formats import SUPPORTED_SUFFIXES, read_pages

LABEL_SUFFIXES = (".tif", ".tiff", ".png", ".bmp", ".npy")
Palette = Mapping[tuple[int, int, int], int]


class DatasetError(PhasewatchError, ValueError):
    """A data set that cannot be used; the message is one line naming the file."""


def label_stem(path: Path) -> str:
    stem = path.stem
    return stem[: -len("_mask")] if stem.endswith("_mask") else stem


def find_pairs(images_dir: Path | str, labels_dir: Path | str) -> list[tuple[Path, Path]]:
    """(image, label) pairs matched by stem, sorted by image name; an image without a
    label (or a label without an image) is an error naming it."""
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    for folder in (images_dir, labels_dir):
        if not folder.is_dir():
            raise DatasetError(f"{folder}: not a folder")
    images = {p.stem: p for p in images_dir.iterdir() if p.suffix.lower() in SUPPORTED_SUFFIXES}
    labels = {label_stem(p): p for p in labels_dir.iterdir() if p.suffix.lower() in LABEL_SUFFIXES}
    if missing := sorted(images.keys() - labels.keys()):
        raise DatasetError(f"{images[missing[0]]}: no label for it in {labels_dir} ({len(missing)} unpaired)")
    if orphans := sorted(labels.keys() - images.keys()):
        raise DatasetError(f"{labels[orphans[0]]}: no image for it in {images_dir} ({len(orphans)} unpaired)")
    if not images:
        raise DatasetError(f"{images_dir}: no images")
    return [(images[s], labels[s]) for s in sorted(images)]


def read_label(path: Path | str, palette: Palette | None = None, default: int = 0) -> np.ndarray:
    """uint8 H x W class ids from an index mask, an RGB(A) palette mask or a ``.npy`` array."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            raw = np.load(path, allow_pickle=False)
        elif path.suffix.lower() in (".tif", ".tiff"):
            with tifffile.TiffFile(path) as tif:  # first page only: some masks carry odd series metadata
                raw = tif.pages.first.asarray()
        else:
            raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if raw is None:
                raise OSError("not a readable image")
            if raw.ndim == 3:
                raw = cv2.cvtColor(raw, cv2.COLOR_BGRA2RGBA if raw.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read label: {one_line(exc)}") from exc
    if raw.ndim == 3 and raw.shape[2] in (3, 4):
        if palette is None:
            raise DatasetError(f"{path}: colour label needs a palette (colour -> class id)")
        return colours_to_ids(raw[..., :3], palette, default)
    if raw.ndim != 2:
        raise DatasetError(f"{path}: label must be H x W or H x W x 3/4, got shape {raw.shape}")
    if raw.min() < 0 or raw.max() > 255:
        raise DatasetError(f"{path}: class ids must be 0..255, found {raw.min()}..{raw.max()}")
    return raw.astype(np.uint8)


def colours_to_ids(rgb: np.ndarray, palette: Palette, default: int = 0) -> np.ndarray:
    ids = np.full(rgb.shape[:2], default, np.uint8)
    for colour, class_id in palette.items():
        ids[np.all(rgb == np.asarray(colour, rgb.dtype), axis=-1)] = class_id
    return ids


def parse_palette(raw: Mapping[str, Any]) -> dict[tuple[int, int, int], int]:
    """``{"R,G,B": id}`` (as configs and manifests store it) -> ``{(R, G, B): id}``."""
    palette = {}
    for key, class_id in raw.items():
        try:
            red, green, blue = (int(v) for v in str(key).split(","))
            palette[red, green, blue] = int(class_id)
        except (TypeError, ValueError) as exc:  # wrong count or not integers
            raise DatasetError(f"palette entry {key!r}: {class_id!r}: expected 'R,G,B': class id") from exc
    return palette


@dataclass
class Sample:
    """A whole labelled micrograph, normalised for the model."""

    name: str
    image: np.ndarray  # float32 C x H x W
    label: np.ndarray  # uint8 H x W (255 = ignore)
    path: Path  # the image file


def load_samples(
    images_dir: Path,
    labels_dir: Path,
    channels: int,
    normalisation: Normalisation,
    scale: float = 1.0,
    palette: Palette | None = None,
    default: int = 0,
    num_classes: int | None = None,
    slices: int = 1,
) -> list[Sample]:
    """Every pair of a split, normalised exactly as the runtime does (``prepare``); with
    ``slices`` > 1 every slice of every volume, as its k-slice stack (module doc)."""
    if slices > 1:
        return _volume_samples(images_dir, labels_dir, slices, normalisation, scale, palette, default, num_classes)
    return [sample_of(image_path, read_label(label_path, palette, default), channels, normalisation, scale,
                      num_classes, str(label_path))
            for image_path, label_path in find_pairs(images_dir, labels_dir)]


def sample_of(image_path: Path, label: np.ndarray, channels: int, normalisation: Normalisation, scale: float = 1.0,
              num_classes: int | None = None, where: str = "label") -> Sample:
    """One field and its class-id label (255 = not labelled), normalised as the runtime does;
    ``where`` names the label in an error."""
    field = read_pages(image_path)[0]
    if label.shape != field.image.shape[:2]:
        raise DatasetError(f"{where}: label {label.shape} does not match image {field.image.shape[:2]}")
    if num_classes is not None and (bad := label[label != 255].max(initial=0)) >= num_classes:
        raise DatasetError(f"{where}: class id {bad} but the config has {num_classes} classes")
    inp = prepare(field.image, channels, normalisation, scale)
    if scale != 1.0:
        label = cv2.resize(label, (inp.width, inp.height), interpolation=cv2.INTER_NEAREST)
    return Sample(image_path.stem, inp.region(0, inp.height, 0, inp.width), label, image_path)


def read_volume(path: Path) -> list[np.ndarray]:
    """A training volume's slices in Z order, decoded as the runtime decodes a volume's."""
    from phasewatch.core.volume import open_volume

    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        return [read_pages(path)[0].image]  # one slice
    return list(open_volume(path).slices())


def read_label_volume(path: Path, palette: Palette | None = None, default: int = 0) -> list[np.ndarray]:
    """A volume's label: one uint8 H x W class-id map per slice (multi-page TIFF or Z x H x W .npy)."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            raw = np.load(path, allow_pickle=False)
            pages = list(raw) if raw.ndim == 3 else [raw]
        elif path.suffix.lower() in (".tif", ".tiff"):
            with tifffile.TiffFile(path) as tif:
                pages = [page.asarray() for page in tif.pages]
        else:
            return [read_label(path, palette, default)]
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read label volume: {one_line(exc)}") from exc
    out = []
    for z, raw in enumerate(pages):
        if raw.ndim != 2 or raw.min() < 0 or raw.max() > 255:
            raise DatasetError(f"{path}: slice {z} must be H x W class ids 0..255, got shape {raw.shape}")
        out.append(raw.astype(np.uint8))
    return out


def _volume_samples(images_dir: Path, labels_dir: Path, slices: int, normalisation: Normalisation, scale: float,
                    palette: Palette | None, default: int, num_classes: int | None) -> list[Sample]:
    samples = []
    for image_path, label_path in find_pairs(images_dir, labels_dir):
        images = read_volume(image_path)
        labels = read_label_volume(label_path, palette, default)
        if len(labels) != len(images):
            raise DatasetError(f"{label_path}: {len(labels)} label slices for the {len(images)} of {image_path.name}")
        inputs = [prepare(image, 1, normalisation, scale) for image in images]
        for z, label in enumerate(labels):
            if label.shape != images[z].shape[:2]:
                raise DatasetError(f"{label_path}: slice {z} label {label.shape} does not match image "
                                   f"{images[z].shape[:2]}")
            if num_classes is not None and (bad := label[label != 255].max(initial=0)) >= num_classes:
                raise DatasetError(f"{label_path}: class id {bad} in slice {z}, the config has {num_classes} classes")
            stack = StackInput(tuple(inputs[i] for i in window_indices(z, len(inputs), slices)))
            if scale != 1.0:
                label = cv2.resize(label, (stack.width, stack.height), interpolation=cv2.INTER_NEAREST)
            samples.append(Sample(f"{image_path.stem}:z{z:04d}", stack.region(0, stack.height, 0, stack.width),
                                  label, image_path))
    return samples
