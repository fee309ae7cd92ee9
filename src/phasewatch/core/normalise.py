"""Turn a decoded image into model input, with statistics computed once per image.

:func:`prepare` looks at the whole image once (resizing it to the model's scale and,
under a percentile rule, measuring its percentiles on a strided subsample).
:meth:`ModelInput.region` then converts any crop to ``float32 C x h x w`` with those same
numbers, so that neighbouring tiles of one image always agree and only
a tile's worth of float memory exists at a time, however large the image. An image small
enough that its percentiles are measured on every pixel (at most PERCENTILE_SAMPLE_PIXELS)
keeps that conversion to the model's channels (``ModelInput.plane``), so that its regions do
not convert it again: a field run in one pass was converted three times before (percentiles,
trust features, model input), a quarter of the work around the network.

Per pixel, in order: channel conversion to the model's channels (gray -> repeated;
RGB -> luminance with OpenCV's RGB2GRAY weights), mapping to [0, 1] by the bundle's
rule (``per-image-percentile``: every image stretched from its own percentiles and
clipped, whatever its bit depth; ``bit-depth``, older bundles: 8-bit /255, 16-bit
/65535 or the percentile stretch), then ``(x - mean) / std`` per channel. A flat image
under a percentile stretch maps to 0.

2.5D bundles (``slices`` = k > 1 in the manifest): the model sees k neighbouring gray slices
as k channels. Each slice is prepared on its own, by the same rule (its own percentiles
under ``per-image-percentile``), and :class:`StackInput` concatenates their regions, slice
-k//2 first, the centre slice (the one predicted) in the middle. At the ends of a volume the
missing neighbours are mirrored about the end slice (slice -1 = slice 1, slice n = slice n-2;
:func:`window_indices`), so a single 2D field, a volume of one slice, is its own
neighbours: the one slice repeated k times (:func:`prepare`'s ``slices``).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, overload

import cv2
import numpy as np

from phasewatch.bundle import Normalisation

# cv2.COLOR_RGB2GRAY weights (ITU-R BT.601)
LUMINANCE_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)
# Enough pixels for stable percentiles; more would make a 20k x 20k image slow to prepare.
PERCENTILE_SAMPLE_PIXELS = 1_000_000


@dataclass(frozen=True, eq=False)
class ModelInput:
    """An image ready to be cut into model inputs: ``region`` converts one crop at a time."""

    image: np.ndarray  # H x W or H x W x 3, uint8 or uint16, already at the model's scale
    channels: int  # the model's input channels, 1 or 3
    low: float  # raw value that maps to 0
    high: float  # raw value that maps to 1
    clip: bool  # clip to [0, 1] (percentile stretch) or not
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # The whole image in the model's channels (float32 C x H x W, before the stretch), where
    # prepare made it for the percentiles; None: each region converts its own crop.
    plane: np.ndarray | None = None

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    def region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """``float32 channels x (y1 - y0) x (x1 - x0)`` for an in-bounds crop."""
        if not (0 <= y0 < y1 <= self.height and 0 <= x0 < x1 <= self.width):
            raise ValueError(f"region [{y0}:{y1}, {x0}:{x1}] is outside the {self.height} x {self.width} image")
        if self._plane_serves(y0, y1, x0, x1):
            assert self.plane is not None
            values = np.subtract(self.plane[:, y0:y1, x0:x1], np.float32(self.low))
        else:
            values = _to_model_channels(self.image[y0:y1, x0:x1], self.channels)
            values -= np.float32(self.low)
        values *= np.float32(1.0 / (self.high - self.low))
        if self.clip:
            np.clip(values, 0.0, 1.0, out=values)
        if values.shape[0] != self.channels:  # gray image, 3-channel model
            values = np.repeat(values, self.channels, axis=0)
        values -= np.asarray(self.mean, np.float32)[:, None, None]
        values /= np.asarray(self.std, np.float32)[:, None, None]
        return values

    def _plane_serves(self, y0: int, y1: int, x0: int, x1: int) -> bool:
        """Whether the kept plane gives this crop the values converting the crop gives, bit for
        bit: always for a gray image or a 3-channel model (a cast per pixel), but RGB -> luminance
        goes through BLAS, whose sums for a pixel depend on the shape of the call (a few pixels of
        a crop differ by a float32 step from the same pixels of the whole image), so there only
        for the whole image, the call the plane was made with."""
        if self.plane is None:
            return False
        whole = (y0, y1, x0, x1) == (0, self.height, 0, self.width)
        return whole or self.image.ndim == 2 or self.channels == 3


@dataclass(frozen=True, eq=False)
class StackInput:
    """k prepared neighbouring slices as one 2.5D model input of k x channels channels."""

    slices: tuple[ModelInput, ...]  # in Z order; the centre one is the slice predicted

    def __post_init__(self) -> None:
        if len(self.slices) % 2 == 0 or len({(s.height, s.width) for s in self.slices}) != 1:
            raise ValueError("a slice stack needs an odd number of slices of one size")

    @property
    def centre(self) -> ModelInput:
        return self.slices[len(self.slices) // 2]

    @property
    def height(self) -> int:
        return self.centre.height

    @property
    def width(self) -> int:
        return self.centre.width

    @property
    def channels(self) -> int:
        return sum(s.channels for s in self.slices)

    def region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return np.concatenate([s.region(y0, y1, x0, x1) for s in self.slices])


def window_indices(index: int, count: int, slices: int) -> list[int]:
    """The ``slices`` Z indices centred on ``index`` in a volume of ``count`` slices, mirrored
    about the end slices where they run past them (slice -1 = slice 1; reflected again in a
    volume shallower than the window; a volume of one slice repeats it)."""
    if not 0 <= index < count or slices < 1 or slices % 2 == 0:
        raise ValueError(f"window of {slices} slices about slice {index} of {count}")
    half, last = slices // 2, count - 1
    out = []
    for z in range(index - half, index + half + 1):
        while last and not 0 <= z <= last:
            z = -z if z < 0 else 2 * last - z
        out.append(z if last else 0)
    return out


def sliding_stacks(inputs: Iterable[ModelInput], slices: int,
                   window: collections.deque[tuple[int, ModelInput]] | None = None) -> Iterator[StackInput]:
    """One :class:`StackInput` per slice of a volume streamed in Z order, holding at most
    ``slices`` prepared slices (``window``, passed in to be watched, holds them); a slice's
    stack is yielded once its ``slices // 2`` successors are read or the volume has ended."""
    half = slices // 2
    window = collections.deque() if window is None else window
    count, emitted = 0, 0

    def stack(index: int, total: int) -> StackInput:
        held = dict(window)
        return StackInput(tuple(held[z] for z in window_indices(index, total, slices)))

    for inp in inputs:
        while window and window[0][0] < count - 2 * half:  # no stack still to come needs it
            window.popleft()
        window.append((count, inp))
        count += 1
        if count > half:
            # slice count-1-half: its successors are read; mirrored at most at the start,
            # where the reflection of a missing predecessor does not depend on the depth
            yield stack(count - 1 - half, count)
            emitted += 1
    for index in range(emitted, count):
        yield stack(index, count)


