"""Multi-page TIFF stacks read one page (one slice) at a time: class-id stacks for
``measure-volume`` and micrograph stacks for ``segment`` on a volume, so that both read
stacks one way.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from phasewatch.errors import PhasewatchError
from phasewatch.imageio.tiff_metadata import ome_size_z, tiff_spacing


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

    def slices(self) -> Iterator[np.ndarray]:
        """The pages as class maps (single-channel)."""
        for index, image in enumerate(self.planes()):
            if image.ndim != 2:
                raise StackReadError(f"{self.path}: page {index} is not a single-channel class map "
                                         f"(shape {image.shape})")
            yield image

    def planes(self) -> Iterator[np.ndarray]:
        """The pages' pixels as stored, one at a time."""
        with tifffile.TiffFile(self.path) as tif:
            if self.contiguous is not None:
                yield from self._contiguous_slices(tif)
                return
            # by index, up to the count opened: iterating tif.pages on an IFD chain that loops
            # back would yield pages for ever (len() stops at the loop)
            for index in range(self.n_slices):
                yield tif.pages[index].asarray()

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
    return LabelStack(Path(path), n_slices, spacing, contiguous, spacing_source, says_volume)


def _imagej_contiguous(tif: Any, meta: dict[str, Any], n_pages: int) -> tuple[int, np.dtype, int, int] | None:
    images = int(meta.get("images", 0) or 0)
    if images <= n_pages:
        return None
    page = tif.pages.first
    if page.compression != 1 or not page.is_contiguous or len(page.shape) != 2:
        raise ValueError(f"ImageJ says {images} slices but the file has {n_pages} page(s) and no plain data after them")
    return int(page.dataoffsets[0]), np.dtype(page.dtype).newbyteorder(tif.byteorder), *page.shape
