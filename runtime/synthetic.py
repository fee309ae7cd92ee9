"""Synthetic γ/γ′ superalloy micrographs with exact ground truth.

The demo needs a micrograph that ships with the code (the real data set may not be
redistributed inside the package), and its truth must be known so the demo can say how
close the measurement came. The look follows etched Ni-superalloy SEM images: a light
γ matrix in channels between large grey secondary γ′ precipitates, fine dark tertiary γ′
dots inside the channels, a bright rim where the channels meet the precipitates, blur
and detector noise.
"""

from __future__ import annotations

import cv2
import numpy as np

MATRIX, SECONDARY, TERTIARY = 0, 1, 2


def superalloy_micrograph(
    height: int = 768, width: int = 1024, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(image uint8 H x W x 3, labels uint8 H x W)`` with labels 0 γ, 1 secondary γ′, 2 tertiary γ′."""
    rng = np.random.default_rng(seed)
    # Secondary γ′: threshold of smooth random field gives blobby precipitates ~60 px across.
    field = cv2.GaussianBlur(rng.standard_normal((height, width)).astype(np.float32), (0, 0), 14)
    secondary = field > np.quantile(field, 0.45)
    secondary = cv2.morphologyEx(
        secondary.astype(np.uint8), cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9))
    ).astype(bool)
    labels = np.where(secondary, SECONDARY, MATRIX).astype(np.uint8)

    # Tertiary γ′: small discs placed only where the γ channel is wide enough to hold them.
    room = cv2.distanceTransform((~secondary).astype(np.uint8), cv2.DIST_L2, 5)
    ys, xs = np.nonzero(room > 9)
    picks = rng.choice(len(ys), size=min(len(ys), height * width // 2500), replace=False)
    for y, x in zip(ys[picks], xs[picks], strict=True):
        cv2.circle(labels, (int(x), int(y)), int(rng.integers(3, 7)), TERTIARY, -1)

    grey: np.ndarray = np.select([labels == SECONDARY, labels == TERTIARY], [122.0, 98.0], 150.0).astype(np.float32)
    rim = cv2.morphologyEx(secondary.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((5, 5), np.uint8))
    grey += 18.0 * rim
    grey = cv2.GaussianBlur(grey, (0, 0), 1.5)
    grey += rng.normal(0.0, 5.0, grey.shape).astype(np.float32)
    image = np.clip(grey, 0, 255).astype(np.uint8)
    return np.repeat(image[:, :, None], 3, axis=2), labels
