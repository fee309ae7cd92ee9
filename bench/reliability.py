"""Reliability suite (issue 9): the real ``phasewatch serve`` against what a lab does to it.

One command, ``python bench/reliability.py`` (``--short`` for CI, ``--long`` for a night):

1. corpus: a few hundred malformed inputs land in the watch folder among good micrographs:
   TIFF, PNG, JPEG and BMP truncated at many cut points and corrupted, wrong extensions,
   zero bytes, 1 x 1 and 1 x 100000, huge declared sizes, float/signed/complex TIFFs,
   palette and CMYK, stacks with a broken page, IFD loops, names with spaces, unicode,
   invalid UTF-8, newlines and shell metacharacters, symbolic links, FIFOs, a socket, a
   folder, and files that vanish or change while they settle;
2. kills: ``kill -9`` at random moments (also during start-up) while good files arrive;
3. faults, each while good files arrive, and each must go by itself: the results folder
   full (a small tmpfs) and read-only (the tmpfs remounted read-only), the database held
   by another connection's ``BEGIN EXCLUSIVE`` past the busy timeout, and the watch
   folder deleted then recreated (and replaced at once);
4. soak: a steady feed with API reads while the service's RSS, file descriptors and
   threads are sampled;
5. fuzzers: schemathesis against the service's own OpenAPI description, hypothesis
   against ``phasewatch.imageio.formats.read_pages`` (in a child process, bounded in time
   and memory), pip-audit over the installed dependencies;
6. memory cap (issue 21): a second service under a memory cap (a cgroup where this process
   may make one, else ``prlimit --as``; ``--memory-cap``) gets the corpus's bombs, each
   followed by a good file, with a pixel limit that lets every bomb reach the decoder
   child: each bomb must fail there with one line, the service must live on, and the good
   files must be done.

It ends with one table (also written as JSON and Markdown; the paths are printed):
inputs tried, lost, duplicated, good files failed, threads died, restarts needed, RSS
and fd growth over the soak, and what each fault and fuzzer found. Definitions:

- *lost*: a file put into the watch folder (and left there until it settled) without a
  row in the store or in ``/api/images`` at the end;
- *duplicated*: more than one row for one path and content;
- *good files failed*: a good micrograph whose row is ``failed``;
- *threads died*: a ``/healthz`` answer naming a stopped stage (``Daemon.health``'s
  ``worker`` problem), or an uncaught exception in a thread in the service's log;
- *restarts needed*: times the suite had to restart the service to go on (it died by
  itself, or did not recover from a fault by the deadline), besides its own kills;
- *service deaths caused by a file*: times the service exited without the suite's signal
  (its kills and its stop are the only other causes), with the files it had in work;
- *wedges*: good files done more than ``WEDGE_S`` (60 s) after they arrived (the time they
  were put in, to their row's ``processed``), but for those fed while the suite itself held
  the service (its kills, the injected faults of the machine: ``HELD_BY_THE_SUITE``);
- *peak service memory*: the largest peak RSS (``VmHWM``) of the service process over its
  runs, sampled every 0.5 s, and of its decoder children.

Malformed files must end ``failed`` with a one-line reason, or be ignored with a log line
(links, FIFOs, names that are not images); some "malformed" inputs are legitimate odd
images (float TIFFs, palette, 8 x 8) and must end ``done``; corrupted pixel data that
still decodes may end either way. Anything left ``pending``/``processing`` at a deadline
counts as not finished.

Faults that need a mount (disk full, read-only) run when this process may mount a tmpfs
(root, or CAP_SYS_ADMIN); otherwise the read-only fault falls back to taking write
permission away (which binds a non-root service) and the rest say ``skipped: why``. The
exit status is 1 when any count that must be zero is not.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import io
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import tifffile

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# The suite's own [limits]: a field over this fails from its header. The default (50 MP)
# would let one valid decompression-bomb-sized field hold a CPU-only inference for minutes
# (about 6 s per megapixel on one core), which tests nothing but patience.
MAX_MEGAPIXELS = 2.0
DECODE_TIMEOUT_S = 10.0
SETTLE_S = 0.5
STOP_TIMEOUT_S = 30.0  # TimeoutStopSec of systemd/phasewatch.service
START_DEADLINE_S = 120.0
RECOVERY_DEADLINE_S = 90.0
FAULT_SEEN_DEADLINE_S = 45.0
POLL_S = 0.25
QUIET_S = 10 * SETTLE_S + 5  # idle this long without a new row: whatever is missing is not coming
GOOD_SIDES = (96, 128, 192, 256)  # small fields: one tile of the bundled model each
TMPFS_SIZE = "64m"
KILL_AFTER_SERVING_S = (0.1, 1.5)
KILL_BURST = (2, 16)  # files saved at once before a kill
KILL_AFTER_BURST_S = (0.0, 0.5)  # a burst of small fields takes about 0.3 s
KILL_DURING_START_S = (0.05, 1.0)
KILL_DURING_START_SHARE = 0.25  # this share of kills comes before the service says it serves
ENV_DROPPED = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM", "PHASEWATCH_LOG_FORMAT")
PHASES = ("corpus", "kills", "disk-full", "read-only", "db-lock", "watch-folder", "soak", "api-fuzz",
          "image-fuzz", "memory-cap", "pip-audit")
# Counts that must be zero (exit status 1 otherwise); the CI test asserts the same.
MUST_BE_ZERO = ("lost", "duplicated", "good_failed", "threads_died", "restarts_needed", "not_finished",
                "reasons_not_one_line", "faults_not_recovered", "wedges", "service_deaths")
WEDGE_S = 60.0  # a good file not done this long after it arrived has waited behind something (issue 21)
# Good files fed while the suite itself holds the service down or injects a fault of the machine:
# their waits are the kills' and the faults' (the fault rows say how long each lasted), not a file's.
HELD_BY_THE_SUITE = ("kill-feed", "kill-burst", "disk-full", "read-only", "db-lock", "watch-folder-deleted",
                     "watch-folder-replaced")
# The memory-capped run (issue 21): the service under a cap, with the corpus's bombs. Its pixel
# limit lets every bomb below reach the decoder child, so that the child's memory limit, not the
# header check, is what stops them; the cap: the service's own peak with this suite's fields
# (about 300 MiB, the table's "peak service memory"), its decoder's budget, and a margin. A
# cgroup caps memory (what the OOM killer acts on); prlimit caps address space, which ONNX
# Runtime's threads and glibc's arenas reserve without using (about 1.9 GB, 190 MiB resident).
CAP_MAX_MEGAPIXELS = 5000.0
CAP_DECODE_MEMORY_MB = 256  # the least [limits] decode_memory_mb takes
CAP_BYTES = {"cgroup": 1 << 30, "prlimit": 5 << 29}  # 1 GiB of memory; 2.5 GiB of address space

# Expected ends of an input.
DONE, FAILED, EITHER, IGNORED, ABSENT = "done", "failed", "done or failed", "ignored", "absent"
VANISHED = "absent, or failed as unreadable"  # deleted after its writer closed it: it may have been queued


@dataclass(frozen=True)
class Profile:
    """How much of everything one run does."""

    name: str
    kills: int
    feed_interval_s: float  # good files during kills
    corpus_every: int  # 1: the whole bulk of truncations and corruptions; k: every k-th
    soak_s: float
    soak_interval_s: float
    api_fuzz_s: int
    image_fuzz_s: float
    pip_audit_timeout_s: float
    fault_hold_s: float  # a fault lasts this long once seen: through some of the stage's backoff retries


PROFILES = {
    "short": Profile("short", kills=4, feed_interval_s=0.4, corpus_every=4, soak_s=8, soak_interval_s=0.6,
                     api_fuzz_s=6, image_fuzz_s=10, pip_audit_timeout_s=60, fault_hold_s=1.5),
    "default": Profile("default", kills=20, feed_interval_s=0.3, corpus_every=1, soak_s=60, soak_interval_s=0.5,
                       api_fuzz_s=30, image_fuzz_s=30, pip_audit_timeout_s=120, fault_hold_s=4),
    "long": Profile("long", kills=60, feed_interval_s=0.3, corpus_every=1, soak_s=900, soak_interval_s=0.5,
                    api_fuzz_s=300, image_fuzz_s=600, pip_audit_timeout_s=300, fault_hold_s=20),
}

_STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - _STARTED:6.1f} s] {message}", flush=True)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(condition: Callable[[], Any], deadline_s: float, interval_s: float = POLL_S) -> Any:
    """``condition()``'s first truthy value, or None when ``deadline_s`` passes."""
    end = time.monotonic() + deadline_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= end:
            return None
        time.sleep(interval_s)


# --- images ------------------------------------------------------------------------------


