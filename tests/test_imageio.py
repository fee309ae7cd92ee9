"""Decoding micrographs: every format round-trips exactly, pixel sizes, one-line errors,
and a new format is one entry of the registry."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from phasewatch.imageio.formats import (
    FORMATS,
    SUPPORTED_SUFFIXES,
    ImageFormat,
    ImageReadError,
    Page,
    images_in,
    iter_pages,
    read_pages,
)

RNG = np.random.default_rng(7)


def random_image(shape: tuple[int, ...], dtype: type = np.uint8) -> np.ndarray:
    return RNG.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True, dtype=dtype)


def only_field(path: Path, **kwargs):
    fields = read_pages(path, **kwargs)
    assert len(fields) == 1
    return fields[0]


def write_png(path: Path, width: int, height: int, colour_type: int, rows: list[bytes]) -> None:
    """A minimal 8-bit PNG written by hand, for kinds OpenCV cannot write (gray + alpha)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    idat = zlib.compress(b"".join(b"\x00" + row for row in rows))  # filter type 0 per row
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def assert_one_line_error(path: Path, match: str, **kwargs) -> None:
    with pytest.raises(ImageReadError, match=match) as info:
        read_pages(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")


# --- round trips ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "dtype", "photometric"),
    [
        ((40, 50), np.uint8, "minisblack"),
        ((40, 50), np.uint16, "minisblack"),
        ((40, 50, 3), np.uint8, "rgb"),
        ((40, 50, 3), np.uint16, "rgb"),
    ],
)
def test_tiff_round_trip(tmp_path, shape, dtype, photometric):
    image = random_image(shape, dtype)
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, image, photometric=photometric)
    field = only_field(path)
    assert field.image.dtype == dtype
    np.testing.assert_array_equal(field.image, image)
    assert (field.page, field.pixel_size_um, field.pixel_size_source) == (0, None, "none")


def test_tiff_rgba_drops_alpha(tmp_path):
    image = random_image((20, 30, 4))
    path = tmp_path / "rgba.tif"
    tifffile.imwrite(path, image, photometric="rgb", extrasamples=["unassalpha"])
    np.testing.assert_array_equal(only_field(path).image, image[..., :3])


def test_tiff_gray_alpha_becomes_gray(tmp_path):
    image = random_image((20, 30, 2), np.uint16)
    path = tmp_path / "ga.tif"
    tifffile.imwrite(path, image, photometric="minisblack", extrasamples=["unassalpha"])
    np.testing.assert_array_equal(only_field(path).image, image[..., 0])


def test_tiff_planar_rgb_is_interleaved(tmp_path):
    image = random_image((3, 20, 30))
    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, image, photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(only_field(path).image, np.moveaxis(image, 0, -1))


def test_tiff_miniswhite_is_inverted(tmp_path):
    image = random_image((20, 30))
    path = tmp_path / "white.tif"
    tifffile.imwrite(path, image, photometric="miniswhite")
    np.testing.assert_array_equal(only_field(path).image, 255 - image)


@pytest.mark.parametrize(("photometric", "true_value"), [("minisblack", 255), ("miniswhite", 0)])
def test_tiff_bilevel_becomes_0_255(tmp_path, photometric, true_value):
    image = random_image((16, 24)) > 127
    path = tmp_path / "bilevel.tif"
    tifffile.imwrite(path, image, photometric=photometric)
    out = only_field(path).image
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.where(image, true_value, 255 - true_value))


def test_tiff_palette_becomes_rgb(tmp_path):
    colormap = np.zeros((3, 256), np.uint16)
    colormap[:, 1] = [255 * 257, 0, 0]
    colormap[:, 2] = [0, 128 * 257, 255 * 257]
    indices = np.zeros((16, 16), np.uint8)
    indices[:8] = 1
    indices[8:, :4] = 2
    path = tmp_path / "palette.tif"
    tifffile.imwrite(path, indices, photometric="palette", colormap=colormap)
    image = only_field(path).image
    assert image.dtype == np.uint8 and image.shape == (16, 16, 3)
    assert tuple(image[0, 0]) == (255, 0, 0)
    assert tuple(image[15, 0]) == (0, 128, 255)
    assert tuple(image[15, 15]) == (0, 0, 0)


PILLOW_IMAGES = Path(__file__).parent / "data" / "pillow"  # Pillow's own test images (README there)


