"""Segmentation scores (IoU, accuracy, BF): all computed from a confusion matrix or from two class maps.

Conventions used throughout:

- A confusion matrix ``cm`` is ``int64 K x K``, rows = truth, columns = prediction.
- A class is *present* when it occurs in the truth or in the prediction. Mean IoU averages the
  IoU of present classes only, so a class that neither the labels nor the model ever produce
  neither helps nor hurts the score (its IoU is NaN, 0/0). A class that the model predicts but
  the truth lacks is present and scores IoU 0.
- Mean class accuracy averages over classes present in the truth (recall is undefined otherwise).
- Fractions are over the evaluated pixels (ignored truth pixels leave the denominator).
"""

from __future__ import annotations

import cv2
import numpy as np

DEFAULT_BF_TOLERANCE_PX = 2.0

# Error-map colours (RGB). One-vs-rest for a chosen class uses all four; multi-class
# maps use CORRECT / WRONG only; pixels whose truth is ignored are IGNORED.
TRUE_POSITIVE = (0, 190, 0)
TRUE_NEGATIVE = (48, 48, 48)
FALSE_POSITIVE = (230, 40, 40)
FALSE_NEGATIVE = (40, 100, 240)
CORRECT = (190, 190, 190)
WRONG = (230, 40, 40)
IGNORED = (0, 0, 0)


def _check_pair(truth: np.ndarray, pred: np.ndarray) -> None:
    if truth.shape != pred.shape:
        raise ValueError(f"truth {truth.shape} and prediction {pred.shape} differ in shape")


def _valid_mask(truth: np.ndarray, ignore: int | None) -> np.ndarray:
    return np.ones(truth.shape, bool) if ignore is None else truth != ignore


