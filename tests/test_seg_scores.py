"""Segmentation scores against values worked out by hand on tiny maps."""

from __future__ import annotations

import numpy as np
import pytest

from phasewatch.export import seg_scores

# 2 x 3 maps, 3 classes. Pixel pairs (truth, pred): (0,0) (0,0) (0,1) / (1,1) (1,2) (2,2)
TRUTH = np.array([[0, 0, 0], [1, 1, 2]], np.uint8)
PRED = np.array([[0, 0, 1], [1, 2, 2]], np.uint8)
# rows = truth, columns = prediction, counted by hand from the pairs above
CM = np.array([[2, 1, 0], [0, 1, 1], [0, 0, 1]])


def test_confusion_matrix_by_hand():
    cm = seg_scores.confusion_matrix(TRUTH, PRED, 3)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, CM)


def test_scores_by_hand():
    # IoU: class 0: 2/(2+0+1); class 1: 1/(1+1+1); class 2: 1/(1+1+0)
    np.testing.assert_allclose(seg_scores.per_class_iou(CM), [2 / 3, 1 / 3, 1 / 2])
    assert seg_scores.mean_iou(CM) == pytest.approx((2 / 3 + 1 / 3 + 1 / 2) / 3)
    assert seg_scores.pixel_accuracy(CM) == pytest.approx(4 / 6)
    np.testing.assert_allclose(seg_scores.per_class_accuracy(CM), [2 / 3, 1 / 2, 1])
    assert seg_scores.mean_accuracy(CM) == pytest.approx(13 / 18)
    # truth frequencies 3/6, 2/6, 1/6
    assert seg_scores.weighted_iou(CM) == pytest.approx(19 / 36)
    np.testing.assert_allclose(
        seg_scores.normalised_confusion(CM), [[2 / 3, 1 / 3, 0], [0, 1 / 2, 1 / 2], [0, 0, 1]]
    )
    true, predicted = seg_scores.class_fractions(CM)
    np.testing.assert_allclose(true, [1 / 2, 1 / 3, 1 / 6])
    np.testing.assert_allclose(predicted, [1 / 3, 1 / 3, 1 / 3])


def test_absent_class_does_not_count_but_predicted_only_class_does():
    cm = seg_scores.confusion_matrix(TRUTH, PRED, 4)  # class 3 in neither map
    iou = seg_scores.per_class_iou(cm)
    assert np.isnan(iou[3])
    assert seg_scores.mean_iou(cm) == pytest.approx(0.5)
    assert seg_scores.mean_accuracy(cm) == pytest.approx(13 / 18)
    np.testing.assert_array_equal(seg_scores.normalised_confusion(cm)[3], [0, 0, 0, 0])

    # class 1 only predicted: IoU 0 and it halves the mean (class 0: 3/4)
    cm = seg_scores.confusion_matrix(np.zeros((2, 2), np.uint8), np.array([[0, 0], [0, 1]]), 2)
    np.testing.assert_allclose(seg_scores.per_class_iou(cm), [3 / 4, 0])
    assert seg_scores.mean_iou(cm) == pytest.approx(3 / 8)
    assert seg_scores.mean_accuracy(cm) == pytest.approx(3 / 4)  # class 1 not in truth


def test_ignore_value_leaves_pixels_out():
    truth = np.array([[0, 255], [1, 255]], np.uint8)
    pred = np.array([[0, 1], [0, 1]], np.uint8)
    cm = seg_scores.confusion_matrix(truth, pred, 2, ignore=255)
    np.testing.assert_array_equal(cm, [[1, 0], [1, 0]])
    true, predicted = seg_scores.class_fractions(cm)
    np.testing.assert_allclose(true, [0.5, 0.5])
    np.testing.assert_allclose(predicted, [1.0, 0.0])


def test_out_of_range_label_is_an_error():
    with pytest.raises(ValueError, match="truth has class ids 0..5"):
        seg_scores.confusion_matrix(np.array([0, 5]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="differ in shape"):
        seg_scores.confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 3)


def test_empty_confusion_is_nan_not_a_crash():
    cm = np.zeros((2, 2), np.int64)
    assert np.isnan(seg_scores.mean_iou(cm))
    assert np.isnan(seg_scores.pixel_accuracy(cm))
    assert np.isnan(seg_scores.weighted_iou(cm))


def _square(col0: int) -> np.ndarray:
    image = np.zeros((30, 30), np.uint8)
    image[5:15, col0 : col0 + 10] = 1
    return image


def test_bf_score_on_shifted_square():
    # Truth square rows 5..14 cols 5..14; prediction shifted right by 3 px (cols 8..17).
    # Class 1 boundary = the 36 perimeter pixels. Distances of the predicted perimeter to
    # the true one: top and bottom rows 0 (x7), 1, 2, 3; left column (rows 6..13)
    # 1,2,3,3,3,3,2,1; right column 3 (x8). Within 2 px: 9 + 9 + 4 + 0 = 22 of 36,
    # and by mirror symmetry the same for recall.
    # Class 0 boundary = the 44-pixel ring around the square (8-neighbourhood): rows 4 and 15
    # give 9 at 0, then 1, 2, 3; left column 1,2,3,3,3,3,3,3,2,1; right column 3 (x10):
    # 11 + 11 + 4 + 0 = 26 of 44.
    truth, pred = _square(5), _square(8)
    np.testing.assert_allclose(seg_scores.boundary_f1(truth, pred, 2, 2.0), [26 / 44, 22 / 36])
    np.testing.assert_allclose(seg_scores.boundary_f1(truth, pred, 2, 0.0), [18 / 44, 14 / 36])
    np.testing.assert_allclose(seg_scores.boundary_f1(truth, pred, 2, 3.0), [1.0, 1.0])


def test_bf_score_undefined_and_one_sided_classes():
    truth, pred = _square(5), np.zeros((30, 30), np.uint8)
    scores = seg_scores.boundary_f1(truth, pred, 3)
    assert scores[0] == 0 and scores[1] == 0  # boundary in truth only
    assert np.isnan(scores[2])  # in neither map


def test_mean_bf_score_skips_undefined():
    per_class, mean = seg_scores.mean_bf_score([np.array([1.0, np.nan]), np.array([0.5, 0.25])], 2)
    np.testing.assert_allclose(per_class, [0.75, 0.25])
    assert mean == pytest.approx(0.5)
    per_class, mean = seg_scores.mean_bf_score([], 2)
    assert np.isnan(per_class).all() and per_class.shape == (2,) and np.isnan(mean)


def test_error_maps():
    truth = np.array([[1, 1, 0, 0, 255]], np.uint8)
    pred = np.array([[1, 0, 1, 0, 0]], np.uint8)
    one_vs_rest = seg_scores.error_map(truth, pred, positive_class=1, ignore=255)
    expected = [
        seg_scores.TRUE_POSITIVE,
        seg_scores.FALSE_NEGATIVE,
        seg_scores.FALSE_POSITIVE,
        seg_scores.TRUE_NEGATIVE,
        seg_scores.IGNORED,
    ]
    np.testing.assert_array_equal(one_vs_rest[0], expected)
    multi = seg_scores.error_map(truth, pred, ignore=255)
    expected = [seg_scores.CORRECT, seg_scores.WRONG, seg_scores.WRONG, seg_scores.CORRECT, seg_scores.IGNORED]
    np.testing.assert_array_equal(multi[0], expected)
