"""Paired augmentation of a normalised image (float32 C x H x W) and its class mask (uint8 H x W).

Every random choice comes from the caller's ``numpy.random.Generator``, so a seed reproduces a sample.
Geometric operations move image and mask together (image resized linearly, mask by centre-aligned
nearest neighbour, INTER_NEAREST_EXACT: no class id is invented and, unlike INTER_NEAREST, the mask is
not shifted half a pixel against the image); photometric operations touch the image only. Padding that
the image lacks is mirrored; the mask marks it 255 so the losses ignore it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import cv2
import numpy as np

IGNORE_INDEX = 255
CROP_RETRIES = 10
BLUR_SIGMA = (0.5, 1.5)


@dataclass(frozen=True)
class AugmentConfig:
    """What the training loop may do to a sample; the defaults change nothing."""

    flips: bool = False
    rot90: bool = False
    scale: tuple[float, float] = (1.0, 1.0)
    brightness: float = 0.0  # additive shift drawn from +-brightness, in normalised units
    contrast: float = 0.0  # gain drawn from 1 +- contrast, about the image mean
    noise: float = 0.0  # std of additive Gaussian noise, in normalised units
    gamma: float = 0.0  # gamma drawn log-uniformly from [1 / (1 + gamma), 1 + gamma]
    blur: float = 0.0  # probability of a Gaussian blur with sigma in BLUR_SIGMA
    single_class_cap: float = 1.0  # probability of accepting a crop that holds one class only

    def __post_init__(self) -> None:
        low, high = self.scale
        if not 0 < low <= high:
            raise ValueError(f"augment scale must be 0 < min <= max, got {self.scale}")
        for name in ("brightness", "contrast", "noise", "gamma"):
            if getattr(self, name) < 0:
                raise ValueError(f"augment {name} must be >= 0, got {getattr(self, name)}")
        if self.contrast >= 1:
            raise ValueError(f"augment contrast must be < 1 (gain 1 +- contrast), got {self.contrast}")
        for name in ("blur", "single_class_cap"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"augment {name} is a probability in [0, 1], got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, d: dict) -> AugmentConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown augment key(s) {', '.join(unknown)}; accepted: {', '.join(sorted(known))}")
        values = dict(d)
        if "scale" in values:
            values["scale"] = tuple(float(v) for v in values["scale"])
            if len(values["scale"]) != 2:
                raise ValueError(f"augment scale must be [min, max], got {d['scale']}")
        return cls(**values)


def _check_pair(image: np.ndarray, mask: np.ndarray) -> None:
    if image.ndim != 3 or mask.ndim != 2 or image.shape[1:] != mask.shape:
        raise ValueError(f"need image C x H x W and mask H x W of the same size, got {image.shape} and {mask.shape}")


def _pad_to(image: np.ndarray, mask: np.ndarray, tile: int) -> tuple[np.ndarray, np.ndarray]:
    """Mirror-pad image (mask: 255) to at least tile x tile, the original centred."""
    pad_h, pad_w = max(tile - mask.shape[0], 0), max(tile - mask.shape[1], 0)
    if not pad_h and not pad_w:
        return image, mask
    pads = ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2))
    # numpy reflects repeatedly, so pads larger than the image still work.
    image = np.pad(image, ((0, 0), *pads), mode="reflect" if min(mask.shape) > 1 else "edge")
    mask = np.pad(mask, pads, mode="constant", constant_values=IGNORE_INDEX)
    return image, mask


def _class_count(mask: np.ndarray) -> int:
    present = np.unique(mask)
    return int(np.count_nonzero(present != IGNORE_INDEX))


def random_crop(
    image: np.ndarray, mask: np.ndarray, tile: int, rng: np.random.Generator, cap: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """A random tile x tile crop; a crop with fewer than two classes is kept with probability ``cap``.

    A rejected crop is redrawn, up to CROP_RETRIES times; the last draw is kept whatever it holds, so
    an image of one class still yields crops.
    """
    _check_pair(image, mask)
    image, mask = _pad_to(image, mask, tile)
    height, width = mask.shape
    for attempt in range(CROP_RETRIES + 1):
        top = int(rng.integers(height - tile + 1))
        left = int(rng.integers(width - tile + 1))
        crop_mask = mask[top : top + tile, left : left + tile]
        if attempt == CROP_RETRIES or _class_count(crop_mask) >= 2 or cap >= 1 or rng.random() < cap:
            break
    return image[:, top : top + tile, left : left + tile], crop_mask


def _resize(image: np.ndarray, mask: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    if mask.shape == (height, width):
        return image, mask
    hwc = np.ascontiguousarray(image.transpose(1, 2, 0))
    resized = cv2.resize(hwc, (width, height), interpolation=cv2.INTER_LINEAR).reshape(height, width, -1)
    mask = cv2.resize(np.ascontiguousarray(mask), (width, height), interpolation=cv2.INTER_NEAREST_EXACT)
    return resized.transpose(2, 0, 1), mask


def _flip_rotate(
    image: np.ndarray, mask: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    if cfg.flips:
        if rng.random() < 0.5:
            image, mask = image[:, :, ::-1], mask[:, ::-1]
        if rng.random() < 0.5:
            image, mask = image[:, ::-1, :], mask[::-1, :]
    if cfg.rot90:
        k = int(rng.integers(4))
        image, mask = np.rot90(image, k, axes=(1, 2)), np.rot90(mask, k)
    return image, mask


def _photometric(image: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Optics first (blur), then the detector's response (gamma), exposure (contrast,
    brightness), then sensor noise."""
    image = np.array(image, dtype=np.float32, order="C")
    if cfg.blur and rng.random() < cfg.blur:
        sigma = float(rng.uniform(*BLUR_SIGMA))
        for channel in image:
            channel[:] = cv2.GaussianBlur(channel, (0, 0), sigma)
    if cfg.gamma:
        image = _gamma(image, float(np.exp(rng.uniform(-1, 1) * np.log1p(cfg.gamma))))
    if cfg.contrast:
        mean = image.mean(axis=(1, 2), keepdims=True)
        image = (image - mean) * np.float32(1 + rng.uniform(-cfg.contrast, cfg.contrast)) + mean
    if cfg.brightness:
        image += np.float32(rng.uniform(-cfg.brightness, cfg.brightness))
    if cfg.noise:
        image += rng.normal(0.0, cfg.noise, image.shape).astype(np.float32)
    return image


