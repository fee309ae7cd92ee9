"""Training the mask-conditioned generator (``phasewatch synth train``) on crops of a data set.

The data are the training split of a segmentation config (``train.load_splits``: the same
images, normalisation and specimen selection ``phasewatch train`` would use), so a
generator never sees an image its segmenter is scored on. Images are mapped back from the
runtime's normalised units to the [0, 1] stretch (``normalise.prepare``'s per-image
percentiles) and then to the [-1, 1] of the generator's tanh. Losses: least-squares GAN
(stable with tiny CPU batches) plus an L1 pull towards the real crop, which keeps the
drawn image on its mask early on; the L1 weight is lower than pix2pix's 100, since a
strong pull averages texture away and texture is what the segmenter must learn.

Resumable: the checkpoint (``generator.pt``) holds both networks, both optimisers, the
step and the seconds spent, and is written every ``save_every`` steps and at the end; a
run that finds one in its folder carries on from it.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from phasewatch.export.synth_models import NOISE_CHANNELS, MaskToImage, PatchDiscriminator, one_hot
from phasewatch.export.train import Splits, TrainError, load_splits, pick_device, seed_everything

log = logging.getLogger(__name__)
CHECKPOINT = "generator.pt"


@dataclass(frozen=True)
class GanSettings:
    crop: int = 128
    batch: int = 8
    steps: int = 20000
    minutes: float = 30.0  # wall-clock budget of this invocation; the step count may end it first
    width: int = 32
    depth: int = 4
    lr: float = 2e-4
    l1_weight: float = 10.0
    save_every: int = 200
    seed: int = 0


def gan_pairs(splits: Splits, config: dict[str, Any]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image in [-1, 1] C x H x W, class ids H x W) per training sample."""
    norm = config.get("normalisation", {})
    channels = int(config["model"].get("in_channels", 1))
    mean = np.asarray(norm.get("mean", [0.5] * channels), np.float32).reshape(-1, 1, 1)
    std = np.asarray(norm.get("std", [0.25] * channels), np.float32).reshape(-1, 1, 1)
    pairs = []
    for sample in splits.train:
        stretched = np.clip(sample.image * std + mean, 0.0, 1.0)
        # An ignored pixel (255) has no class to condition on; the generator draws it as class 0.
        label = np.where(sample.label == 255, 0, sample.label).astype(np.uint8)
        pairs.append((stretched * 2 - 1, label))
    return pairs


def random_crops(pairs: list[tuple[np.ndarray, np.ndarray]], crop: int, count: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``count`` random crops with random flips and quarter turns, image and mask together."""
    images, masks = [], []
    for index in rng.integers(len(pairs), size=count):
        image, mask = pairs[index]
        height, width = mask.shape
        if height < crop or width < crop:
            raise TrainError(f"training image {height}x{width} is smaller than the {crop} px crop")
        y, x = rng.integers(height - crop + 1), rng.integers(width - crop + 1)
        image, mask = image[:, y:y + crop, x:x + crop], mask[y:y + crop, x:x + crop]
        turns = int(rng.integers(4))
        image, mask = np.rot90(image, turns, axes=(1, 2)), np.rot90(mask, turns)
        if rng.random() < 0.5:
            image, mask = image[:, :, ::-1], mask[:, ::-1]
        images.append(np.ascontiguousarray(image))
        masks.append(np.ascontiguousarray(mask))
    return np.stack(images).astype(np.float32), np.stack(masks)


def noise_like(mask: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    n, height, width = mask.shape
    return torch.randn((n, NOISE_CHANNELS, height, width), generator=generator, device=mask.device)


def build_networks(num_classes: int, channels: int, settings: GanSettings) -> tuple[MaskToImage, PatchDiscriminator]:
    return (MaskToImage(num_classes, channels, settings.width, settings.depth),
            PatchDiscriminator(num_classes, channels, settings.width))


def train_generator(config: dict[str, Any], out_dir: Path, data_root: Path, settings: GanSettings,
                    device: str = "auto") -> Path:
    """Train (or carry on training) the generator in ``out_dir``; returns its checkpoint."""
    stride = 2 ** settings.depth
    if settings.crop <= 0 or settings.crop % stride:
        raise TrainError(f"--crop {settings.crop}: must be a positive multiple of {stride}")
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path, log_path = out_dir / CHECKPOINT, out_dir / "log.jsonl"
    dev = pick_device(device)
    splits = load_splits(config, data_root)
    num_classes, channels = len(config["classes"]), int(config["model"].get("in_channels", 1))
    gen, disc = build_networks(num_classes, channels, settings)
    gen, disc = gen.to(dev), disc.to(dev)
    opt_g = torch.optim.Adam(gen.parameters(), lr=settings.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=settings.lr, betas=(0.5, 0.999))
    step, seconds_before = 0, 0.0
    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, weights_only=True, map_location=dev)
        if state["settings"]["width"] != settings.width or state["settings"]["depth"] != settings.depth:
            raise TrainError(f"{checkpoint_path}: trained with width/depth {state['settings']['width']}/"
                             f"{state['settings']['depth']}, asked for {settings.width}/{settings.depth}")
        gen.load_state_dict(state["generator"])
        disc.load_state_dict(state["discriminator"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        step, seconds_before = int(state["step"]), float(state["seconds"])
        log.info("resuming %s at step %d (%.1f min trained)", checkpoint_path, step, seconds_before / 60)
    # A resumed run draws new crops, not the first run's again.
    rng = seed_everything(settings.seed + step)
    pairs = gan_pairs(splits, config)
    started = time.time()

    def save() -> None:
        torch.save({"generator": gen.state_dict(), "discriminator": disc.state_dict(),
                    "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "step": step,
                    "seconds": round(seconds_before + time.time() - started, 1), "settings": asdict(settings),
                    "num_classes": num_classes, "channels": channels, "config": config,
                    "data_root": str(data_root), "data": splits.description}, checkpoint_path)

    bar = tqdm(total=settings.steps, initial=step, desc="generator", unit="step", file=sys.stderr, disable=None)
    with open(log_path, "a") as log_file:
        while step < settings.steps and time.time() - started < settings.minutes * 60:
            images_np, masks_np = random_crops(pairs, settings.crop, settings.batch, rng)
            real = torch.from_numpy(images_np).to(dev)
            cond = one_hot(torch.from_numpy(masks_np).to(dev), num_classes)
            fake = gen(cond, noise_like(cond[:, 0]))

            d_real, d_fake = disc(cond, real), disc(cond, fake.detach())
            loss_d = 0.5 * (F.mse_loss(d_real, torch.ones_like(d_real)) + F.mse_loss(d_fake, torch.zeros_like(d_fake)))
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()

            d_fake = disc(cond, fake)
            adversarial = F.mse_loss(d_fake, torch.ones_like(d_fake))
            l1 = F.l1_loss(fake, real)
            loss_g = adversarial + settings.l1_weight * l1
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()

            step += 1
            bar.update()
            bar.set_postfix(d=f"{loss_d.item():.3f}", g=f"{adversarial.item():.3f}", l1=f"{l1.item():.3f}")
            if step % 20 == 0:
                log_file.write(json.dumps({"step": step, "loss_d": loss_d.item(), "loss_g_adv": adversarial.item(),
                                      "l1": l1.item(), "seconds": round(seconds_before + time.time() - started, 1)})
                          + "\n")
                log_file.flush()
            if step % settings.save_every == 0:
                save()
    bar.close()
    save()
    return checkpoint_path
