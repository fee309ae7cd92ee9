"""`phasewatch segment` end to end: files in, class maps, overlays and JSON out."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import tifffile
from onnx_graphs import make_bundle

from phasewatch.app.cli import main
from phasewatch.bundle import bundled_model_names

JSON_KEYS = {"image", "model", "backend", "width", "height", "pixel_size_um", "pixel_size_source",
             "fractions", "particles", "timing_ms"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("bundle") / "tiny", in_channels=1, num_classes=3, tile=64)


def micrograph(height: int, width: int, seed: int, dtype=np.uint8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = 255 if dtype == np.uint8 else 65535
    smooth = cv2.GaussianBlur(rng.random((height, width)).astype(np.float32), (0, 0), 4)
    smooth = (smooth - smooth.min()) / (np.ptp(smooth) + 1e-9)
    return (smooth * top).astype(dtype)


def test_good_files_written_bad_file_reported_exit_1(tmp_path, bundle, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    cv2.imwrite(str(inputs / "a.png"), micrograph(130, 201, 0))
    tifffile.imwrite(inputs / "stack.tif", np.stack([micrograph(96, 80, s, np.uint16) for s in (1, 2)]))
    (inputs / "broken.tif").write_text("not an image")
    out = tmp_path / "out"

    code = main(["segment", str(inputs / "a.png"), str(inputs / "broken.tif"), str(inputs / "stack.tif"),
                 "--model", str(bundle), "--out", str(out), "--backend", "cpu", "--pixel-size", "0.25"])

    assert code == 1
    err = capsys.readouterr().err
    error_lines = [line for line in err.splitlines() if "broken.tif" in line]
    assert len(error_lines) == 1 and "error:" in error_lines[0]
    expected = {"a": (130, 201), "stack.p0000": (96, 80), "stack.p0001": (96, 80)}
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{stem}.{kind}" for stem in expected for kind in ("classes.png", "overlay.jpg", "unsure.png", "json")]
        + ["a.preview.jpg", "stack.preview.jpg"])
    for stem, (height, width) in expected.items():
        classes = cv2.imread(str(out / f"{stem}.classes.png"), cv2.IMREAD_UNCHANGED)
        assert classes.shape == (height, width) and classes.dtype == np.uint8
        overlay = cv2.imread(str(out / f"{stem}.overlay.jpg"))
        assert overlay.shape == (height, width, 3)
        record = json.loads((out / f"{stem}.json").read_text())
        assert record.keys() >= JSON_KEYS
        assert (record["width"], record["height"]) == (width, height)
        assert (record["pixel_size_um"], record["pixel_size_source"]) == (0.25, "user")
        assert sum(record["fractions"].values()) == pytest.approx(1.0)
        # The JSON's fractions are those of the class map written beside it.
        counts = np.bincount(classes.ravel(), minlength=3) / classes.size
        assert [record["fractions"][f"class{k}"] for k in range(3)] == pytest.approx(counts.tolist())


def test_unknown_model_is_one_line_and_exit_2(tmp_path, capsys):
    code = main(["segment", str(tmp_path / "x.png"), "--model", "no-such-model", "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no-such-model" in err


def test_folder_input_segments_every_image_in_it(tmp_path, bundle):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for k in range(3):
        cv2.imwrite(str(inputs / f"f{k}.png"), micrograph(40 + 7 * k, 64, k))
    (inputs / "notes.txt").write_text("ignored: not an image suffix")
    assert main(["segment", str(inputs), "--model", str(bundle), "--out", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.json")) == ["f0.json", "f1.json", "f2.json"]


# Which bundled model segments each data set's held-out images; tomography has no model of
# its own, and the point there is that the engine runs on those files, not their accuracy.
REAL_SETS = {
    "superalloy/test/images": "superalloy",
    "ebc/test/images": "ebc",
    "uhcs/validate/images": "uhcs-microconstituent",
    "tomography/validate/images": "superalloy",
}


@pytest.mark.parametrize("subdir", sorted(REAL_SETS))
def test_segment_runs_on_every_test_image_of_every_data_set(shared_data, tmp_path, subdir):
    model = REAL_SETS[subdir]
    assert model in bundled_model_names(), f"bundled model {model} missing from src/phasewatch/models"
    images = sorted((shared_data / subdir).iterdir())
    out = tmp_path / "out"
    assert main(["segment", str(shared_data / subdir), "--model", model, "--out", str(out)]) == 0
    for image in images:
        record = json.loads((out / f"{image.stem}.json").read_text())
        assert record["model"] == model
        assert sum(record["fractions"].values()) == pytest.approx(1.0)


def test_a_file_name_as_long_as_a_file_system_allows_is_segmented(tmp_path, bundle, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    path = inputs / ("x" * 251 + ".tif")  # 255 bytes, the longest name ext4 or SMB allow
    tifffile.imwrite(path, micrograph(40, 48, 5))
    out = tmp_path / "out"
    code = main(["segment", str(path), "--model", str(bundle), "--out", str(out), "--backend", "cpu"])
    assert code == 0, capsys.readouterr().err
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 5 and all(len(name.encode()) <= 255 for name in names)
    (record,) = (json.loads((out / n).read_text()) for n in names if n.endswith(".json"))
    assert record["image"] == str(path)


def test_each_file_s_fractions_are_printed_one_line_each(tmp_path, bundle, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for k in range(2):
        cv2.imwrite(str(inputs / f"f{k}.png"), micrograph(48, 64, k))
    tifffile.imwrite(inputs / "vol.tif", np.stack([micrograph(48, 64, s) for s in (3, 4, 5)]), imagej=True,
                     metadata={"axes": "ZYX"})
    out = tmp_path / "out"
    assert main(["segment", str(inputs / "f0.png"), str(inputs / "f1.png"), "--model", str(bundle),
                 "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name, line in zip(("f0", "f1"), lines, strict=True):
        record = json.loads((out / f"{name}.json").read_text())
        shares = ", ".join(f"{c} {100 * f:.1f}" for c, f in record["fractions"].items())
        assert line.startswith(f"{name}.png: area % {shares}"), line
    assert main(["segment", str(inputs / "vol.tif"), "--volume", "--model", str(bundle), "--out", str(out)]) == 0
    fractions, throughput = capsys.readouterr().out.splitlines()
    classes = json.loads((out / "vol.volume.json").read_text())["measurements_3d"]["classes"]
    shares = ", ".join(f"{c} {100 * m['volume_fraction']:.1f}" for c, m in classes.items())
    assert fractions.startswith(f"vol.tif: volume % {shares}") and "slices/s" in throughput