def test_pillows_palette_and_alpha_tiff_decodes_to_rgb_not_4d() -> None:
    # Issue 21, defect 1: this file decoded to (556, 518, 2, 3) and wedged the daemon.
    path = PILLOW_IMAGES / "rdf.tif"
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        indices, colormap = page.asarray()[..., 0], page.colormap
    image = only_field(path).image
    assert image.shape == (556, 518, 3) and image.dtype == np.uint8
    # Pillow stores 8-bit colours times 256; the alpha sample plays no part
    np.testing.assert_array_equal(image, np.moveaxis(colormap[:, indices] >> 8, 0, -1))


@pytest.mark.parametrize(("name", "sizes"), [("multipage.tiff", [(10, 10), (10, 10), (20, 20)]),
                                             ("multipage-lastframe.tif", [(20, 20)]),
                                             ("multipage_out_of_order.tiff", [(10, 10), (20, 20), (10, 10)])])
def test_pillows_one_bit_palette_pages_decode(name: str, sizes: list[tuple[int, int]]) -> None:
    # Issue 21, also found 8: "too many indices for array" (bool indices taken as a mask).
    path = PILLOW_IMAGES / name
    with tifffile.TiffFile(path) as tif:
        expected = [np.moveaxis(p.colormap[:, p.asarray().astype(int)], 0, -1) for p in tif.pages]
    fields = read_pages(path)
    assert [f.image.shape[:2] for f in fields] == sizes
    for field, colours in zip(fields, expected, strict=True):
        assert field.image.dtype == np.uint8 and field.image.ndim == 3  # the maps hold colours
        scale = 257 if not np.any(colours % 257) else 256
        np.testing.assert_array_equal(field.image, colours // scale)


def test_a_gray_palette_becomes_gray_and_a_one_bit_palette_page_too(tmp_path: Path) -> None:
    ramp = np.repeat(np.arange(256, dtype=np.uint16)[None] * 257, 3, axis=0)
    indices = random_image((12, 16))
    path = tmp_path / "gray-palette.tif"
    tifffile.imwrite(path, indices, photometric="palette", colormap=ramp)
    image = only_field(path).image
    assert image.shape == (12, 16) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, indices)

    bits = RNG.random((12, 16)) > 0.5  # 1-bit page, black and white map: tifffile writes bool as 1 bit
    one_bit = tmp_path / "one-bit-palette.tif"
    white_black = np.array([[65535, 0]] * 3, np.uint16)
    tifffile.imwrite(one_bit, bits, photometric="minisblack", extratags=[(320, "H", 6, white_black.ravel(), True)])
    with tifffile.TiffFile(one_bit, mode="r+b") as tif:  # tifffile writes no 1-bit palette itself
        tif.pages.first.tags["PhotometricInterpretation"].overwrite(tifffile.PHOTOMETRIC.PALETTE)
    image = only_field(one_bit).image
    np.testing.assert_array_equal(image, np.where(bits, 0, 255).astype(np.uint8))


def test_a_palette_index_beyond_the_colour_map_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "short-map.tif"
    indices = np.full((16, 16), 3, np.uint8)
    tifffile.imwrite(path, indices, photometric="minisblack", extratags=[(320, "H", 6, [0, 1] * 3, True)])
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages.first.tags["PhotometricInterpretation"].overwrite(tifffile.PHOTOMETRIC.PALETTE)
    with pytest.raises(ImageReadError, match="palette index 3 beyond the colour map's 2 entries"):
        read_pages(path)


def test_tiff_float_is_rescaled_to_uint16(tmp_path):
    image = np.zeros((10, 10), np.float32)
    image[0, 0], image[0, 1], image[0, 2], image[0, 3] = -1.0, 3.0, 1.0, np.nan
    path = tmp_path / "float.tif"
    tifffile.imwrite(path, image)
    out = only_field(path).image
    assert out.dtype == np.uint16
    # finite range -1..3 -> 0..65535: 0 -> 16384 (rounded 16383.75), 1 -> 32768 (32767.5)
    assert (out[0, 0], out[0, 1], out[0, 2], out[0, 3], out[5, 5]) == (0, 65535, 32768, 0, 16384)


def test_tiff_multi_page_gives_one_field_per_page(tmp_path):
    stack = random_image((3, 24, 32), np.uint16)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack, photometric="minisblack")
    fields = read_pages(path)
    assert [f.page for f in fields] == [0, 1, 2]
    for field, page in zip(fields, stack, strict=True):
        np.testing.assert_array_equal(field.image, page)


