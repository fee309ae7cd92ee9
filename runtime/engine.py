"""Sliding-window inference: fixed tiles, mirror padding at the image border, a Gaussian
window on the logits, stitching band by band into a uint8 class map and a uint8 map of
the model's confidence.

Geometry along each axis: tiles of ``tile`` pixels advance by ``tile - overlap``; the
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
window-weighted mean logits, 0..255 for 0..1 (:class:`Segmentation`). A margin near 0 is
a pixel the model could as well have given another class; the trust record
(``runtime/trust.py``) and the overlay's "unsure" view read it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Iterator
from typing import NamedTuple, Protocol

import numpy as np

from phasewatch.runtime.backends import Backend

STAGES = ("prepare_ms", "infer_ms", "stitch_ms")


class Segmentation(NamedTuple):
    """What the engine makes of one image: class ids and softmax margins (0..255)."""

    classes: np.ndarray  # uint8 H x W
    margin: np.ndarray  # uint8 H x W, 255 * (p_best - p_second)


class ModelInput(Protocol):
    """A normalised image the engine can read crops of (see ``normalise.prepare``)."""

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


@functools.lru_cache(maxsize=8)
def gaussian_window(tile: int, trim: int = 0) -> np.ndarray:
    """tile x tile importance weights, sigma = tile / 8 (MONAI's 'gaussian', sigma_scale
    0.125), zero within ``trim`` pixels of the edge; read-only as it is shared."""
    offsets = np.arange(tile, dtype=np.float64) - (tile - 1) / 2
    profile = np.exp(-0.5 * (offsets / (tile / 8)) ** 2)
    profile[:trim] = 0
    profile[tile - trim :] = 0
    window = np.outer(profile, profile).astype(np.float32)
    window.flags.writeable = False
    return window


def tile_starts(length: int, tile: int, overlap: int) -> np.ndarray:
    """Tile origins along one axis in image coordinates (negative = in the mirror margin)."""
    margin = overlap // 2
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

    def __init__(self, inp: ModelInput, tile: int, overlap: int) -> None:
        if inp.height < 1 or inp.width < 1:
            raise ValueError(f"cannot segment an empty image ({inp.height} x {inp.width})")
        self.inp = inp
        self.tile = tile
        self.rows = tile_starts(inp.height, tile, overlap)
        self.cols = tile_starts(inp.width, tile, overlap)
        self.col_map = mirror_indices(int(self.cols[0]), int(self.cols[-1]) + tile, inp.width)
        self.classes = np.empty((inp.height, inp.width), np.uint8)
        self.margin = np.empty((inp.height, inp.width), np.uint8)
        self.acc: np.ndarray | None = None  # K x tile x padded width, made once K is known
        self.weight = np.zeros((tile, len(self.col_map)), np.float32)  # window sum per pixel

    def band(self, index: int) -> np.ndarray:
        """C x tile x padded-width input of band ``index``, mirror padded on all sides."""
        y0 = int(self.rows[index])
        row_map = mirror_indices(y0, y0 + self.tile, self.inp.height)
        lo, hi = int(row_map.min()), int(row_map.max()) + 1
        pixels = self.inp.region(lo, hi, 0, self.inp.width)
        if hi - lo != self.tile:  # only border bands need rows reflected
            pixels = pixels[:, row_map - lo]
        return np.take(pixels, self.col_map, axis=2)

    def add(self, col: int, logits: np.ndarray, window: np.ndarray, scratch: np.ndarray) -> None:
        if self.acc is None:
            self.acc = np.zeros((len(logits), self.tile, len(self.col_map)), np.float32)
        x = int(self.cols[col] - self.cols[0])
        np.multiply(logits, window, out=scratch)
        target = self.acc[:, :, x : x + self.tile]
        np.add(target, scratch, out=target)
        weight = self.weight[:, x : x + self.tile]
        np.add(weight, window, out=weight)

    def finish_band(self, index: int) -> None:
        """Reduce the rows no later band touches to classes; shift the rest up."""
        assert self.acc is not None
        y0 = int(self.rows[index])
        last = index + 1 == len(self.rows)
        done = self.tile if last else int(self.rows[index + 1]) - y0
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
            self.acc = None
            return
        self.acc[:, : self.tile - done] = self.acc[:, done:]
        self.acc[:, self.tile - done :] = 0
        self.weight[: self.tile - done] = self.weight[done:]
        self.weight[self.tile - done :] = 0


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


def _tiles(inputs: Iterable[ModelInput], tile: int, overlap: int) -> Iterator[tuple]:
    """(job, band index, column index, C x tile x tile view) for every tile, in order."""
    for inp in inputs:
        job = _Job(inp, tile, overlap)
        for r in range(len(job.rows)):
            band = job.band(r)
            for c in range(len(job.cols)):
                x = int(job.cols[c] - job.cols[0])
                yield job, r, c, band[:, :, x : x + tile]


def _infer_and_stitch(
    batch: np.ndarray,
    slots: list[tuple[_Job, int, int]],
    backend: Backend,
    window: np.ndarray,
    stats: dict[str, float],
) -> list[Segmentation]:
    """Run one batch and stitch its tiles; return the images it completed."""
    start = time.perf_counter()
    logits = backend.run(batch)
    stitched = time.perf_counter()
    stats["infer_ms"] += (stitched - start) * 1000
    if logits.ndim != 4 or logits.shape[0] != len(batch) or logits.shape[2:] != batch.shape[2:]:
        raise ValueError(
            f"backend {backend.name} returned logits of shape {logits.shape} for a batch of "
            f"shape {batch.shape} (expected N x K x T x T)"
        )
    scratch = np.empty(logits.shape[1:], np.float32)
    finished = []
    for (job, r, c), tile_logits in zip(slots, logits, strict=True):
        job.add(c, tile_logits, window, scratch)
        if c + 1 == len(job.cols):
            job.finish_band(r)
            if r + 1 == len(job.rows):
                finished.append(Segmentation(job.classes, job.margin))
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
) -> Iterator[Segmentation]:
    """Yield a :class:`Segmentation` per input, in input order.

    A batch is filled with the next image's tiles when the current image runs out, so
    the next input is pulled from ``inputs`` before the current map is yielded: pass an
    iterable of images that are ready now. ``overlap`` defaults to tile / 4; pass
    :func:`default_overlap` of the model's ``halo``, the tile-edge strip whose logits
    are discarded (at most overlap / 2 of it, so that every pixel keeps some weight).
    ``batch`` defaults to the backend's ``max_batch``. ``timings`` (if given)
    accumulates milliseconds per stage (STAGES).
    """
    overlap = tile // 4 if overlap is None else int(overlap)
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap {overlap} must be in [0, tile {tile})")
    size = int(batch or backend.max_batch)
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    stats = timings if timings is not None else {}
    for key in STAGES:
        stats.setdefault(key, 0.0)
    if halo < 0:
        raise ValueError(f"halo must be >= 0, got {halo}")
    window = gaussian_window(tile, min(halo, overlap // 2))
    buffer: np.ndarray | None = None
    slots: list[tuple[_Job, int, int]] = []
    start = time.perf_counter()
    for job, r, c, pixels in _tiles(inputs, tile, overlap):
        if buffer is None:
            buffer = np.empty((size, *pixels.shape), np.float32)
        buffer[len(slots)] = pixels
        slots.append((job, r, c))
        if len(slots) == size:
            stats["prepare_ms"] += (time.perf_counter() - start) * 1000
            yield from _infer_and_stitch(buffer, slots, backend, window, stats)
            slots = []
            start = time.perf_counter()
    if slots:
        assert buffer is not None
        stats["prepare_ms"] += (time.perf_counter() - start) * 1000
        yield from _infer_and_stitch(buffer[: len(slots)], slots, backend, window, stats)


def segment(
    inp: ModelInput,
    backend: Backend,
    tile: int,
    overlap: int | None = None,
    batch: int | None = None,
    timings: dict[str, float] | None = None,
    halo: int = 0,
) -> Segmentation:
    """Classes and margins of one image (see :func:`segment_many`)."""
    return next(segment_many([inp], backend, tile, overlap, batch, timings, halo))