class GoodImages:
    """Small real-looking micrographs, each one different: crops of the real superalloy
    test images when they are present, else drawn by ``runtime.synthetic``."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.sources = [tifffile.imread(p) for p in self._source_paths()]
        self.count = 0
        if not self.sources:
            from phasewatch.core.synthetic import superalloy_micrograph

            self.sources = [superalloy_micrograph(384, 384, seed=s)[0] for s in range(3)]

    @staticmethod
    def _source_paths() -> list[Path]:
        env = os.environ.get("PHASEWATCH_DATA")
        roots = ([Path(env)] if env else []) + [PROJECT_ROOT.parent / "shared" / "data"]
        for root in roots:
            found = sorted((root / "superalloy" / "test" / "images").glob("*.tif"))
            if found:
                return found[:4]
        return []

    def array(self, gray: bool = True) -> np.ndarray:
        source = self.rng.choice(self.sources)
        side = self.rng.choice(GOOD_SIDES)
        y, x = self.rng.randrange(source.shape[0] - side), self.rng.randrange(source.shape[1] - side)
        crop = np.array(source[y:y + side, x:x + side])
        if gray and crop.ndim == 3:
            crop = np.ascontiguousarray(crop[..., 0])
        self.count += 1
        crop.flat[0] = (int(crop.flat[0]) + self.count) % 256  # no two files share content
        return crop

    def encoded(self, kind: str | None = None) -> tuple[str, bytes]:
        """(suffix, bytes) of a new good file in ``kind`` or a random everyday format."""
        kind = kind or self.rng.choice(("tiff", "tiff16", "png", "jpeg", "bmp"))
        return encode(self.array(), kind)


def encode(image: np.ndarray, kind: str) -> tuple[str, bytes]:
    """(suffix, bytes) of ``image`` written as ``kind``."""
    if kind.startswith("tiff"):
        buffer = io.BytesIO()
        options: dict[str, Any] = {}
        if kind == "tiff16":
            image = image.astype(np.uint16) * 257
        elif kind == "tiff-zlib":
            options["compression"] = "zlib"
        tifffile.imwrite(buffer, image, **options)
        return ".tif", buffer.getvalue()
    suffix = {"png": ".png", "jpeg": ".jpg", "bmp": ".bmp"}[kind]
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if kind == "jpeg" else []
    ok, data = cv2.imencode(suffix, image, params)
    assert ok, kind
    return suffix, data.tobytes()


def tiff_bytes(image: np.ndarray, **options: Any) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image, **options)
    return buffer.getvalue()


def tiff_stack(pages: list[np.ndarray], **options: Any) -> bytes:
    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer) as tif:
        for page in pages:
            tif.write(page, **options)
    return buffer.getvalue()


def ifd_offsets(data: bytes) -> list[int]:
    """Offsets of the IFDs of a little-endian classic TIFF, in chain order."""
    offsets, offset = [], struct.unpack_from("<I", data, 4)[0]
    while 0 < offset < len(data) and offset not in offsets:
        offsets.append(offset)
        (entries,) = struct.unpack_from("<H", data, offset)
        offset = struct.unpack_from("<I", data, offset + 2 + entries * 12)[0]
    return offsets


def set_next_ifd(data: bytes, ifd: int, target: int) -> bytes:
    """``data`` with the IFD at ``ifd`` naming ``target`` as the next one."""
    out = bytearray(data)
    (entries,) = struct.unpack_from("<H", out, ifd)
    struct.pack_into("<I", out, ifd + 2 + entries * 12, target)
    return bytes(out)


def set_tiff_tag(data: bytes, ifd: int, tag: int, value: int) -> bytes:
    """``data`` with ``tag`` of the IFD at ``ifd`` holding one LONG ``value``."""
    out = bytearray(data)
    (entries,) = struct.unpack_from("<H", out, ifd)
    for n in range(entries):
        at = ifd + 2 + n * 12
        if struct.unpack_from("<H", out, at)[0] == tag:
            struct.pack_into("<HHII", out, at, tag, 4, 1, value)
            return bytes(out)
    raise ValueError(f"tag {tag} not in the IFD at {ifd}")


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def raw_png(pixels: np.ndarray, colour_type: int, extra: bytes = b"") -> bytes:
    """An 8-bit PNG of ``colour_type`` written by hand: OpenCV writes neither palette
    (type 3) nor gray + alpha (type 4)."""
    height, width = pixels.shape[:2]
    rows = b"".join(b"\x00" + pixels[y].astype(np.uint8).tobytes() for y in range(height))
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0))
            + extra + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b""))


def palette_png(indices: np.ndarray) -> bytes:
    palette = bytes(v for i in range(256) for v in (i, 255 - i, (i * 7) % 256))
    return raw_png(indices, 3, png_chunk(b"PLTE", palette))


def patch_png_size(data: bytes, width: int, height: int) -> bytes:
    return data[:16] + struct.pack(">II", width, height) + data[24:]


def patch_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    at = data.index(b"\xff\xc0")
    return data[:at + 5] + struct.pack(">HH", height, width) + data[at + 9:]


def patch_bmp_size(data: bytes, width: int, height: int) -> bytes:
    return data[:18] + struct.pack("<ii", width, height) + data[26:]


# --- the corpus ------------------------------------------------------------------------


@dataclass
class Input:
    """One thing put into the watch folder. ``data`` None: a special file (``special``)."""

    name: str  # may carry surrogate escapes (a name that is not UTF-8)
    data: bytes | None
    expect: str
    group: str
    good: bool = False
    special: str = ""  # fifo, socket, folder, link-out, link-passwd, link-dangling, link-inside


def cut_points(length: int) -> list[int]:
    fixed = [1, 2, 3, 4, 7, 8, 12, 16, 24, 32, 64, 128, 256]
    relative = [length // 4, length // 3, length // 2, 2 * length // 3, 3 * length // 4,
                length - 64, length - 8, length - 1]
    return sorted({c for c in fixed + relative if 0 < c < length})


def truncated_inputs(bases: dict[str, tuple[str, bytes]], every: int) -> list[Input]:
    inputs = []
    for kind, (suffix, data) in bases.items():
        for n, cut in enumerate(cut_points(len(data))):
            if n % every == 0:
                # A cut inside the first 32 bytes leaves no header: no format can read that.
                expect = FAILED if cut < 32 else EITHER
                inputs.append(Input(f"truncated-{kind}-at-{cut}{suffix}", data[:cut], expect, "truncated"))
    return inputs


def corrupted_inputs(bases: dict[str, tuple[str, bytes]], rng: random.Random, every: int) -> list[Input]:
    """Random bytes changed anywhere, in the header, and a block in the middle."""
    inputs = []
    for kind, (suffix, data) in bases.items():
        for n in range(12):
            if n % every:
                continue
            out = bytearray(data)
            if n < 4:
                where, spots = "anywhere", [rng.randrange(len(out)) for _ in range(1 + n)]
            elif n < 8:
                where, spots = "header", [rng.randrange(min(64, len(out))) for _ in range(8)]
            else:
                start = rng.randrange(len(out) // 4, len(out) // 2)
                where, spots = "block", list(range(start, min(len(out), start + 16)))
            for spot in spots:
                out[spot] = rng.randrange(256)
            inputs.append(Input(f"corrupt-{kind}-{where}-{n}{suffix}", bytes(out), EITHER, "corrupt"))
    return inputs


def wrong_extension_inputs(good: GoodImages) -> list[Input]:
    png, jpeg, bmp = (good.encoded(k)[1] for k in ("png", "jpeg", "bmp"))
    tiff = good.encoded("tiff")[1]
    note = b"lab note, not an image\n" * 4
    return [
        Input("png-named.tif", png, DONE, "extension"),  # the content decides, not the suffix
        Input("jpeg-named.png", jpeg, DONE, "extension"),
        Input("tiff-named.jpg", tiff, DONE, "extension"),
        Input("bmp-named.jpeg", bmp, DONE, "extension"),
        Input("UPPER-CASE.TIF", good.encoded("tiff")[1], DONE, "extension", good=True),
        Input("text-named.bmp", note, FAILED, "extension"),
        Input("pdf-named.tif", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", FAILED, "extension"),
        Input("html-named.png", b"<!doctype html><title>x</title>", FAILED, "extension"),
        Input("zip-named.tiff", b"PK\x03\x04" + bytes(64), FAILED, "extension"),
        Input("elf-named.jpg", b"\x7fELF\x02\x01\x01" + bytes(120), FAILED, "extension"),
        Input("image.tif.txt", tiff, IGNORED, "extension"),
        Input("no-extension", png, IGNORED, "extension"),
        Input("notes.csv", note, IGNORED, "extension"),
        Input("still-writing.tif.part", tiff, IGNORED, "extension"),
        Input("~$locked.tif", tiff, IGNORED, "extension"),
        Input(".hidden.tif", tiff, IGNORED, "extension"),
    ]


def size_inputs(good: GoodImages) -> list[Input]:
    """Sides too small, too long, and sizes declared huge by a few header bytes."""
    one = np.full((1, 1), 128, np.uint8)
    line = (np.arange(100000) % 251).astype(np.uint8)
    png, jpeg, bmp = (good.encoded(k)[1] for k in ("png", "jpeg", "bmp"))
    tiff = good.encoded("tiff")[1]
    ifd = ifd_offsets(tiff)[0]
    inputs = [Input(f"one-pixel{suffix}", encode(one, kind)[1], FAILED, "size")
              for kind, suffix in (("tiff", ".tif"), ("png", ".png"), ("jpeg", ".jpg"), ("bmp", ".bmp"))]
    inputs += [
        Input("1x100000.png", encode(line.reshape(1, -1), "png")[1], FAILED, "size"),
        Input("100000x1.tif", tiff_bytes(line.reshape(-1, 1)), FAILED, "size"),
        Input("7x7.png", encode(np.full((7, 7), 99, np.uint8), "png")[1], FAILED, "size"),
        Input("8x8.tif", tiff_bytes((np.arange(64).reshape(8, 8) * 3).astype(np.uint8)), DONE, "size"),
        Input("huge-declared.png", patch_png_size(png, 100000, 100000), FAILED, "size"),
        Input("huge-declared-max.png", patch_png_size(png, 2**31 - 1, 2**31 - 1), FAILED, "size"),
        Input("huge-declared.jpg", patch_jpeg_size(jpeg, 65535, 65535), FAILED, "size"),
        Input("huge-declared.bmp", patch_bmp_size(bmp, 2**31 - 1, 2**31 - 1), FAILED, "size"),
        Input("huge-declared-negative.bmp", patch_bmp_size(bmp, -100000, -100000), FAILED, "size"),
        Input("huge-declared.tif", set_tiff_tag(set_tiff_tag(tiff, ifd, 256, 100000), ifd, 257, 100000),
              FAILED, "size"),
        Input("huge-declared-max.tif", set_tiff_tag(set_tiff_tag(tiff, ifd, 256, 2**32 - 1), ifd, 257, 2**32 - 1),
              FAILED, "size"),
        # Inside the pixel limit, but the data the header promises is not in the file.
        Input("promises-more-than-it-holds.tif", set_tiff_tag(set_tiff_tag(tiff, ifd, 256, 1400), ifd, 257, 1400),
              FAILED, "size"),
        Input("zlib-bomb-8000x8000.tif", tiff_bytes(np.zeros((8000, 8000), np.uint8), compression="zlib"),
              FAILED, "size"),
    ]
    return inputs


def sample_types(good: GoodImages) -> list[Input]:
    """Legitimate odd pixel types (they decode) and ones that are refused."""
    base = good.array().astype(np.float64)
    with_nan = (base / 255).astype(np.float32)
    with_nan[::7, ::5] = np.nan
    with_nan[1, :4] = (np.inf, -np.inf, np.inf, -np.inf)
    done: dict[str, np.ndarray] = {
        "float32.tif": (base / 255).astype(np.float32),
        "float64.tif": base * 1e-6,
        "float16.tif": (base / 255).astype(np.float16),
        "float32-nan-inf.tif": with_nan,
        "int16-negative.tif": (base * 100 - 12000).astype(np.int16),
        "int8.tif": (base - 128).astype(np.int8),
        "uint32.tif": (base * 1e6).astype(np.uint32),
        "int32.tif": (base * -1e5).astype(np.int32),
    }
    inputs = [Input(name, tiff_bytes(image), DONE, "sample-type") for name, image in done.items()]
    inputs += [
        Input("float32-constant.tif", tiff_bytes(np.full((96, 96), 3.5, np.float32)), EITHER, "sample-type"),
        Input("float32-all-nan.tif", tiff_bytes(np.full((96, 96), np.nan, np.float32)), EITHER, "sample-type"),
        Input("complex64.tif", tiff_bytes((base + 1j * base).astype(np.complex64)), FAILED, "sample-type"),
    ]
    return inputs


def colour_inputs(good: GoodImages) -> list[Input]:
    rgb = good.array(gray=False)
    rgb = rgb if rgb.ndim == 3 else np.dstack([rgb] * 3)
    gray = np.ascontiguousarray(rgb[..., 1])
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)])
    colormap = np.stack([np.arange(256) * 257, (255 - np.arange(256)) * 257, np.full(256, 30000)]).astype(np.uint16)
    cmyk = np.dstack([rgb, gray])
    gray_alpha = np.dstack([gray, np.full(gray.shape, 255, np.uint8)])
    return [
        Input("palette.tif", tiff_bytes(gray, photometric="palette", colormap=colormap), DONE, "colour"),
        Input("palette.png", palette_png(gray), DONE, "colour"),
        Input("cmyk.tif", tiff_bytes(cmyk, photometric="separated"), FAILED, "colour"),
        Input("rgba.tif", tiff_bytes(rgba, photometric="rgb"), DONE, "colour"),
        Input("rgba.png", encode(rgba, "png")[1], DONE, "colour"),
        Input("gray-alpha.png", raw_png(gray_alpha, 4), DONE, "colour"),
        Input("rgb16.png", encode(rgb.astype(np.uint16) * 257, "png")[1], DONE, "colour"),
        Input("miniswhite.tif", tiff_bytes(gray, photometric="miniswhite"), DONE, "colour"),
        Input("bilevel.tif", tiff_bytes(gray > 128), DONE, "colour"),
        Input("planar-rgb.tif", tiff_bytes(np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate"),
              DONE, "colour"),
        Input("jpeg-in-tiff.tif", tiff_bytes(rgb, photometric="rgb", compression="jpeg"), DONE, "colour"),
        Input("lzw-tiled.tif", tiff_bytes(gray, compression="lzw", tile=(32, 32)), DONE, "colour"),
        Input("ycbcr-subsampled.tif", tiff_bytes(rgb, photometric="ycbcr", compression="jpeg",
                                                   subsampling=(2, 2)), DONE, "colour"),
    ]


def stack_inputs(good: GoodImages) -> list[Input]:
    pages = [good.array() for _ in range(3)]
    same = [p[:96, :96] for p in pages]
    stack = tiff_stack(same)
    ifds = ifd_offsets(stack)
    zlib_stack = tiff_stack(same, compression="zlib")
    zlib_ifds = ifd_offsets(zlib_stack)
    broken_data = bytearray(zlib_stack)
    page2 = tifffile.TiffFile(io.BytesIO(zlib_stack)).pages[1]
    start = page2.dataoffsets[0]
    broken_data[start:start + 64] = bytes(64)
    single = good.encoded("tiff")[1]
    first = ifd_offsets(single)[0]
    return [
        Input("stack-3-pages.tif", tiff_stack(pages), DONE, "stack", good=True),
        Input("stack-page-2-data-past-eof.tif", set_tiff_tag(stack, ifds[1], 273, len(stack) + 4096), FAILED, "stack"),
        Input("stack-page-2-undecodable.tif", bytes(broken_data), FAILED, "stack"),
        Input("stack-page-2-one-pixel.tif", tiff_stack([same[0], np.zeros((1, 1), np.uint8), same[2]]), FAILED,
              "stack"),
        Input("stack-cut-in-page-3.tif", stack[: len(stack) - 3000], EITHER, "stack"),
        Input("stack-zlib-next-ifd-past-eof.tif", set_next_ifd(zlib_stack, zlib_ifds[0], len(zlib_stack) + 10),
              EITHER, "stack"),
        Input("ifd-loop-self.tif", set_next_ifd(single, first, first), FAILED, "ifd-loop"),
        Input("ifd-loop-back-to-first.tif", set_next_ifd(stack, ifds[2], ifds[0]), FAILED, "ifd-loop"),
        Input("ifd-loop-two.tif", set_next_ifd(stack, ifds[1], ifds[0]), FAILED, "ifd-loop"),
        Input("ifd-first-offset-zero.tif", single[:4] + bytes(4) + single[8:], FAILED, "ifd-loop"),
        Input("ifd-65535-entries.tif", b"II*\x00\x08\x00\x00\x00\xff\xff" + bytes(100), FAILED, "ifd-loop"),
        Input("bigtiff-loop.tif", bigtiff_self_loop(), FAILED, "ifd-loop"),
    ]


PILLOW_IMAGES = Path(__file__).resolve().parent.parent / "tests" / "data" / "pillow"  # with Pillow's licence


def odd_valid_inputs() -> list[Input]:
    """Odd but valid files from Pillow's test suite (issue 21): palette + alpha (``rdf.tif``,
    which once wedged the queue) and 1-bit palette pages; each must end done."""
    return [Input(f"pillow-{path.name}", path.read_bytes(), DONE, "odd-valid", good=True)
            for path in sorted(PILLOW_IMAGES.glob("*.tif*"))]


def declared_size(data: bytes, page: int, side: int) -> bytes:
    """A TIFF whose page ``page`` declares ``side`` x ``side`` (its data stay as written)."""
    for tag in (256, 257):  # ImageWidth, ImageLength
        data = set_tiff_tag(data, ifd_offsets(data)[page], tag, side)
    return data


def stack_bomb_inputs(good: GoodImages) -> list[Input]:
    """Bombs inside stacks (issue 21, defect 2): an ImageJ 2-slice Z stack whose slice 0 is
    small and whose slice 1 declares 40000 x 40000 or 60000 x 60000; refused from slice 1's
    header in the decoder process, never decoded by the service."""
    slices = np.stack([good.array()[:256, :256]] * 2)
    stack = tiff_bytes(slices, imagej=True, compression="zlib", metadata={"axes": "ZYX"})
    return [Input(f"stack-slice-1-declares-{side}.tif", declared_size(stack, 1, side), FAILED, "stack-bomb")
            for side in (40000, 60000)]


def capped_inputs(good: GoodImages) -> list[Input]:
    """The bombs of the memory-capped run, each over its decoder's budget (``CAP_DECODE_MEMORY_MB``)
    if decoded, most of them over the whole cap: the corpus's stack bombs and huge declared
    sizes, a zlib-compressed RGB 16-bit 8000 x 8000 (384 MB of pixels in a few hundred kB) and
    the same as slice 1 of a stack. Not the corpus's 8-bit 8000 x 8000: it decodes within the
    budget and is then a valid 64 MP field, which only the pixel limit keeps from inference."""
    rgb16 = np.zeros((8000, 8000, 3), np.uint16)
    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer) as tif:
        tif.write(np.zeros((64, 64, 3), np.uint16), compression="zlib", photometric="rgb")
        tif.write(rgb16, compression="zlib", photometric="rgb")
    bombs = [
        *stack_bomb_inputs(good),
        *(i for i in size_inputs(good) if i.name.startswith("huge-declared")),
        Input("zlib-bomb-rgb16-8000x8000.tif", tiff_bytes(rgb16, compression="zlib", photometric="rgb"), FAILED,
              "cap-bomb"),
        Input("stack-slice-1-rgb16-8000x8000.tif", buffer.getvalue(), FAILED, "cap-bomb"),
    ]
    return [Input(f"cap-bomb-{i.name}", i.data, FAILED, "cap-bomb") for i in bombs]


def bigtiff_self_loop() -> bytes:
    """A BigTIFF whose first IFD names itself as the next one."""
    data = bytearray(tiff_bytes(np.full((16, 16), 7, np.uint8), bigtiff=True))
    first = struct.unpack_from("<Q", data, 8)[0]
    (entries,) = struct.unpack_from("<Q", data, first)
    struct.pack_into("<Q", data, first + 8 + entries * 20, first)
    return bytes(data)


ODD_NAMES = (
    "with space.tif", "  leading and trailing spaces  .tif", "γ′-präzipitat 試料 №7.tif", "🔬 micrograph.png",
    "line\nbreak.tif", "carriage\rreturn.tif", "tab\there.tif", "$(touch PWNED).tif", "`touch PWNED`.tif",
    "a;touch PWNED;.tif", "a|b&c>d<e.tif", "quote's \"double\".tif", "*?[glob].tif", "-leading-dash.tif",
    "back\\slash.tif", "%s%n%x%d.tif", "<img src=x onerror=alert(1)>.tif", "up..%2f..%2fetc%2fpasswd.tif",
    "x" * 240 + ".tif", "\u202eright-to-left-override.fit.tif", "nul\u0001control.tif",
)
NOT_UTF8_NAMES = (b"latin1-\xe9chantillon.tif", b"bad-\xff\xfe-bytes.png", b"\xc3\x28-overlong.tif")


def name_inputs(good: GoodImages) -> list[Input]:
    """Good micrographs and broken files under names that break careless code."""
    inputs = []
    for name in ODD_NAMES:
        suffix, data = good.encoded("png" if name.endswith(".png") else "tiff")
        inputs.append(Input(name, data, DONE, "name", good=True))
    for raw in NOT_UTF8_NAMES:
        name = os.fsdecode(raw)
        suffix, data = good.encoded("png" if name.endswith(".png") else "tiff")
        inputs.append(Input(name, data, DONE, "name", good=True))
    truncated = good.encoded("tiff")[1]
    for name in ("broken with space.tif", "broken\nnewline.tif", "broken $(touch PWNED).tif",
                 "broken γ′ 試料.tif", os.fsdecode(b"broken-\xe9.tif")):
        inputs.append(Input(name, truncated[: len(truncated) // 2], FAILED, "name"))
        truncated = good.encoded("tiff")[1]
    return inputs


def special_inputs(good: GoodImages) -> list[Input]:
    """Things that are not regular files of the folder: never read, one log line each."""
    return [
        Input("fifo.tif", None, IGNORED, "special", special="fifo"),
        Input("socket.tif", None, IGNORED, "special", special="socket"),
        Input("folder.tif", None, IGNORED, "special", special="folder"),
        Input("link-out.tif", good.encoded("tiff")[1], IGNORED, "special", special="link-out"),
        Input("link-passwd.tif", None, IGNORED, "special", special="link-passwd"),
        Input("link-dangling.tif", None, IGNORED, "special", special="link-dangling"),
        Input("link-inside.tif", None, IGNORED, "special", special="link-inside"),
    ]


def build_corpus(good: GoodImages, rng: random.Random, every: int) -> list[Input]:
    """Every input of the corpus phase but the timed ones (:func:`timed_inputs`)."""
    bases = {kind: encode(good.array(), kind.replace("tiff8", "tiff"))
             for kind in ("tiff8", "tiff-zlib", "tiff16", "png", "jpeg", "bmp")}
    inputs = truncated_inputs(bases, every) + corrupted_inputs(bases, rng, every)
    inputs += [Input(f"zero-bytes{suffix}", b"", FAILED, "zero-bytes")
               for suffix in (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")]
    inputs += wrong_extension_inputs(good) + size_inputs(good) + sample_types(good) + colour_inputs(good)
    inputs += stack_inputs(good) + name_inputs(good) + special_inputs(good)
    inputs += odd_valid_inputs() + stack_bomb_inputs(good)
    inputs += [Input(f"good-{n:02d}{suffix}", data, DONE, "good", good=True)
               for n, (suffix, data) in enumerate(good.encoded() for _ in range(8))]
    names = [i.name for i in inputs]
    assert len(set(names)) == len(names), [n for n, c in Counter(names).items() if c > 1]
    return inputs


# --- a memory cap ----------------------------------------------------------------------------


def memory_cap(how: str, name: str) -> tuple[str, int, tuple[str, ...], Path | None]:
    """(method in words, cap in bytes, a command prefix that runs a command under it, the
    cgroup ``name`` to remove afterwards). ``how``: ``cgroup`` (v2 ``memory.max`` or v1
    ``memory.limit_in_bytes``, as root), ``prlimit`` (``--as``) or ``auto`` (a cgroup where
    one can be made, else prlimit). A process joins the cgroup by writing its pid to
    ``cgroup.procs`` before it becomes the service (``exec``); its children stay in it."""
    if how in ("auto", "cgroup"):
        cap = CAP_BYTES["cgroup"]
        reason = "no cgroup memory controller mounted"
        for root, limit_file, version in ((Path("/sys/fs/cgroup"), "memory.max", "v2"),
                                          (Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes", "v1")):
            if version == "v2" and not (root / "cgroup.controllers").exists():
                continue
            group = root / name
            try:
                group.mkdir()
            except OSError as exc:
                reason = f"cannot make a {version} cgroup: {exc.strerror or exc}"
                continue
            try:
                (group / limit_file).write_text(str(cap))
            except OSError as exc:
                group.rmdir()
                reason = f"cannot set {limit_file}: {exc.strerror or exc}"
                continue
            prefix = ("sh", "-c", 'echo $$ > "$0" && exec "$@"', str(group / "cgroup.procs"))
            return f"a cgroup {version} ({limit_file})", cap, prefix, group
        if how == "cgroup":
            raise SystemExit(f"--memory-cap cgroup: {reason}")
        say(f"memory-cap: {reason}; prlimit instead")
    cap = CAP_BYTES["prlimit"]
    return "prlimit --as (address space)", cap, ("prlimit", f"--as={cap}", "--"), None


def release_cgroup(group: Path | None) -> int | str:
    """Remove the cgroup once its processes are gone; the OOM kills it saw (the kernel's count)."""
    if group is None:
        return "no cgroup"
    events = next((group / f for f in ("memory.events", "memory.oom_control") if (group / f).exists()), None)
    text = events.read_text() if events is not None else ""
    found = re.search(r"^oom_kill (\d+)", text, re.M)
    if wait_until(lambda: not (group / "cgroup.procs").read_text().strip(), 30.0) is None:
        say(f"memory-cap: processes left in {group}; not removed")
    else:
        group.rmdir()
    return int(found.group(1)) if found else "not counted by this kernel"


# --- the ledger: what was put into the watch folder ----------------------------------------


@dataclass
class Entry:
    path: str
    expect: str
    group: str
    good: bool
    shas: list[str] = field(default_factory=list)  # each version left to settle, in order
    arrived: list[float] = field(default_factory=list)  # time.time() each version was in place


class Ledger:
    """Every input, with the content versions that must each end as one row."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self._lock = threading.Lock()

    def add(self, path: Path, expect: str, group: str, good: bool = False, data: bytes | None = None) -> None:
        with self._lock:
            entry = self.entries.setdefault(str(path), Entry(str(path), expect, group, good))
            if data is not None:
                entry.shas.append(sha256(data))
                entry.arrived.append(time.time())

    def expected_versions(self) -> set[tuple[str, str]]:
        """(path, sha256) of every version that must end as a row."""
        with self._lock:
            return {(e.path, s) for e in self.entries.values() if e.expect in (DONE, FAILED, EITHER) for s in e.shas}

    def __len__(self) -> int:
        return len(self.entries)


# --- the service ----------------------------------------------------------------------------


class Service:
    """One ``phasewatch serve`` on ``root/watch`` and ``root/data``; restartable; every
    run's log kept as ``root/logs/serve.NN.log``."""

    def __init__(self, root: Path, model: str, token: str, limits: str = "", prefix: tuple[str, ...] = ()) -> None:
        """``limits``: the ``[limits]`` table's lines (default: the suite's); ``prefix``: a
        command that runs the service (under a memory cap)."""
        self.root, self.model, self.token, self.prefix = root, model, token, prefix
        self.watch, self.data = root / "watch", root / "data"
        self.logs = root / "logs"
        self.config = root / "phasewatch.toml"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.watch.mkdir(parents=True)
        self.logs.mkdir()
        default_limits = f"max_megapixels = {MAX_MEGAPIXELS}"
        self.config.write_text(
            f"[watch]\nsettle_s = {SETTLE_S}\n\n"
            # DEBUG: the watcher logs files ignored for their names at debug level only.
            "[logging]\nlevel = \"DEBUG\"\n\n"
            f"[limits]\n{limits or default_limits}\ndecode_timeout_s = {DECODE_TIMEOUT_S}\n\n"
            f"[web]\ntoken = \"{token}\"\n")

    @property
    def database(self) -> Path:
        return self.data / "phasewatch.sqlite3"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def log_path(self, run: int | None = None) -> Path:
        return self.logs / f"serve.{run or self.runs:02d}.log"

    def launch(self) -> None:
        """Start a run without waiting for it to serve."""
        self.runs += 1
        env = {k: v for k, v in os.environ.items() if k not in ENV_DROPPED}
        command = [*self.prefix, sys.executable, "-m", "phasewatch.app.cli", "serve", "--config", str(self.config),
                   "--watch", str(self.watch), "--data", str(self.data), "--model", self.model,
                   "--backend", "cpu", "--port", str(self.port)]
        with open(self.log_path(), "wb") as log:
            self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, env=env)

    def serving(self) -> bool:
        return "serving url=" in self.log_path().read_text(errors="replace")

    def start(self) -> bool:
        """Launch and wait for the 'serving' line; False if it exited or never said so."""
        self.launch()
        up = wait_until(lambda: self.serving() or self.exited(), START_DEADLINE_S, 0.05)
        return bool(up) and not self.exited()

    def exited(self) -> bool:
        return self.proc is None or self.proc.poll() is not None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def terminate(self) -> tuple[int | None, float]:
        """SIGTERM; (exit status or None if it did not stop in time, seconds taken)."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            code = None
            self.kill()
        return code, time.monotonic() - started

    def request(self, path: str, timeout: float = 30.0) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {self.token}"})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def get_json(self, path: str) -> Any:
        status, body = self.request(path)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {body[:200]!r}")
        return json.loads(body)

    def health(self) -> dict[str, str] | None:
        """``/healthz``'s problems ({} when healthy), None when it does not answer."""
        try:
            status, body = self.request("/healthz", timeout=5)
            problems: dict[str, str] = json.loads(body).get("problems", {})
        except (OSError, http.client.HTTPException, ValueError):
            return None
        return problems if status == 503 else {}

    def status(self) -> dict[str, Any] | None:
        try:
            status: dict[str, Any] = self.get_json("/api/status")
        except (OSError, http.client.HTTPException, ValueError, RuntimeError):
            return None
        return status

    def rows(self) -> list[dict[str, Any]]:
        """The ``files`` table, read from the SQLite file directly (paths as Python names them)."""
        if not self.database.exists():
            return []
        conn = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=30)
        try:
            conn.row_factory = sqlite3.Row
            rows = [dict(r) for r in conn.execute("SELECT * FROM files ORDER BY id")]
        finally:
            conn.close()
        for row in rows:
            if isinstance(row["path"], bytes):
                row["path"] = os.fsdecode(row["path"])
        return rows

    def api_images(self) -> list[dict[str, Any]]:
        """Every row of ``/api/images``, paged back with ``before``."""
        images: list[dict[str, Any]] = []
        before = ""
        while True:
            page = self.get_json(f"/api/images?limit=1000{before}")
            images += page
            if len(page) < 1000:
                return images
            before = f"&before={page[-1]['id']}"

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.logs.glob("serve.*.log")))

    def process_sample(self) -> dict[str, int] | None:
        """RSS (with its decoder child), open fds and threads of the running service."""
        pid = self.pid
        if pid is None:
            return None
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            return None
        values = dict(re.findall(r"^(VmRSS|Threads):\s+(\d+)", status, re.M))
        children = sum(_status_kib(child) for child in child_pids(pid))
        return {"rss_kib": int(values.get("VmRSS", 0)), "children_rss_kib": children, "fds": fds,
                "threads": int(values.get("Threads", 0))}


