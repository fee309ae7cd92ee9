"""Generated training pairs: FID/KID arithmetic, the generator's loop, generate -> train, and scoring."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from phasewatch.core.gan_scores import fid, fid_over_subsets, frechet_distance, kid
from phasewatch.core.synthetic import superalloy_micrograph

BLOCK = "import sys\nfor name in ('torch', 'tensorrt', 'cuda'):\n    sys.modules[name] = None\n"


# -- FID and KID ------------------------------------------------------------------------


def test_frechet_distance_equals_the_closed_form_for_proportional_covariances():
    # cov2 = k cov1 commutes with cov1, so Tr (cov1 cov2)^1/2 = sqrt(k) Tr cov1.
    rng = np.random.default_rng(0)
    factor = rng.normal(size=(6, 6))
    cov1, k = factor @ factor.T + np.eye(6), 2.5
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(cov1) * (1 + k - 2 * np.sqrt(k))
    assert frechet_distance(mu1, cov1, mu2, k * cov1) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, cov1, mu1, cov1) == pytest.approx(0.0, abs=1e-8)


def test_fid_of_gaussian_samples_approaches_the_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = np.zeros(4), np.array([1.0, 0.0, -0.5, 0.0])
    var1, var2 = np.array([1.0, 2.0, 0.5, 1.0]), np.array([2.0, 1.0, 0.5, 3.0])
    a = mu1 + np.sqrt(var1) * rng.normal(size=(50_000, 4))
    b = mu2 + np.sqrt(var2) * rng.normal(size=(50_000, 4))
    expected = ((mu1 - mu2) ** 2).sum() + (var1 + var2 - 2 * np.sqrt(var1 * var2)).sum()
    assert fid(a, b) == pytest.approx(expected, rel=0.03)


def test_kid_is_near_zero_for_two_halves_of_one_set_and_grows_with_noise():
    rng = np.random.default_rng(2)
    features = rng.normal(size=(600, 16))
    same, same_std = kid(features[:300], features[300:], subsets=50, subset_size=100, rng=rng)
    noisy = [kid(features[:300], features[300:] + rng.normal(scale=s, size=(300, 16)), 50, 100, rng)[0]
             for s in (0.5, 1.0, 2.0)]
    # The mean over 50 subsets: within a few standard errors of 0 (unbiased), far under the noisy sets.
    assert abs(same) < 3 * same_std / np.sqrt(50)
    assert same < noisy[0] < noisy[1] < noisy[2]
    assert noisy[1] > 10 * abs(same) and noisy[1] > 3 * same_std


def test_fid_over_subsets_of_the_whole_sets_is_fid_and_its_spread_shrinks_as_subsets_grow():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(200, 8)), rng.normal(0.3, 1.2, size=(200, 8))
    whole, spread = fid_over_subsets(a, b, subsets=5, subset_size=200, rng=rng)  # every draw: all rows
    assert whole == pytest.approx(fid(a, b)) and spread == pytest.approx(0, abs=1e-9)
    small = fid_over_subsets(a, b, subsets=40, subset_size=20, rng=rng)
    large = fid_over_subsets(a, b, subsets=40, subset_size=100, rng=rng)
    assert small[1] > large[1] > 0
    assert small[0] > large[0] > fid(a, b)  # small subsets bias FID upwards


# -- the generator, generate, and train on the pairs ------------------------------------


def tiny_data(root: Path, count: int = 2, side: int = 64) -> None:
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
        for i in range(count):
            image, classes = superalloy_micrograph(side, side, seed=i + (10 if split == "val" else 0))
            cv2.imwrite(str(root / split / "images" / f"f{i}.png"), image)
            cv2.imwrite(str(root / split / "labels" / f"f{i}.png"), np.minimum(classes, 2).astype(np.uint8))


def tiny_config(root: Path) -> dict:
    return {
        "config_file": str(root / "tiny.toml"), "name": "tiny", "seed": 0,
        "data": {"train": {"images": "train/images", "labels": "train/labels"},
                 "val": {"images": "val/images", "labels": "val/labels"}},
        "classes": [{"id": i, "name": f"c{i}", "colour": [i, i, i], "role": "phase"} for i in range(3)],
        "model": {"architecture": "unet", "kwargs": {"width": 4, "depth": 2}, "in_channels": 1, "tile": 32},
        "normalisation": {"rule": "per-image-percentile", "percentiles": [0.5, 99.5], "mean": [0.5], "std": [0.25]},
        "train": {"batch": 2, "epochs": 1, "steps_per_epoch": 2, "warmup_steps": 1},
        "export": {"enabled": False},
    }


def test_generator_trains_resumes_generates_and_its_pairs_train_a_segmenter(tmp_path):
    import torch

    from phasewatch.export.synth_generate import generate_pairs
    from phasewatch.export.synth_train import GanSettings, train_generator
    from phasewatch.export.train import load_splits, sampling_weights, train

    tiny_data(tmp_path)
    config = tiny_config(tmp_path)
    settings = GanSettings(crop=32, batch=2, steps=3, width=8, save_every=2)
    checkpoint = train_generator(config, tmp_path / "gen", tmp_path, settings, "cpu")
    assert torch.load(checkpoint, weights_only=True)["step"] == 3
    train_generator(config, tmp_path / "gen", tmp_path, GanSettings(crop=32, batch=2, steps=5, width=8), "cpu")
    state = torch.load(checkpoint, weights_only=True)
    assert state["step"] == 5 and state["data"]["train_images"] == ["f0", "f1"]

    manifest = generate_pairs(checkpoint, tmp_path / "pairs", count=3, size=48)
    images = sorted((tmp_path / "pairs" / "images").iterdir())
    assert [p.name for p in images] == ["synth_00000.png", "synth_00001.png", "synth_00002.png"]
    pixels = cv2.imread(str(images[0]), cv2.IMREAD_UNCHANGED)
    mask = cv2.imread(str(tmp_path / "pairs" / "labels" / images[0].name), cv2.IMREAD_UNCHANGED)
    assert pixels.shape == mask.shape == (48, 48) and pixels.dtype == np.uint8 and mask.max() <= 2
    assert manifest["generator"]["steps"] == 5 and "quarter turn" in manifest["masks"]
    assert json.loads((tmp_path / "pairs" / "manifest.json").read_text())["count"] == 3

    config["data"]["synthetic"] = {"images": str(tmp_path / "pairs" / "images"),
                                   "labels": str(tmp_path / "pairs" / "labels"), "ratio": 0.25}
    splits = load_splits(config, tmp_path)
    assert len(splits.train) == 2 and len(splits.synthetic) == 3
    assert splits.description["synthetic"]["generator"]["steps"] == 5
    pool, weights = sampling_weights(splits)
    assert len(pool) == 5 and weights[2:].sum() == pytest.approx(0.25) and weights.sum() == pytest.approx(1.0)
    run = train(config, tmp_path / "seg", data_root=tmp_path, device="cpu", max_steps=2)
    assert torch.load(run, weights_only=True)["data"]["synthetic"]["pairs"] == 3


def test_a_bad_synthetic_entry_is_refused_in_one_line(tmp_path):
    from phasewatch.export.train import TrainError, load_splits, unknown_keys

    tiny_data(tmp_path)
    config = tiny_config(tmp_path)
    config["data"]["synthetic"] = {"images": "x", "labels": "y", "ratio": 1.5}
    with pytest.raises(TrainError, match=r"tiny\.toml: \[data\] synthetic ratio must be in \[0, 1\)"):
        load_splits(config, tmp_path)
    config["data"]["synthetic"] = {"images": "x", "labels": "y", "ration": 0.5}
    assert ("tiny.toml: unknown key 'data.synthetic.ration' (did you mean 'ratio'?)"
            in unknown_keys(config, Path("tiny.toml")))


# -- scoring on a bundled encoder, without torch ----------------------------------------


def test_synth_score_runs_without_torch_on_the_bundled_encoder(tmp_path):
    for folder, seed in (("real", 0), ("fake", 100)):
        (tmp_path / folder).mkdir()
        for i in range(3):
            image, _ = superalloy_micrograph(160, 160, seed=seed + i)
            cv2.imwrite(str(tmp_path / folder / f"{i}.png"), image)
    script = BLOCK + f"""
