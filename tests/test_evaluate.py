"""`phasewatch evaluate` end to end: a bundle whose network is a known intensity threshold,
synthetic images and labels, every reported number worked out by hand."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnx_graphs import make_bundle

from phasewatch.app.cli import main
from phasewatch.bundle import load_bundle, sha256_file, write_manifest
from phasewatch.export import seg_scores
from phasewatch.export.evaluate import field_is_wrong, trust_report

H, W = 40, 60
NAMES = ["class0", "class1", "class2"]


def threshold_bundle(directory: Path, training_data: dict | None = None) -> Path:
    """A 1x1 conv whose argmax is class 0 below 1/3, class 1 up to 2/3, class 2 above.

    Input x = pixel / 255 (mean 0, std 1); logits 0, 10x - 10/3 and 20x - 10 cross at
    x = 1/3 and x = 2/3, so pixel values 0, 128 and 255 give classes 0, 1 and 2.
    """
    make_bundle(directory, in_channels=1, num_classes=3, layers=())
    model = onnx.load(str(directory / "model.onnx"))
    known = {
        "w0": np.array([0.0, 10.0, 20.0], np.float32).reshape(3, 1, 1, 1),
        "b0": np.array([0.0, -10 / 3, -10.0], np.float32),
    }
    for init in model.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(known[init.name], init.name))
    onnx.save(model, str(directory / "model.onnx"))
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["normalisation"] = {"mean": [0.0], "std": [1.0]}
    manifest["onnx_sha256"] = sha256_file(directory / "model.onnx")
    if training_data is not None:
        manifest["training"] = {"data": training_data}
    write_manifest(directory, manifest)
    return directory


def make_data(root: Path) -> tuple[Path, Path]:
    """Two images and labels; predictions follow from the threshold net.

    a: columns 0-19 = 0, 20-39 = 128, 40-59 = 255 -> predicted classes 0 | 1 | 2;
       truth: columns 0-24 class 0, 25-39 class 1, 40-59 class 2.
       confusion [[800, 200, 0], [0, 600, 0], [0, 0, 800]]
    b: all 255 -> predicted class 2; truth rows 0-9 class 1, rows 10-39 class 2.
       confusion [[0, 0, 0], [0, 0, 600], [0, 0, 1800]]
    """
    images, labels = root / "images", root / "labels"
    images.mkdir()
    labels.mkdir()
    a = np.zeros((H, W), np.uint8)
    a[:, 20:40], a[:, 40:] = 128, 255
    truth_a = np.zeros((H, W), np.uint8)
    truth_a[:, 25:40], truth_a[:, 40:] = 1, 2
    b = np.full((H, W), 255, np.uint8)
    truth_b = np.full((H, W), 2, np.uint8)
    truth_b[:10] = 1
    cv2.imwrite(str(images / "a.png"), a)
    cv2.imwrite(str(images / "b.png"), b)
    cv2.imwrite(str(labels / "a_mask.png"), truth_a)
    np.save(labels / "b.npy", truth_b.astype(np.int8))
    return images, labels


def evaluate(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["evaluate", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    bundle = threshold_bundle(tmp_path / "bundle")
    images, labels = make_data(tmp_path)
    return bundle, images, labels


def test_json_report_equals_hand_computed_metrics(setup, capsys):
    bundle, images, labels = setup
    code, out, _ = evaluate(
        capsys, "--model", str(bundle), "--images", str(images), "--labels", str(labels), "--json"
    )
    assert code == 0
    result = json.loads(out)
    # total confusion [[800, 200, 0], [0, 600, 600], [0, 0, 2600]], 4800 pixels
    iou = [800 / 1000, 600 / 1400, 2600 / 3200]
    assert result["mean_iou"] == pytest.approx(sum(iou) / 3)
    assert result["pixel_accuracy"] == pytest.approx(4000 / 4800)
    assert result["mean_accuracy"] == pytest.approx((0.8 + 0.5 + 1.0) / 3)
    assert result["weighted_iou"] == pytest.approx((1000 * 0.8 + 1200 * 3 / 7 + 2600 * 13 / 16) / 4800)
    np.testing.assert_allclose(result["confusion"], [[0.8, 0.2, 0], [0, 0.5, 0.5], [0, 0, 1]])
    true_fraction = [1000 / 4800, 1200 / 4800, 2600 / 4800]
    predicted_fraction = [800 / 4800, 800 / 4800, 3200 / 4800]
    accuracy = [0.8, 0.5, 1.0]
    assert list(result["per_class"]) == NAMES
    for k, name in enumerate(NAMES):
        row = result["per_class"][name]
        assert row["iou"] == pytest.approx(iou[k])
        assert row["accuracy"] == pytest.approx(accuracy[k])
        assert row["true_fraction"] == pytest.approx(true_fraction[k])
        assert row["predicted_fraction"] == pytest.approx(predicted_fraction[k])
    # BF at 2 px. a: class 0 boundaries at columns 24 (truth) and 19 (pred), 5 px apart -> 0;
    # class 1 truth columns 25 + 39, pred 20 + 39 -> P = R = 1/2; class 2 column 40 both -> 1.
    # b: class 0 nowhere -> undefined; class 1 only in truth -> 0; class 2 has a boundary
    # (row 10) in truth only, the prediction fills the image -> 0.
    # Per class over images: 0, (0.5 + 0) / 2, (1 + 0) / 2 -> mean 0.25.
    assert result["bf_tolerance_px"] == 2.0
    assert result["bf_score"] == pytest.approx(0.25)
    assert [result["per_class"][n]["bf_score"] for n in NAMES] == pytest.approx([0, 0.25, 0.5])
    a, b = result["images"]
    assert (a["image"], b["image"]) == ("a.png", "b.png")
    assert list(a["true_fractions"].values()) == pytest.approx([1000 / 2400, 600 / 2400, 800 / 2400])
    assert list(a["predicted_fractions"].values()) == pytest.approx([1 / 3, 1 / 3, 1 / 3])
    assert a["pixel_accuracy"] == pytest.approx(2200 / 2400)
    assert list(b["true_fractions"].values()) == pytest.approx([0, 0.25, 0.75])
    assert list(b["predicted_fractions"].values()) == pytest.approx([0, 0, 1])
    assert b["pixel_accuracy"] == pytest.approx(0.75)
    assert result["model"] == "tiny"
    assert result["backend"]


def test_human_report_and_error_maps(setup, tmp_path, capsys):
    bundle, images, labels = setup
    maps = tmp_path / "maps"
    code, out, _ = evaluate(
        capsys, "--model", str(bundle), "--images", str(images), "--labels", str(labels),
        "--error-maps", str(maps), "--error-class", "1",
    )
    assert code == 0
    summary = {line[:24].strip(): line[24:-2].strip() for line in out.splitlines()}
    assert summary["mean IoU"] == "68.04"  # (0.8 + 3/7 + 13/16) / 3
    assert summary["pixel accuracy"] == "83.33"
    assert summary["BF score (2 px)"] == "25.00"
    class1 = next(line for line in out.splitlines() if line.startswith("class1"))
    # IoU 600/1400, Dice 2*600/(1200+800), precision 600/800, recall 600/1200, BF, true, predicted
    assert class1.split() == ["class1", "42.86", "60.00", "75.00", "50.00", "25.00", "25.00", "16.67"]
    picture = cv2.cvtColor(cv2.imread(str(maps / "a.errors.png")), cv2.COLOR_BGR2RGB)
    # image a, one-vs-rest for class 1, along a row: TN, FP (cols 20-24), TP, TN
    along_row = [picture[5, col] for col in (0, 22, 30, 50)]
    expected = [seg_scores.TRUE_NEGATIVE, seg_scores.FALSE_POSITIVE, seg_scores.TRUE_POSITIVE,
                seg_scores.TRUE_NEGATIVE]
    np.testing.assert_array_equal(along_row, expected)
    picture_b = cv2.cvtColor(cv2.imread(str(maps / "b.errors.png")), cv2.COLOR_BGR2RGB)
    assert tuple(picture_b[0, 0]) == seg_scores.FALSE_NEGATIVE


def test_rgb_labels_through_palette_from_manifest_or_command_line(tmp_path, capsys):
    images, labels = make_data(tmp_path)
    # Replace the index label of a by a colour mask: blue = class 1, red = class 2.
    truth_a = cv2.imread(str(labels / "a_mask.png"), cv2.IMREAD_UNCHANGED)
    colours = np.array([[10, 20, 30], [0, 0, 255], [255, 0, 0]], np.uint8)  # RGB
    (labels / "a_mask.png").unlink()
    cv2.imwrite(str(labels / "a_mask.png"), cv2.cvtColor(colours[truth_a], cv2.COLOR_RGB2BGR))
    palette = {"0,0,255": 1, "255,0,0": 2}
    from_manifest = threshold_bundle(tmp_path / "m", {"label_format": "palette", "palette": palette})
    plain = threshold_bundle(tmp_path / "p")
    for bundle, extra in [(from_manifest, []), (plain, ["--palette", json.dumps(palette)])]:
        code, out, _ = evaluate(
            capsys, "--model", str(bundle), "--images", str(images), "--labels", str(labels),
            "--json", *extra,
        )
        assert code == 0
        assert json.loads(out)["pixel_accuracy"] == pytest.approx(4000 / 4800)


def test_unreadable_image_is_one_line_and_exit_1(setup, capsys):
    bundle, images, labels = setup
    (images / "c.png").write_bytes(b"not a png at all")
    np.save(labels / "c.npy", np.zeros((H, W), np.int8))
    code, out, err = evaluate(
        capsys, "--model", str(bundle), "--images", str(images), "--labels", str(labels), "--json"
    )
    assert code == 1
    assert [r["image"] for r in json.loads(out)["images"]] == ["a.png", "b.png"]
    named = [line for line in err.splitlines() if "c.png" in line]
    assert len(named) == 1


def test_label_of_wrong_size_names_the_label(setup, capsys):
    bundle, images, labels = setup
    np.save(labels / "b.npy", np.zeros((H, W + 1), np.int8))
    code, _, err = evaluate(
        capsys, "--model", str(bundle), "--images", str(images), "--labels", str(labels), "--json"
    )
    assert code == 1
    assert any("b.npy" in line for line in err.splitlines())


def test_record_keeps_the_summary_in_the_manifest(setup, capsys):
    bundle, images, labels = setup
    code, _, _ = evaluate(capsys, "--model", str(bundle), "--images", str(images), "--labels", str(labels),
                          "--record", "synthetic")
    assert code == 0
    recorded = load_bundle(bundle).manifest["evaluations"]["synthetic"]
    assert recorded["pixel_accuracy"] == pytest.approx(4000 / 4800)
    assert recorded["per_class_iou"] == pytest.approx(dict(zip(NAMES, [0.8, 600 / 1400, 2600 / 3200], strict=True)))
    assert recorded["images"] == 2
    assert recorded["per_class_dice"]["class1"] == pytest.approx(0.6)
    assert recorded["measurement_agreement"]["images"] == 2


@pytest.mark.parametrize("palette", ["not json", "[1, 2]", '{"1,2": 1}'])
def test_bad_palette_is_one_line_and_exit_1(setup, capsys, palette):
    bundle, images, labels = setup
    code, _, err = evaluate(capsys, "--model", str(bundle), "--images", str(images), "--labels", str(labels),
                            "--palette", palette)
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and err.startswith("phasewatch evaluate: palette")


def test_label_with_ids_the_model_lacks_names_the_label(setup, capsys):
    bundle, images, labels = setup
    np.save(labels / "b.npy", np.full((H, W), 7, np.int8))
    code, _, err = evaluate(capsys, "--model", str(bundle), "--images", str(images), "--labels", str(labels))
    assert code == 1
    assert any(line.startswith(str(labels / "b.npy")) and "0..2" in line for line in err.splitlines())


@pytest.mark.parametrize("true, predicted, wrong", [
    ([0.50, 0.50], [0.46, 0.54], False),  # 4 points: within max(5 points, 12.5 points)
    ([0.50, 0.50], [0.36, 0.64], True),   # 14 points on a 50 % class: over 12.5
    ([0.90, 0.10], [0.86, 0.14], False),  # 4 points on a 10 % class: within 5
    ([0.90, 0.10], [0.83, 0.17], True),   # 7 points on a 10 % class: over 5
    ([0.97, 0.03], [0.90, 0.10], False),  # 7 points on a 97 % class: within 24; the 3 % class is not judged
    ([0.99, 0.01], [0.98, 0.02], False),  # a 1 % class is not judged
])
def test_wrong_field_rule(true, predicted, wrong):
    assert field_is_wrong(np.array(true), np.array(predicted)) is wrong


def test_trust_report_counts_flags_on_wrong_and_right_fields():
    images = [{"wrong": w, "trust": {"ok": ok}} for w, ok in [(True, False), (True, True), (False, False),
                                                              (False, True), (False, True)]]
    report = trust_report(images)
    assert {k: report[k] for k in ("fields", "wrong", "wrong_flagged", "right_flagged")} == {
        "fields": 5, "wrong": 2, "wrong_flagged": 1, "right_flagged": 1}


def _ecd(area: float) -> float:
    return float(np.sqrt(4 * area / np.pi))


def test_measurement_agreement_against_known_counts_and_sizes(tmp_path, capsys):
    """Two hand-made fields at 0.5 um per pixel; class 0 is the background.

    p: truth has three 4x4 class-2 squares and one 2x5 class-1 bar; the image (and so the
       prediction) keeps the first square, grows the second to 6x6, loses the third, keeps the
       bar and adds a 3x3 class-1 blob. q: one 4x4 class-2 square, predicted exactly.
    """
    bundle = threshold_bundle(tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["classes"][0]["role"] = "background"
    write_manifest(bundle, manifest)
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    image, truth = np.zeros((H, W), np.uint8), np.zeros((H, W), np.uint8)
    truth[5:9, 5:9] = truth[5:9, 20:24] = truth[5:9, 40:44] = 2
    image[5:9, 5:9] = image[4:10, 19:25] = 255
    truth[20:22, 10:15] = 1
    image[20:22, 10:15] = image[25:28, 40:43] = 128
    cv2.imwrite(str(images / "p.png"), image)
    np.save(labels / "p.npy", truth.astype(np.int8))
    image, truth = np.zeros((H, W), np.uint8), np.zeros((H, W), np.uint8)
    image[10:14, 10:14], truth[10:14, 10:14] = 255, 2
    cv2.imwrite(str(images / "q.png"), image)
    np.save(labels / "q.npy", truth.astype(np.int8))
    args = ["--model", str(bundle), "--images", str(images), "--labels", str(labels), "--pixel-size", "0.5"]

    code, out, _ = evaluate(capsys, *args, "--json")
    assert code == 0
    result = json.loads(out)
    p = next(i["measurements"] for i in result["images"] if i["image"] == "p.png")
    n = H * W
    assert p["fractions"]["class2"] == pytest.approx({"true": 48 / n, "predicted": 52 / n, "error": 4 / n})
    assert p["fractions"]["class1"]["error"] == pytest.approx(9 / n)
    assert p["fractions"]["class0"]["error"] == pytest.approx(-13 / n)
    square, grown = _ecd(16) * 0.5, _ecd(36) * 0.5
    assert p["particles"]["class2"] == pytest.approx({
        "true_count": 3, "predicted_count": 2, "count_error": -1, "true_mean_ecd": square,
        "predicted_mean_ecd": (square + grown) / 2, "mean_ecd_error": (grown - square) / 2, "unit": "um"})
    class1_ecd_error = (_ecd(9) - _ecd(10)) / 2 * 0.5
    assert p["particles"]["class1"]["count_error"] == 1
    assert p["particles"]["class1"]["mean_ecd_error"] == pytest.approx(class1_ecd_error)
    assert "class0" not in p["particles"]  # a background class has no particles

    summary = result["measurement_agreement"]
    assert summary["images"] == 2 and summary["pooled_classes"] == ["class1", "class2"]
    class2 = summary["per_class"]["class2"]
    assert class2["fraction_error"] == pytest.approx({"mean": 2 / n, "worst": 4 / n, "worst_image": "p.png"})
    assert class2["count_error"] == pytest.approx({"mean": 0.5, "worst": 1.0, "worst_image": "p.png"})
    assert class2["mean_ecd_error"]["mean"] == pytest.approx((grown - square) / 4)
    assert summary["per_class"]["class1"]["mean_ecd_error"]["worst"] == pytest.approx(abs(class1_ecd_error))
    assert summary["fraction_error_mean"] == pytest.approx(13 / n / 4)
    assert summary["fraction_error_worst"] == pytest.approx(9 / n)
    assert summary["fraction_error_worst_at"] == "p.png (class1)"
    assert "count_error" not in summary["per_class"]["class0"]

    code, out, _ = evaluate(capsys, *args)
    assert code == 0
    table = out[out.index("measurement agreement"):].splitlines()
    assert table[2].split() == ["class0", "0.27", "/", "0.54", "-", "-"]  # 13 / 2400 in points, over 2 images
    assert table[4].split()[:7] == ["class2", "0.08", "/", "0.17", "0.5", "/", "1.0"]
    assert table[4].endswith("um")
