"""Procedurally drawn micrographs with exact ground truth, one generator per material.

The demo needs micrographs that ship with the code (the real data sets may not be
redistributed inside the package), and their truth must be known so the demo can say how
close the measurement came. Each generator draws ``(image uint8 H x W x 3, labels uint8
H x W)`` from a seed, deterministically, with the label ids of the bundled model of that
material; :data:`MATERIALS` says which class names each one draws, so a model is paired
with a generator by its classes, not its name (a retrained or fine-tuned bundle with the
same classes gets the same generator).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

MATRIX, SECONDARY, TERTIARY = 0, 1, 2
BACKGROUND, OXIDE, CRACK = 0, 1, 2


def _blobs(rng: np.random.Generator, shape: tuple[int, int], sigma: tuple[float, float],
           share: float) -> np.ndarray:
    """A boolean mask covering about ``share`` of the field: a smooth random field
    (Gaussian blur of white noise, ``sigma`` = (x, y) px: the blobs' size and elongation)
    thresholded at its quantile."""
    field = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0),
                             sigmaX=sigma[0], sigmaY=sigma[1])
    return field > np.quantile(field, 1.0 - share)


def _finish(grey: np.ndarray, rng: np.random.Generator, blur: float, noise: float) -> np.ndarray:
    """A detector's look: blur, Gaussian noise, 8 bits, three equal channels."""
    grey = cv2.GaussianBlur(grey.astype(np.float32), (0, 0), blur)
    grey += rng.normal(0.0, noise, grey.shape).astype(np.float32)
    image = np.clip(grey, 0, 255).astype(np.uint8)
    return np.repeat(image[:, :, None], 3, axis=2)


def superalloy_micrograph(
    height: int = 768, width: int = 1024, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """An etched Ni-superalloy SEM field: a light γ matrix in channels between large grey
    secondary γ′ precipitates (about 40-60 % of the field, varying with the seed), fine
    dark tertiary γ′ dots inside the channels, a bright rim where the channels meet the
    precipitates, blur and detector noise. Labels 0 γ, 1 secondary γ′, 2 tertiary γ′."""
    rng = np.random.default_rng(seed)
    share = float(rng.uniform(0.45, 0.6))
    secondary = _blobs(rng, (height, width), (14.0, 14.0), share)
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
    # The bright edge lies on the γ side: the bundled model, trained on annotated real
    # fields, reads it as γ (drawn across the interface, it cost 2 points of γ′ fraction).
    rim = cv2.dilate(secondary.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & (labels == MATRIX)
    grey[rim] += 18.0
    return _finish(grey, rng, blur=1.5, noise=5.0), labels


def _profile(rng: np.random.Generator, width: int, amplitude: float, smooth: float) -> np.ndarray:
    """A rough interface: a smooth random curve of ``width`` values with about
    ``amplitude`` px of spread."""
    curve = cv2.GaussianBlur(rng.standard_normal((1, width)).astype(np.float32), (0, 0), sigmaX=smooth)[0]
    return curve * (amplitude / max(float(curve.std()), 1e-6))


def _crack(rng: np.random.Generator, shape: tuple[int, int], x0: int, top: np.ndarray,
           bottom: np.ndarray) -> np.ndarray:
    """A mask of one through-thickness crack: a wandering polyline from above the oxide's
    top to below its bottom, 2-4 px wide."""
    height, width = shape
    mask = np.zeros(shape, np.uint8)
    y, x = float(top[x0]) - 6.0, float(x0)
    end = float(bottom[x0]) + 6.0
    points = [(x, y)]
    drift = float(rng.normal(0.0, 0.3))
    while y < end:
        y += float(rng.uniform(6.0, 14.0))
        x = float(np.clip(x + drift * 8.0 + rng.normal(0.0, 3.0), 0, width - 1))
        points.append((x, y))
    polyline = np.round(np.array(points)).astype(np.int32)
    cv2.polylines(mask, [polyline], False, 1, thickness=int(rng.integers(2, 5)))
    return mask.astype(bool)


def ebc_micrograph(
    height: int = 1024, width: int = 1024, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """An environmental barrier coating in SEM cross-section (backscatter): a bright,
    porous top coat with lamellar splat pores, a dark grey oxide layer (10-30 % of the
    field) with rough interfaces, small voids and a few through-thickness cracks, and a
    mid-grey substrate with scattered pores. Labels 0 background (everything but the
    oxide), 1 oxide (its voids included, as the annotators drew it), 2 crack (inside the
    oxide only)."""
    rng = np.random.default_rng(seed)
    shape = (height, width)
    thickness = float(rng.uniform(0.1, 0.28)) * height
    centre = float(rng.uniform(0.38, 0.6)) * height + np.linspace(-1.0, 1.0, width) * rng.normal(0.0, 0.03 * height)
    top = centre - thickness / 2 + _profile(rng, width, 0.012 * height, 18.0)
    bottom = centre + thickness / 2 + _profile(rng, width, 0.008 * height, 30.0)
    rows = np.arange(height, dtype=np.float32)[:, None]
    oxide = (rows >= top[None, :]) & (rows < bottom[None, :])
    above = rows < top[None, :]

    cracks = np.zeros(shape, bool)
    for x0 in rng.choice(width, size=int(rng.integers(1, 5)), replace=False):
        cracks |= _crack(rng, shape, int(x0), top, bottom)
    labels = np.where(oxide, OXIDE, BACKGROUND).astype(np.uint8)
    labels[cracks & oxide] = CRACK

    grey = np.where(above, 212.0, 108.0).astype(np.float32)
    grey[above & _blobs(rng, shape, (3.0, 3.0), 0.15)] = 150.0  # second phase of the top coat
    grey[above & _blobs(rng, shape, (7.0, 2.0), 0.12)] = 25.0  # splat pores, flattened by spraying
    grey[~above & ~oxide & _blobs(rng, shape, (5.0, 5.0), 0.03)] = 20.0  # substrate pores
    grey[oxide] = 72.0 + 6.0 * cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), 6.0)[oxide]
    grey[oxide & _blobs(rng, shape, (5.0, 1.5), 0.05)] = 30.0  # voids in the oxide (still oxide)
    grey[cracks & ~above] = 15.0
    return _finish(grey, rng, blur=1.2, noise=4.0), labels


@dataclass(frozen=True)
class Material:
    """A generator and what it draws: ``classes`` are the class names of its label ids
    (those of the bundled model), ``main_phase`` the class the demo compares."""

    name: str
    classes: tuple[str, ...]
    main_phase: str
    pixel_size_um: float  # written into each drawn field's metadata
    draw: Callable[[int], tuple[np.ndarray, np.ndarray]]  # seed -> (image, labels)

    def true_fractions(self, labels: np.ndarray) -> dict[str, float]:
        """Area fraction of each class in ``labels``, by class name."""
        counts = np.bincount(labels.ravel(), minlength=len(self.classes))
        return {name: float(counts[i]) / labels.size for i, name in enumerate(self.classes)}


MATERIALS = {
    m.name: m for m in (
        # 512 x 512 at 20 nm: the size and scale of the superalloy data set's fields
        Material("superalloy", ("gamma matrix", "secondary gamma prime", "tertiary gamma prime"),
                 "secondary gamma prime", 0.02, lambda seed: superalloy_micrograph(512, 512, seed)),
        Material("ebc", ("background", "oxide", "crack"), "oxide", 0.05,
                 lambda seed: ebc_micrograph(1024, 1024, seed)),
    )
}


def material_for(class_names: Sequence[str]) -> Material | None:
    """The generator that draws exactly these classes (by label id), or None."""
    return next((m for m in MATERIALS.values() if m.classes == tuple(class_names)), None)