def _status_kib(pid: int, key: str = "VmRSS") -> int:
    try:
        found = re.search(rf"^{key}:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M)
    except OSError:
        return 0
    return int(found.group(1)) if found else 0


def child_pids(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (its decoder)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the fields after the last ')'.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            children.append(int(entry.name))
    return children


def gone(pid: int) -> bool:
    """The process has ended (a zombie has too: only its parent's wait is missing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


class Monitor(threading.Thread):
    """Polls ``/healthz`` all along: a stopped or stuck stage is seen whenever it happens,
    not only when a phase happens to look. Samples the peak RSS (``VmHWM``, which only
    grows while a process lives) of the service process and of its decoder children, with
    the phase (``phase``, set by the suite) in which the service's peak was first seen."""

    def __init__(self, service: Service) -> None:
        super().__init__(name="health-monitor", daemon=True)
        self.service = service
        self.stop = threading.Event()
        self.dead: set[tuple[int, str]] = set()  # (run, problem)
        self.stuck: set[tuple[int, str]] = set()
        self.samples = 0
        self.phase = "start"
        self.peak_kib, self.peak_phase, self.decoder_peak_kib = 0, "", 0

    def sample_memory(self) -> None:
        pid = self.service.pid
        if pid is None:
            return
        peak = _status_kib(pid, "VmHWM")
        if peak > self.peak_kib:
            self.peak_kib, self.peak_phase = peak, self.phase
        self.decoder_peak_kib = max([self.decoder_peak_kib, *(_status_kib(c, "VmHWM") for c in child_pids(pid))])

    def run(self) -> None:
        while not self.stop.wait(0.5):
            self.sample_memory()
            problems = self.service.health()
            if problems is None:
                continue
            self.samples += 1
            worker = problems.get("worker", "")
            for part in filter(None, (p.strip() for p in worker.split(";"))):
                target = self.dead if "stopped" in part else self.stuck
                target.add((self.service.runs, part))


# --- putting files in -------------------------------------------------------------------------


class Feeder:
    """Puts inputs into the watch folder and records them in the ledger."""

    def __init__(self, service: Service, ledger: Ledger, good: GoodImages, workdir: Path) -> None:
        self.service, self.ledger, self.good = service, ledger, good
        self.staging = workdir / "staging"
        self.outside = workdir / "outside"
        self.staging.mkdir()
        self.outside.mkdir()
        self._n = 0
        self._lock = threading.Lock()

    def number(self) -> int:
        with self._lock:
            self._n += 1
            return self._n

    def place(self, name: str, data: bytes, expect: str, group: str, good: bool = False,
              in_place: bool = False) -> Path:
        """Write beside the folder and rename in (a copy tool), or write in place and close
        (``in_place``: a microscope saving; the watcher takes a closed file as complete)."""
        target = self.service.watch / name
        self.ledger.add(target, expect, group, good, data)
        if in_place:
            target.write_bytes(data)
            return target
        staged = self.staging / f"{self.number():06d}"
        staged.write_bytes(data)
        os.replace(staged, target)
        return target

    def good_file(self, prefix: str, in_place: bool | None = None) -> Path:
        """A new good micrograph; written in place or renamed in at random unless told."""
        suffix, data = self.good.encoded()
        in_place = self.good.rng.random() < 0.5 if in_place is None else in_place
        return self.place(f"{prefix}-{self.number():05d}{suffix}", data, DONE, prefix, good=True, in_place=in_place)

    def put(self, item: Input) -> None:
        if item.special:
            self.special(item)
        else:
            assert item.data is not None
            self.place(item.name, item.data, item.expect, item.group, item.good)

    def special(self, item: Input) -> None:
        target = self.service.watch / item.name
        self.ledger.add(target, item.expect, item.group)
        kind = item.special
        if kind == "fifo":
            os.mkfifo(target)
        elif kind == "socket":
            with socket.socket(socket.AF_UNIX) as sock:
                try:
                    sock.bind(str(target))  # the socket file stays after close
                except OSError:  # a path longer than a socket address holds (108 bytes)
                    del self.ledger.entries[str(target)]
        elif kind == "folder":
            target.mkdir()
        elif kind == "link-out":
            assert item.data is not None
            outside = self.outside / "outside.tif"
            outside.write_bytes(item.data)
            target.symlink_to(outside)
        elif kind == "link-passwd":
            target.symlink_to("/etc/passwd")
        elif kind == "link-dangling":
            target.symlink_to(self.outside / "never-there.tif")
        elif kind == "link-inside":
            target.symlink_to(next(p for p in self.service.watch.iterdir() if p.name.startswith("good-")))


def timed_inputs(feeder: Feeder) -> None:
    """Files that vanish or change before their writer is done with them, and one deleted
    right after. The watcher takes a file closed after writing (or renamed in) as complete
    at once (``[watch] close_write``), else once it has settled: each file here stays open
    until its last change, and each change comes well inside ``SETTLE_S``."""
    watch, good, pause = feeder.service.watch, feeder.good, SETTLE_S / 5
    for n in range(3):  # deleted while still being written: nothing to queue
        path = watch / f"vanishes-while-written-{n}.tif"
        feeder.ledger.add(path, ABSENT, "timed")
        with open(path, "wb") as fh:
            fh.write(good.encoded("tiff")[1])
            fh.flush()
            time.sleep(pause)
            path.unlink()
    path = watch / "vanishes-after-close.tif"
    feeder.ledger.add(path, VANISHED, "timed")
    path.write_bytes(good.encoded("tiff")[1])
    path.unlink()
    data = good.encoded("tiff")[1]
    path = watch / "written-in-chunks.tif"  # a slow writer: only the whole file counts
    with open(path, "wb") as fh:
        for start in range(0, len(data), len(data) // 4 + 1):
            fh.write(data[start:start + len(data) // 4 + 1])
            fh.flush()
            time.sleep(pause)
    feeder.ledger.add(path, DONE, "timed", good=True, data=data)
    data = good.encoded("tiff")[1]
    path = watch / "cut-short-while-written.tif"
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        time.sleep(pause)
        fh.truncate(len(data) // 2)
    feeder.ledger.add(path, FAILED, "timed", data=data[: len(data) // 2])
    second = good.encoded("png")[1]
    path = watch / "replaced-while-written.tif"
    with open(path, "wb") as fh:
        fh.write(good.encoded("tiff")[1])
        fh.flush()
        time.sleep(pause)
        staged = feeder.staging / "replacement"
        staged.write_bytes(second)
        os.replace(staged, path)
    feeder.ledger.add(path, DONE, "timed", good=True, data=second)


def wait_idle(service: Service, ledger: Ledger, deadline_s: float) -> bool:
    """Every expected version has its row and nothing is queued or in work. An idle service
    whose rows stop growing short of that ends the wait early: the missing rows are lost,
    and the final account says which."""
    quiet: dict[str, float] = {"rows": -1, "since": time.monotonic()}

    def idle() -> bool:
        # Rows before counts: a row queued between the two reads then shows in the counts.
        rows = service.rows()
        status = service.status()
        if status is None or status["queued"] + status["processing"]:
            return False
        if len(rows) != quiet["rows"]:
            quiet.update(rows=len(rows), since=time.monotonic())
        missing = ledger.expected_versions() - {(r["path"], r["sha256"]) for r in rows}
        return not missing or time.monotonic() - quiet["since"] > QUIET_S

    return bool(wait_until(idle, deadline_s, 0.5))


# --- phases ---------------------------------------------------------------------------------


@dataclass
class Report:
    """Everything the table shows."""

    profile: str
    seed: int
    model: str
    good_source: str
    inputs_tried: int = 0
    lost: int = 0
    duplicated: int = 0
    good_failed: int = 0
    threads_died: int = 0
    restarts_needed: int = 0
    not_finished: int = 0
    reasons_not_one_line: int = 0
    faults_not_recovered: int = 0
    unexpected_outcomes: int = 0
    ignored_without_log_line: int = 0
    spurious_rows: int = 0
    stages_stuck: int = 0
    unexpected_errors_logged: int = 0
    stray_decoders: int = 0
    shell_injection: int = 0
    kills: int = 0
    kills_during_start: int = 0
    kills_with_work: int = 0
    tracebacks_logged: int = 0
    wedges: int = 0
    service_deaths: int = 0
    waits: dict[str, Any] = field(default_factory=dict)
    peak_service_mib: float = 0.0
    peak_phase: str = ""
    decoder_peak_mib: float = 0.0
    memory_cap: dict[str, Any] = field(default_factory=dict)
    outcomes: dict[str, dict[str, int]] = field(default_factory=dict)
    faults: dict[str, str] = field(default_factory=dict)
    soak: dict[str, Any] = field(default_factory=dict)
    api_fuzz: dict[str, Any] = field(default_factory=dict)
    image_fuzz: dict[str, Any] = field(default_factory=dict)
    pip_audit: dict[str, Any] = field(default_factory=dict)
    stop: str = ""
    details: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Suite:
    """The phases, on one service, one ledger and one report."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.profile = PROFILES["long" if args.long else "short" if args.short else "default"]
        self.skip = set(args.skip)
        self.rng = random.Random(args.seed)
        self.workdir = workdir
        self.good = GoodImages(self.rng)
        source = "crops of superalloy/test images" if GoodImages._source_paths() else "runtime.synthetic fields"
        self.report = Report(self.profile.name, args.seed, args.model, source)
        self.service = Service(workdir, args.model, secrets.token_hex(16))
        self.ledger = Ledger()
        self.feeder = Feeder(self.service, self.ledger, self.good, workdir)
        self.monitor = Monitor(self.service)
        self.results_mount: str | None = None  # why not, when the results tmpfs is not there
        self.memory_cap: str = args.memory_cap

    # -- service life -------------------------------------------------------------------

    def start_service(self, why: str) -> None:
        """Start the service; a start that fails is retried and counted as a restart needed."""
        for _ in range(3):
            if self.service.start():
                return
            if self.service.exited():
                self.count_death(f"while it started ({why})")
            self.need_restart(f"the service did not come up ({why}); log {self.service.log_path()}")
        raise RuntimeError(f"phasewatch serve does not start: see {self.service.log_path()}")

    def need_restart(self, why: str) -> None:
        self.report.restarts_needed += 1
        self.report.details.append(f"restart needed: {why}")
        say(f"RESTART NEEDED: {why}")
        self.service.kill()

    def count_death(self, when: str) -> None:
        """The service exited without the suite's signal: the suite's kills and stops are the
        only other causes of an exit, so it died of what it was doing: the files in work."""
        self.report.service_deaths += 1
        in_work = [Path(r["path"]).name for r in self.service.rows() if r["state"] == "processing"]
        code = self.service.proc.returncode if self.service.proc is not None else None
        self.report.details.append(f"service death {when} (status {code}, log {self.service.log_path()}); "
                                   f"files in work: {in_work}")

    def ensure_running(self, phase: str) -> None:
        if self.service.exited():
            self.count_death(f"during {phase}")
            code = self.service.proc.returncode if self.service.proc is not None else None
            self.need_restart(f"the service exited by itself (status {code}) during {phase}; "
                              f"log {self.service.log_path()}")
            self.start_service(f"after {phase}")

    def settle_phase(self, phase: str, deadline_s: float = 180.0) -> None:
        """End of a phase: every file finished, else say which are not (and go on)."""
        self.ensure_running(phase)
        if not wait_idle(self.service, self.ledger, deadline_s):
            status = self.service.status()
            self.report.details.append(f"{phase}: not idle after {deadline_s:.0f} s (status {status})")
            say(f"{phase}: NOT IDLE after {deadline_s:.0f} s: {status}")

    # -- corpus ---------------------------------------------------------------------------

    def phase_corpus(self) -> None:
        corpus = build_corpus(self.good, self.rng, self.profile.corpus_every)
        say(f"corpus: {len(corpus)} inputs + timed ones into the watch folder")
        regular = [i for i in corpus if not i.special]
        for item in regular:
            self.feeder.put(item)
        for item in corpus:
            if item.special:  # after the good files: a link inside needs a target
                self.feeder.put(item)
        timed_inputs(self.feeder)
        self.settle_phase("corpus", 120 + 2.0 * len(corpus))
        path = self.service.watch / "rewritten-after-settling.tif"  # a new version: a new row
        for _ in range(2):
            self.feeder.place(path.name, self.good.encoded("tiff")[1], DONE, "timed", good=True)
            self.settle_phase("corpus rewrite", 60)

    # -- kill -9 ---------------------------------------------------------------------------

    def phase_kills(self) -> None:
        profile = self.profile
        say(f"kills: {profile.kills} x kill -9 while good files arrive every {profile.feed_interval_s} s")
        stop = threading.Event()
        feeder = threading.Thread(target=self._feed_until, args=(stop, "kill-feed", profile.feed_interval_s),
                                  name="kill-feed", daemon=True)
        feeder.start()
        try:
            while self.report.kills < profile.kills:
                self._kill_cycle()
        finally:
            stop.set()
            feeder.join()
        self.settle_phase("kills")

    def _feed_until(self, stop: threading.Event, prefix: str, interval_s: float) -> None:
        while not stop.wait(interval_s):
            self.feeder.good_file(prefix)

    def _kill_cycle(self) -> None:
        """The service serves; a burst of files lands (a field of view captured in quick
        succession), and a random moment later it is killed, mostly with files in hand;
        sometimes it is killed again while it starts (recovery, model loading, the
        rescan); then it is started as systemd would."""
        time.sleep(self.rng.uniform(*KILL_AFTER_SERVING_S))
        for _ in range(self.rng.randint(*KILL_BURST)):
            self.feeder.good_file("kill-burst", in_place=True)
        time.sleep(self.rng.uniform(*KILL_AFTER_BURST_S))
        self.ensure_running("kills")  # it died by itself meanwhile: a finding, not our kill
        before = self.report.kills
        self._kill_now()
        if self.report.kills < self.profile.kills and self.rng.random() < KILL_DURING_START_SHARE:
            self.service.launch()
            time.sleep(self.rng.uniform(*KILL_DURING_START_S))
            self._kill_now()
            self.report.kills_during_start += 1
        if self.report.kills // 5 > before // 5:
            say(f"kills: {self.report.kills} done")
        self.start_service("after the suite's own kill -9")

    def _kill_now(self) -> None:
        status = self.service.status() if self.service.serving() else None
        if status is not None and status["queued"] + status["processing"]:
            self.report.kills_with_work += 1
        pid = self.service.pid
        children = child_pids(pid) if pid is not None else []
        self.service.kill()
        self.report.kills += 1
        self._reap_strays(children)

    def _reap_strays(self, children: list[int]) -> None:
        """A decoder child must end with its service (its pipe closes); count any that stay."""
        for pid in children:
            if wait_until(partial(gone, pid), 10.0, 0.05) is None:
                self.report.stray_decoders += 1
                self.report.details.append(f"decoder process {pid} outlived its killed service")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    # -- faults ------------------------------------------------------------------------------

    def mount_results_tmpfs(self) -> None:
        """A small tmpfs as the results folder, so that it can be filled and made read-only."""
        results = self.service.data / "results"
        results.mkdir(parents=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0755", "phasewatch-results",
                               str(results)], capture_output=True, text=True)
        if done.returncode != 0:
            self.results_mount = f"cannot mount a tmpfs on the results folder: {done.stderr.strip() or done.returncode}"
            say(f"faults: {self.results_mount}")

    def unmount_results_tmpfs(self) -> None:
        if self.results_mount is None:
            results = self.service.data / "results"
            subprocess.run(["mount", "-o", "remount,rw", str(results)], capture_output=True)
            if subprocess.run(["umount", str(results)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(results)], capture_output=True)

    def fault(self, name: str, component: str, inject: Callable[[], None], lift: Callable[[], None],
              feed: int = 2) -> None:
        """Inject, feed files, see the problem on /healthz, lift; the service must recover by itself."""
        self.settle_phase(f"before {name}")
        started = time.monotonic()
        try:
            inject()
        except (OSError, subprocess.CalledProcessError) as exc:
            self.report.faults[name] = f"skipped: cannot inject it: {getattr(exc, 'stderr', None) or exc}"
            say(f"{name}: {self.report.faults[name]}")
            with contextlib.suppress(OSError, subprocess.CalledProcessError):
                lift()  # whatever part of it was done
            return
        lifted = False
        try:
            for _ in range(feed):
                self.feeder.good_file(name)
            seen = wait_until(lambda: (self.service.health() or {}).get(component), FAULT_SEEN_DEADLINE_S)
            time.sleep(self.profile.fault_hold_s)
            failed_meanwhile = [r for r in self.service.rows() if r["state"] == "failed"
                                and Path(r["path"]).name.startswith(name)]
            lift()
            lifted = True
            lifted_at = time.monotonic()
            recovered = wait_until(lambda: self.service.health() == {}, RECOVERY_DEADLINE_S)
        finally:
            if not lifted:
                lift()
        if not recovered:
            self.report.faults_not_recovered += 1
            self.need_restart(f"{name}: /healthz not ok {RECOVERY_DEADLINE_S:.0f} s after the fault was lifted "
                              f"({self.service.health()})")
            self.start_service(f"after {name}")
            self.report.faults[name] = "NOT recovered by itself (restarted)"
        else:
            took = time.monotonic() - lifted_at
            shown = f"/healthz showed {component}: {seen}" if seen else f"no {component} problem shown on /healthz"
            self.report.faults[name] = (f"recovered {took:.1f} s after it was lifted (lasted "
                                        f"{lifted_at - started:.1f} s); {shown}")
        if failed_meanwhile:
            reasons = [r["error"] for r in failed_meanwhile]
            self.report.details.append(f"{name}: files failed during the fault: {reasons}")
        self.settle_phase(name)
        say(f"{name}: {self.report.faults[name]}")

    def fault_disk_full(self) -> None:
        if self.results_mount is not None:
            self.report.faults["disk-full"] = f"skipped: {self.results_mount}"
            return
        filler = self.service.data / "results" / "filler"

        def fill() -> None:
            # Unbuffered, in shrinking pieces, until not one byte more fits: ENOSPC is the aim.
            with open(filler, "wb", buffering=0) as fh:
                for piece in (1 << 20, 4096, 1):
                    with contextlib.suppress(OSError):
                        while True:
                            fh.write(b"\0" * piece)

        self.fault("disk-full", "disk", fill, lambda: filler.unlink())

    def fault_read_only(self) -> None:
        results = self.service.data / "results"
        if self.results_mount is None:
            def inject() -> None:
                subprocess.run(["mount", "-o", "remount,ro", str(results)], check=True, capture_output=True)

            def lift() -> None:
                subprocess.run(["mount", "-o", "remount,rw", str(results)], check=True, capture_output=True)

            self.fault("read-only", "disk", inject, lift)
        elif os.geteuid() != 0:  # permissions bind a service that is not root
            mode = results.stat().st_mode
            self.fault("read-only", "disk", lambda: results.chmod(0o555), lambda: results.chmod(mode))
            self.report.faults["read-only"] += " (write permission taken away: no mount allowed)"
        else:
            self.report.faults["read-only"] = (f"skipped: {self.results_mount}, and as root taking write "
                                               "permission away does not stop writes")

    def fault_db_lock(self, during: Callable[[], None] | None = None) -> None:
        """Another connection holds BEGIN EXCLUSIVE until the service shows the lock (the busy
        timeout has passed), then a second more."""
        from phasewatch.store import BUSY_TIMEOUT_S

        holder: list[sqlite3.Connection] = []

        def inject() -> None:
            conn = sqlite3.connect(self.service.database, isolation_level=None, timeout=30)
            conn.execute("BEGIN EXCLUSIVE")
            holder.append(conn)
            if during is not None:
                during()

        def lift() -> None:
            wait_until(lambda: (self.service.health() or {}).get("database"), BUSY_TIMEOUT_S + 20)
            time.sleep(1.0)
            conn = holder.pop()
            conn.execute("ROLLBACK")
            conn.close()

        self.fault("db-lock", "database", inject, lift)

    def fault_watch_folder(self) -> None:
        watch = self.service.watch

        def inject() -> None:
            shutil.rmtree(watch)

        def lift() -> None:
            wait_until(lambda: (self.service.health() or {}).get("watch"), FAULT_SEEN_DEADLINE_S)
            watch.mkdir()

        # Files fed while the folder is gone cannot arrive: feed after it is back.
        self.fault("watch-folder-deleted", "watch", inject, lift, feed=0)
        for _ in range(2):
            self.feeder.good_file("watch-folder-deleted")
        self.settle_phase("watch-folder-deleted")
        started = time.monotonic()  # replaced at once (a new inode under the same name)
        watch.rename(self.workdir / "watch.replaced")
        watch.mkdir()
        for _ in range(2):
            self.feeder.good_file("watch-folder-replaced")
        self.settle_phase("watch-folder-replaced", 60)
        done = sum(r["state"] == "done" for r in self.service.rows()
                   if Path(r["path"]).name.startswith("watch-folder-replaced"))
        self.report.faults["watch-folder-replaced"] = (f"{done} of 2 files fed into the new folder done "
                                                       f"{time.monotonic() - started:.1f} s after the swap")
        say(f"watch-folder-replaced: {self.report.faults['watch-folder-replaced']}")

    # -- soak ----------------------------------------------------------------------------------

    def phase_soak(self) -> None:
        profile = self.profile
        say(f"soak: {profile.soak_s:.0f} s, a good file every {profile.soak_interval_s} s, a broken one in five")
        self.ensure_running("soak")
        samples: list[tuple[float, dict[str, int]]] = []
        end = time.monotonic() + profile.soak_s
        n = 0
        while time.monotonic() < end:
            n += 1
            if n % 5:
                self.feeder.good_file("soak")
            else:
                suffix, data = self.good.encoded()
                self.feeder.place(f"soak-broken-{n:05d}{suffix}", data[: len(data) // 3], EITHER, "soak")
            self.service.status()
            with contextlib.suppress(RuntimeError, OSError, http.client.HTTPException):
                self.service.get_json("/api/images?limit=50")
            sample = self.service.process_sample()
            if sample is not None:
                samples.append((time.monotonic(), sample))
            time.sleep(profile.soak_interval_s)
        self.settle_phase("soak")
        final = self.service.process_sample()
        if final is not None:
            samples.append((time.monotonic(), final))
        self.report.soak = soak_growth(samples, n)

    # -- fuzzers ---------------------------------------------------------------------------------

    def phase_api_fuzz(self) -> None:
        self.ensure_running("api-fuzz")
        self.report.api_fuzz = api_fuzz(self.service, self.workdir / "api-fuzz", self.profile.api_fuzz_s,
                                        self.rng.randrange(2**31))
        say(f"api-fuzz: {self.report.api_fuzz.get('summary')}")

    # -- the memory-capped run ---------------------------------------------------------------

    def phase_memory_cap(self, how: str) -> None:
        """A second service, under a memory cap (:func:`memory_cap`), gets the corpus's bombs
        (:func:`capped_inputs`), each followed by a good file: every bomb must fail in the
        decoder child with one line, the service must live on (a death is counted, and it is
        started again as systemd would), and the good files must be done. Its rows are
        accounted as the main run's are, into the same counts."""
        main = (self.service, self.ledger, self.feeder, self.monitor)
        method, cap_bytes, prefix, group = memory_cap(how, f"phasewatch-reliability-{os.getpid()}")
        limits = f"max_megapixels = {CAP_MAX_MEGAPIXELS}\ndecode_memory_mb = {CAP_DECODE_MEMORY_MB}"
        self.service = Service(self.workdir / "memory-cap", main[0].model, main[0].token, limits, prefix)
        self.ledger = Ledger()
        self.feeder = Feeder(self.service, self.ledger, self.good, self.service.root)
        self.monitor = Monitor(self.service)
        self.monitor.phase = "memory-cap"
        capped = Report(self.report.profile, self.report.seed, self.report.model, self.report.good_source)
        deaths = self.report.service_deaths
        say(f"memory-cap: a service under {method} ({cap_bytes >> 20} MiB), the corpus's bombs")
        try:
            self.start_service("memory-cap")
            self.monitor.start()
            for item in capped_inputs(self.good):
                self.feeder.put(item)
                self.feeder.good_file("memory-cap-good")
            deadline = time.monotonic() + 300
            while not wait_idle(self.service, self.ledger, 10.0) and time.monotonic() < deadline:
                self.ensure_running("memory-cap")  # a death: counted, started again
            rows = self.service.rows()
            tally(capped, self.ledger, rows, Counter(i["id"] for i in self.service.api_images()))
            count_wedges(capped, self.ledger, rows)
        finally:
            service, ledger, monitor = self.service, self.ledger, self.monitor
            self.service, self.ledger, self.feeder, self.monitor = main
            monitor.stop.set()
            if monitor.is_alive():
                monitor.join()
            code = service.terminate()[0] if not service.exited() else None
            oom_kills = release_cgroup(group)
        text = service.log_text()
        for name in ("lost", "duplicated", "good_failed", "not_finished", "reasons_not_one_line",
                     "unexpected_outcomes", "spurious_rows", "wedges"):
            setattr(self.report, name, getattr(self.report, name) + getattr(capped, name))
        self.report.details += [f"memory-cap: {line}" for line in capped.details]
        self.report.inputs_tried += sum(max(1, len(e.shas)) for e in ledger.entries.values())
        self.report.threads_died += len(monitor.dead) + len(re.findall(r"^Exception in thread", text, re.M))
        self.report.stages_stuck += len(monitor.stuck)
        self.report.tracebacks_logged += len(re.findall(r"^Traceback \(most recent call last\)", text, re.M))
        self.report.unexpected_errors_logged += len(re.findall(r"unexpected error", text))
        bombs = [r for r in rows if Path(r["path"]).name.startswith("cap-bomb-")]
        good = capped.outcomes.get("memory-cap-good", {})
        self.report.memory_cap = {
            "method": method, "cap_mib": cap_bytes >> 20, "decode_memory_mb": CAP_DECODE_MEMORY_MB,
            "bombs": len(bombs), "bombs_failed": sum(r["state"] == "failed" for r in bombs),
            "reasons": dict(Counter(re.sub(r"^\S+: ", "", r["error"] or "") for r in bombs if r["error"])),
            "good_done": good.get("done", 0), "good_files": sum(good.values()),
            "service_deaths": self.report.service_deaths - deaths, "oom_kills": oom_kills,
            "peak_service_mib": round(monitor.peak_kib / 1024, 1),
            "decoder_peak_mib": round(monitor.decoder_peak_kib / 1024, 1), "stop": code,
            "longest_good_wait_s": capped.waits.get("longest_s"),
        }
        say(f"memory-cap: {self.report.memory_cap}")

    # -- the end ------------------------------------------------------------------------------

    def finish(self) -> None:
        self.settle_phase("the end")
        self.account()
        self.monitor.stop.set()
        self.monitor.join()
        self.report.peak_service_mib = round(self.monitor.peak_kib / 1024, 1)
        self.report.peak_phase = self.monitor.peak_phase
        self.report.decoder_peak_mib = round(self.monitor.decoder_peak_kib / 1024, 1)
        code, seconds = self.service.terminate()
        self.report.stop = (f"SIGTERM: exit {code} after {seconds:.1f} s" if code is not None
                            else f"SIGTERM: still running after {STOP_TIMEOUT_S:.0f} s (killed)")
        self.account_logs()

    def account(self) -> None:
        """Lost, duplicated, failed good files, outcomes: the ledger against the store and the API."""
        rows = self.service.rows()
        try:
            api_ids = Counter(i["id"] for i in self.service.api_images())
        except (OSError, http.client.HTTPException, RuntimeError) as exc:
            api_ids = Counter()
            self.report.details.append(f"/api/images could not be read at the end: {exc}")
        tally(self.report, self.ledger, rows, api_ids)
        self.report.inputs_tried = sum(max(1, len(e.shas)) for e in self.ledger.entries.values())
        count_wedges(self.report, self.ledger, rows)

    def account_logs(self) -> None:
        text = self.service.log_text()
        uncaught = len(re.findall(r"^Exception in thread", text, re.M))
        self.report.threads_died = len(self.monitor.dead) + uncaught
        self.report.stages_stuck = len(self.monitor.stuck)
        self.report.unexpected_errors_logged = len(re.findall(r"unexpected error", text))
        self.report.tracebacks_logged = len(re.findall(r"^Traceback \(most recent call last\)", text, re.M))
        for run, problem in sorted(self.monitor.dead | self.monitor.stuck):
            self.report.details.append(f"run {run}: /healthz worker problem: {problem}")
        for entry in self.ledger.entries.values():
            if entry.expect == IGNORED and f"{entry.path}: ignored:" not in text:
                self.report.ignored_without_log_line += 1
                self.report.details.append(f"ignored without a log line: {entry.path!r}")
        planted = [p for p in (Path.cwd(), self.service.watch, PROJECT_ROOT, self.workdir) if (p / "PWNED").exists()]
        self.report.shell_injection = len(planted)


def count_wedges(report: Report, ledger: Ledger, rows: list[dict[str, Any]]) -> None:
    """Each good file's wait, from its arrival (just before it was written or renamed in) to
    its row's end (``processed``) as ``done``; over :data:`WEDGE_S` it is a wedge, unless
    it was fed while the suite held the service (:data:`HELD_BY_THE_SUITE`). Good files
    that did not end done are counted as failed or not finished instead."""
    done = {(r["path"], r["sha256"]): r["processed"] for r in rows if r["state"] == "done" and r["processed"]}
    counted: list[tuple[float, str]] = []
    held: list[tuple[float, str]] = []
    for entry in ledger.entries.values():
        for sha, arrived in zip(entry.shas, entry.arrived, strict=True):
            if entry.good and (entry.path, sha) in done:
                waited = (done[(entry.path, sha)] - arrived, Path(entry.path).name)
                (held if entry.group in HELD_BY_THE_SUITE else counted).append(waited)
    for seconds, name in sorted(counted, reverse=True):
        if seconds <= WEDGE_S:
            break
        report.wedges += 1
        report.details.append(f"wedge: {name!r} was done {seconds:.0f} s after it arrived")
    longest, held_longest = max(counted, default=(0.0, "")), max(held, default=(0.0, ""))
    report.waits = {"good_files": len(counted), "longest_s": round(longest[0], 1), "longest": longest[1],
                    "held_files": len(held), "held_longest_s": round(held_longest[0], 1)}


def tally(report: Report, ledger: Ledger, rows: list[dict[str, Any]], api_ids: Counter[int]) -> None:
    """Fill ``report``'s counts from the store's rows and the ids ``/api/images`` lists."""
    by_version: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        by_version.setdefault((row["path"], row["sha256"]), []).append(row)
    expected_versions = {(e.path, s) for e in ledger.entries.values() for s in e.shas}
    # A file deleted just after its writer closed it may have been queued (its content unknown
    # to the ledger): its rows are judged by path alone.
    vanished = {e.path: [r for r in rows if r["path"] == e.path] for e in ledger.entries.values()
                if e.expect == VANISHED}
    by_version = {k: v for k, v in by_version.items() if k[0] not in vanished}
    report.spurious_rows = sum(len(v) for k, v in by_version.items() if k not in expected_versions)
    for key, found in by_version.items():
        if key not in expected_versions:
            report.details.append(f"row for content never complete: {key[0]!r} ({found[0]['state']})")
    report.duplicated = sum(len(v) - 1 for v in by_version.values()) + sum(n - 1 for n in api_ids.values())
    outcomes: dict[str, Counter[str]] = {}
    for entry in ledger.entries.values():
        ends = vanished.get(entry.path) or [row for s in entry.shas for row in by_version.get((entry.path, s), [])]
        end = judge(report, entry, ends, api_ids, len(entry.shas))
        outcomes.setdefault(entry.group, Counter())[end] += 1
    report.outcomes = {group: dict(counts) for group, counts in sorted(outcomes.items())}


def judge(report: Report, entry: Entry, ends: list[dict[str, Any]], api_ids: Counter[int], versions: int) -> str:
    """How one input ended, counted into ``report``; returns its outcome's name."""
    if entry.expect == VANISHED:
        unreadable = all(r["state"] == "failed" and "cannot read" in (r["error"] or "") for r in ends)
        if not unreadable:
            report.unexpected_outcomes += 1
            report.details.append(f"{entry.path!r}: expected {entry.expect}, ended {[r['state'] for r in ends]}")
        return "failed" if ends else ABSENT
    if entry.expect in (IGNORED, ABSENT):
        if ends:
            report.unexpected_outcomes += 1
            report.details.append(f"{entry.path!r}: expected {entry.expect}, has a row ({ends[0]['state']})")
            return "row"
        return entry.expect
    found_versions = {row["sha256"] for row in ends}
    missing = versions - len(found_versions) + sum(row["id"] not in api_ids for row in ends)
    if missing:
        report.lost += missing
        report.details.append(f"lost: {entry.path!r} ({missing} version(s) without a row in the store or API)")
        if not ends:
            return "lost"
    states = [row["state"] for row in ends]
    for row in ends:
        if row["state"] in ("pending", "processing"):
            report.not_finished += 1
            report.details.append(f"not finished: {entry.path!r} is {row['state']}")
        elif row["state"] == "failed" and (not row["error"] or "\n" in row["error"] or "\r" in row["error"]):
            report.reasons_not_one_line += 1
            report.details.append(f"failed without a one-line reason: {entry.path!r}: {row['error']!r}")
    if entry.good and "failed" in states:
        report.good_failed += 1
        report.details.append(f"good file failed: {entry.path!r}: {[r['error'] for r in ends if r['error']]}")
    elif entry.expect in (DONE, FAILED) and any(s in ("done", "failed") and s != entry.expect for s in states):
        report.unexpected_outcomes += 1
        report.details.append(f"{entry.path!r}: expected {entry.expect}, ended {states}: "
                              f"{[r['error'] for r in ends if r['error']]}")
    return "/".join(sorted(set(states)))


def soak_growth(samples: list[tuple[float, dict[str, int]]], fed: int) -> dict[str, Any]:
    """Growth from the soak's first quarter (past warm-up) to its end."""
    if len(samples) < 4:
        return {"files_fed": fed, "note": "too few samples"}
    start = samples[len(samples) // 4][1]
    end = samples[-1][1]
    peak = max(s["rss_kib"] for _, s in samples)
    return {
        "files_fed": fed,
        "seconds": round(samples[-1][0] - samples[len(samples) // 4][0], 1),
        "rss_mib_start": round(start["rss_kib"] / 1024, 1),
        "rss_mib_end": round(end["rss_kib"] / 1024, 1),
        "rss_mib_peak": round(peak / 1024, 1),
        "rss_growth_mib": round((end["rss_kib"] - start["rss_kib"]) / 1024, 1),
        "decoder_rss_growth_mib": round((end["children_rss_kib"] - start["children_rss_kib"]) / 1024, 1),
        "fd_growth": end["fds"] - start["fds"],
        "fds_end": end["fds"],
        "thread_growth": end["threads"] - start["threads"],
    }


# --- schemathesis ------------------------------------------------------------------------------


def api_fuzz(service: Service, folder: Path, seconds: int, seed: int) -> dict[str, Any]:
    """schemathesis over the service's own OpenAPI document, against the running service,
    with the token (so that ST401, "accepts requests without authentication", is a real check)."""
    try:
        import schemathesis  # noqa: F401 - only whether it is installed
    except ImportError:
        return {"summary": "skipped: schemathesis is not installed (pip install -e '.[test]')"}
    folder.mkdir()
    document = folder / "openapi.json"
    document.write_text(json.dumps(service.get_json("/api/openapi.json")))
    report = folder / "report.json"
    command = [sys.executable, "-m", "schemathesis.cli", "run", str(document), "--url",
               f"http://127.0.0.1:{service.port}", "-H", f"Authorization: Bearer {service.token}",
               "--checks", "all", "--max-time", str(seconds), "--workers", "1", "--seed", str(seed),
               "--request-timeout", "20", "--no-color", "--generation-database", "none",
               # /events is a stream that ends only when the client goes: every request would
               # time out. tests/test_web_security*.py cover it.
               "--exclude-path", "/events", "--report", "json", "--report-json-path", str(report)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120, cwd=folder)
    except subprocess.TimeoutExpired:
        return {"summary": f"schemathesis did not end within {seconds + 120} s"}
    (folder / "output.txt").write_text(done.stdout + done.stderr)
    if not report.exists():
        return {"summary": f"schemathesis failed to run (status {done.returncode}); see {folder / 'output.txt'}"}
    return summarise_schemathesis(json.loads(report.read_text()), folder / "output.txt")


def summarise_schemathesis(data: dict[str, Any], output: Path) -> dict[str, Any]:
    failures = data.get("failures", [])
    server_errors = sum(f["count"] for f in failures if f.get("type") == "ServerError" or f.get("code") == "ST101")
    by_kind = {f"{f['code']} {f['title']}": f["count"] for f in failures}
    cases = data.get("test_cases", {})
    errors = data.get("errors", [])
    summary = (f"{cases.get('generated', 0)} test cases over {data.get('operations', {}).get('tested', 0)} "
               f"operations; {server_errors} server errors (5xx); {sum(by_kind.values())} failures of other checks"
               f"{'; ' + str(len(errors)) + ' errors' if errors else ''}")
    return {"summary": summary, "test_cases": cases.get("generated", 0), "server_errors": server_errors,
            "failures": by_kind, "operations_by_failure": {f"{f['code']} {f['title']}": f.get("operations", [])
                                                           for f in failures},
            "errors": [str(e)[:300] for e in errors], "output": str(output)}


# --- hypothesis against the image reader ----------------------------------------------------------


def start_image_fuzz(folder: Path, seconds: float, seed: int) -> subprocess.Popen[bytes] | str:
    """This script in ``--fuzz-imageio-worker`` mode, in its own process: a decoder crash
    or hang there costs the worker, not the suite."""
    try:
        import hypothesis  # noqa: F401 - only whether it is installed
    except ImportError:
        return "skipped: hypothesis is not installed (pip install -e '.[test]')"
    folder.mkdir()
    command = [sys.executable, str(Path(__file__).resolve()), "--fuzz-imageio-worker", str(folder),
               "--seconds", str(seconds), "--seed", str(seed)]
    log = open(folder / "worker.log", "wb")  # noqa: SIM115 - the worker writes to it until it ends
    try:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()


def finish_image_fuzz(worker: subprocess.Popen[bytes] | str, folder: Path, seconds: float) -> dict[str, Any]:
    if isinstance(worker, str):
        return {"summary": worker}
    try:
        code = worker.wait(timeout=seconds + 120)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()
        code = None
    summary_file = folder / "summary.json"
    result: dict[str, Any] = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    if code != 0 or not result:
        how = "hung" if code is None else f"died ({_exit_name(code)})"
        result.setdefault("defects", []).append(
            {"kind": f"the fuzz worker {how}", "file": str(folder / "current.bin"), "log": str(folder / "worker.log")})
    result["summary"] = (f"{result.get('examples', 0)} examples in {result.get('seconds', 0):.0f} s; "
                         f"{len(result['defects'])} defects")
    return result


def _exit_name(code: int) -> str:
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"


def fuzz_seeds() -> dict[str, tuple[str, bytes]]:
    """Small valid files of every kind the reader knows, for hypothesis to mutate."""
    rng = np.random.default_rng(0)
    gray = (rng.random((24, 24)) * 255).astype(np.uint8)
    rgb = (rng.random((20, 20, 3)) * 255).astype(np.uint8)
    return {
        "tiff": (".tif", tiff_bytes(gray)),
        "tiff-zlib": (".tif", tiff_bytes(gray, compression="zlib")),
        "tiff-lzw-tiled": (".tif", tiff_bytes(np.tile(gray, (2, 2)), compression="lzw", tile=(16, 16))),
        "tiff16": (".tif", tiff_bytes(gray.astype(np.uint16) * 257)),
        "tiff-float": (".tif", tiff_bytes(gray.astype(np.float32))),
        "tiff-rgb": (".tif", tiff_bytes(rgb, photometric="rgb")),
        "tiff-stack": (".tif", tiff_stack([gray, gray[::-1]])),
        "tiff-big": (".tif", tiff_bytes(gray, bigtiff=True)),
        "tiff-palette": (".tif", tiff_bytes(gray, photometric="palette",
                                            colormap=np.tile(np.arange(256, dtype=np.uint16) * 257, (3, 1)))),
        "png": (".png", encode(gray, "png")[1]),
        "png-rgb16": (".png", encode(rgb.astype(np.uint16) * 257, "png")[1]),
        "png-palette": (".png", palette_png(gray)),
        "jpeg": (".jpg", encode(gray, "jpeg")[1]),
        "jpeg-rgb": (".jpg", encode(rgb, "jpeg")[1]),
        "bmp": (".bmp", encode(gray, "bmp")[1]),
        "bmp-rgb": (".bmp", encode(rgb, "bmp")[1]),
    }


INTERESTING_INTS = (0, 1, 7, 8, 255, 256, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)
FUZZ_MAX_PIXELS = 2_000_000
FUZZ_EXAMPLE_LIMIT_S = 20


def fuzz_worker(folder: Path, seconds: float, seed: int) -> None:
    """Hypothesis: whatever the bytes, ``read_pages`` gives fields as the module promises
    (uint8/uint16, H x W or H x W x 3, sides >= MIN_SIDE, within max_pixels) or raises
    ``ImageReadError`` with one line; never another exception, never a hang (an alarm per
    example) and never a crash (the suite sees this process die and keeps current.bin)."""
    import resource

    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st

    from phasewatch.imageio.formats import MIN_SIDE, ImageReadError, read_pages

    # Like the daemon's decoder: a decoding that wants more memory fails, it does not swap.
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    seeds = fuzz_seeds()
    current = folder / "current.bin"
    state: dict[str, Any] = {"examples": 0, "defects": [], "outcomes": Counter()}

    @st.composite
    def inputs(draw: Any) -> tuple[str, bytes]:
        suffix, data = seeds[draw(st.sampled_from(sorted(seeds)))]
        out = bytearray(data)
        if draw(st.booleans()) and draw(st.booleans()):  # a quarter: a magic and random bytes
            return suffix, out[:4] + draw(st.binary(max_size=600))
        for _ in range(draw(st.integers(1, 6))):
            op = draw(st.sampled_from(("byte", "int16", "int32", "cut", "insert", "delete")))
            at = draw(st.integers(0, max(0, len(out) - 1)))
            if op == "byte" and out:
                out[at] = draw(st.integers(0, 255))
            elif op in ("int16", "int32"):
                size = 2 if op == "int16" else 4
                value = draw(st.sampled_from(INTERESTING_INTS)) & ((1 << (8 * size)) - 1)
                out[at:at + size] = value.to_bytes(size, draw(st.sampled_from(("little", "big"))))
            elif op == "cut":
                del out[at:]
            elif op == "insert":
                out[at:at] = draw(st.binary(min_size=1, max_size=64))
            else:
                del out[at:at + draw(st.integers(1, 64))]
        return suffix, bytes(out)

    def timeout(*_: Any) -> None:
        raise TimeoutError(f"read_pages took longer than {FUZZ_EXAMPLE_LIMIT_S} s")

    signal.signal(signal.SIGALRM, timeout)

    def check(suffix: str, data: bytes) -> None:
        state["examples"] += 1
        path = folder / f"current{suffix}"
        path.write_bytes(data)
        current.write_bytes(data)
        signal.alarm(FUZZ_EXAMPLE_LIMIT_S)
        try:
            fields = read_pages(path, max_pixels=FUZZ_MAX_PIXELS)
        except ImageReadError as exc:
            state["outcomes"]["refused"] += 1
            assert str(exc) and "\n" not in str(exc), f"not one line: {str(exc)!r}"
            return
        finally:
            signal.alarm(0)
        state["outcomes"]["decoded"] += 1
        assert fields, "no field and no error"
        for f in fields:
            image = f.image
            assert image.dtype in (np.uint8, np.uint16), image.dtype
            assert image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3), image.shape
            assert min(image.shape[:2]) >= MIN_SIDE and image.shape[0] * image.shape[1] <= FUZZ_MAX_PIXELS, image.shape

    end = time.monotonic() + seconds
    batch = 0
    while time.monotonic() < end:
        batch += 1

        @hypothesis_seed(seed * 1000 + batch)
        @settings(max_examples=100, deadline=None, database=None, phases=(Phase.generate,),
                  suppress_health_check=list(HealthCheck))
        @given(inputs())
        def property_holds(example: tuple[str, bytes]) -> None:
            check(*example)

        try:
            property_holds()
        except Exception as exc:  # a falsified property: keep the input and go on
            kept = folder / f"defect-{len(state['defects']) + 1}.bin"
            shutil.copyfile(current, kept)
            state["defects"].append({"kind": type(exc).__name__, "message": str(exc).splitlines()[0][:300],
                                     "file": str(kept)})
    state["seconds"] = seconds
    state["outcomes"] = dict(state["outcomes"])
    (folder / "summary.json").write_text(json.dumps(state, indent=1))


# --- pip-audit ------------------------------------------------------------------------------------


def start_pip_audit(folder: Path) -> subprocess.Popen[bytes] | str:
    try:
        import pip_audit  # noqa: F401 - only whether it is installed
    except ImportError:
        return "skipped: pip-audit is not installed (pip install -e '.[test]')"
    folder.mkdir()
    command = [sys.executable, "-m", "pip_audit", "--progress-spinner", "off", "--skip-editable", "-f", "json",
               "-o", str(folder / "audit.json")]
    log = open(folder / "output.txt", "wb")  # noqa: SIM115 - pip-audit writes to it until it ends
    try:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    finally:
        log.close()


def finish_pip_audit(audit: subprocess.Popen[bytes] | str, folder: Path, timeout_s: float) -> dict[str, Any]:
    """pip-audit's verdict, or 'skipped: no network' when it could not reach its database."""
    if isinstance(audit, str):
        return {"summary": audit}
    try:
        audit.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        audit.kill()
        audit.wait()
        return {"summary": f"skipped: no answer from the vulnerability database within {timeout_s:.0f} s"}
    output = (folder / "output.txt").read_text(errors="replace")
    report = folder / "audit.json"
    if not report.exists():
        offline = re.search(r"ConnectionError|NameResolution|Max retries|Temporary failure|timed out", output)
        why = "no network" if offline else f"pip-audit failed (status {audit.returncode})"
        return {"summary": f"skipped: {why}", "output": output.strip().splitlines()[-1:] or ""}
    dependencies = json.loads(report.read_text()).get("dependencies", [])
    unaudited = [d for d in dependencies if "skip_reason" in d]
    audited = len(dependencies) - len(unaudited)
    vulns = {d["name"]: [v["id"] for v in d.get("vulns", [])] for d in dependencies if d.get("vulns")}
    if audited == 0:
        reason = unaudited[0]["skip_reason"].split(":")[0] if unaudited else "nothing installed"
        return {"summary": f"skipped: no network to the vulnerability database (0 of {len(dependencies)} "
                           f"packages could be audited: {reason})"}
    return {"summary": f"{sum(len(v) for v in vulns.values())} known vulnerabilities in {audited} packages audited"
                       f" ({len(unaudited)} not found on the index)", "vulnerabilities": vulns}


# --- the table ----------------------------------------------------------------------------------


def table_rows(report: Report) -> list[tuple[str, str]]:
    soak = report.soak
    growth = (f"{soak['rss_growth_mib']:+.1f} MiB ({soak['rss_mib_start']} -> {soak['rss_mib_end']} MiB, "
              f"decoder {soak['decoder_rss_growth_mib']:+.1f} MiB) over {soak['seconds']:.0f} s, "
              f"{soak['files_fed']} files" if "rss_growth_mib" in soak else soak.get("note", "skipped"))
    fds = (f"{soak['fd_growth']:+d} (ends at {soak['fds_end']}); threads {soak['thread_growth']:+d}"
           if "fd_growth" in soak else soak.get("note", "skipped"))
    rows = [
        ("inputs tried", str(report.inputs_tried)),
        ("lost", str(report.lost)),
        ("duplicated", str(report.duplicated)),
        ("good files failed", str(report.good_failed)),
        ("threads died", str(report.threads_died)),
        ("restarts needed", str(report.restarts_needed)),
        ("RSS growth over the soak", growth),
        ("fd growth over the soak", fds),
        ("not finished at a deadline", str(report.not_finished)),
        ("failed without a one-line reason", str(report.reasons_not_one_line)),
        ("faults not recovered by themselves", str(report.faults_not_recovered)),
        ("unexpected outcomes (vs. the corpus's expectations)", str(report.unexpected_outcomes)),
        ("ignored without a log line", str(report.ignored_without_log_line)),
        ("rows for content never complete (not closed or settled)", str(report.spurious_rows)),
        ("stages stuck (/healthz)", str(report.stages_stuck)),
        ("'unexpected error' log lines", str(report.unexpected_errors_logged)),
        ("decoder processes outliving a kill", str(report.stray_decoders)),
        ("shell metacharacters executed", str(report.shell_injection)),
        ("tracebacks in the service's log", str(report.tracebacks_logged)),
        ("kill -9", f"{report.kills} ({report.kills_during_start} before 'serving', {report.kills_with_work} "
                    "with files queued or in work)"),
        (f"wedges (a good file done more than {WEDGE_S:.0f} s after it arrived)", wedges_text(report.wedges,
                                                                                              report.waits)),
        ("service deaths caused by a file (it exited by itself)", str(report.service_deaths)),
        ("peak service memory", f"{report.peak_service_mib:.0f} MiB RSS (VmHWM of the service process, sampled "
                                f"every 0.5 s; first reached during {report.peak_phase or '-'}); decoder children "
                                f"{report.decoder_peak_mib:.0f} MiB"),
        ("memory-capped run", memory_cap_text(report.memory_cap)),
    ]
    rows += [(f"fault: {name}", verdict) for name, verdict in report.faults.items()]
    rows += [
        ("API fuzz (schemathesis)", report.api_fuzz.get("summary", "skipped")),
        ("image reader fuzz (hypothesis)", report.image_fuzz.get("summary", "skipped")),
        ("dependencies (pip-audit)", report.pip_audit.get("summary", "skipped")),
        ("stop at the end", report.stop),
    ]
    return rows


def wedges_text(wedges: int, waits: dict[str, Any]) -> str:
    if not waits:
        return f"{wedges}"
    return (f"{wedges} ({waits['good_files']} good files outside the suite's kills and faults, longest wait "
            f"{waits['longest_s']:.1f} s ({waits['longest']!r}); {waits['held_files']} fed during kills and "
            f"faults, longest {waits['held_longest_s']:.1f} s)")


def memory_cap_text(cap: dict[str, Any]) -> str:
    if not cap:
        return "skipped"
    reasons = "; ".join(f"{n} x '{r}'" for r, n in cap["reasons"].items())
    return (f"{cap['method']}, {cap['cap_mib']} MiB, decoder budget {cap['decode_memory_mb']} MiB: "
            f"{cap['bombs_failed']} of {cap['bombs']} bombs failed ({reasons}); {cap['good_done']} of "
            f"{cap['good_files']} good files behind them done; service deaths {cap['service_deaths']}, "
            f"OOM kills in the cgroup {cap['oom_kills']}; longest wait of a good file {cap['longest_good_wait_s']} s; "
            f"peak service RSS {cap['peak_service_mib']:.0f} MiB, decoder {cap['decoder_peak_mib']:.0f} MiB; "
            f"stop: exit {cap['stop']}")


def markdown(report: Report) -> str:
    lines = [f"Profile `{report.profile}`, seed {report.seed}, model `{report.model}`, good files: "
             f"{report.good_source}; {report.seconds:.0f} s.", "", "| measure | result |", "|---|---|"]
    lines += [f"| {name} | {value.replace('|', '/')} |" for name, value in table_rows(report)]
    return "\n".join(lines) + "\n"


def print_table(report: Report) -> None:
    rows = table_rows(report)
    width = max(len(name) for name, _ in rows)
    print()
    print(f"phasewatch reliability suite ({report.profile}, seed {report.seed}, {report.seconds:.0f} s)")
    print("-" * (width + 60))
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print("-" * (width + 60))
    print("outcomes by group: " + "; ".join(f"{g}: {dict(c)}" for g, c in report.outcomes.items()))
    for extra in (report.api_fuzz.get("failures"), report.image_fuzz.get("defects")):
        if extra:
            print(f"  {extra}")
    for line in report.details[:40]:
        print(f"  ! {line}")
    if len(report.details) > 40:
        print(f"  ! ... {len(report.details) - 40} more in the JSON")


def must_be_zero(report: Report) -> dict[str, int]:
    return {name: getattr(report, name) for name in MUST_BE_ZERO}


# --- main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--short", action="store_true", help="the CI variant (about a minute on 2 cores)")
    length.add_argument("--long", action="store_true", help="many more kills, a 15-minute soak, longer fuzzing")
    parser.add_argument("--seed", type=int, default=9, help="for the corpus, the kill moments and the fuzzers")
    parser.add_argument("--workdir", type=Path, help="an empty or new folder (default: a new one under $TMPDIR)")
    parser.add_argument("--skip", action="append", default=[], choices=PHASES, metavar="PHASE",
                        help=f"leave a phase out (repeatable): {', '.join(PHASES)}")
    parser.add_argument("--model", default="superalloy", help="bundled model name or bundle folder")
    parser.add_argument("--memory-cap", choices=("auto", "cgroup", "prlimit"), default="auto",
                        help="how the memory-capped run caps the service (auto: a cgroup where one can be made, "
                             "else prlimit --as)")
    parser.add_argument("--fuzz-imageio-worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=10.0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def make_workdir(requested: Path | None) -> Path:
    if requested is None:
        return Path(tempfile.mkdtemp(prefix="phasewatch-reliability-")).resolve()
    requested = requested.resolve()
    if requested.exists() and any(requested.iterdir()):
        raise SystemExit(f"{requested}: not empty; give an empty or new folder")
    requested.mkdir(parents=True, exist_ok=True)
    return requested


def run_suite(suite: Suite) -> None:
    profile, skip, workdir = suite.profile, suite.skip, suite.workdir
    audit = start_pip_audit(workdir / "pip-audit") if "pip-audit" not in skip else "skipped: --skip pip-audit"
    if not {"disk-full", "read-only"} <= skip:
        suite.mount_results_tmpfs()
    else:
        suite.results_mount = "not mounted: --skip"
    suite.start_service("the first start")
    suite.monitor.start()
    say(f"service up on port {suite.service.port}; work folder {workdir}")

    def phase(name: str) -> bool:
        """Whether to run ``name``; the peak memory sampled from now on is said to be its."""
        suite.monitor.phase = name
        return name not in skip

    if phase("corpus"):
        suite.phase_corpus()
    if phase("kills"):
        suite.phase_kills()
    if phase("disk-full"):
        suite.fault_disk_full()
    if phase("read-only"):
        suite.fault_read_only()
    fuzz: subprocess.Popen[bytes] | str = "skipped: --skip image-fuzz"

    def start_fuzz() -> None:  # while the database is held the service idles: the core is free
        nonlocal fuzz
        if "image-fuzz" not in skip:
            fuzz = start_image_fuzz(workdir / "image-fuzz", profile.image_fuzz_s, suite.rng.randrange(2**31))

    if phase("db-lock"):
        suite.fault_db_lock(during=start_fuzz)
    else:
        start_fuzz()
    suite.report.image_fuzz = finish_image_fuzz(fuzz, workdir / "image-fuzz", profile.image_fuzz_s)
    say(f"image-fuzz: {suite.report.image_fuzz['summary']}")
    if phase("watch-folder"):
        suite.fault_watch_folder()
    if phase("soak"):
        suite.phase_soak()
    if phase("api-fuzz"):
        suite.phase_api_fuzz()
    phase("the end")
    suite.finish()
    if "memory-cap" not in skip:
        suite.phase_memory_cap(suite.memory_cap)
    suite.report.pip_audit = finish_pip_audit(audit, workdir / "pip-audit", profile.pip_audit_timeout_s)


def write_results(report: Report, workdir: Path) -> tuple[Path, Path]:
    as_json, as_markdown = workdir / "reliability.json", workdir / "reliability.md"
    as_json.write_text(json.dumps({**asdict(report), "must_be_zero": must_be_zero(report)}, indent=1,
                                  ensure_ascii=False))
    as_markdown.write_text(markdown(report))
    return as_json, as_markdown


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A stop from a CI runner or a terminal still unmounts the tmpfs and ends the service.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.fuzz_imageio_worker is not None:
        fuzz_worker(args.fuzz_imageio_worker, args.seconds, args.seed)
        return 0
    workdir = make_workdir(args.workdir)
    suite = Suite(args, workdir)
    say(f"profile {suite.profile.name}, seed {args.seed}, model {args.model}, good files: {suite.report.good_source}")
    try:
        run_suite(suite)
    finally:
        suite.monitor.stop.set()
        suite.service.kill()
        suite.unmount_results_tmpfs()
        suite.report.seconds = time.monotonic() - _STARTED
    print_table(suite.report)
    as_json, as_markdown = write_results(suite.report, workdir)
    print(f"\nresults: {as_json}\n         {as_markdown}\nlogs:    {suite.service.logs}")
    nonzero = {k: v for k, v in must_be_zero(suite.report).items() if v}
    if nonzero:
        print(f"NOT ZERO: {nonzero}")
    return 1 if nonzero else 0


if __name__ == "__main__":
    sys.exit(main())
