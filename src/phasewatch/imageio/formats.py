"""Decode micrographs into fields: TIFF (every page a field), PNG, JPEG and BMP.

A field's image is ``H x W`` (gray) or ``H x W x 3`` (RGB order), ``uint8`` or ``uint16``,
never truncated. Conversions, so that the rest of the runtime sees only those two shapes
and dtypes:

- alpha is dropped (RGBA -> RGB, gray + alpha -> gray, palette + alpha -> palette); palette
  images (1-bit pages included) become gray when every colour of the map is a gray, else RGB;
  TIFF ``MinIsWhite`` is inverted so that 0 is always black; bilevel becomes 0/255 ``uint8``.
- any other numeric dtype (float, signed, 32/64-bit) is rescaled linearly from its finite
  min..max to 0..65535 ``uint16`` (NaN and infinities become 0): a float SEM or tomography
  image keeps its contrast and the normalisation treats it like any 16-bit image.
  Complex images are refused.

Sizes are checked from the header before any pixel is decoded: a side under
``MIN_SIDE`` pixels cannot be segmented, and a field over ``max_pixels`` pixels is
refused so that a corrupt or hostile header cannot make the service allocate gigabytes.

Pixel size (µm per pixel), first match wins: the caller's value (``user``), FEI/Thermo
``[Scan] PixelWidth`` (``fei``), Zeiss SEM ``ap_image_pixel_size``/``ap_pixel_size``
(``zeiss``), OME-XML ``PhysicalSizeX`` (``ome``), ImageJ ``unit`` + ``XResolution``
(``imagej``), then the plain TIFF ``XResolution`` (``tiff-resolution``), else ``none``.
The plain resolution tag is trusted only when its unit is metric (centimetre, or
tifffile's millimetre/micrometre extensions), or when it is in inches and says at least
2540 pixels per inch (a pixel of 10 µm or less): 72, 96, 300 or 2400 dpi are what
graphics software writes by default, never a microscope calibration. Unit ``NONE`` is
ignored, and so is a length in inches in ImageJ or OME metadata (ImageJ's way of passing
on such a dpi). Metadata are per file: every page of a TIFF gets the same pixel size.

A TIFF's chain of IFDs (one per page, each naming the next) is walked before tifffile
reads it: a chain that comes back to an IFD already seen is refused, since tifffile would
yield its pages for ever (a 512-byte file then holds a worker and all its memory).

Every failure raises :class:`ImageReadError` whose message is one line, ``FILE: reason``.

Untrusted files are read under limits in a child process (``phasewatch.imageio.isolated``).

:data:`FORMATS`, at the end of this module, is the one list of formats: adding a format is
one entry there (suffixes, magic bytes, reader).
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import cv2
import numpy as np
import tifffile

from phasewatch.errors import PhasewatchError, one_line
from phasewatch.imageio.decoder_messages import attributed
from phasewatch.imageio.tiff_metadata import tiff_pixel_size

MIN_SIDE = 8  # smaller images hold too little structure to segment or measure
DEFAULT_MAX_PIXELS = 400_000_000
PIXEL_SIZE_SOURCES = ("user", "imagej", "ome", "fei", "zeiss", "tiff-resolution", "config", "none")

_HEAD_BYTES = 16  # what is read to tell the format; every magic prefix fits in it
_SUPPORTED_PHOTOMETRIC = (
    tifffile.PHOTOMETRIC.MINISWHITE,
    tifffile.PHOTOMETRIC.MINISBLACK,
    tifffile.PHOTOMETRIC.RGB,
    tifffile.PHOTOMETRIC.PALETTE,
    tifffile.PHOTOMETRIC.YCBCR,  # tifffile decodes JPEG-compressed YCbCr to RGB
)
_PNG_GRAY_ALPHA = 4  # IHDR colour type
# JPEG start-of-frame markers carry the image size; C4, C8 and CC are other segments.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


class ImageReadError(PhasewatchError):
    """An image that cannot be used; ``str(exc)`` is one line, ``FILE: reason``."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(" ".join(f"{path}: {reason}".split()))
        self.reason = reason


@dataclass(frozen=True, eq=False)
class Page:
    """One image to segment: a whole file or one page of a TIFF stack."""

    image: np.ndarray  # H x W or H x W x 3 (RGB), uint8 or uint16
    page: int  # index of the page in the file; 0 for single-image formats
    pixel_size_um: float | None
    pixel_size_source: str  # one of PIXEL_SIZE_SOURCES


# (path, the caller's pixel size or None, max_pixels) -> the file's fields
Reader = Callable[[Path, float | None, int], Iterator[Page]]


