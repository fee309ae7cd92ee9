"""Small JPEG thumbnails of fields for lists, made once and cached forever.

A thumbnail is the field's overlay (its preview when it has none) shrunk to
:data:`THUMB_SIDE` px on its longer side, a few KB of JPEG. Its URL carries a version,
a hash of the source picture's path, size and modification time, so the bytes behind a
URL never change: browsers keep it for a year without asking again (``immutable``), and
a field measured again gets a new URL. It is written once, atomically, to
``DATA/thumbs/ID-VERSION.jpg`` (``ID`` the row whose result it shows: a duplicate shares
its original's) on the first request and read from there afterwards.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2

from phasewatch.atomic_files import write_bytes_atomic

THUMB_SIDE = 200
JPEG_QUALITY = 70
CACHE_FOREVER = "public, max-age=31536000, immutable"
_SOURCES = ("overlay", "preview")


def thumbnail_source(image: Mapping[str, Any]) -> Path | None:
    """The recorded picture a field's thumbnail is made from, if it has one."""
    outputs = image.get("outputs") or {}
    return next((Path(outputs[k]) for k in _SOURCES if k in outputs), None)


def thumbnail_version(image: Mapping[str, Any]) -> str | None:
    """The version of a field's thumbnail; None when its source picture is missing."""
    source = thumbnail_source(image)
    if source is None:
        return None
    try:
        st = source.stat()
    except OSError:
        return None
    key = f"{os.fsencode(source)!r}:{st.st_size}:{st.st_mtime_ns}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def thumbnail_url(image: Mapping[str, Any]) -> str | None:
    version = thumbnail_version(image)
    return None if version is None else f"/api/images/{image['id']}/thumb-{version}.jpg"


def thumbnail_bytes(source: Path, cache_dir: Path, key: str) -> bytes:
    """The JPEG thumbnail of ``source`` cached as ``cache_dir/KEY.jpg``, made if missing;
    raises ``OSError`` when the source cannot be read or the thumbnail not made."""
    cached = cache_dir / f"{key}.jpg"
    try:
        return cached.read_bytes()
    except FileNotFoundError:
        pass
    picture = cv2.imread(str(source), cv2.IMREAD_COLOR)
    if picture is None:
        raise OSError(f"{source}: cannot be read as a picture")
    height, width = picture.shape[:2]
    factor = THUMB_SIDE / max(height, width)
    if factor < 1.0:
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        picture = cv2.resize(picture, size, interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY,
                                                 cv2.IMWRITE_JPEG_OPTIMIZE, 1])
    if not ok:
        raise OSError(f"{source}: JPEG encoding failed")
    data = encoded.tobytes()
    cache_dir.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(cached, data)  # two requests at once both write whole files
    return data