def _gamma(image: np.ndarray, exponent: float) -> np.ndarray:
    """A gamma curve over the crop's own value range: a per-image percentile stretch makes
    affine intensity changes vanish, but a detector's or operator's gamma survives it."""
    low, high = float(image.min()), float(image.max())
    if high <= low:
        return image
    unit = (image - low) / (high - low)
    return (np.power(unit, exponent) * (high - low) + low).astype(np.float32)


def _finish(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Flips and rotations return strided views; torch.from_numpy needs contiguous, positive strides.
    return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(mask, dtype=np.uint8)


def augment(
    image: np.ndarray, mask: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Whole-sample augmentation: scale, flips, rot90, then photometric on the image only."""
    _check_pair(image, mask)
    factor = float(rng.uniform(*cfg.scale))
    height, width = (max(1, round(n * factor)) for n in mask.shape)
    image, mask = _resize(image, mask, height, width)
    image, mask = _flip_rotate(image, mask, cfg, rng)
    return _finish(_photometric(image, cfg, rng), mask)


def sample(
    image: np.ndarray, mask: np.ndarray, tile: int, cfg: AugmentConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One training sample, float32 C x tile x tile and uint8 tile x tile.

    Scale-aware: crops a (tile / scale) region and resizes only that to tile, instead of resizing the
    whole micrograph, then flips, rotates and applies the photometric changes.
    """
    factor = float(rng.uniform(*cfg.scale))
    region = max(1, round(tile / factor))
    image, mask = random_crop(image, mask, region, rng, cfg.single_class_cap)
    image, mask = _resize(image, mask, tile, tile)
    image, mask = _flip_rotate(image, mask, cfg, rng)
    return _finish(_photometric(image, cfg, rng), mask)
