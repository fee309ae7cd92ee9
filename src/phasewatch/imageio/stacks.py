"""Multi-page TIFF stacks read one page (one slice) at a time: class-id stacks for
``measure-volume`` and micrograph stacks for ``segment`` on a volume, so that both read
stacks one way.

A micrograph stack (:func:`open_micrograph_stack`, :func:`micrograph_slices`) is read as the
fields of the same pages are (``formats.page_pixels``), under the same limits: its IFD chain
is walked first, and each page's size is checked from its header against ``max_pixels``
before that page is decoded (a stack whose slice 0 is small may declare 40000 x 40000 for
slice 1). The daemon runs both in its bounded decoder process (``imageio.isolated``).

A class-id stack that ``segment`` wrote names its classes in its ImageJ properties
(:data:`CLASSES_PROPERTY`: JSON, the model's classes by id with colour and role), so that
``measure-volume`` says "secondary gamma prime", not "class 1".
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from phasewatch.errors import PhasewatchError, one_line
from phasewatch.imageio.formats import (
    DEFAULT_MAX_PIXELS,
    ImageReadError,
    check_colour_model,
    check_ifd_chain,
    check_size,
    page_pixels,
)
from phasewatch.imageio.tiff_metadata import ome_size_z, tiff_spacing

# The ImageJ property (in the IJMetadata tag) that holds a class-id stack's classes as JSON.
CLASSES_PROPERTY = "phasewatch.classes"


class StackReadError(PhasewatchError):
    """A stack that cannot be read as a volume; the message is one line naming the file."""


@dataclass(frozen=True)
class LabelStack:
    """A multi-page TIFF, read one page (one slice) at a time: class ids here, micrographs
    for ``segment`` on a volume (``src/phasewatch/core/volume.py``), so that both read stacks one way."""

    path: Path
    n_slices: int
    spacing_um: tuple[float, float, float] | None  # from the file's metadata, when it has all three
    # ImageJ writes stacks over 4 GB as one page followed by every slice, contiguous and
    # uncompressed (``images`` in its metadata): (offset of slice 0, dtype, height, width)
    contiguous: tuple[int, np.dtype, int, int] | None = None
    spacing_source: str = "none"  # "imagej" or "ome" when spacing_um came from the file
    says_volume: bool = False  # the metadata call it a Z stack: ImageJ slices > 1 or OME SizeZ > 1
    classes: list[Any] | None = None  # CLASSES_PROPERTY read back (unchecked JSON); None without it

    def slices(self) -> Iterator[np.ndarray]:
        """The pages as class maps (single-channel)."""
        for index, image in enumerate(self.planes()):
            if image.ndim != 2:
                raise StackReadError(f"{self.path}: page {index} is not a single-channel class map "
                                         f"(shape {image.shape})")
            yield image

    def planes(self, max_pixels: int | None = None) -> Iterator[np.ndarray]:
        """The pages' pixels as stored, one at a time; with ``max_pixels``, each page's size is
        checked from its header before it is decoded."""
        with tifffile.TiffFile(self.path) as tif:
            if self.contiguous is not None:  # every slice has the size of page 0's header
                if max_pixels is not None:
                    _check_page(self.path, tif.pages.first, 0, max_pixels)
                yield from self._contiguous_slices(tif)
                return
            # by index, up to the count opened: iterating tif.pages on an IFD chain that loops
            # back would yield pages for ever (len() stops at the loop)
            for index in range(self.n_slices):
                page = tif.pages[index]
                if max_pixels is not None:
                    _check_page(self.path, page, index, max_pixels)
                yield page.asarray()

    def plane(self, index: int) -> np.ndarray:
        """One page's pixels as stored (the page's slice viewer reads one at a time)."""
        if not 0 <= index < self.n_slices:
            raise StackReadError(f"{self.path}: no slice {index}; the stack has {self.n_slices}")
        with tifffile.TiffFile(self.path) as tif:
            if self.contiguous is not None:
                return self._contiguous_slice(tif, index)
            return tif.pages[index].asarray()

    def _contiguous_slices(self, tif: Any) -> Iterator[np.ndarray]:
        for index in range(self.n_slices):
            yield self._contiguous_slice(tif, index)

    def _contiguous_slice(self, tif: Any, index: int) -> np.ndarray:
        assert self.contiguous is not None
        offset, dtype, height, width = self.contiguous
        count = height * width
        handle = tif.filehandle
        handle.seek(offset + index * count * dtype.itemsize)
        plane = handle.read_array(dtype, count)
        if plane.size != count:
            raise StackReadError(f"{self.path}: slice {index} of {self.n_slices} is cut short")
        return plane.reshape(height, width)


def open_label_stack(path: Path) -> LabelStack:
    """Open a multi-page TIFF of class ids (plain, ImageJ or OME): its slices, and its spacing
    from ImageJ ``spacing`` + ``unit`` + resolution tags or OME ``PhysicalSizeZ/Y/X``."""
    try:
        with tifffile.TiffFile(path) as tif:
            n_pages = len(tif.pages)
            meta = tif.imagej_metadata or {}
            spacing, spacing_source = tiff_spacing(tif)
            contiguous = _imagej_contiguous(tif, meta, n_pages)
            says_volume = int(meta.get("slices", 1)) > 1 or ome_size_z(tif) > 1
            classes = _classes(path, meta)
    except OSError as exc:
        raise StackReadError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except (ValueError, tifffile.TiffFileError) as exc:
        raise StackReadError(f"{path}: not a readable TIFF ({exc})") from exc
    if n_pages == 0:
        raise StackReadError(f"{path}: the TIFF has no page")
    # one axis of slices, whatever ImageJ calls it: tifffile writes a plain 3D array as channels
    axes = {axis: int(meta[axis]) for axis in ("channels", "slices", "frames") if int(meta.get(axis, 1)) > 1}
    if len(axes) > 1:
        described = " x ".join(f"{n} {axis}" for axis, n in axes.items())
        raise StackReadError(f"{path}: an ImageJ hyperstack of {described}; "
                                 f"a volume has one axis of slices")
    n_slices = int(meta["images"]) if contiguous is not None else n_pages
    return LabelStack(Path(path), n_slices, spacing, contiguous, spacing_source, says_volume, classes)


def _classes(path: Path, meta: dict[str, Any]) -> list[Any] | None:
    """The stack's :data:`CLASSES_PROPERTY` as a list (its entries checked by whoever uses them)."""
    properties = meta.get("Properties")
    text = properties.get(CLASSES_PROPERTY) if isinstance(properties, dict) else None
    if text is None:
        return None
    try:
        classes = json.loads(text)
    except (TypeError, json.JSONDecodeError) as exc:
        raise StackReadError(f"{path}: its {CLASSES_PROPERTY} property is not JSON ({one_line(exc)})") from exc
    if not isinstance(classes, list):
        raise StackReadError(f"{path}: its {CLASSES_PROPERTY} property is not a list of classes")
    return classes


