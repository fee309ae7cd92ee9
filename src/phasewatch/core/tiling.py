"""Sliding-window inference: tiles planned per image (or fixed), mirror padding at the
image border, a Gaussian window on the logits, stitching band by band into a uint8 class
map and a uint8 map of the model's confidence.

Planned tiles (:class:`Plan`, for a model that runs at any multiple of its stride): the
whole image in one pass when it fits the memory budget, else the largest tiles that fit,
overlapping by twice the halo, trimmed only where they meet (:class:`Geometry`). The
network then computes each pixel about once: the cost of a field is one pass over its
own pixels, where fixed 256-px tiles with a 60-80 px halo computed most pixels 4-6 times.

Fixed tiles, along each axis: tiles of ``tile`` pixels advance by ``tile - overlap``; the
first starts ``overlap // 2`` pixels before the image (mirror padding), the last is
pulled back to end ``overlap // 2`` past it (or at ``tile``, for images smaller than a
tile).

Window: a Gaussian (sigma = tile / 8) with the outer ``halo`` pixels of every tile set
to zero (``halo`` argument; 0, a plain Gaussian as in MONAI, by default). A plain
Gaussian still gives the zero-padded, context-starved tile edge a few percent of the
weight where two tiles meet (measured: ~0.3 % of pixels flipped for a net with halo 6
on 64-pixel tiles); trimming the halo removes that, and with ``overlap >= 2 * halo``
every pixel still lies in some tile with its full context, so the tiled result equals
a whole-image pass up to float rounding. :func:`default_overlap` picks such an overlap.

Memory: tiles are produced row band by row band. A band's logits accumulator covers the
``tile`` rows that band touches across the (padded) width; once a band's last tile is in,
the rows no later band touches are reduced to classes and dropped. Peak memory is a few
``K x tile x width`` float32 buffers plus the uint8 outputs, whatever the image height.

Confidence: per pixel, the softmax margin between the two most probable classes of the
window-weighted mean logits, 0..255 for 0..1 (:class:`ClassMap`). A margin near 0 is
a pixel the model could as well have given another class; the trust record
(``src/phasewatch/core/trust.py``) and the overlay's "unsure" view read it.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np

from phasewatch.backends.base import Backend, fused_head

STAGES = ("prepare_ms", "infer_ms", "stitch_ms")


class ClassMap(NamedTuple):
    """What the sliding window makes of one image: class ids and softmax margins (0..255)."""

    classes: np.ndarray  # uint8 H x W
    margin: np.ndarray  # uint8 H x W, 255 * (p_best - p_second)


class ModelInput(Protocol):
    """A normalised image the sliding window can read crops of (see ``normalise.prepare``)."""

    @property
    def height(self) -> int: ...

    @property
    def width(self) -> int: ...

    @property
    def channels(self) -> int: ...

    def region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """float32 C x (y1 - y0) x (x1 - x0) for in-bounds coordinates."""
        ...


def default_overlap(tile: int, halo: int) -> int:
    """2 * halo (see the module docstring), at least tile / 4 so that the Gaussian has
    room to blend neighbours; even, so that the border margin is exactly half of it."""
    overlap = max(2 * halo, tile // 4)
    overlap += overlap % 2
    if overlap >= tile:
        raise ValueError(f"tile {tile} is too small for halo {halo} (needs tile > {overlap})")
    return overlap


class Geometry(NamedTuple):
    """How one image is cut: tile height and width, and the overlap of neighbouring tiles
    along each axis (0 where one tile spans the axis).

    ``multiple`` 0 (fixed tiles): tiles reach ``overlap / 2`` past every border into the
    mirrored image, so that the trimmed tile edges fall outside it. ``multiple`` > 0
    (planned tiles): the image is extended by mirroring at its far ends to a multiple of
    this, tiles stay within that extent and are not trimmed at its borders, so the result
    equals one pass of the network over the extended image, however it is cut.
    """

    tile_h: int
    tile_w: int
    overlap_h: int
    overlap_w: int
    multiple: int = 0

    @property
    def one_pass(self) -> bool:
        """A planned image run as one tile: no overlap, so no blending of logits, and a head
        in the graph (``backends.base.fused_head``) gives the same maps as stitching."""
        return bool(self.multiple) and self.overlap_h == 0 and self.overlap_w == 0


BAND_FACTOR = 4  # a band holds at most this many memory budgets of pixels (Plan.geometry)


@dataclass(frozen=True)
class Plan:
    """Tiles chosen per image, for a model that runs at any size that is a multiple of
    ``multiple`` (its total stride): the whole image when it fits ``max_pixels`` (the
    pixels one backend call may hold: the memory budget), else the largest tiles that
    fit, overlapping by twice the ``halo``. A tile's cost grows with its area, the halo's
    share of it with its perimeter, so few large tiles waste least. ``max_side`` (0: none)
    caps a tile's height and width, for a backend built for sizes up to it (a TensorRT
    engine's profile). ``call_pixels`` (0: none) caps a batch's pixels further, for a backend
    that runs fastest on few tiles at a time (a CPU: :func:`backends.call_pixels`)."""

    multiple: int
    max_pixels: int
    halo: int
    max_side: int = 0
    call_pixels: int = 0

    def geometry(self, height: int, width: int) -> Geometry:
        whole_h, whole_w, m = self._up(height), self._up(width), self.multiple
        cap = self._down(self.max_side) if self.max_side else max(whole_h, whole_w)
        if whole_h * whole_w <= self.max_pixels and max(whole_h, whole_w) <= cap:
            return Geometry(whole_h, whole_w, 0, 0, m)
        # The stitcher holds a band of tile_h rows across the whole width (logits, weights
        # and input: about (classes + 2) x 4 bytes a pixel), so on a very wide image the
        # band, not the tile, bounds the rows.
        # (but never so few that the overlap would eat most of each band)
        band_rows = max(self._down(BAND_FACTOR * self.max_pixels // whole_w),
                        self._down(4 * max(2 * self.halo, self.multiple)))
        side = min(self._down(math.isqrt(self.max_pixels)), cap)
        tile_h = min(whole_h, band_rows, cap, self._down(self.max_pixels // min(whole_w, side)))
        tile_w = min(whole_w, cap, self._down(self.max_pixels // tile_h))
        return Geometry(tile_h, tile_w, self._overlap(tile_h) if tile_h < whole_h else 0,
                        self._overlap(tile_w) if tile_w < whole_w else 0, m)

    def batch(self, geometry: Geometry, backend_batch: int) -> int:
        """Tiles of this geometry per backend call within the budget (at least one)."""
        budget = min(self.max_pixels, self.call_pixels) if self.call_pixels else self.max_pixels
        return max(1, min(backend_batch, budget // (geometry.tile_h * geometry.tile_w)))

    def _up(self, n: int) -> int:
        return -(-n // self.multiple) * self.multiple

    def _down(self, n: int) -> int:
        return max(self.multiple, n // self.multiple * self.multiple)

    def _overlap(self, tile: int) -> int:
        overlap = max(2 * self.halo, self.multiple)
        if overlap >= tile:
            raise ValueError(f"a memory budget of {self.max_pixels} pixels gives {tile}-pixel tiles, too small "
                             f"for the model's halo {self.halo}")
        return overlap


def gaussian_window(tile: int, trim: int = 0) -> np.ndarray:
    """tile x tile importance weights, sigma = tile / 8 (MONAI's 'gaussian', sigma_scale
    0.125), zero within ``trim`` pixels of the edge; read-only as it is shared."""
    return window_for(tile, tile, (trim, trim, trim, trim))


@functools.lru_cache(maxsize=64)
def window_for(tile_h: int, tile_w: int, trims: tuple[int, int, int, int]) -> np.ndarray:
    """tile_h x tile_w Gaussian weights (sigma = a side / 8), zero within (top, bottom,
    left, right) ``trims`` pixels of each edge; read-only as it is shared."""
    top, bottom, left, right = trims
    window = np.outer(_profile(tile_h, top, bottom), _profile(tile_w, left, right)).astype(np.float32)
    window.flags.writeable = False
    return window


def _profile(length: int, start: int, end: int) -> np.ndarray:
    offsets = np.arange(length, dtype=np.float64) - (length - 1) / 2
    profile = np.exp(-0.5 * (offsets / (length / 8)) ** 2)
    profile[:start] = 0
    profile[length - end :] = 0
    return profile


def tile_starts(length: int, tile: int, overlap: int, margin: int | None = None) -> np.ndarray:
    """Tile origins along one axis in image coordinates (negative = in the mirror margin,
    ``overlap // 2`` unless given)."""
    margin = overlap // 2 if margin is None else margin
    span = max(length + 2 * margin, tile)
    stride = tile - overlap
    count = -(-(span - tile) // stride) + 1
    return np.minimum(np.arange(count) * stride, span - tile) - margin


def mirror_indices(start: int, stop: int, length: int) -> np.ndarray:
    """Source index of each coordinate in [start, stop) under mirror padding (reflect
    without repeating the edge, like np.pad 'reflect'), however far outside the axis."""
    coords = np.arange(start, stop)
    if length == 1:
        return np.zeros_like(coords)
    period = 2 * (length - 1)
    coords = np.mod(coords, period)
    return np.where(coords < length, coords, period - coords)


class _Job:
    """One image in flight: its tile grid, its current band's accumulator, its output."""

    def __init__(self, inp: ModelInput, geometry: Geometry, halo: int) -> None:
        if inp.height < 1 or inp.width < 1:
            raise ValueError(f"cannot segment an empty image ({inp.height} x {inp.width})")
        self.inp = inp
        self.geometry = geometry
        self.tile_h, self.tile_w = geometry.tile_h, geometry.tile_w
        self.trim_h, self.trim_w = min(halo, geometry.overlap_h // 2), min(halo, geometry.overlap_w // 2)
        if geometry.multiple:
            extent = [-(-n // geometry.multiple) * geometry.multiple for n in (inp.height, inp.width)]
            self.rows = tile_starts(extent[0], geometry.tile_h, geometry.overlap_h, margin=0)
            self.cols = tile_starts(extent[1], geometry.tile_w, geometry.overlap_w, margin=0)
        else:
            self.rows = tile_starts(inp.height, geometry.tile_h, geometry.overlap_h)
            self.cols = tile_starts(inp.width, geometry.tile_w, geometry.overlap_w)
        self.col_map = mirror_indices(int(self.cols[0]), int(self.cols[-1]) + geometry.tile_w, inp.width)
        # the bands span the image's own columns, none reflected (a width that is a multiple of
        # the stride): a band is the region itself, not a copy
        self.cols_in_place = np.array_equal(self.col_map, np.arange(inp.width))
        self.classes = np.empty((inp.height, inp.width), np.uint8)
        self.margin = np.empty((inp.height, inp.width), np.uint8)
        # made by the first tile's logits: K x tile height x padded width, and the window sum per
        # pixel (never, for an image run in one pass through a head in the graph)
        self.acc: np.ndarray | None = None
        self.weight: np.ndarray | None = None

    def band(self, index: int) -> np.ndarray:
        """C x tile height x padded-width input of band ``index``, mirror padded on all sides."""
        y0 = int(self.rows[index])
        row_map = mirror_indices(y0, y0 + self.tile_h, self.inp.height)
        lo, hi = int(row_map.min()), int(row_map.max()) + 1
        pixels = self.inp.region(lo, hi, 0, self.inp.width)
        if hi - lo != self.tile_h:  # only border bands need rows reflected
            pixels = pixels[:, row_map - lo]
        if self.cols_in_place:
            return pixels
        return np.take(pixels, self.col_map, axis=2)

    def window(self, row: int, col: int) -> np.ndarray:
        """The tile's weights: trimmed by the halo at every edge (fixed tiles, whose outer
        edges lie in the mirror margin), or at the edges it shares with another tile."""
        planned = bool(self.geometry.multiple)
        top = 0 if planned and row == 0 else self.trim_h
        bottom = 0 if planned and row + 1 == len(self.rows) else self.trim_h
        left = 0 if planned and col == 0 else self.trim_w
        right = 0 if planned and col + 1 == len(self.cols) else self.trim_w
        return window_for(self.tile_h, self.tile_w, (top, bottom, left, right))

    def add(self, row: int, col: int, logits: np.ndarray, scratch: np.ndarray) -> None:
        window = self.window(row, col)
        if self.acc is None or self.weight is None:
            self.acc = np.zeros((len(logits), self.tile_h, len(self.col_map)), np.float32)
            self.weight = np.zeros((self.tile_h, len(self.col_map)), np.float32)
        x = int(self.cols[col] - self.cols[0])
        np.multiply(logits, window, out=scratch)
        target = self.acc[:, :, x : x + self.tile_w]
        np.add(target, scratch, out=target)
        weight = self.weight[:, x : x + self.tile_w]
        np.add(weight, window, out=weight)

    def finish_band(self, index: int) -> None:
        """Reduce the rows no later band touches to classes; shift the rest up."""
        assert self.acc is not None and self.weight is not None
        y0 = int(self.rows[index])
        last = index + 1 == len(self.rows)
        done = self.tile_h if last else int(self.rows[index + 1]) - y0
        top, bottom = max(y0, 0), min(y0 + done, self.inp.height)
        if bottom > top:
            x0 = int(-self.cols[0])
            # The accumulated weights are positive and the same for every class of a
            # pixel, so dividing by them cannot change the argmax: only the margin needs it.
            logits = self.acc[:, top - y0 : bottom - y0, x0 : x0 + self.inp.width]
            self.classes[top:bottom] = argmax_classes(logits)
            weight = self.weight[top - y0 : bottom - y0, x0 : x0 + self.inp.width]
            self.margin[top:bottom] = softmax_margin(logits, weight)
        if last:
            self.acc = self.weight = None
            return
        self.acc[:, : self.tile_h - done] = self.acc[:, done:]
        self.acc[:, self.tile_h - done :] = 0
        self.weight[: self.tile_h - done] = self.weight[done:]
        self.weight[self.tile_h - done :] = 0


def argmax_classes(logits: np.ndarray) -> np.ndarray:
    """K x h x w -> uint8 h x w; first maximum wins, like np.argmax."""
    if len(logits) > 256:
        raise ValueError(f"{len(logits)} classes do not fit a uint8 class map")
    # Per-class comparisons on contiguous planes beat np.argmax over the outer axis.
    best = logits[0].copy()
    classes = np.zeros(best.shape, np.uint8)
    for k in range(1, len(logits)):
        better = logits[k] > best
        classes[better] = k
        np.maximum(best, logits[k], out=best)
    return classes


def softmax_margin(weighted_logits: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """uint8 h x w: 255 x (p_best - p_second) of softmax(weighted_logits / weight).

    Works plane by plane (a few h x w buffers, never another K x h x w copy), so the
    stitcher's memory stays a band's worth.
    """
    if len(weighted_logits) < 2:
        return np.full(weight.shape, 255, np.uint8)
    scale = 1.0 / np.maximum(weight, np.float32(1e-12))
    best = np.full(weight.shape, -np.inf, np.float32)
    second = best.copy()
    plane = np.empty(weight.shape, np.float32)
    for k in range(len(weighted_logits)):
        np.multiply(weighted_logits[k], scale, out=plane)
        np.maximum(second, np.minimum(best, plane), out=second)
        np.maximum(best, plane, out=best)
    total = np.zeros(weight.shape, np.float32)
    for k in range(len(weighted_logits)):
        np.multiply(weighted_logits[k], scale, out=plane)
        plane -= best
        np.exp(plane, out=plane)
        total += plane
    np.subtract(second, best, out=second)
    np.exp(second, out=second)
    margin = (1.0 - second) / total
    return np.round(margin * 255).astype(np.uint8)


def _tiles(inputs: Iterable[ModelInput], geometry_of: Callable[[ModelInput], Geometry],
           halo: int) -> Iterator[tuple]:
    """(job, band index, column index, C x tile height x tile width view) for every tile, in order."""
    for inp in inputs:
        job = _Job(inp, geometry_of(inp), halo)
        for r in range(len(job.rows)):
            band = job.band(r)
            for c in range(len(job.cols)):
                x = int(job.cols[c] - job.cols[0])
                yield job, r, c, band[:, :, x : x + job.tile_w]


def _infer_and_stitch(
    batch: np.ndarray,
    slots: list[tuple[_Job, int, int]],
    backend: Backend,
    stats: dict[str, float],
) -> list[ClassMap]:
    """Run one batch (tiles of one geometry) and stitch its tiles; return the images it completed."""
    head = fused_head(backend)
    if head is not None and slots[0][0].geometry.one_pass:
        return _infer_one_pass(batch, [job for job, _, _ in slots], head, stats)
    start = time.perf_counter()
    logits = backend.run(batch)
    stitched = time.perf_counter()
    stats["infer_ms"] += (stitched - start) * 1000
    if logits.ndim != 4 or logits.shape[0] != len(batch) or logits.shape[2:] != batch.shape[2:]:
        raise ValueError(
            f"backend {backend.name} returned logits of shape {logits.shape} for a batch of "
            f"shape {batch.shape} (expected N x K x H x W)"
        )
    scratch = np.empty(logits.shape[1:], np.float32)
    finished = []
    for (job, r, c), tile_logits in zip(slots, logits, strict=True):
        job.add(r, c, tile_logits, scratch)
        if c + 1 == len(job.cols):
            job.finish_band(r)
            if r + 1 == len(job.rows):
                finished.append(ClassMap(job.classes, job.margin))
    stats["stitch_ms"] += (time.perf_counter() - stitched) * 1000
    return finished


def _infer_one_pass(batch: np.ndarray, jobs: list[_Job], head: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
                    stats: dict[str, float]) -> list[ClassMap]:
    """Each image of ``jobs`` in one pass of a model whose graph ends in the argmax and the margin:
    its maps are the runtime's, cut to the image (the extension to the stride dropped)."""
    start = time.perf_counter()
    classes, margin = head(batch)
    stitched = time.perf_counter()
    stats["infer_ms"] += (stitched - start) * 1000
    if classes.shape != (len(batch), *batch.shape[2:]) or margin.shape != classes.shape:
        raise ValueError(f"the head model returned maps of shapes {classes.shape} and {margin.shape} for a batch "
                         f"of shape {batch.shape} (expected N x H x W)")
    finished = []
    for job, job_classes, job_margin in zip(jobs, classes, margin, strict=True):
        h, w = job.classes.shape
        job.classes[:], job.margin[:] = job_classes[:h, :w], job_margin[:h, :w]
        finished.append(ClassMap(job.classes, job.margin))
    stats["stitch_ms"] += (time.perf_counter() - stitched) * 1000
    return finished


def segment_many(
    inputs: Iterable[ModelInput],
    backend: Backend,
    tile: int,
    overlap: int | None = None,
    batch: int | None = None,
    timings: dict[str, float] | None = None,
    halo: int = 0,
    plan: Plan | None = None,
) -> Iterator[ClassMap]:
    """Yield a :class:`ClassMap` per input, in input order.

    A batch is filled with the next image's tiles when the current image runs out, so
    the next input is pulled from ``inputs`` before the current map is yielded: pass an
    iterable of images that are ready now. Without a ``plan``, every image is cut into
    ``tile`` x ``tile`` tiles (a backend that runs one input size); ``overlap`` defaults
    to tile / 4; pass :func:`default_overlap` of the model's ``halo``, the tile-edge strip
    whose logits are discarded (at most overlap / 2 of it, so that every pixel keeps some
    weight). With a ``plan``, each image gets its own geometry (:class:`Plan`), and a
    batch holds tiles of one geometry, as many as the plan's budget allows.
    ``batch`` defaults to the backend's ``max_batch``. ``timings`` (if given)
    accumulates milliseconds per stage (STAGES).
    """
    overlap = tile // 4 if overlap is None else int(overlap)
    if plan is None and not 0 <= overlap < tile:
        raise ValueError(f"overlap {overlap} must be in [0, tile {tile})")
    size = int(batch or backend.max_batch)
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    stats = timings if timings is not None else {}
    for key in STAGES:
        stats.setdefault(key, 0.0)
    if halo < 0:
        raise ValueError(f"halo must be >= 0, got {halo}")
    fixed = Geometry(tile, tile, overlap, overlap)

    def geometry_of(inp: ModelInput) -> Geometry:
        return fixed if plan is None else plan.geometry(inp.height, inp.width)

    buffer: np.ndarray | None = None
    slots: list[tuple[_Job, int, int]] = []
    capacity = size
    start = time.perf_counter()
    for job, r, c, pixels in _tiles(inputs, geometry_of, halo):
        if slots and slots[0][0].geometry[:2] != job.geometry[:2]:  # a batch holds one tile size
            yield from _flush(buffer, slots, backend, stats, start)
            slots, start = [], time.perf_counter()
        if not slots:
            capacity = size if plan is None else plan.batch(job.geometry, size)
            if capacity == 1 and pixels.flags.c_contiguous:  # a call of one whole band: it is the batch
                yield from _flush(pixels[None], [(job, r, c)], backend, stats, start)
                start = time.perf_counter()
                continue
            if buffer is None or buffer.shape[1:] != pixels.shape or len(buffer) < capacity:
                buffer = np.empty((capacity, *pixels.shape), np.float32)
        assert buffer is not None
        buffer[len(slots)] = pixels
        slots.append((job, r, c))
        if len(slots) == capacity:
            yield from _flush(buffer, slots, backend, stats, start)
            slots, start = [], time.perf_counter()
    if slots:
        yield from _flush(buffer, slots, backend, stats, start)


def _flush(buffer: np.ndarray | None, slots: list[tuple[_Job, int, int]], backend: Backend,
           stats: dict[str, float], start: float) -> list[ClassMap]:
    """Infer and stitch the first ``len(slots)`` tiles of ``buffer`` (all of one size)."""
    assert buffer is not None
    stats["prepare_ms"] += (time.perf_counter() - start) * 1000
    return _infer_and_stitch(buffer[: len(slots)], slots, backend, stats)


def segment(
    inp: ModelInput,
    backend: Backend,
    tile: int,
    overlap: int | None = None,
    batch: int | None = None,
    timings: dict[str, float] | None = None,
    halo: int = 0,
    plan: Plan | None = None,
) -> ClassMap:
    """Classes and margins of one image (see :func:`segment_many`)."""
    return next(segment_many([inp], backend, tile, overlap, batch, timings, halo, plan))