def test_iter_fields_is_lazy(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, random_image((3, 24, 32)), photometric="minisblack")
    fields = iter_pages(path)
    assert next(fields).page == 0
    fields.close()


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [
        ((40, 50), np.uint8),
        ((40, 50), np.uint16),
        ((40, 50, 3), np.uint8),
        ((40, 50, 3), np.uint16),
    ],
)
def test_png_round_trip(tmp_path, shape, dtype):
    image = random_image(shape, dtype)
    path = tmp_path / "a.png"
    # OpenCV writes BGR: hand it the reversed channels so that the file holds `image` as RGB
    assert cv2.imwrite(str(path), image[..., ::-1] if image.ndim == 3 else image)
    field = only_field(path)
    assert field.image.dtype == dtype
    np.testing.assert_array_equal(field.image, image)


def test_png_rgba_drops_alpha(tmp_path):
    image = random_image((20, 30, 4))
    path = tmp_path / "rgba.png"
    assert cv2.imwrite(str(path), image[..., [2, 1, 0, 3]])  # RGBA -> BGRA
    np.testing.assert_array_equal(only_field(path).image, image[..., :3])


def test_png_gray_alpha_becomes_gray(tmp_path):
    gray = random_image((12, 10))
    alpha = random_image((12, 10))
    rows = [np.stack([g, a], axis=-1).tobytes() for g, a in zip(gray, alpha, strict=True)]
    path = tmp_path / "ga.png"
    write_png(path, 10, 12, 4, rows)
    image = only_field(path).image
    assert image.ndim == 2
    np.testing.assert_array_equal(image, gray)


def test_jpeg_round_trip_is_close(tmp_path):
    yy, xx = np.mgrid[0:64, 0:80]
    image = np.stack([yy * 3, xx * 3, (yy + xx) * 2], axis=-1).astype(np.uint8)  # smooth RGB
    path = tmp_path / "a.jpg"
    assert cv2.imwrite(str(path), image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    out = only_field(path).image
    assert out.shape == image.shape and out.dtype == np.uint8
    # channel order matters: a BGR result would differ by ~100 levels somewhere
    assert np.abs(out.astype(int) - image.astype(int)).mean() < 3


def test_jpeg_gray(tmp_path):
    image = np.tile(np.arange(0, 240, 4, dtype=np.uint8), (30, 1))
    path = tmp_path / "a.jpeg"
    assert cv2.imwrite(str(path), image)
    out = only_field(path).image
    assert out.shape == image.shape
    assert np.abs(out.astype(int) - image.astype(int)).max() < 8


def test_bmp_round_trip(tmp_path):
    image = random_image((21, 33, 3))
    path = tmp_path / "a.bmp"
    assert cv2.imwrite(str(path), image[..., ::-1])
    np.testing.assert_array_equal(only_field(path).image, image)


# --- pixel size ----------------------------------------------------------------------


def pixel_size(path: Path, **kwargs) -> tuple[float | None, str]:
    field = only_field(path, **kwargs)
    return field.pixel_size_um, field.pixel_size_source


def test_pixel_size_imagej(tmp_path):
    path = tmp_path / "ij.tif"
    image = random_image((16, 16))
    tifffile.imwrite(path, image, imagej=True, resolution=(1 / 0.05, 1 / 0.05), metadata={"unit": "um"})
    size, source = pixel_size(path)
    assert source == "imagej"
    assert size == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("unit", "expected"),
    [("micron", 0.05), ("\\u00B5m", 0.05), ("nm", 0.00005), ("inch", None), ("pixel", None)],
)
def test_pixel_size_imagej_units(tmp_path, unit, expected):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, random_image((16, 16)), imagej=True, resolution=(20, 20), metadata={"unit": unit})
    size, source = pixel_size(path)
    if expected is None:  # ImageJ's "inch" is a graphics dpi, "pixel" means uncalibrated
        assert (size, source) == (None, "none")
    else:
        assert (size, source) == (pytest.approx(expected), "imagej")


def test_pixel_size_ome(tmp_path):
    path = tmp_path / "ome.tif"
    metadata = {
        "PhysicalSizeX": 0.1,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": 0.1,
        "PhysicalSizeYUnit": "µm",
    }
    tifffile.imwrite(path, random_image((16, 16)), ome=True, metadata=metadata)
    size, source = pixel_size(path)
    assert source == "ome"
    assert size == pytest.approx(0.1)


