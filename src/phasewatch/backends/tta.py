"""Test-time augmentation: a backend that averages the model's class probabilities over
flips (or all eight symmetries of the square) of every tile.

It wraps any backend, so the engine, stitching, trust and measurement are unchanged: each
tile batch is run once per transform, each result is transformed back, the softmax
probabilities are averaged, and their logarithm is returned as the logits (the argmax and
the softmax margin of log-probabilities are those of the averaged probabilities). It costs
one backend pass per transform: 4 for ``flips`` (none, horizontal, vertical, both), 8 for
``d4`` (the four rotations, each also mirrored).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from phasewatch.backends.base import Backend, any_size

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
MODES = tuple(TRANSFORMS)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1, keepdims=True)
    return shifted


class TtaBackend:
    """``backend`` run under every transform of ``mode``, probabilities averaged."""

    def __init__(self, backend: Backend, mode: str) -> None:
        if mode not in TRANSFORMS:
            raise ValueError(f"test-time augmentation '{mode}' is not one of {', '.join(MODES)}")
        self.inner, self.mode = backend, mode
        self.name, self.max_batch = f"{backend.name}+tta-{mode}", backend.max_batch
        self.any_size = any_size(backend)

    def run(self, batch: np.ndarray) -> np.ndarray:
        total: np.ndarray | None = None
        for apply, invert in TRANSFORMS[self.mode]:
            probabilities = _softmax(invert(self.inner.run(np.ascontiguousarray(apply(batch)))).astype(np.float32))
            total = probabilities if total is None else total + probabilities
        assert total is not None
        return np.log(np.maximum(total / len(TRANSFORMS[self.mode]), np.float32(1e-12)))

    def close(self) -> None:
        self.inner.close()
