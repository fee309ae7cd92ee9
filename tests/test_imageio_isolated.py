"""Decoding under limits (imageio.IsolatedReader): a child process with a memory and a time bound.

Every file here is real: a FIFO named like a micrograph (opening it blocks for ever, as a
wedged network file system or decoder would), a valid 8000 x 8000 zlib-compressed TIFF
that decodes to 384 MB from a file of a few hundred kilobytes (a decompression bomb),
and ordinary stacks and PNGs, whose fields must come back exactly as in-process reading
gives them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from multiprocessing import Pipe
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from phasewatch.imageio.formats import ImageReadError, read_pages
from phasewatch.imageio.isolated import _CHILD_MAIN, DecoderClosed, IsolatedReader
from phasewatch.imageio.stacks import micrograph_slices

MEMORY = 256 << 20


@pytest.fixture
def reader() -> Iterator[IsolatedReader]:
    isolated = IsolatedReader(MEMORY, timeout_s=2.0)
    yield isolated
    isolated.close()


def bomb(path: Path) -> Path:
    """8000 x 8000 RGB, 16-bit, zlib: 384 MB of pixels in a file of a few hundred kB."""
    tifffile.imwrite(path, np.zeros((8000, 8000, 3), np.uint16), compression="zlib", photometric="rgb")
    return path


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def stack(path: Path) -> Path:
    rng = np.random.default_rng(1)
    with tifffile.TiffWriter(path) as tif:
        tif.write(rng.integers(0, 65535, (40, 48), np.uint16), resolution=(4.0, 4.0), resolutionunit="MICROMETER")
        tif.write(rng.integers(0, 65535, (40, 48), np.uint16))
    return path


def assert_same_fields(got: list, expected: list) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert (g.page, g.pixel_size_um, g.pixel_size_source) == (e.page, e.pixel_size_um, e.pixel_size_source)
        assert g.image.dtype == e.image.dtype and g.image.shape == e.image.shape
        assert np.array_equal(g.image, e.image)
        assert g.image.flags.writeable and g.image.flags.c_contiguous


def test_fields_come_back_exactly_as_read_in_process(reader: IsolatedReader, tmp_path: Path) -> None:
    rgb = np.random.default_rng(2).integers(0, 255, (30, 20, 3), np.uint8)
    assert cv2.imwrite(str(tmp_path / "rgb.png"), rgb)
    for path in (stack(tmp_path / "stack.tif"), tmp_path / "rgb.png"):
        assert_same_fields(reader.read_pages(path), read_pages(path))
    assert_same_fields(reader.read_pages(tmp_path / "stack.tif", 0.5), read_pages(tmp_path / "stack.tif", 0.5))


def test_real_fields_come_back_exactly_as_read_in_process(reader: IsolatedReader, shared_data: Path) -> None:
    # the pixels come back raw, read straight into the array (issue 25): megabytes in many socket reads
    for material in ("ebc", "superalloy", "uhcs", "tomography"):
        path = sorted((shared_data / material).glob("*/images/*"))[0]
        assert_same_fields(reader.read_pages(path), read_pages(path))


def test_a_bad_file_fails_with_the_same_line_as_in_process(reader: IsolatedReader, tmp_path: Path) -> None:
    bad = tmp_path / "header-only.tif"
    bad.write_bytes(b"II*\x00garbage")
    with pytest.raises(ImageReadError) as in_process:
        read_pages(bad)
    with pytest.raises(ImageReadError) as isolated:
        reader.read_pages(bad)
    assert str(isolated.value) == str(in_process.value) == f"{bad}: no image in the file"


def test_a_decompression_bomb_fails_on_the_memory_limit_and_the_next_file_reads(
        reader: IsolatedReader, tmp_path: Path) -> None:
    path = bomb(tmp_path / "bomb.tif")
    assert path.stat().st_size < 2 << 20
    with pytest.raises(ImageReadError) as failed:
        reader.read_pages(path)
    assert str(failed.value) == f"{path}: decoding needs more memory than the limit of {MEMORY >> 20} MiB"
    assert_same_fields(reader.read_pages(stack(tmp_path / "next.tif")), read_pages(tmp_path / "next.tif"))


def test_the_8000_square_zlib_image_of_the_issue_decodes_within_bounds(reader: IsolatedReader, tmp_path: Path) -> None:
    path = tmp_path / "big.tif"
    image = np.tile(np.arange(8000, dtype=np.uint16)[None, :] % 251, (8000, 1)).astype(np.uint8)
    tifffile.imwrite(path, image, compression="zlib")
    (field,) = reader.read_pages(path)  # within 2 s and 256 MiB, or it would have raised
    assert field.image.shape == (8000, 8000) and np.array_equal(field.image[::997, ::991], image[::997, ::991])


def test_a_read_that_hangs_fails_on_the_time_limit_and_the_next_file_reads(
        reader: IsolatedReader, tmp_path: Path) -> None:
    reader.read_pages(stack(tmp_path / "warm.tif"))  # the child is up: the limit is the read's alone
    path = fifo(tmp_path / "wedged.tif")
    started = time.monotonic()
    with pytest.raises(ImageReadError) as failed:
        reader.read_pages(path)
    assert str(failed.value) == f"{path}: decoding took longer than the limit of 2 s"
    assert time.monotonic() - started < 2.0 + 10.0  # the limit, and the kill of the child
    assert_same_fields(reader.read_pages(stack(tmp_path / "next.tif")), read_pages(tmp_path / "next.tif"))


def test_a_decoder_that_dies_fails_the_file_with_how_it_died(reader: IsolatedReader, tmp_path: Path) -> None:
    reader.read_pages(stack(tmp_path / "warm.tif"))
    child = reader._child
    assert child is not None
    # A native crash of the decoder, as a segfaulting codec would end it.
    threading.Timer(0.3, os.kill, (child.process.pid, signal.SIGSEGV)).start()
    path = fifo(tmp_path / "crashes.tif")
    with pytest.raises(ImageReadError) as failed:
        reader.read_pages(path)
    assert str(failed.value) == f"{path}: the decoder died reading it (killed by SIGSEGV)"
    assert_same_fields(reader.read_pages(stack(tmp_path / "next.tif")), read_pages(tmp_path / "next.tif"))


def test_close_cuts_a_read_short_without_blaming_the_file(reader: IsolatedReader, tmp_path: Path) -> None:
    reader.read_pages(stack(tmp_path / "warm.tif"))
    threading.Timer(0.3, reader.close).start()
    with pytest.raises(DecoderClosed):
        reader.read_pages(fifo(tmp_path / "slow.tif"))
    with pytest.raises(DecoderClosed):
        reader.read_pages(tmp_path / "warm.tif")


def test_a_stop_signal_to_the_whole_group_does_not_end_a_read(reader: IsolatedReader, tmp_path: Path) -> None:
    reader.read_pages(stack(tmp_path / "warm.tif"))
    child = reader._child
    assert child is not None
    for stop in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # what systemd or a terminal sends everyone
        os.kill(child.process.pid, stop)
    time.sleep(0.3)
    assert_same_fields(reader.read_pages(tmp_path / "warm.tif"), read_pages(tmp_path / "warm.tif"))
    assert reader._child is child


def test_the_decoder_ends_quietly_when_the_service_dies_with_its_answer_unread() -> None:
    """kill -9 of the service leaves the child a reset connection, not a traceback in the log."""
    ours, theirs = Pipe()
    child = subprocess.Popen([sys.executable, "-c", _CHILD_MAIN, str(theirs.fileno()), str(256 << 20)],
                             pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    theirs.close()
    assert ours.poll(30)  # the child's "ready" waits unread, as a dead service leaves it
    ours.close()
    _, stderr = child.communicate(timeout=30)
    assert (child.returncode, stderr.decode()) == (0, "")


def imagej_stack(path: Path, slices: list[np.ndarray]) -> Path:
    tifffile.imwrite(path, np.stack(slices), imagej=True, compression="zlib", metadata={"axes": "ZYX"})
    return path


def declares(path: Path, page: int, side: int) -> Path:
    """Page ``page``'s header made to declare ``side`` x ``side`` (its data stay as written)."""
    with tifffile.TiffFile(path, mode="r+b") as tif:
        for tag in ("ImageWidth", "ImageLength"):
            tif.pages[page].tags[tag].overwrite(side)
    return path