from phasewatch.app.cli import main
sys.exit(main(["synth", "score", r"{tmp_path}/real", r"{tmp_path}/fake", "--crop", "64", "--stride", "32",
               "--subsets", "5", "--subset-size", "20", "--json"]))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["real_crops"] == result["fake_crops"] == 3 * 4 * 4
    assert result["fid"] > 0 and np.isfinite(result["kid"]) and result["kid_std"] >= 0
    assert result["fid_subsets"] > 0 and result["fid_std"] >= 0
    assert "encoder of bundle 'superalloy'" in result["features"] and "not InceptionV3" in result["note"]


def test_synth_score_names_an_empty_folder(tmp_path, capsys):
    from phasewatch.app.cli import main

    (tmp_path / "real").mkdir()
    assert main(["synth", "score", str(tmp_path / "real"), str(tmp_path / "real")]) == 1
    assert capsys.readouterr().err.strip() == f"phasewatch synth score: {tmp_path / 'real'}: no images"


def test_synth_train_and_generate_from_the_command_line(tmp_path, capsys):
    from phasewatch.app.cli import main

    tiny_data(tmp_path)
    (tmp_path / "tiny.toml").write_text("""
name = "tiny"
[data]
train = { images = "train/images", labels = "train/labels" }
val = { images = "val/images", labels = "val/labels" }
[[classes]]
id = 0
name = "a"
[[classes]]
id = 1
name = "b"
[[classes]]
id = 2
name = "c"
[model]
architecture = "unet"
in_channels = 1
tile = 32
[train]
batch = 2
""")
    args = ["--config", str(tmp_path / "tiny.toml"), "--out", str(tmp_path / "gen"), "--data-root", str(tmp_path),
            "--device", "cpu", "--crop", "32", "--batch", "2", "--width", "8"]
    assert main(["synth", "train", *args, "--crop", "24"]) == 1
    assert capsys.readouterr().err.strip() == "phasewatch synth train: --crop 24: must be a positive multiple of 16"
    assert main(["synth", "train", *args, "--steps", "2"]) == 0
    assert main(["synth", "train", *args, "--steps", "3"]) == 0
    assert "resuming" in capsys.readouterr().err
    assert main(["synth", "generate", str(tmp_path / "gen" / "generator.pt"), "--out", str(tmp_path / "pairs"),
                 "--count", "2", "--size", "40"]) == 1
    assert "--size 40: must be a positive multiple of 16" in capsys.readouterr().err
    assert main(["synth", "generate", str(tmp_path / "gen" / "generator.pt"), "--out", str(tmp_path / "pairs"),
                 "--count", "2", "--size", "32"]) == 0
    manifest = json.loads((tmp_path / "pairs" / "manifest.json").read_text())
    assert manifest["generator"]["steps"] == 3 and manifest["training_data"]["train_images"] == ["f0", "f1"]