def test_pixel_size_ome_in_nanometres(tmp_path):
    path = tmp_path / "ome_nm.tif"
    metadata = {"PhysicalSizeX": 250, "PhysicalSizeXUnit": "nm"}
    tifffile.imwrite(path, random_image((16, 16)), ome=True, metadata=metadata)
    assert pixel_size(path) == (pytest.approx(0.25), "ome")


def test_pixel_size_fei(tmp_path):
    header = "[User]\nDate=12/01/2024\n[Scan]\nPixelWidth=2.5e-09\nPixelHeight=2.5e-09\n"
    path = tmp_path / "fei.tif"
    tifffile.imwrite(path, random_image((16, 16)), extratags=[(34682, "s", 0, header, True)])
    assert pixel_size(path) == (pytest.approx(0.0025), "fei")


def test_pixel_size_zeiss(tmp_path):
    header = "\r\n".join(["0", "AP_IMAGE_PIXEL_SIZE", "Image Pixel Size = 3.5 nm", "AP_WD", "WD = 5 mm"])
    path = tmp_path / "zeiss.tif"
    tifffile.imwrite(path, random_image((16, 16)), extratags=[(34118, "s", 0, header, True)])
    assert pixel_size(path) == (pytest.approx(0.0035), "zeiss")


def test_pixel_size_tiff_resolution_centimetre(tmp_path):
    path = tmp_path / "cm.tif"
    tifffile.imwrite(path, random_image((16, 16)), resolution=(1e4 / 0.2, 1e4 / 0.2), resolutionunit="CENTIMETER")
    assert pixel_size(path) == (pytest.approx(0.2), "tiff-resolution")


def test_pixel_size_tiff_resolution_fine_inch_is_trusted(tmp_path):
    path = tmp_path / "inch.tif"
    tifffile.imwrite(path, random_image((16, 16)), resolution=(25400.0, 25400.0), resolutionunit="INCH")
    assert pixel_size(path) == (pytest.approx(1.0), "tiff-resolution")


@pytest.mark.parametrize(("dpi", "unit"), [(72, "INCH"), (300, "INCH"), (72, "NONE")])
def test_pixel_size_graphics_dpi_is_ignored(tmp_path, dpi, unit):
    path = tmp_path / "dpi.tif"
    tifffile.imwrite(path, random_image((16, 16)), resolution=(dpi, dpi), resolutionunit=unit)
    assert pixel_size(path) == (None, "none")


def test_pixel_size_user_overrides_metadata(tmp_path):
    path = tmp_path / "ome.tif"
    tifffile.imwrite(path, random_image((16, 16)), ome=True, metadata={"PhysicalSizeX": 0.1})
    assert pixel_size(path, pixel_size_um=0.7) == (0.7, "user")
    png = tmp_path / "a.png"
    cv2.imwrite(str(png), random_image((16, 16)))
    assert pixel_size(png) == (None, "none")
    assert pixel_size(png, pixel_size_um=0.3) == (0.3, "user")


def test_user_pixel_size_must_be_positive(tmp_path):
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), random_image((16, 16)))
    with pytest.raises(ValueError, match="positive"):
        read_pages(path, pixel_size_um=0.0)


# --- bad input -----------------------------------------------------------------------


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.tif"
    path.write_bytes(b"")
    assert_one_line_error(path, "empty file")


def test_missing_file(tmp_path):
    assert_one_line_error(tmp_path / "missing.png", "cannot read")


def test_text_named_tif(tmp_path):
    path = tmp_path / "notes.tif"
    path.write_text("this is not an image\nsecond line\n")
    assert_one_line_error(path, "not a TIFF, PNG, JPEG or BMP image")


def test_unsupported_extension(tmp_path):
    path = tmp_path / "a.gif"
    path.write_bytes(b"GIF89a" + bytes(100))
    assert_one_line_error(path, "unsupported file type '.gif'")


def test_truncated_tiff_data(tmp_path):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, random_image((64, 64)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 2000])
    assert_one_line_error(path, "truncated")


def test_truncated_tiff_header(tmp_path):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, random_image((64, 64)))
    path.write_bytes(path.read_bytes()[:100])
    assert_one_line_error(path, "not a readable TIFF")


def test_tiff_header_without_pages(tmp_path):
    path = tmp_path / "header-only.tif"
    path.write_bytes(b"II*\x00" + b"garbage!" * 4)
    assert_one_line_error(path, "no image in the file")


