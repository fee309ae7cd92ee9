"""Test-time augmentation: a backend that averages the model's class probabilities over
flips (or all eight symmetries of the square), or over scales, of every tile.

It wraps any backend, so the sliding window, stitching, trust and measurement are unchanged: each
tile batch is run once per pass, each result is brought back to the tile's geometry, the
softmax probabilities are averaged, and their logarithm is returned as the logits (the argmax
and the softmax margin of log-probabilities are those of the averaged probabilities). It costs
one backend pass per transform: 4 for ``flips`` (none, horizontal, vertical, both), 8 for
``d4`` (the four rotations, each also mirrored), 3 for ``scales`` (the tile resized bilinearly
to 0.75, 1 and 1.25 of its size, each rounded to the network's spatial multiple, and the logits
resized back): a scale needs a model that runs any size, i.e. a dynamic-size export on a
backend that takes it; its tiles are planned small enough that the largest scale still fits the
backend's ``max_side``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np

from phasewatch.backends.base import Backend, BackendError, any_size, max_side

Transform = tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]


def _flip(axes: tuple[int, ...]) -> Transform:
    def apply(x: np.ndarray) -> np.ndarray:
        return np.flip(x, axes) if axes else x
    return apply, apply  # a flip is its own inverse


def _rotate(k: int, flip: bool) -> Transform:
    def apply(x: np.ndarray) -> np.ndarray:
        x = np.rot90(x, k, axes=(2, 3))
        return np.flip(x, 3) if flip else x

    def invert(x: np.ndarray) -> np.ndarray:
        x = np.flip(x, 3) if flip else x
        return np.rot90(x, -k, axes=(2, 3))
    return apply, invert


TRANSFORMS: dict[str, list[Transform]] = {
    "none": [_flip(())],
    "flips": [_flip(()), _flip((3,)), _flip((2,)), _flip((2, 3))],
    "d4": [_rotate(k, flip) for k in range(4) for flip in (False, True)],
}
SCALES: dict[str, tuple[float, ...]] = {"scales": (0.75, 1.0, 1.25)}
MODES = (*TRANSFORMS, *SCALES)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1, keepdims=True)
    return shifted


def scaled_side(side: int, scale: float, multiple: int) -> int:
    """``side * scale`` rounded to the nearest multiple of the network's stride (at least one)."""
    return max(multiple, round(side * scale / multiple) * multiple)


def resize(batch: np.ndarray, height: int, width: int) -> np.ndarray:
    """N x C x H x W to N x C x ``height`` x ``width``, bilinear (half-pixel centres)."""
    n, c, h, w = batch.shape
    if (h, w) == (height, width):
        return batch
    out = np.empty((n, c, height, width), np.float32)
    for i in range(n):
        resized = cv2.resize(np.ascontiguousarray(batch[i].transpose(1, 2, 0)), (width, height),
                             interpolation=cv2.INTER_LINEAR)
        out[i] = resized.reshape(height, width, c).transpose(2, 0, 1)
    return out


Pass = Callable[[np.ndarray], np.ndarray]  # a tile batch -> logits at the batch's geometry


class TtaBackend:
    """``backend`` run under every transform (or scale) of ``mode``, probabilities averaged;
    ``multiple``: the network's spatial multiple (the bundle's), needed for scales."""

    def __init__(self, backend: Backend, mode: str, multiple: int = 0) -> None:
        if mode not in MODES:
            raise ValueError(f"test-time augmentation '{mode}' is not one of {', '.join(MODES)}")
        self.inner, self.mode = backend, mode
        self.name, self.max_batch = f"{backend.name}+tta-{mode}", backend.max_batch
        self.any_size = any_size(backend)
        self.passes: list[Pass]
        if mode in SCALES:
            if not (multiple and self.any_size):
                raise BackendError(f"test-time augmentation '{mode}' resizes tiles: it needs a model exported for any "
                                 f"size on a backend that runs any size ({backend.name} with this bundle does not)")
            largest = max(SCALES[mode])
            if limit := max_side(backend):
                # Tiles that still fit the backend when scaled up by the largest scale.
                self.max_side = multiple * math.floor(limit / largest / multiple)
            self.passes = [self._scaled(scale, multiple) for scale in SCALES[mode]]
        else:
            self.passes = [self._transformed(transform) for transform in TRANSFORMS[mode]]

    def _transformed(self, transform: Transform) -> Pass:
        apply, invert = transform
        return lambda batch: invert(self.inner.run(np.ascontiguousarray(apply(batch))))

    def _scaled(self, scale: float, multiple: int) -> Pass:
        def run(batch: np.ndarray) -> np.ndarray:
            h, w = batch.shape[-2:]
            size = scaled_side(h, scale, multiple), scaled_side(w, scale, multiple)
            return resize(self.inner.run(resize(batch, *size)).astype(np.float32), h, w)
        return run

    def run(self, batch: np.ndarray) -> np.ndarray:
        total: np.ndarray | None = None
        for one_pass in self.passes:
            probabilities = _softmax(one_pass(batch).astype(np.float32))
            total = probabilities if total is None else total + probabilities
        assert total is not None
        return np.log(np.maximum(total / len(self.passes), np.float32(1e-12)))

    def close(self) -> None:
        self.inner.close()