@overload
def prepare(image: np.ndarray, channels: int, normalisation: Normalisation, scale: float = 1.0,
            slices: Literal[1] = 1) -> ModelInput: ...


@overload
def prepare(image: np.ndarray, channels: int, normalisation: Normalisation, scale: float = 1.0,
            *, slices: int) -> ModelInput | StackInput: ...


def prepare(image: np.ndarray, channels: int, normalisation: Normalisation, scale: float = 1.0,
            slices: int = 1) -> ModelInput | StackInput:
    """Resize ``image`` by ``scale`` once and fix its normalisation statistics. With
    ``slices`` k > 1 (a 2.5D bundle) ``image`` is a single 2D field, a volume of one slice:
    mirroring makes it its own k neighbours (module doc)."""
    inp = _prepare(image, channels, normalisation, scale)
    if slices == 1:
        return inp
    return StackInput(tuple(inp for _ in window_indices(0, 1, slices)))


def prepare_stack(images: Sequence[np.ndarray], channels: int, normalisation: Normalisation,
                  scale: float = 1.0) -> StackInput:
    """k neighbouring slices (Z order, centre = the predicted one) as one 2.5D input."""
    return StackInput(tuple(_prepare(image, channels, normalisation, scale) for image in images))


def _prepare(image: np.ndarray, channels: int, normalisation: Normalisation, scale: float = 1.0) -> ModelInput:
    if image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"image dtype must be uint8 or uint16, got {image.dtype}")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"image must be H x W or H x W x 3, got shape {image.shape}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if len(normalisation.mean) != channels or len(normalisation.std) != channels:
        raise ValueError(f"normalisation mean/std must have {channels} values")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive number, got {scale}")
    image = _resize(image, scale)
    low, high, clip, plane = _value_range(image, channels, normalisation)
    return ModelInput(
        image=image,
        channels=channels,
        low=low,
        high=high,
        clip=clip,
        mean=tuple(normalisation.mean),
        std=tuple(normalisation.std),
        plane=plane,
    )