def test_truncated_png(tmp_path):
    path = tmp_path / "cut.png"
    cv2.imwrite(str(path), random_image((64, 64)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_one_line_error(path, "cannot decode")


@pytest.mark.parametrize("suffix", [".tif", ".png", ".bmp", ".jpg"])
def test_one_pixel_image_is_refused(tmp_path, suffix):
    path = tmp_path / f"dot{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, np.zeros((1, 1), np.uint8))
    else:
        assert cv2.imwrite(str(path), np.zeros((1, 1), np.uint8))
    assert_one_line_error(path, "1 x 1 pixels, smaller than")


def test_huge_tiff_header_is_refused_before_decoding(tmp_path):
    path = tmp_path / "huge.tif"
    tifffile.imwrite(path, np.zeros((16, 16), np.uint8))
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages.first.tags
        for name in ("ImageWidth", "ImageLength"):
            # rewrite the IFD entry as one LONG (type 4) so that it can hold 100000
            struct.pack_into("<HHII", data, tags[name].offset, tags[name].code, 4, 1, 100_000)
    path.write_bytes(bytes(data))
    with tifffile.TiffFile(path) as tif:  # the header really declares 100000 x 100000
        assert tif.pages.first.shape[:2] == (100_000, 100_000)
    assert_one_line_error(path, "100000 x 100000 = 10000000000 pixels, more than the limit")


def test_huge_png_header_is_refused_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    write_png(path, 100_000, 100_000, 0, [bytes(16)])
    assert_one_line_error(path, "100000 x 100000 = 10000000000 pixels, more than the limit")


def test_max_pixels_applies_per_field(tmp_path):
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), random_image((100, 100)))
    assert len(read_pages(path, max_pixels=10_000)) == 1
    assert_one_line_error(path, "more than the limit of 9999", max_pixels=9_999)


def test_signed_and_complex_dtypes(tmp_path):
    path = tmp_path / "int32.tif"
    tifffile.imwrite(path, np.arange(256, dtype=np.int32).reshape(16, 16) - 100)
    out = only_field(path).image
    assert out.dtype == np.uint16 and out.min() == 0 and out.max() == 65535
    path = tmp_path / "complex.tif"
    tifffile.imwrite(path, np.zeros((16, 16), np.complex64))
    assert_one_line_error(path, "pixel type complex64 is not supported")


# --- the format registry -------------------------------------------------------------


def read_pgm(path: Path, pixel_size_um: float | None, max_pixels: int):
    yield Page(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), 0, pixel_size_um, "user" if pixel_size_um else "none")


def test_suffixes_come_from_the_registry():
    assert SUPPORTED_SUFFIXES == (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
    assert list(FORMATS) == ["TIFF", "PNG", "JPEG", "BMP"]


def test_a_new_format_is_one_registry_entry(tmp_path, monkeypatch):
    monkeypatch.setitem(FORMATS, "PGM", ImageFormat((".pgm",), (b"P5",), read_pgm))
    image = random_image((12, 16))
    path = tmp_path / "a.pgm"
    assert cv2.imwrite(str(path), image)
    field = only_field(path, pixel_size_um=0.5)
    np.testing.assert_array_equal(field.image, image)
    assert (field.pixel_size_um, field.pixel_size_source) == (0.5, "user")
    assert images_in(tmp_path) == [path]
    path.write_text("not an image")
    assert_one_line_error(path, "not a TIFF, PNG, JPEG, BMP or PGM image")


def test_a_readers_own_exception_becomes_one_line(tmp_path, monkeypatch):
    def broken(path, pixel_size_um, max_pixels):
        raise ValueError("bad header\nsecond line")

    monkeypatch.setitem(FORMATS, "PGM", ImageFormat((".pgm",), (b"P5",), broken))
    path = tmp_path / "a.pgm"
    path.write_bytes(b"P5\n8 8\n255\n" + bytes(64))
    assert_one_line_error(path, "cannot decode: bad header")


# --- real micrographs ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "shape"),
    [
        ("superalloy/train/images/*.tif", (512, 512, 3)),
        ("ebc/train/images/*.tif", (1024, 1024, 3)),
        ("uhcs/train/images/*.tif", (484, 645)),
        ("tomography/train/images/*.png", (852, 852, 3)),  # gray stored as RGB
    ],
)
def test_real_micrographs(shared_data, pattern, shape):
    path = sorted(shared_data.glob(pattern))[0]
    field = only_field(path)
    assert field.image.shape == shape
    assert field.image.dtype in (np.uint8, np.uint16)
    assert field.image.std() > 0
    assert field.pixel_size_source in ("none", "tiff-resolution")