def test_a_volume_streams_from_the_child_exactly_as_read_in_process(reader: IsolatedReader, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    path = imagej_stack(tmp_path / "z.tif", [rng.integers(0, 255, (40, 48), np.uint8) for _ in range(5)])
    header = reader.stack_header(path)
    assert (header.n_slices, header.says_volume) == (5, True)
    got = list(reader.stack_slices(path))
    assert len(got) == 5 and all(np.array_equal(g, e) for g, e in zip(got, micrograph_slices(path), strict=True))
    assert_same_fields(reader.read_pages(stack(tmp_path / "next.tif")), read_pages(tmp_path / "next.tif"))


def test_a_slice_that_declares_40000_square_is_refused_from_its_header(reader: IsolatedReader, tmp_path: Path) -> None:
    # Issue 21, defect 2: slice 0 is 256 x 256, slice 1 declares 40000 x 40000.
    path = declares(imagej_stack(tmp_path / "bomb-stack.tif", [np.zeros((256, 256), np.uint8)] * 2), 1, 40000)
    assert reader.stack_header(path, max_pixels=50_000_000).n_slices == 2  # page 0 is fine
    slices = reader.stack_slices(path, max_pixels=50_000_000)
    assert next(slices).shape == (256, 256)
    with pytest.raises(ImageReadError) as refused:
        next(slices)
    assert str(refused.value) == (f"{path}: slice 1 is 40000 x 40000 = 1600000000 pixels by its header, "
                                  "more than the limit of 50000000 (max_pixels)")
    assert_same_fields(reader.read_pages(stack(tmp_path / "next.tif")), read_pages(tmp_path / "next.tif"))


def test_a_bomb_inside_a_stack_costs_the_child_not_the_reader(reader: IsolatedReader, tmp_path: Path) -> None:
    # slice 1 is within the pixel limit by its header but decodes to 384 MB: over the child's 256 MiB
    path = tmp_path / "rgb-bomb-stack.tif"
    with tifffile.TiffWriter(path, imagej=False) as tif:
        tif.write(np.zeros((64, 64, 3), np.uint16), compression="zlib", photometric="rgb",
                  metadata={"axes": "YXS"})
        tif.write(np.zeros((8000, 8000, 3), np.uint16), compression="zlib", photometric="rgb")
    assert path.stat().st_size < 2 << 20
    with pytest.raises(ImageReadError) as failed:
        list(reader.stack_slices(path))
    assert str(failed.value) == f"{path}: decoding needs more memory than the limit of {MEMORY >> 20} MiB"
    assert_same_fields(reader.read_pages(stack(tmp_path / "next.tif")), read_pages(tmp_path / "next.tif"))


def test_a_stream_left_unfinished_ends_its_child_and_the_next_read_gets_a_fresh_one(
        reader: IsolatedReader, tmp_path: Path) -> None:
    path = imagej_stack(tmp_path / "z.tif", [np.full((32, 32), i, np.uint8) for i in range(4)])
    slices = reader.stack_slices(path)
    assert next(slices)[0, 0] == 0
    first = reader._child
    slices.close()  # the consumer gave up (its file failed in inference)
    assert first is not None and first.process.poll() is not None and reader._child is None
    assert [s[0, 0] for s in reader.stack_slices(path)] == [0, 1, 2, 3]