def _resize(image: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1.0:
        return image
    height, width = image.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interpolation)


def _value_range(image: np.ndarray, channels: int,
                 normalisation: Normalisation) -> tuple[float, float, bool, np.ndarray | None]:
    """(low, high, clip, the whole image in the model's channels where it was converted for
    the percentiles, else None)."""
    if normalisation.rule == "bit-depth":
        if image.dtype == np.uint8:
            return 0.0, 255.0, False, None
        if normalisation.sixteen_bit == "full_range":
            return 0.0, 65535.0, False, None
    stride = max(1, math.ceil(math.sqrt(image.shape[0] * image.shape[1] / PERCENTILE_SAMPLE_PIXELS)))
    sample = _to_model_channels(image[::stride, ::stride], channels)
    cast = image.ndim == 2 or channels == 3  # else luminance, not whole numbers
    low, high = percentiles(sample, normalisation.percentiles, np.iinfo(image.dtype).max + 1, cast)
    sample.flags.writeable = False  # kept as the plane: shared by every region of the image
    return low, (high if high > low else low + 1.0), True, sample if stride == 1 else None


def percentiles(values: np.ndarray, q: Sequence[float], levels: int, whole_numbers: bool) -> list[float]:
    """``np.percentile(values, q)`` (its linear method), bit for bit, for float32 values in
    [0, ``levels``], at a fraction of the cost of NumPy's partition of a copy of them all.

    The ranks NumPy interpolates between are found in a histogram of whole-number buckets (one
    pass of cv2.calcHist). The value of such a rank is its bucket's number where the values are
    ``whole_numbers`` (a cast of a gray or RGB image); else (luminance) the few values of its
    bucket are picked out and partitioned. NumPy then interpolates between the two values each
    percentile lies between, as it would have: with two values (n - 1 = 1) the quantile at
    gamma is the lerp at gamma.
    """
    flat = values.reshape(-1)
    virtual = (flat.size - 1) * (np.asarray(q, np.float64) / 100)  # NumPy's linear method
    below = np.floor(virtual)
    ranks = np.minimum(np.stack([below, below + 1]).astype(np.intp), flat.size - 1)  # 2 x len(q)
    counts = cv2.calcHist([flat], [0], None, [levels + 1], [0, levels + 1]).reshape(-1).astype(np.int64)
    if counts.sum() != flat.size:
        raise ValueError(f"values outside [0, {levels}] for an image of {levels} levels")
    ends = np.cumsum(counts)
    buckets = np.searchsorted(ends, ranks, side="right")
    ordered = np.empty(ranks.shape, values.dtype)
    for bucket in np.unique(buckets):
        at = buckets == bucket
        if whole_numbers:
            ordered[at] = bucket
        else:
            members = flat[(flat >= bucket) & (flat < bucket + 1)]
            within = ranks[at] - (ends[bucket] - counts[bucket])  # ranks among the bucket's values
            ordered[at] = np.partition(members, within)[within]
    return [float(np.quantile(pair, [gamma])[0]) for pair, gamma in zip(ordered.T, virtual - below, strict=True)]


def _to_model_channels(crop: np.ndarray, channels: int) -> np.ndarray:
    """``float32 C x h x w``; a gray crop stays one channel (repeated after the stretch)."""
    if crop.ndim == 2:
        return crop.astype(np.float32)[None]
    if channels == 1:
        return np.tensordot(crop, LUMINANCE_WEIGHTS, axes=([2], [0])).astype(np.float32, copy=False)[None]
    return np.ascontiguousarray(np.moveaxis(crop, 2, 0), dtype=np.float32)