# --- IFD chains that loop -----------------------------------------------------------------

# A timeout guard: a reader that loops on such a file must fail the test, not hang it.
_READ_IN_CHILD = """
import itertools, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # a loop that allocates dies fast
from phasewatch.imageio.formats import ImageReadError, iter_pages
try:
    fields = list(itertools.islice(iter_pages(sys.argv[1]), 1000))
except ImageReadError as exc:
    print(exc)
else:
    print(f"read {len(fields)} fields")
"""
READ_TIMEOUT_S = 120  # the child imports numpy, OpenCV and tifffile on a busy machine


def read_in_child(path: Path) -> str:
    """What reading ``path`` ends with, in a child process killed after READ_TIMEOUT_S."""
    # One BLAS thread: its per-thread buffers would otherwise count against the limit on many cores.
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    try:
        done = subprocess.run([sys.executable, "-c", _READ_IN_CHILD, str(path)],
                              capture_output=True, text=True, timeout=READ_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"reading {path.name} did not end within {READ_TIMEOUT_S} s")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def tiff_with_ifd_chain(byteorder: str, bigtiff: bool, pages: int, last_next: int | None) -> tuple[bytes, list[int]]:
    """A TIFF of ``pages`` 8 x 8 gray pages, written by hand and padded to the issue's 512
    bytes: each IFD is followed by its pixels, and the last IFD's next-IFD offset points at
    page ``last_next`` (None: the chain ends). Returns the bytes and the offset of each IFD."""
    order = "<" if byteorder == "II" else ">"
    offset, count, entry = ("Q", "Q", "HHQI4x") if bigtiff else ("I", "H", "HHII")
    header = byteorder.encode() + (struct.pack(order + "HHHQ", 43, 8, 0, 0) if bigtiff
                                   else struct.pack(order + "HI", 42, 0))
    ifd_size = struct.calcsize(order + count) + 9 * struct.calcsize(order + entry) + struct.calcsize(order + offset)
    ifds = [len(header) + i * (ifd_size + 64) for i in range(pages)]
    data = bytearray(header)
    struct.pack_into(order + offset, data, len(header) - struct.calcsize(order + offset), ifds[0])
    for i, ifd in enumerate(ifds):
        tags = {256: 8, 257: 8, 258: 8, 259: 1, 262: 1, 273: ifd + ifd_size, 277: 1, 278: 8, 279: 64}
        data += struct.pack(order + count, len(tags))
        for tag, value in tags.items():
            data += struct.pack(order + entry, tag, 4, 1, value)  # LONG, one value
        following = ifds[i + 1] if i + 1 < pages else (0 if last_next is None else ifds[last_next])
        data += struct.pack(order + offset, following)
        data += bytes(range(64))
    return bytes(data.ljust(512, b"\0")), ifds


@pytest.mark.parametrize(("byteorder", "bigtiff"), [("II", False), ("MM", False), ("II", True)])
def test_hand_built_tiff_is_read(tmp_path, byteorder, bigtiff):
    path = tmp_path / "two.tif"
    path.write_bytes(tiff_with_ifd_chain(byteorder, bigtiff, pages=2, last_next=None)[0])
    fields = read_pages(path)
    assert [f.page for f in fields] == [0, 1]
    assert np.array_equal(fields[1].image, np.arange(64, dtype=np.uint8).reshape(8, 8))


@pytest.mark.parametrize(("byteorder", "bigtiff", "pages", "last_next"), [
    ("II", False, 1, 0),  # the file: the only IFD points at itself
    ("MM", False, 1, 0),
    ("II", True, 1, 0),
    ("II", False, 3, 1),  # the third page leads back to the second
    ("MM", True, 3, 0),
])
def test_ifd_chain_that_loops_fails_in_one_line(tmp_path, byteorder, bigtiff, pages, last_next):
    path = tmp_path / "loop.tif"
    data, ifds = tiff_with_ifd_chain(byteorder, bigtiff, pages, last_next)
    path.write_bytes(data)
    assert read_in_child(path) == f"{path}: IFD chain loops back to offset {ifds[last_next]}"
    assert_one_line_error(path, f"IFD chain loops back to offset {ifds[last_next]}")
