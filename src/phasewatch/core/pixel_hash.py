"""A field's pixel hash: the same field re-saved (16-bit from 8-bit, another format or
compression) has the same hash, so a specimen does not count it twice.

The pixels of each page are stretched linearly to 0..255 between their own minimum and
maximum, in integers (``floor((v - min) * 255 / (max - min))``), then hashed with sha256
together with each page's shape. An 8-bit field saved again as 16-bit, whether its values
are kept (0..255) or scaled (``v * 257``, ImageJ's and Pillow's way), gives the same
stretched pixels and so the same hash; colour pages are hashed as their channels.

Why an exact hash of normalised pixels and not a perceptual hash: the fields of one
specimen are pictures of the same material at the same magnification and look alike by
design, so a perceptual hash would call different fields "the same" and quietly drop real
measurements. An exact hash only ever matches the same pixels; what it misses (a re-save
that changes pixels: a lossy JPEG, a crop) stays counted, as before. A match is a strong
hint, not proof (a deliberate second acquisition of a static field can give identical
pixels), so the store flags the newer field "likely the same field as #ID" and leaves it out
of the statistics until an operator accepts it, as it does with fields the model flags
(``store/queue.py`` ``mark_done``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np


def stretched(image: np.ndarray) -> np.ndarray:
    """``image`` stretched to uint8 0..255 between its minimum and maximum (all 0 when flat)."""
    values = image.astype(np.int64)
    low, high = int(values.min()), int(values.max())
    if high == low:
        return np.zeros(image.shape, np.uint8)
    return ((values - low) * 255 // (high - low)).astype(np.uint8)


def pixel_sha256(pages: Iterable[np.ndarray]) -> str:
    """The sha256 (hex) of the file's pages, each :func:`stretched`, with their shapes."""
    digest = hashlib.sha256()
    for image in pages:
        digest.update(repr(image.shape).encode())
        digest.update(np.ascontiguousarray(stretched(image)).tobytes())
    return digest.hexdigest()
