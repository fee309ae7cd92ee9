"""Training losses for segmentation, and the pixel-weight map for thin interfaces.

Conventions: ``logits`` are ``float N x K x H x W``, ``target`` is ``int64 N x H x W`` holding class ids,
with ``ignore_index`` (255: unlabelled or padding) leaving every loss. A batch with no labelled pixel
gives a loss of 0 that still carries a graph, so the training loop never special-cases it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F

IGNORE_INDEX = 255

LossFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    total = weights.sum()
    if total <= 0:
        return (values * weights).sum() * 0.0
    return (values * weights).sum() / total


def _class_tensor(values: Sequence[float] | None, logits: torch.Tensor) -> torch.Tensor | None:
    if values is None:
        return None
    tensor = torch.as_tensor(values, dtype=logits.dtype, device=logits.device)
    if tensor.numel() != logits.shape[1]:
        raise ValueError(f"{tensor.numel()} per-class values given for {logits.shape[1]} classes")
    return tensor


def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    class_weights: Sequence[float] | None = None,
    pixel_weights: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Cross-entropy averaged as sum(w * ce) / sum(w) over labelled pixels.

    ``w`` is the product of the pixel's class weight and its pixel weight (each 1 when not given), so
    with neither it is the plain mean, and with class weights alone it matches PyTorch's weighted mean.
    """
    valid = target != ignore_index
    safe_target = torch.where(valid, target, torch.zeros_like(target))
    ce = F.cross_entropy(logits, safe_target, reduction="none")
    weights = valid.to(logits.dtype)
    class_w = _class_tensor(class_weights, logits)
    if class_w is not None:
        weights = weights * class_w[safe_target]
    if pixel_weights is not None:
        weights = weights * pixel_weights.to(logits.dtype)
    return _weighted_mean(ce, weights)


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: Sequence[float] | None = None,
    gamma: float = 2.0,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Focal loss (Lin et al. 2017): mean over labelled pixels of -alpha_t (1 - p_t)^gamma log p_t.

    ``alpha`` is a per-class factor (None: 1 for every class); gamma 0 with no alpha is cross-entropy.
    """
    valid = target != ignore_index
    safe_target = torch.where(valid, target, torch.zeros_like(target)).unsqueeze(1)
    log_pt = F.log_softmax(logits, dim=1).gather(1, safe_target).squeeze(1)
    loss = -((1.0 - log_pt.exp()) ** gamma) * log_pt
    alpha_w = _class_tensor(alpha, logits)
    if alpha_w is not None:
        loss = loss * alpha_w[safe_target.squeeze(1)]
    return _weighted_mean(loss, valid.to(logits.dtype))


def _soft_overlap(
    logits: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per class over the batch: sum(p * g), sum(p), sum(g) on labelled pixels (p softmax, g one-hot)."""
    if logits.shape[1] != num_classes:
        raise ValueError(f"logits have {logits.shape[1]} classes, the loss expects {num_classes}")
    valid = (target != ignore_index).unsqueeze(1).to(logits.dtype)
    safe_target = torch.where(target != ignore_index, target, torch.zeros_like(target))
    probs = logits.softmax(dim=1) * valid
    onehot = F.one_hot(safe_target, num_classes).permute(0, 3, 1, 2).to(logits.dtype) * valid
    dims = (0, 2, 3)
    return (probs * onehot).sum(dims), probs.sum(dims), onehot.sum(dims)


def dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    smooth: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Soft multi-class Dice: 1 - mean_c (2 sum(p g) + s) / (sum(p) + sum(g) + s), sums over the whole batch."""
    inter, p_sum, g_sum = _soft_overlap(logits, target, num_classes, ignore_index)
    dice = (2.0 * inter + smooth) / (p_sum + g_sum + smooth)
    return 1.0 - dice.mean()


def jaccard_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    smooth: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Soft 1 - mIoU: 1 - mean_c (sum(p g) + s) / (sum(p) + sum(g) - sum(p g) + s)."""
    inter, p_sum, g_sum = _soft_overlap(logits, target, num_classes, ignore_index)
    iou = (inter + smooth) / (p_sum + g_sum - inter + smooth)
    return 1.0 - iou.mean()


