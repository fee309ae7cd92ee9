"""A TIFF's physical pixel size from its metadata, with the one table of length units.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from typing import Any

import tifffile

_INCH_UM = 25400.0
_MIN_TRUSTED_PPI = 2540.0
# Length units as microscope software spells them, in micrometres. Inches are left out on
# purpose: ImageJ and friends report a graphics file's dpi as "inch", never a calibration.
_UM_PER_UNIT = {
    "m": 1e6, "meter": 1e6, "metre": 1e6,
    "cm": 1e4, "centimeter": 1e4, "centimetre": 1e4,
    "mm": 1e3, "millimeter": 1e3, "millimetre": 1e3,
    "um": 1.0, "\u00b5m": 1.0, "\u03bcm": 1.0, "\\u00b5m": 1.0,
    "micron": 1.0, "microns": 1.0, "micrometer": 1.0, "micrometre": 1.0,
    "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3,
    "\u00e5": 1e-4, "\u212b": 1e-4, "angstrom": 1e-4,
    "pm": 1e-6,
}  # fmt: skip
_UM_PER_RESUNIT: dict[int, float] = {
    tifffile.RESUNIT.CENTIMETER: 1e4,
    tifffile.RESUNIT.MILLIMETER: 1e3,
    tifffile.RESUNIT.MICROMETER: 1.0,
}


def tiff_pixel_size(tif: tifffile.TiffFile) -> tuple[float | None, str]:
    """(µm per pixel, source) from the first metadata that gives one; (None, "none")."""
    readers: tuple[tuple[str, Callable[[tifffile.TiffFile], float | None]], ...] = (
        ("fei", _fei_pixel_size),
        ("zeiss", _zeiss_pixel_size),
        ("ome", _ome_pixel_size),
        ("imagej", _imagej_pixel_size),
        ("tiff-resolution", _resolution_pixel_size),
    )
    for source, reader in readers:
        try:
            value = reader(tif)
        except Exception:  # malformed optional metadata must not make the image unreadable
            continue
        if value is not None and math.isfinite(value) and value > 0:
            return value, source
    return None, "none"


def um_per_unit(unit: Any) -> float | None:
    """Micrometres per ``unit`` as microscope software spells it (µm, μm, micron, Å, ...);
    None for an unknown unit or inches."""
    return _UM_PER_UNIT.get(str(unit).strip().lower())


def _fei_pixel_size(tif: tifffile.TiffFile) -> float | None:
    meta = tif.fei_metadata
    if not meta:
        return None
    for section in ("Scan", "EScan"):
        width_m = meta.get(section, {}).get("PixelWidth")
        if width_m is not None:
            return float(width_m) * 1e6
    return None


def _zeiss_pixel_size(tif: tifffile.TiffFile) -> float | None:
    meta = tif.sem_metadata
    if not meta:
        return None
    for key in ("ap_image_pixel_size", "ap_pixel_size"):
        entry = meta.get(key)
        if entry is None:
            continue
        # tifffile gives (label, value, unit), or (label, "value unit") when unparsed
        value, unit = entry[1:3] if len(entry) >= 3 else str(entry[1]).split()
        scale = um_per_unit(unit)
        if scale is not None:
            return float(value) * scale
    return None


def _ome_pixel_size(tif: tifffile.TiffFile) -> float | None:
    xml = tif.ome_metadata
    if not xml:
        return None
    for element in ElementTree.fromstring(xml).iter():
        if element.tag.rsplit("}", 1)[-1] == "Pixels":
            size = element.get("PhysicalSizeX")
            scale = um_per_unit(element.get("PhysicalSizeXUnit", "µm"))  # OME's default unit
            return float(size) * scale if size is not None and scale is not None else None
    return None


def _imagej_pixel_size(tif: tifffile.TiffFile) -> float | None:
    meta = tif.imagej_metadata
    scale = um_per_unit(meta.get("unit", "")) if meta else None
    if scale is None:
        return None
    pixels_per_unit = tif.pages.first.resolution[0]
    return scale / pixels_per_unit if pixels_per_unit > 0 else None


def _resolution_pixel_size(tif: tifffile.TiffFile) -> float | None:
    page = tif.pages.first
    if "XResolution" not in page.tags:
        return None
    pixels_per_unit = page.resolution[0]
    if pixels_per_unit <= 0:
        return None
    unit = page.resolutionunit
    if unit == tifffile.RESUNIT.INCH:
        return _INCH_UM / pixels_per_unit if pixels_per_unit >= _MIN_TRUSTED_PPI else None
    scale = _UM_PER_RESUNIT.get(unit)
    return scale / pixels_per_unit if scale is not None else None


# --- Z stacks: spacing and depth ----------------------------------------------------


def tiff_spacing(tif: Any) -> tuple[tuple[float, float, float] | None, str]:
    """The spacing the file's metadata give, and which metadata ("imagej", "ome" or "none")."""
    for source, reader in (("imagej", _imagej_spacing), ("ome", _ome_spacing)):
        try:
            values = reader(tif)
        except (KeyError, TypeError, ValueError, ZeroDivisionError, ElementTree.ParseError):
            continue  # malformed optional metadata: the volume is still measurable, in voxels
        if values is not None and all(math.isfinite(v) and v > 0 for v in values):
            return values, source
    return None, "none"


def ome_size_z(tif: Any) -> int:
    """OME ``SizeZ`` of the first image; 1 where there is none (or it is unreadable)."""
    pixels = _ome_pixels(tif)
    try:
        return int(pixels.get("SizeZ", 1)) if pixels is not None else 1
    except ValueError:
        return 1


def _ome_pixels(tif: Any) -> ElementTree.Element | None:
    if not tif.ome_metadata:
        return None
    try:
        root = ElementTree.fromstring(tif.ome_metadata)
    except ElementTree.ParseError:
        return None
    return next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)


def _imagej_spacing(tif: Any) -> tuple[float, float, float] | None:
    meta = tif.imagej_metadata or {}
    scale = um_per_unit(meta.get("unit", ""))
    if scale is None or "spacing" not in meta:
        return None
    x_per_unit, y_per_unit = tif.pages.first.resolution
    return float(meta["spacing"]) * scale, scale / float(y_per_unit), scale / float(x_per_unit)


def _ome_spacing(tif: Any) -> tuple[float, float, float] | None:
    element = _ome_pixels(tif)
    if element is None:
        return None
    values = []
    for axis in "ZYX":
        size = element.get(f"PhysicalSize{axis}")
        scale = um_per_unit(element.get(f"PhysicalSize{axis}Unit", "µm"))  # OME's default
        if size is None or scale is None:
            return None
        values.append(float(size) * scale)
    return values[0], values[1], values[2]