def confusion_matrix(
    truth: np.ndarray, pred: np.ndarray, num_classes: int, ignore: int | None = None
) -> np.ndarray:
    """``int64 K x K`` counts, rows = truth class, columns = predicted class.

    Pixels whose truth equals ``ignore`` are left out. Any other value outside ``0..K-1``
    in either map is an error, not silently dropped: it means the labels do not match the model.
    """
    _check_pair(truth, pred)
    valid = _valid_mask(truth, ignore)
    t = truth[valid].astype(np.int64, copy=False).ravel()
    p = pred[valid].astype(np.int64, copy=False).ravel()
    for name, values in (("truth", t), ("prediction", p)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(
                f"{name} has class ids {values.min()}..{values.max()}, outside 0..{num_classes - 1}"
            )
    counts = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64, copy=False)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, NaN where den == 0 (without a warning)."""
    num = np.asarray(num, np.float64)
    den = np.asarray(den, np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def per_class_iou(cm: np.ndarray) -> np.ndarray:
    """IoU = TP / (TP + FP + FN) per class; NaN for a class absent from truth and prediction."""
    tp = np.diag(cm)
    return _ratio(tp, cm.sum(0) + cm.sum(1) - tp)


def mean_iou(cm: np.ndarray) -> float:
    """Mean IoU over classes present in truth or prediction (NaN if there are no pixels)."""
    return _nanmean(per_class_iou(cm))


def pixel_accuracy(cm: np.ndarray) -> float:
    """Global accuracy: correctly classified pixels / all evaluated pixels."""
    return float(_ratio(np.trace(cm), cm.sum()))


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    """Recall per class, TP / truth pixels of that class; NaN for a class absent from the truth."""
    return _ratio(np.diag(cm), cm.sum(1))


def per_class_precision(cm: np.ndarray) -> np.ndarray:
    """TP / predicted pixels of that class; NaN for a class never predicted."""
    return _ratio(np.diag(cm), cm.sum(0))


def per_class_dice(cm: np.ndarray) -> np.ndarray:
    """Dice (F1) per class, 2 TP / (truth + predicted pixels); NaN for a class in neither."""
    return _ratio(2 * np.diag(cm), cm.sum(0) + cm.sum(1))


def mean_accuracy(cm: np.ndarray) -> float:
    """Mean of per-class accuracy over classes present in the truth."""
    return _nanmean(per_class_accuracy(cm))


def weighted_iou(cm: np.ndarray) -> float:
    """Frequency-weighted IoU: sum over classes of (truth frequency x IoU)."""
    freq = _ratio(cm.sum(1), cm.sum())
    iou = per_class_iou(cm)
    present = freq > 0  # a class in the truth always has a defined IoU
    return float(np.sum(freq[present] * iou[present])) if present.any() else float("nan")


def normalised_confusion(cm: np.ndarray) -> np.ndarray:
    """Rows divided by their sums (row i: where truth class i went); an empty row stays 0."""
    rows = cm.sum(1, keepdims=True)
    return np.divide(cm, rows, out=np.zeros(cm.shape, np.float64), where=rows != 0)


def class_fractions(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(true, predicted) area fraction per class over the evaluated pixels."""
    total = cm.sum()
    if total == 0:
        zeros = np.zeros(cm.shape[0])
        return zeros, zeros.copy()
    return cm.sum(1) / total, cm.sum(0) / total


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 8-neighbour outside it; the image frame is not a boundary."""
    eroded = cv2.erode(mask, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)
    return (mask > 0) & (eroded == 0)


def _distance_to(boundary: np.ndarray) -> np.ndarray:
    """Euclidean distance of every pixel to the nearest ``boundary`` pixel."""
    return cv2.distanceTransform(
        np.where(boundary, 0, 1).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE
    )


def boundary_f1(
    truth: np.ndarray,
    pred: np.ndarray,
    num_classes: int,
    tolerance_px: float = DEFAULT_BF_TOLERANCE_PX,
    ignore: int | None = None,
) -> np.ndarray:
    """BF score per class for one image (Csurka, Larlus, Perronnin, BMVC 2013).

    A class's boundary is its pixels with an 8-neighbour of another class (the image frame
    does not count). Precision is the share of predicted boundary pixels within
    ``tolerance_px`` (Euclidean, inclusive) of a true boundary pixel, recall the converse;
    BF = 2PR / (P + R). The original paper uses 0.75 % of the image diagonal; a fixed pixel
    tolerance is used here so that scores of different image sizes are comparable.
    A class with no boundary in truth or prediction is NaN; a boundary on one side only is 0.
    Pixels whose truth is ``ignore`` count as neither boundary nor class.
    """
    _check_pair(truth, pred)
    valid = _valid_mask(truth, ignore)
    scores = np.full(num_classes, np.nan)
    for k in range(num_classes):
        true_edge = _boundary(((truth == k) & valid).astype(np.uint8))
        pred_edge = _boundary(((pred == k) & valid).astype(np.uint8))
        n_true, n_pred = int(true_edge.sum()), int(pred_edge.sum())
        if n_true == 0 and n_pred == 0:
            continue
        if n_true == 0 or n_pred == 0:
            scores[k] = 0.0
            continue
        # A tiny slack so that exactly-representable distances equal to the tolerance count.
        limit = tolerance_px + 1e-6
        precision = np.count_nonzero(_distance_to(true_edge)[pred_edge] <= limit) / n_pred
        recall = np.count_nonzero(_distance_to(pred_edge)[true_edge] <= limit) / n_true
        total = precision + recall
        scores[k] = 2 * precision * recall / total if total else 0.0
    return scores


def mean_bf_score(per_image: list[np.ndarray], num_classes: int) -> tuple[np.ndarray, float]:
    """Per-class BF averaged over the images where it is defined, and the mean over classes."""
    stacked = np.vstack([np.full(num_classes, np.nan), *per_image])
    defined = ~np.isnan(stacked)
    counts = defined.sum(0)
    sums = np.where(defined, stacked, 0.0).sum(0)
    per_class = _ratio(sums, counts)
    return per_class, _nanmean(per_class)


def error_map(
    truth: np.ndarray,
    pred: np.ndarray,
    positive_class: int | None = None,
    ignore: int | None = None,
) -> np.ndarray:
    """RGB ``uint8 H x W x 3`` picture of where the prediction is wrong.

    ``positive_class=None``: multi-class view, CORRECT grey where prediction equals truth,
    WRONG red elsewhere. With a class id: one-vs-rest for that class, TRUE_POSITIVE green,
    TRUE_NEGATIVE dark grey, FALSE_POSITIVE red, FALSE_NEGATIVE blue. Ignored truth is black.
    """
    _check_pair(truth, pred)
    out = np.empty((*truth.shape, 3), np.uint8)
    if positive_class is None:
        out[:] = WRONG
        out[truth == pred] = CORRECT
    else:
        t, p = truth == positive_class, pred == positive_class
        out[t & p] = TRUE_POSITIVE
        out[~t & ~p] = TRUE_NEGATIVE
        out[~t & p] = FALSE_POSITIVE
        out[t & ~p] = FALSE_NEGATIVE
    out[~_valid_mask(truth, ignore)] = IGNORED
    return out