def _imagej_contiguous(tif: Any, meta: dict[str, Any], n_pages: int) -> tuple[int, np.dtype, int, int] | None:
    images = int(meta.get("images", 0) or 0)
    if images <= n_pages:
        return None
    page = tif.pages.first
    if page.compression != 1 or not page.is_contiguous or len(page.shape) != 2:
        raise ValueError(f"ImageJ says {images} slices but the file has {n_pages} page(s) and no plain data after them")
    return int(page.dataoffsets[0]), np.dtype(page.dtype).newbyteorder(tif.byteorder), *page.shape


def _check_page(path: Path, page: Any, index: int, max_pixels: int) -> None:
    height, width = int(page.imagelength), int(page.imagewidth)
    if height * width > max_pixels:
        raise ImageReadError(path, f"slice {index} is {width} x {height} = {height * width} pixels by its header, "
                                   f"more than the limit of {max_pixels} (max_pixels)")


@dataclass(frozen=True)
class StackHeader:
    """What a micrograph stack is, from its metadata alone (nothing decoded)."""

    n_slices: int
    spacing_um: tuple[float, float, float] | None
    spacing_source: str
    says_volume: bool  # ImageJ slices > 1 or OME SizeZ > 1


def open_micrograph_stack(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> StackHeader:
    """A multi-page TIFF of micrographs, from its metadata: raises a one-line error for a chain
    that loops, an unsupported colour model, or a first page outside the size limits."""
    path = Path(path)
    check_ifd_chain(path)  # a hostile chain is refused as it is for fields, not read up to its loop
    stack = open_label_stack(path)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        check_colour_model(path, page.photometric, "page 0")
        check_size(path, int(page.imagelength), int(page.imagewidth), max_pixels)
    return StackHeader(stack.n_slices, stack.spacing_um, stack.spacing_source, stack.says_volume)


def micrograph_slices(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[np.ndarray]:
    """The slices of a micrograph stack, one at a time, as the fields of the same pages would be
    (``page_pixels``, with page 0's colour model: a stack's pages share it), each page's size
    checked from its header before it is decoded."""
    path = Path(path)
    check_ifd_chain(path)
    stack = open_label_stack(path)
    with tifffile.TiffFile(path) as tif:
        photometric, colormap = int(tif.pages.first.photometric), tif.pages.first.colormap
    planes = stack.planes(max_pixels)
    for index in itertools.count():
        try:
            plane = next(planes)
        except StopIteration:
            return
        except PhasewatchError:
            raise
        except Exception as exc:  # a decoder's own error on a damaged page: this file's one line
            raise ImageReadError(path, f"slice {index} cannot be read: {one_line(exc)}") from exc
        yield page_pixels(path, plane, photometric, colormap)
