"""Writing generated pairs (``phasewatch synth generate``) in the layout ``phasewatch train`` reads.

Each pair's mask is a real training mask (the generator's own training split), cut at a
random place, turned by a random quarter turn and maybe flipped; the generator draws the
image for it. So the layouts are rearranged real ones, not new ones (no mask GAN), and the
manifest says so. Output: ``images/synth_NNNNN.png`` (8-bit, the generator's [0, 1] stretch),
``labels/synth_NNNNN.png`` (class ids), ``manifest.json`` (the generator, its training
data, how the masks were drawn).
"""

from __future__ import annotations

import datetime
import json
import pickle
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from phasewatch.bundle import sha256_file
from phasewatch.errors import one_line
from phasewatch.export.synth_models import MaskToImage, one_hot
from phasewatch.export.synth_train import GanSettings, build_networks, gan_pairs, noise_like, random_crops
from phasewatch.export.train import TrainError, load_splits, seed_everything


def load_generator(path: Path) -> tuple[MaskToImage, dict[str, Any]]:
    """The generator of a ``synth train`` checkpoint, in eval mode, and the checkpoint itself."""
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
        settings = GanSettings(**state["settings"])
        gen, _ = build_networks(int(state["num_classes"]), int(state["channels"]), settings)
        gen.load_state_dict(state["generator"])
    except (OSError, RuntimeError, KeyError, TypeError, pickle.UnpicklingError) as exc:
        raise TrainError(f"{path}: cannot load a synth train checkpoint: {one_line(exc)}") from exc
    return gen.eval(), state


def to_uint8(image: np.ndarray) -> np.ndarray:
    """C x H x W in [-1, 1] -> H x W (gray) or H x W x 3 (RGB) uint8."""
    pixels = np.clip(np.rint((image + 1) * 127.5), 0, 255).astype(np.uint8)
    return pixels[0] if pixels.shape[0] == 1 else np.moveaxis(pixels, 0, -1)


def generate_pairs(generator_path: Path, out_dir: Path, count: int, size: int, seed: int = 0) -> dict[str, Any]:
    gen, state = load_generator(generator_path)
    stride = 2 ** gen.depth
    if size % stride or size <= 0:
        raise TrainError(f"--size {size}: must be a positive multiple of {stride}")
    config = state["config"]
    splits = load_splits(config, Path(state["data_root"]))
    pairs = gan_pairs(splits, config)
    rng = seed_everything(seed)
    noise_seed = torch.Generator().manual_seed(seed)
    images_dir, labels_dir = out_dir / "images", out_dir / "labels"
    images_dir.mkdir(parents=True, exist_ok=True)
    labels_dir.mkdir(parents=True, exist_ok=True)
    for index in tqdm(range(count), desc="generate", unit="pair", disable=None):
        _, masks = random_crops(pairs, size, 1, rng)
        mask = torch.from_numpy(masks)
        with torch.no_grad():
            image = gen(one_hot(mask, gen.num_classes), noise_like(mask, noise_seed))[0].numpy()
        name = f"synth_{index:05d}.png"
        if not (cv2.imwrite(str(images_dir / name), _bgr(to_uint8(image)))
                and cv2.imwrite(str(labels_dir / name), masks[0])):
            raise TrainError(f"{out_dir / name}: cannot write the pair")
    manifest = {
        "kind": "phasewatch synthetic pairs",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "count": count, "size": size, "seed": seed,
        "images": "images", "labels": "labels", "label_format": "index",
        "classes": config["classes"],
        "generator": {"file": str(generator_path), "sha256": sha256_file(generator_path),
                      "architecture": "mask-conditioned U-Net (pix2pix-style), PatchGAN discriminator, LSGAN + L1",
                      "steps": state["step"], "seconds": state["seconds"], "settings": state["settings"]},
        "training_data": {"config_file": config.get("config_file"), **splits.description},
        "masks": (f"real training masks of {splits.description['train_images']}: random {size} px crops, "
                  "a random quarter turn and a random flip each (no mask GAN: the layouts are rearranged real ones)"),
        "pixels": "8-bit, the [0, 1] stretch of the training images' own percentiles (normalise.prepare)",
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _bgr(pixels: np.ndarray) -> np.ndarray:
    return pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
