"""Losses against values worked out by hand on 2-4 pixel tensors; the arithmetic is in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from phasewatch.export.losses import (  # noqa: E402
    build_loss,
    cross_entropy,
    dice_loss,
    focal_loss,
    interface_weight_map,
    jaccard_loss,
)

LN2, LN3 = math.log(2.0), math.log(3.0)


def pixels(*logit_pairs: tuple[float, ...]) -> torch.Tensor:
    """Logits of a 1 x P image as 1 x K x 1 x P, one tuple of K logits per pixel."""
    return torch.tensor(logit_pairs, dtype=torch.float64).T.reshape(1, len(logit_pairs[0]), 1, len(logit_pairs))


def labels(*ids: int) -> torch.Tensor:
    return torch.tensor(ids, dtype=torch.int64).reshape(1, 1, len(ids))


# Pixel A: logits (0, 0)     -> softmax (1/2, 1/2)
# Pixel B: logits (ln 3, 0)  -> softmax (3/4, 1/4)
A, B = (0.0, 0.0), (LN3, 0.0)


def test_cross_entropy_is_mean_negative_log_softmax():
    # target 0 on both: -ln(1/2) = ln 2, -ln(3/4) = ln(4/3); mean = (ln 2 + ln 4/3) / 2
    expected = (LN2 + math.log(4 / 3)) / 2
    assert cross_entropy(pixels(A, B), labels(0, 0)).item() == pytest.approx(expected)


def test_cross_entropy_class_weights():
    # A target 0: ln 2, weight 1.  B target 1: -ln(1/4) = 2 ln 2, weight 3.
    # (1 * ln 2 + 3 * 2 ln 2) / (1 + 3) = 7/4 ln 2
    loss = cross_entropy(pixels(A, B), labels(0, 1), class_weights=[1.0, 3.0])
    assert loss.item() == pytest.approx(7 / 4 * LN2)


def test_cross_entropy_pixel_weights():
    # target 0 on both, pixel weights 1 and 3: (ln 2 + 3 ln 4/3) / 4
    weights = torch.tensor([[[1.0, 3.0]]], dtype=torch.float64)
    loss = cross_entropy(pixels(A, B), labels(0, 0), pixel_weights=weights)
    assert loss.item() == pytest.approx((LN2 + 3 * math.log(4 / 3)) / 4)


def test_cross_entropy_ignores_ignore_index():
    # the third pixel is confidently wrong but unlabelled: the result stays (ln 2 + ln 4/3) / 2
    loss = cross_entropy(pixels(A, B, (0.0, 9.0)), labels(0, 0, 255))
    assert loss.item() == pytest.approx((LN2 + math.log(4 / 3)) / 2)


def test_all_ignored_gives_zero_with_a_graph():
    logits = pixels(A, B).requires_grad_()
    loss = cross_entropy(logits, labels(255, 255)) + focal_loss(logits, labels(255, 255))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.all(logits.grad == 0)


def test_focal_with_gamma_zero_is_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    target[0, 0, :2] = 255
    assert focal_loss(logits, target, gamma=0.0).item() == pytest.approx(cross_entropy(logits, target).item())


def test_focal_gamma_two_by_hand():
    # B target 0: p_t = 3/4, (1/4)^2 ln(4/3) = ln(4/3) / 16
    # A target 1: p_t = 1/2, (1/2)^2 ln 2    = ln 2 / 4
    by_pixel = (math.log(4 / 3) / 16, LN2 / 4)
    assert focal_loss(pixels(B, A), labels(0, 1), gamma=2.0).item() == pytest.approx(sum(by_pixel) / 2)
    # alpha per class (0.25, 0.75) scales each pixel by its class's factor
    weighted = (0.25 * by_pixel[0] + 0.75 * by_pixel[1]) / 2
    assert focal_loss(pixels(B, A), labels(0, 1), alpha=[0.25, 0.75]).item() == pytest.approx(weighted)


def test_dice_and_jaccard_of_a_confident_correct_prediction_are_near_zero():
    target = labels(0, 1, 2, 1)
    logits = 30.0 * torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).double()
    assert dice_loss(logits, target, 3).item() == pytest.approx(0.0, abs=1e-9)
    assert jaccard_loss(logits, target, 3).item() == pytest.approx(0.0, abs=1e-9)


def test_dice_and_jaccard_by_hand():
    # logits 0 on both pixels: p = 1/2 everywhere; targets (0, 1).
    # per class: sum(p g) = 1/2, sum(p) = 1, sum(g) = 1.
    # smooth 1: dice_c = (2 * 1/2 + 1) / (1 + 1 + 1) = 2/3 -> loss 1/3
    #           iou_c  = (1/2 + 1) / (1 + 1 - 1/2 + 1) = 3/5 -> loss 2/5
    # smooth 0: dice_c = 1 / 2 -> loss 1/2;  iou_c = (1/2) / (3/2) = 1/3 -> loss 2/3
    logits, target = pixels(A, A), labels(0, 1)
    assert dice_loss(logits, target, 2).item() == pytest.approx(1 / 3)
    assert jaccard_loss(logits, target, 2).item() == pytest.approx(2 / 5)
    assert dice_loss(logits, target, 2, smooth=0.0).item() == pytest.approx(1 / 2)
    assert jaccard_loss(logits, target, 2, smooth=0.0).item() == pytest.approx(2 / 3)


def test_dice_counts_classes_absent_from_the_truth():
    # 3 classes, logits 0: p = 1/3; targets (0, 0).
    # class 0: (2 * 2/3 + 1) / (2/3 + 2 + 1) = (7/3) / (11/3) = 7/11
    # class 1, 2: (0 + 1) / (2/3 + 0 + 1) = 3/5
    # loss = 1 - (7/11 + 6/5) / 3 = 1 - 101/165 = 64/165
    logits = pixels((0.0, 0.0, 0.0), (0.0, 0.0, 0.0))
    assert dice_loss(logits, labels(0, 0), 3).item() == pytest.approx(64 / 165)


def test_dice_and_jaccard_ignore_unlabelled_pixels():
    logits = pixels(A, A, (9.0, -9.0))
    assert dice_loss(logits, labels(0, 1, 255), 2).item() == pytest.approx(1 / 3)
    assert jaccard_loss(logits, labels(0, 1, 255), 2).item() == pytest.approx(2 / 5)


def test_overlap_losses_reject_a_class_count_mismatch():
    with pytest.raises(ValueError, match="3"):
        dice_loss(pixels(A, B), labels(0, 1), 3)


MASK = np.array(
    [
        [0, 0, 0, 1, 1, 1],
        [0, 0, 0, 1, 1, 1],
        [2, 2, 2, 2, 2, 2],
    ],
    np.uint8,
)


def test_weight_map_band_between_two_classes():
    # (0, 1) meet between columns 2 and 3 of rows 0-1; band 1 px deep each side -> columns 2, 3.
    # class 2 is raised to 2 and is not in the pair, even where it touches class 1 diagonally.
    weights = interface_weight_map(
        MASK, raise_class=2, class_weight=2.0, boundary_pair=(0, 1), band_px=1, band_weight=5.0
    )
    expected = np.array([[1, 1, 5, 5, 1, 1], [1, 1, 5, 5, 1, 1], [2, 2, 2, 2, 2, 2]], np.float32)
    assert weights.dtype == np.float32
    np.testing.assert_array_equal(weights, expected)


def test_weight_map_wider_band():
    weights = interface_weight_map(MASK, None, 1.0, (0, 1), band_px=2, band_weight=5.0)
    expected = np.array([[1, 5, 5, 5, 5, 1], [1, 5, 5, 5, 5, 1], [1, 1, 1, 1, 1, 1]], np.float32)
    np.testing.assert_array_equal(weights, expected)


def test_weight_map_band_takes_max_with_class_weight():
    # pair (1, 2), 1 px: class 1 in row 1 (cols 3-5) touches row 2; class 2 in row 2, cols 2-5, touches
    # class 1 (col 2 diagonally). Class 2 carries 2.0: band 1.5 keeps 2.0 there, band 7.0 wins.
    low = interface_weight_map(MASK, 2, 2.0, (1, 2), band_px=1, band_weight=1.5)
    np.testing.assert_array_equal(low, [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1.5, 1.5, 1.5], [2, 2, 2, 2, 2, 2]])
    high = interface_weight_map(MASK, 2, 2.0, (1, 2), band_px=1, band_weight=7.0)
    np.testing.assert_array_equal(high, [[1, 1, 1, 1, 1, 1], [1, 1, 1, 7, 7, 7], [2, 2, 7, 7, 7, 7]])


def test_weight_map_without_options_is_ones():
    np.testing.assert_array_equal(interface_weight_map(MASK, None, 3.0, None, 1, 9.0), np.ones(MASK.shape))


def test_build_loss_sums_weighted_terms():
    # logits 0, targets (0, 1): CE = ln 2, Dice = 1/3 (see above). 2 * ln 2 + 0.5 * 1/3
    loss = build_loss([{"name": "ce", "weight": 2.0}, {"name": "dice", "weight": 0.5}], num_classes=2)
    assert loss(pixels(A, A), labels(0, 1)).item() == pytest.approx(2 * LN2 + 1 / 6)


def test_build_loss_passes_parameters_and_pixel_weights():
    # ce with class weights (1, 3) on A->0, B->1: 7/4 ln 2 (see above);
    # weighted_ce with pixel weights (1, 3): (ln 2 + 3 * 2 ln 2) / 4 = 7/4 ln 2;
    # jaccard of (A, B) vs (0, 1), smooth 1: class 0: p = (1/2, 3/4), g = (1, 0): (1/2 + 1) / (5/4 + 1 - 1/2 + 1)
    #   = 1.5 / 2.75 = 6/11; class 1: p = (1/2, 1/4), g = (0, 1): (1/4 + 1) / (3/4 + 1 - 1/4 + 1) = 1.25 / 2.5 = 1/2
    #   -> 1 - (6/11 + 1/2) / 2 = 1 - 23/44 = 21/44
    loss = build_loss(
        [
            {"name": "ce", "class_weights": [1.0, 3.0]},
            {"name": "weighted_ce", "weight": 2.0},
            {"name": "jaccard"},
        ],
        num_classes=2,
    )
    pixel_weights = torch.tensor([[[1.0, 3.0]]], dtype=torch.float64)
    expected = 7 / 4 * LN2 + 2 * 7 / 4 * LN2 + 21 / 44
    assert loss(pixels(A, B), labels(0, 1), pixel_weights).item() == pytest.approx(expected)
    # without a weight map weighted_ce is plain CE: (ln 2 + 2 ln 2) / 2 = 3/2 ln 2
    assert loss(pixels(A, B), labels(0, 1)).item() == pytest.approx(7 / 4 * LN2 + 2 * 3 / 2 * LN2 + 21 / 44)


def test_build_loss_focal_term():
    loss = build_loss([{"name": "focal", "weight": 0.5, "gamma": 2.0, "alpha": [0.25, 0.75]}], num_classes=2)
    expected = 0.5 * (0.25 * math.log(4 / 3) / 16 + 0.75 * LN2 / 4) / 2
    assert loss(pixels(B, A), labels(0, 1)).item() == pytest.approx(expected)


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ([{"name": "hinge"}], "unknown loss 'hinge'"),
        ([{"weight": 1.0}], "unknown loss None"),
        ([{"name": "dice", "gamma": 2.0}], "unknown parameter.*gamma"),
        ([{"name": "ce", "class_weights": [1.0, 2.0, 3.0]}], "class_weights has 3 values for 2 classes"),
        ([{"name": "focal", "alpha": [1.0]}], "alpha has 1 values for 2 classes"),
        ([{"name": "ce", "weight": -1}], "weight must be a number >= 0"),
        ([], "no loss terms"),
    ],
)
def test_build_loss_rejects_bad_specs(specs, message):
    with pytest.raises(ValueError, match=message) as info:
        build_loss(specs, num_classes=2)
    assert "\n" not in str(info.value)