class ImageFormat(NamedTuple):
    """One entry of :data:`FORMATS`."""

    suffixes: tuple[str, ...]  # lower case, with the dot
    magics: tuple[bytes, ...]  # the file starts with one of these (at most _HEAD_BYTES long)
    read: Reader


def read_pages(
    path: str | Path, pixel_size_um: float | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> list[Page]:
    """All fields of an image file; see :func:`iter_pages`."""
    return list(iter_pages(path, pixel_size_um, max_pixels))


def iter_pages(
    path: str | Path, pixel_size_um: float | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Iterator[Page]:
    """Yield the fields of an image file one at a time (a TIFF stack is never held whole).

    ``pixel_size_um``, when given, overrides any pixel size found in the file's metadata.
    """
    if pixel_size_um is not None and not (math.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise ValueError(f"pixel_size_um must be a positive number, got {pixel_size_um!r}")
    path = Path(path)
    if path.suffix.lower() not in _suffixes():
        supported = ", ".join(_suffixes())
        raise ImageReadError(path, f"unsupported file type '{path.suffix}' (supported: {supported})")
    # The content decides, not the suffix: a PNG saved as .tif is still read.
    image_format = _sniff(path)
    try:
        # What a decoder logs or warns while reading is charged to this file (decoder_messages).
        yield from attributed(path, image_format.read(path, pixel_size_um, max_pixels))
    except ImageReadError:
        raise
    except Exception as exc:  # a decoder's own exception type must not reach the service
        raise ImageReadError(path, f"cannot decode: {one_line(exc)}") from exc


def images_in(folder: Path) -> list[Path]:
    """The files of ``folder`` with a supported image suffix, sorted (not recursive)."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in _suffixes())


def _suffixes() -> tuple[str, ...]:
    return tuple(suffix for image_format in FORMATS.values() for suffix in image_format.suffixes)


def _sniff(path: Path) -> ImageFormat:
    """The format whose magic bytes start the file."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_HEAD_BYTES)
    except OSError as exc:
        raise ImageReadError(path, f"cannot read: {exc.strerror or one_line(exc)}") from exc
    if not head:
        raise ImageReadError(path, "empty file (0 bytes)")
    for image_format in FORMATS.values():
        if head.startswith(image_format.magics):
            return image_format
    *others, last = FORMATS
    raise ImageReadError(path, f"not a {', '.join(others)} or {last} image (starts with {_shown_head(head[:8])})")


def _shown_head(head: bytes) -> str:
    """A file's first bytes as a person reads them: text when they are printable ASCII (a
    text file saved as .tif), else hexadecimal; never Python's ``b'...'``."""
    text = head.decode("ascii", "replace")
    if text.isprintable():
        return f'the text "{text}"'
    return "the bytes " + head.hex(" ")


def check_size(path: Path, height: int, width: int, max_pixels: int) -> None:
    """Refuse an image too small to segment or over ``max_pixels`` (one line, ``FILE: reason``)."""
    if height < MIN_SIDE or width < MIN_SIDE:
        raise ImageReadError(
            path,
            f"image is {width} x {height} pixels, smaller than the {MIN_SIDE} x {MIN_SIDE} needed to segment it",
        )
    if height * width > max_pixels:
        raise ImageReadError(
            path,
            f"image is {width} x {height} = {height * width} pixels, more than the limit of {max_pixels} (max_pixels)",
        )


# --- TIFF ----------------------------------------------------------------------------


class _IfdLayout(NamedTuple):
    """Where a TIFF version keeps its IFD offsets, and how big an IFD is."""

    first_at: int  # position of the first IFD's offset in the header
    offset_code: str  # struct code of an offset
    entries_code: str  # struct code of an IFD's number of entries
    entry_size: int  # bytes per IFD entry


# By the version that follows the byte order: classic TIFF and BigTIFF.
_IFD_LAYOUTS = {42: _IfdLayout(4, "I", "H", 12), 43: _IfdLayout(8, "Q", "Q", 20)}


def check_ifd_chain(path: Path) -> None:
    """Refuse a TIFF whose IFD chain loops. Every IFD is visited once and lies inside the
    file, so the walk ends; a chain that leads out of the file just ends it here (tifffile
    then says what is missing)."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(16)
            order = "<" if head.startswith(b"II") else ">"
            layout = _IFD_LAYOUTS[struct.unpack_from(order + "H", head, 2)[0]]
            offset = _unpack(order + layout.offset_code, head[layout.first_at:])
            seen: set[int] = set()
            while 0 < offset < size:
                if offset in seen:
                    raise ImageReadError(path, f"IFD chain loops back to offset {offset}")
                seen.add(offset)
                offset = _next_ifd(fh, order, layout, offset)
    except OSError as exc:
        raise ImageReadError(path, f"cannot read: {exc.strerror or one_line(exc)}") from exc


def _next_ifd(fh: BinaryIO, order: str, layout: _IfdLayout, offset: int) -> int:
    """The offset of the IFD after the one at ``offset``; 0 where the file ends first."""
    entries_code, offset_code = order + layout.entries_code, order + layout.offset_code
    fh.seek(offset)
    entries = _unpack(entries_code, fh.read(struct.calcsize(entries_code)))
    fh.seek(offset + struct.calcsize(entries_code) + entries * layout.entry_size)
    return _unpack(offset_code, fh.read(struct.calcsize(offset_code)))


def _unpack(code: str, data: bytes) -> int:
    """The one integer ``code`` reads at the start of ``data``; 0 when data is short."""
    if len(data) < struct.calcsize(code):
        return 0
    value: int = struct.unpack_from(code, data)[0]
    return value


def _tiff_pages(path: Path, user_pixel_size: float | None, max_pixels: int) -> Iterator[Page]:
    check_ifd_chain(path)
    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:
        raise ImageReadError(path, f"not a readable TIFF: {one_line(exc)}") from exc
    with tif:
        pixel_size, source = (user_pixel_size, "user") if user_pixel_size is not None else tiff_pixel_size(tif)
        file_size = tif.filehandle.size
        skip = tifffile.FILETYPE.REDUCEDIMAGE | tifffile.FILETYPE.MASK  # thumbnails, masks
        fields = 0
        for index, page_or_frame in enumerate(tif.pages):
            page = page_or_frame.aspage()  # a no-op without useframes; gives the TiffPage type
            if page.subfiletype & skip:
                continue
            image = _tiff_page_image(path, page, file_size, max_pixels)
            fields += 1
            yield Page(image, index, pixel_size, source)
        if not fields:  # e.g. a header whose first page offset points nowhere, or thumbnails only
            raise ImageReadError(path, "no image in the file")


def _tiff_page_image(path: Path, page: Any, file_size: int, max_pixels: int) -> np.ndarray:
    where = f"page {page.index}"
    if page.axes not in ("YX", "YXS", "SYX"):
        raise ImageReadError(path, f"{where}: unsupported layout {page.axes} {page.shape}")
    height, width = page.shape[page.axes.index("Y")], page.shape[page.axes.index("X")]
    check_size(path, height, width, max_pixels)
    ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=False) if n]
    if not ends:
        raise ImageReadError(path, f"{where}: holds no image data")
    if max(ends) > file_size:
        raise ImageReadError(
            path, f"{where}: truncated (image data ends at byte {max(ends)}, file has {file_size} bytes)"
        )
    photometric = page.photometric
    check_colour_model(path, photometric, where)
    image = page.asarray()
    if page.axes == "SYX":
        image = np.moveaxis(image, 0, -1)
    return page_pixels(path, image, photometric, page.colormap)


def check_colour_model(path: Path, photometric: int, where: str) -> None:
    """Refuse a TIFF colour model the conversions below do not handle (CMYK, CIELab, ...)."""
    if photometric not in _SUPPORTED_PHOTOMETRIC:
        raise ImageReadError(path, f"{where}: unsupported colour model {tifffile.PHOTOMETRIC(photometric).name}")


def page_pixels(path: Path, image: np.ndarray, photometric: int = tifffile.PHOTOMETRIC.MINISBLACK,
                colormap: np.ndarray | None = None) -> np.ndarray:
    """A decoded TIFF page (H x W or H x W x S) as a field's image (the module's conversions).

    Public so that a volume's slices, read from a stack page by page (``src/phasewatch/core/volume.py``),
    become the same images as the fields of the same pages.
    """
    if photometric == tifffile.PHOTOMETRIC.PALETTE and colormap is not None:
        return _apply_palette(path, _drop_alpha(path, image), colormap)
    image = _drop_alpha(path, image)
    image = _to_supported_dtype(path, image)
    if photometric == tifffile.PHOTOMETRIC.MINISWHITE:
        image = np.iinfo(image.dtype).max - image
    return np.ascontiguousarray(image)


def _drop_alpha(path: Path, image: np.ndarray) -> np.ndarray:
    samples = 1 if image.ndim == 2 else image.shape[2]
    if samples == 1:
        return image.reshape(image.shape[:2])
    if samples == 2:  # gray + alpha
        return image[..., 0]
    if samples in (3, 4):  # RGB, RGBA
        return image[..., :3]
    raise ImageReadError(path, f"{samples} samples per pixel are not supported (1 to 4)")


def _apply_palette(path: Path, indices: np.ndarray, colormap: np.ndarray) -> np.ndarray:
    """Palette indices (alpha already dropped; 1-bit pages come as bool) through the colour map:
    gray when the map is gray (every entry R = G = B, as bilevel and gray palettes are), else RGB."""
    indices = indices.astype(np.intp)  # bool indices would be a mask, not entries 0 and 1
    if indices.size and int(indices.max()) >= colormap.shape[1]:
        raise ImageReadError(path, f"palette index {int(indices.max())} beyond the colour map's "
                                   f"{colormap.shape[1]} entries")
    gray = bool(np.all(colormap == colormap[:1]))
    table = colormap[:1] if gray else colormap
    # TIFF colour maps are 16-bit; most writers store 8-bit colours times 257, Pillow times 256.
    for scale in (257, 256):
        if not np.any(colormap % scale):
            table = (table // scale).astype(np.uint8)
            break
    pixels = np.take(table, indices, axis=1)  # channels x H x W
    return np.ascontiguousarray(pixels[0] if gray else np.moveaxis(pixels, 0, -1))


def _to_supported_dtype(path: Path, image: np.ndarray) -> np.ndarray:
    if image.dtype in (np.uint8, np.uint16):
        return image
    if image.dtype == np.bool_:
        return image.astype(np.uint8) * np.uint8(255)
    if image.dtype.kind not in "iuf":
        raise ImageReadError(path, f"pixel type {image.dtype} is not supported")
    values = image.astype(np.float32)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(image.shape, np.uint16)
    low, high = float(values[finite].min()), float(values[finite].max())
    values[~finite] = low
    gain = 65535.0 / (high - low) if high > low else 0.0
    values -= low
    values *= gain
    return np.rint(values).astype(np.uint16)


# --- PNG, JPEG, BMP ------------------------------------------------------------------


class _Header(NamedTuple):
    height: int
    width: int
    gray_alpha: bool = False  # OpenCV expands gray + alpha to BGRA with B = G = R


def _opencv_reader(kind: str, header: Callable[[Path, bytes], _Header]) -> Reader:
    """A reader of single-image files that OpenCV decodes; ``header`` reads the size
    before any pixel is decoded. ``kind`` names the format in messages."""

    def read(path: Path, user_pixel_size: float | None, max_pixels: int) -> Iterator[Page]:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageReadError(path, f"cannot read: {exc.strerror or one_line(exc)}") from exc
        size = header(path, data)
        check_size(path, size.height, size.width, max_pixels)
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise ImageReadError(path, f"cannot decode the {kind} data (corrupt or truncated)")
        if image.ndim == 3:
            image = image[..., 0] if size.gray_alpha else cv2.cvtColor(image[..., :3], cv2.COLOR_BGR2RGB)
        source = "none" if user_pixel_size is None else "user"
        yield Page(np.ascontiguousarray(image), 0, user_pixel_size, source)

    return read


def _png_header(path: Path, data: bytes) -> _Header:
    if len(data) < 26 or data[12:16] != b"IHDR":
        raise ImageReadError(path, "PNG header is truncated or lacks IHDR")
    width, height = struct.unpack(">II", data[16:24])
    return _Header(height, width, gray_alpha=data[25] == _PNG_GRAY_ALPHA)


def _jpeg_header(path: Path, data: bytes) -> _Header:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        if marker in _JPEG_SOF and pos + 9 <= len(data):
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return _Header(height, width)
        pos += 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
    raise ImageReadError(path, "JPEG has no readable frame header (truncated or corrupt)")


def _bmp_header(path: Path, data: bytes) -> _Header:
    if len(data) < 26:
        raise ImageReadError(path, "BMP header is truncated")
    (header_size,) = struct.unpack("<I", data[14:18])
    if header_size == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sides
        width, height = struct.unpack("<HH", data[18:22])
    else:
        width, height = struct.unpack("<ii", data[18:26])
    return _Header(abs(height), abs(width))  # negative height means rows stored top-down


# --- the formats ---------------------------------------------------------------------

# Tried in this order; the names appear in messages.
FORMATS: dict[str, ImageFormat] = {
    "TIFF": ImageFormat((".tif", ".tiff"), (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"), _tiff_pages),
    "PNG": ImageFormat((".png",), (b"\x89PNG\r\n\x1a\n",), _opencv_reader("PNG", _png_header)),
    "JPEG": ImageFormat((".jpg", ".jpeg"), (b"\xff\xd8\xff",), _opencv_reader("JPEG", _jpeg_header)),
    "BMP": ImageFormat((".bmp",), (b"BM",), _opencv_reader("BMP", _bmp_header)),
}
SUPPORTED_SUFFIXES = _suffixes()