def interface_weight_map(
    mask: np.ndarray,
    raise_class: int | None,
    class_weight: float,
    boundary_pair: tuple[int, int] | None,
    band_px: int,
    band_weight: float,
) -> np.ndarray:
    """Per-pixel loss weights that make thin interfaces count: float32 H x W, 1 by default.

    Pixels of ``raise_class`` get ``class_weight``. For ``boundary_pair = (a, b)``, a pixel of ``a``
    with a pixel of ``b`` within ``band_px`` (Chebyshev distance: a cv2.dilate with a (2 band_px + 1)
    square kernel), and vice versa, gets ``max(its weight, band_weight)``: the band straddles the
    interface, band_px deep on each side.
    """
    if mask.ndim != 2:
        raise ValueError(f"weight map needs an H x W class mask, got shape {mask.shape}")
    if band_px < 0:
        raise ValueError(f"band_px must be >= 0, got {band_px}")
    weights = np.ones(mask.shape, np.float32)
    if raise_class is not None:
        weights[mask == raise_class] = class_weight
    if boundary_pair is not None:
        a, b = (mask == c for c in boundary_pair)
        kernel = np.ones((2 * band_px + 1, 2 * band_px + 1), np.uint8)
        near_a = cv2.dilate(a.astype(np.uint8), kernel).astype(bool)
        near_b = cv2.dilate(b.astype(np.uint8), kernel).astype(bool)
        band = (a & near_b) | (b & near_a)
        weights[band] = np.maximum(weights[band], band_weight)
    return weights


# Parameters each loss term accepts in the config, beside ``name`` and ``weight``.
_TERM_PARAMS = {
    "ce": {"class_weights", "ignore_index"},
    "weighted_ce": {"class_weights", "ignore_index"},
    "focal": {"alpha", "gamma", "ignore_index"},
    "dice": {"smooth", "ignore_index"},
    "jaccard": {"smooth", "ignore_index"},
}
_PER_CLASS_PARAMS = ("class_weights", "alpha")


@dataclass(frozen=True)
class LossSpec:
    """One weighted term of the training loss, as written in the config's ``[[train.loss]]`` tables."""

    name: str
    weight: float = 1.0
    params: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, entry: dict, num_classes: int) -> LossSpec:
        entry = dict(entry)
        name = entry.pop("name", None)
        if name not in _TERM_PARAMS:
            raise ValueError(f"unknown loss {name!r}; choose from {', '.join(sorted(_TERM_PARAMS))}")
        weight = entry.pop("weight", 1.0)
        if not isinstance(weight, int | float) or weight < 0:
            raise ValueError(f"loss {name!r}: weight must be a number >= 0, got {weight!r}")
        unknown = sorted(set(entry) - _TERM_PARAMS[name])
        if unknown:
            raise ValueError(
                f"loss {name!r}: unknown parameter(s) {', '.join(unknown)}; "
                f"accepted: {', '.join(sorted(_TERM_PARAMS[name])) or 'none'}"
            )
        for key in _PER_CLASS_PARAMS:
            if key in entry and len(entry[key]) != num_classes:
                raise ValueError(f"loss {name!r}: {key} has {len(entry[key])} values for {num_classes} classes")
        return cls(name=name, weight=float(weight), params=entry)

    def __call__(
        self, logits: torch.Tensor, target: torch.Tensor, pixel_weights: torch.Tensor | None, num_classes: int
    ) -> torch.Tensor:
        if self.name == "ce":
            return cross_entropy(logits, target, **self.params)
        if self.name == "weighted_ce":
            # Without a weight map (e.g. on validation batches) every pixel weighs 1: plain CE.
            return cross_entropy(logits, target, pixel_weights=pixel_weights, **self.params)
        if self.name == "focal":
            return focal_loss(logits, target, **self.params)
        if self.name == "dice":
            return dice_loss(logits, target, num_classes, **self.params)
        return jaccard_loss(logits, target, num_classes, **self.params)


def build_loss(specs: list[dict], num_classes: int) -> LossFn:
    """The training loss: sum of ``weight * term`` over the config entries, checked once up front."""
    if not specs:
        raise ValueError("no loss terms configured: give at least one, e.g. {name = 'ce'}")
    terms = [LossSpec.from_dict(entry, num_classes) for entry in specs]

    def loss(logits: torch.Tensor, target: torch.Tensor, pixel_weights: torch.Tensor | None = None) -> torch.Tensor:
        return torch.stack([term.weight * term(logits, target, pixel_weights, num_classes) for term in terms]).sum()

    return loss
