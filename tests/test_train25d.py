"""2.5D end to end offline: a tiny unet25d trains on synthetic volumes (multi-page TIFFs with
multi-page label TIFFs), exports a bundle whose manifest says k slices, and segments a volume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tifffile

from phasewatch.bundle import load_bundle
from phasewatch.core.normalise import prepare, window_indices
from phasewatch.core.pipeline import open_model
from phasewatch.core.volume import open_volume, segment_volume
from phasewatch.export import augment
from phasewatch.export.datasets import load_samples
from phasewatch.export.onnx_export import normalisation_from_config
from phasewatch.export.train import load_config, train

K = 3
CONFIG = f"""
name = "tiny25d"
seed = 0

[data]
train = {{ images = "train/images", labels = "train/labels" }}
val = {{ images = "val/images", labels = "val/labels" }}

[[classes]]
id = 0
name = "matrix"
colour = [0, 0, 0]
role = "background"

[[classes]]
id = 1
name = "particle"
colour = [255, 0, 0]
role = "phase"

[model]
architecture = "unet25d"
kwargs = {{ slices = {K}, width = 4, depth = 2 }}
in_channels = 1
tile = 32

[normalisation]
rule = "per-image-percentile"
percentiles = [0.5, 99.5]
mean = [0.5]
std = [0.25]

[augment]
flips = true
rot90 = true
brightness = 0.2
contrast = 0.2
gamma = 0.3
blur = 0.2

[train]
batch = 2
epochs = 1
steps_per_epoch = 3
warmup_steps = 1
losses = [{{ name = "ce" }}]

[export]
enabled = true
tiles = 2
"""


def synthetic_volume(depth: int, side: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Balls in a noisy box: uint8 image (Z, Y, X) and its class ids."""
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[:depth, :side, :side]
    labels = np.zeros((depth, side, side), np.uint8)
    for _ in range(3):
        cz, cy, cx = rng.uniform(0, depth), rng.uniform(0, side), rng.uniform(0, side)
        labels[((z - cz) * 3) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= 100] = 1
    image = np.clip(70 + 110 * labels + rng.normal(0, 15, labels.shape), 0, 255).astype(np.uint8)
    return image, labels


def write_split(root: Path, split: str, volumes: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    (root / split / "images").mkdir(parents=True)
    (root / split / "labels").mkdir(parents=True)
    for name, (image, labels) in volumes.items():
        tifffile.imwrite(root / split / "images" / f"{name}.tif", image, imagej=True, metadata={"axes": "ZYX"})
        tifffile.imwrite(root / split / "labels" / f"{name}.tif", labels, photometric="minisblack")


def test_a_tiny_25d_unet_trains_on_volumes_exports_and_segments_a_volume(tmp_path):
    data = tmp_path / "data"
    write_split(data, "train", {"a": synthetic_volume(5, 40, 0), "b": synthetic_volume(4, 40, 1)})
    val_image, _ = synthetic_volume(5, 40, 2)
    write_split(data, "val", {"c": synthetic_volume(5, 40, 2)})
    (tmp_path / "tiny25d.toml").write_text(CONFIG)
    config = load_config(tmp_path / "tiny25d.toml")

    checkpoint = train(config, tmp_path / "run", data_root=data, device="cpu")  # once crashed: 1 != 3 channels
    assert checkpoint.is_file()
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [3]

    bundle = load_bundle(tmp_path / "run" / "bundle")
    assert bundle.slices == K and bundle.channels == 1 and bundle.input_channels == K
    assert bundle.manifest["input"]["shape"][1] == K
    parity = bundle.manifest["parity"]
    assert parity["argmax_agreement"] >= 0.9999 and parity["max_abs_logit_diff"] <= parity["tolerance"]
    assert "validation images" in parity["tiles_source"]
    assert np.load(bundle.path / bundle.manifest["reference_tiles"]).shape[1] == K
    assert bundle.manifest["data"]["val_images"] == [f"c:z{z:04d}" for z in range(5)]
    assert bundle.manifest["trust"]["calibration"]["fields"] == 5 + 4 + 5  # every slice of every volume

    model = open_model(bundle.path, "cpu")
    try:
        record = segment_volume(open_volume(data / "val" / "images" / "c.tif"), model, tmp_path / "out")
    finally:
        model.close()
    assert record["slices"] == 5
    assert tifffile.imread(record["outputs"]["classes"]).shape == val_image.shape


def test_volume_samples_are_mirrored_k_slice_stacks_of_per_slice_normalised_slices(tmp_path):
    image, labels = synthetic_volume(4, 24, 5)
    write_split(tmp_path, "train", {"v": (image, labels)})
    norm = normalisation_from_config({"rule": "per-image-percentile", "mean": [0.5], "std": [0.25]}, 1)
    samples = load_samples(tmp_path / "train/images", tmp_path / "train/labels", 1, norm, slices=K)
    assert [s.name for s in samples] == [f"v:z{z:04d}" for z in range(4)]

    def alone(z: int) -> np.ndarray:
        inp = prepare(image[z], 1, norm)
        return inp.region(0, inp.height, 0, inp.width)[0]

    for z, sample in enumerate(samples):
        np.testing.assert_array_equal(sample.image, np.stack([alone(i) for i in window_indices(z, 4, K)]))
        np.testing.assert_array_equal(sample.label, labels[z])
    np.testing.assert_array_equal(samples[0].image[0], samples[0].image[2])  # slice -1 = slice 1


def test_photometric_augmentation_is_the_same_across_the_slices_of_a_sample():
    """k identical slices stay identical: every draw (blur, gamma, contrast, brightness) is one per sample."""
    rng = np.random.default_rng(0)
    one = rng.normal(0, 1, (1, 48, 48)).astype(np.float32)
    image = np.repeat(one, K, axis=0)
    mask = (one[0] > 0).astype(np.uint8)
    cfg = augment.AugmentConfig(flips=True, rot90=True, scale=(0.8, 1.2), brightness=0.3, contrast=0.3,
                                gamma=0.5, blur=1.0)
    for seed in range(5):
        out, _ = augment.sample(image, mask, 32, cfg, np.random.default_rng(seed))
        assert out.shape == (K, 32, 32)
        for channel in out[1:]:
            np.testing.assert_array_equal(channel, out[0])
