"""Training a segmentation model from a TOML config, on the real labelled micrographs.

The config names the data splits, the classes, the model, normalisation, augmentation,
losses, optimiser and schedule (see ``src/phasewatch/export/configs/*.toml``). Training samples random
augmented crops (``augment.sample``); validation segments the whole validation images
through the runtime's own sliding window (the PyTorch model wrapped as a backend),
so the mIoU that picks the checkpoint is measured the way the appliance will predict
(at the training tile). The bundle is exported at ``[model] export_tile``: a fully
convolutional net runs on larger tiles than it was trained on, and its measured halo is
then a small part of each tile.
A 2.5D model (``architecture = "unet25d"``, ``kwargs.slices`` = k) trains on volumes: each
image file of a split is a multi-page TIFF, its label a multi-page class-id TIFF, and every
slice is a sample of k channels, its neighbours mirrored at the ends (``datasets`` module
doc); ``in_channels`` stays the per-slice count (1). Crops, flips and rotations move the k
channels together and every photometric draw is made once per sample, so the k slices of one
sample get the same change. Hold out whole volumes (a ``val`` split): a held-out slice's
neighbours are training slices.
The checkpoint with the best validation mean IoU is kept; the validation split is never
the test split (a config without a validation folder holds out part of the training set).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import logging
import math
import os
import random
import re
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from phasewatch.bundle import Normalisation
from phasewatch.core.pipeline import open_model
from phasewatch.core.tiling import default_overlap, segment_many
from phasewatch.core.trust_calibration import calibrate_bundle
from phasewatch.errors import PhasewatchError
from phasewatch.export import augment, losses, seg_scores
from phasewatch.export.datasets import Sample, load_samples, parse_palette
from phasewatch.export.finetune import initial_model
from phasewatch.export.models import input_slices
from phasewatch.export.onnx_export import normalisation_from_config
from phasewatch.tomlfile import tomllib

log = logging.getLogger(__name__)

# Every key a training config may hold, by table; anything else (a typo like ``epocs``, or a key
# this version does not know) is refused, since an ignored key silently trains something else.
CONFIG_KEYS: dict[str, set[str]] = {
    "": {"name", "seed", "data", "classes", "model", "normalisation", "augment", "train", "export"},
    "data": {"root", "train", "val", "test", "holdout", "label_format", "palette", "default_class", "specimen",
             "val_specimens", "leave_out_specimens", "synthetic"},
    "data.split": {"images", "labels"},
    "data.synthetic": {"images", "labels", "ratio"},
    "classes": {"id", "name", "colour", "role"},
    "model": {"architecture", "encoder", "pretrained", "kwargs", "in_channels", "tile", "export_tile", "scale",
              "pixel_size_um", "init_from", "freeze"},
    "normalisation": {"rule", "percentiles", "mean", "std", "sixteen_bit"},
    "augment": {f.name for f in dataclasses.fields(augment.AugmentConfig)},
    "train": {"batch", "epochs", "steps_per_epoch", "optimizer", "lr", "weight_decay", "schedule", "warmup_steps",
              "losses", "weight_map", "time_limit_min"},
    "train.weight_map": set(inspect.signature(losses.interface_weight_map).parameters) - {"mask"},
    "export": {"enabled", "tiles"},
}


class TrainError(PhasewatchError, ValueError):
    """A config or data problem; the message is one line per problem."""


def default_data_root() -> Path:
    """$PHASEWATCH_DATA, else ../shared/data beside the project checkout."""
    env = os.environ.get("PHASEWATCH_DATA")
    # This file is PROJECT/src/phasewatch/export/train.py: parents[4] is the folder beside the project.
    return Path(env) if env else Path(__file__).resolve().parents[4] / "shared" / "data"


def load_config(path: Path) -> dict[str, Any]:
    try:
        config = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise TrainError(f"{path}: {exc}") from exc
    if problems := unknown_keys(config, path):
        raise TrainError("\n".join(problems))
    for section in ("data", "classes", "model", "train"):
        if section not in config:
            raise TrainError(f"{path}: missing section [{section}]")
    config["config_file"] = str(path)
    return config


def unknown_keys(config: dict[str, Any], path: Path) -> list[str]:
    """One line per unknown key (or table that is not a table), with the nearest known key."""
    problems = []
    for label, table, known in _config_tables(config):
        if not isinstance(table, dict):
            problems.append(f"{path}: '{label}' must be a table, got {table!r}")
            continue
        for key in table:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                problems.append(f"{path}: unknown {'key' if label else 'top-level key'} "
                                f"'{label + '.' if label else ''}{key}'{hint}")
    return problems


def _config_tables(config: dict[str, Any]) -> list[tuple[str, Any, set[str]]]:
    """(label, table, known keys) of every table in a training config that has fixed keys."""
    def table(parent: Any, key: str) -> Any:
        return parent.get(key, {}) if isinstance(parent, dict) else {}

    data, classes = table(config, "data"), config.get("classes", [])
    tables = [("", config, CONFIG_KEYS[""]), ("data", data, CONFIG_KEYS["data"])]
    tables += [(f"data.{split}", table(data, split), CONFIG_KEYS["data.split"]) for split in ("train", "val", "test")]
    tables.append(("data.synthetic", table(data, "synthetic"), CONFIG_KEYS["data.synthetic"]))
    tables += [(f"classes[{i}]", entry, CONFIG_KEYS["classes"])
               for i, entry in enumerate(classes if isinstance(classes, list) else [])]
    tables += [(section, table(config, section), CONFIG_KEYS[section])
               for section in ("model", "normalisation", "augment", "train", "export")]
    tables.append(("train.weight_map", table(table(config, "train"), "weight_map"), CONFIG_KEYS["train.weight_map"]))
    return tables


# -- data -------------------------------------------------------------------------------


@dataclass
class Splits:
    train: list[Sample]
    val: list[Sample]
    description: dict[str, Any]
    synthetic: list[Sample] = dataclasses.field(default_factory=list)  # generated pairs, training only
    synthetic_ratio: float = 0.0  # the share of training crops drawn from them


def load_splits(config: dict[str, Any], data_root: Path) -> Splits:
    data, model = config["data"], config["model"]
    channels = int(model.get("in_channels", 1))
    normalisation = normalisation_from_config(config.get("normalisation", {}), channels)
    palette = parse_palette(data["palette"]) if "palette" in data else None
    scale, default_class = float(model.get("scale", 1.0)), int(data.get("default_class", 0))

    slices = input_slices(model["architecture"], **model.get("kwargs", {}))

    def split(name: str) -> list[Sample]:
        entry = data[name]
        return load_samples(data_root / entry["images"], data_root / entry["labels"], channels, normalisation,
                            scale, palette, default_class, len(config["classes"]), slices)

    train = split("train")
    holdout = int(data.get("holdout", 0))
    groups: dict[str, Any] = {}
    if "specimen" in data:
        pool = train + (split("val") if "val" in data else [])
        train, val, groups = specimen_splits(pool, data, config["config_file"])
    elif "val" in data:
        val = split("val")
    elif holdout > 0:
        # Deterministic hold-out: every k-th training image, so that each kind of image stays represented.
        step = max(1, len(train) // holdout)
        picks = set(range(step - 1, len(train), step)[:holdout])
        val = [s for i, s in enumerate(train) if i in picks]
        train = [s for i, s in enumerate(train) if i not in picks]
    else:
        raise TrainError(f"{config['config_file']}: [data] needs a 'val' split or 'holdout' > 0")
    description = {
        "root": str(data_root),
        "train": data["train"],
        "val": data.get("val", f"held out of train: {[s.name for s in val]}"),
        "test": data.get("test"),
        "train_images": [s.name for s in train],
        "val_images": [s.name for s in val],
        "label_format": data.get("label_format", "index"),
        **({"specimens": groups} if groups else {}),
    }
    if "palette" in data:
        description["palette"] = dict(data["palette"])
        description["default_class"] = int(data.get("default_class", 0))
    synthetic: list[Sample] = []
    ratio = 0.0
    if "synthetic" in data:
        if slices > 1:
            raise TrainError(f"{config['config_file']}: [data] synthetic pairs are single fields; "
                             f"a {slices}-slice model trains on volumes")
        synthetic, ratio, description["synthetic"] = load_synthetic(data["synthetic"], config, channels,
                                                                    normalisation, scale)
    return Splits(train, val, description, synthetic, ratio)


def load_synthetic(entry: dict[str, Any], config: dict[str, Any], channels: int, normalisation: Normalisation,
                   scale: float) -> tuple[list[Sample], float, dict[str, Any]]:
    """``[data] synthetic = {images, labels, ratio}``: generated pairs (``phasewatch synth generate``,
    class-id labels) that make up ``ratio`` of the training crops. Their paths are taken from the
    current folder, as command-line paths are, since generated pairs live beside a run, not in the
    data root."""
    where = config["config_file"]
    for key in ("images", "labels", "ratio"):
        if key not in entry:
            raise TrainError(f"{where}: [data] synthetic needs '{key}'")
    ratio = float(entry["ratio"])
    if not 0 <= ratio < 1:
        raise TrainError(f"{where}: [data] synthetic ratio must be in [0, 1), got {ratio}")
    images, labels = Path(entry["images"]), Path(entry["labels"])
    samples = load_samples(images, labels, channels, normalisation, scale, num_classes=len(config["classes"]))
    manifest_path = images.parent / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    description = {"images": str(images), "labels": str(labels), "ratio": ratio, "pairs": len(samples),
                   "generator": manifest["generator"] if manifest else None}
    return samples, ratio, description


def sampling_weights(splits: Splits) -> tuple[list[Sample], np.ndarray]:
    """The pool training crops are drawn from and each sample's chance: by area within the real
    images and within the generated ones, the generated ones together weighing ``synthetic_ratio``."""
    def by_area(samples: list[Sample], share: float) -> np.ndarray:
        areas = np.array([s.label.size for s in samples], float)
        return share * areas / areas.sum()

    if not splits.synthetic:
        return splits.train, by_area(splits.train, 1.0)
    weights = np.concatenate([by_area(splits.train, 1 - splits.synthetic_ratio),
                              by_area(splits.synthetic, splits.synthetic_ratio)])
    return splits.train + splits.synthetic, weights


def specimen_of(name: str, pattern: str) -> str:
    """The specimen an image belongs to: the first match of ``[data] specimen`` (a regular
    expression) in its file stem, the whole stem when it does not match."""
    found = re.search(pattern, name)
    return found.group(0) if found else name


def specimen_splits(pool: list[Sample], data: dict[str, Any], where: str,
                    ) -> tuple[list[Sample], list[Sample], dict[str, Any]]:
    """Training and validation by specimen: the images of ``val_specimens`` validate, those of
    ``leave_out_specimens`` are not used at all (cross-validation's held-out specimens), the rest
    train. Fields of one specimen resemble each other far more than fields of two, so a model
    picked on a specimen it also trained on is picked for memory, not for the next specimen."""
    pattern = str(data["specimen"])
    try:
        re.compile(pattern)
    except re.error as exc:
        raise TrainError(f"{where}: [data] specimen {pattern!r} is not a regular expression: {exc}") from exc
    by_name = {s.name: specimen_of(s.name, pattern) for s in pool}
    known = set(by_name.values())
    val_ids, left_out = set(data.get("val_specimens", [])), set(data.get("leave_out_specimens", []))
    for label, ids in (("val_specimens", val_ids), ("leave_out_specimens", left_out)):
        if unknown := sorted(ids - known):
            raise TrainError(f"{where}: [data] {label} names {unknown}, not among the specimens {sorted(known)}")
    if not val_ids:
        raise TrainError(f"{where}: [data] specimen is set, so val_specimens must name the validation specimens")
    val = [s for s in pool if by_name[s.name] in val_ids]
    train = [s for s in pool if by_name[s.name] not in val_ids | left_out]
    if not train:
        raise TrainError(f"{where}: no training images left after the validation and left-out specimens")
    groups = {"pattern": pattern, "train": sorted(known - val_ids - left_out), "val": sorted(val_ids),
              "left_out": sorted(left_out)}
    return train, val, groups


class ArrayInput:
    """A normalised C x H x W array as the sliding window's ModelInput."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.channels, self.height, self.width = array.shape

    def region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return self.array[:, y0:y1, x0:x1]


class TorchBackend:
    """A PyTorch model as a runtime backend, so validation uses the runtime's sliding window."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, device: torch.device, max_batch: int) -> None:
        self.model, self.device, self.max_batch = model, device, max_batch

    def run(self, batch: np.ndarray) -> np.ndarray:
        with torch.no_grad(), autocast(self.device):
            logits = self.model(torch.from_numpy(np.ascontiguousarray(batch)).to(self.device))
        return logits.float().cpu().numpy()

    def close(self) -> None:
        pass


def autocast(device: torch.device):
    """Mixed precision on the GPU; plain float32 on the CPU, where autocast only slows convs."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def validate(model: torch.nn.Module, samples: list[Sample], tile: int, num_classes: int,
             device: torch.device, batch: int) -> dict[str, Any]:
    model.eval()
    backend = TorchBackend(model, device, batch)
    # The halo is the largest that keeps the sliding window's minimum overlap (default_overlap without
    # a halo), so the tile edges, where logits see the least context, are trimmed at no extra
    # tiles. The model's measured halo is not used: at the training tile it comes near tile/2
    # (the bundles measure 56-72 px at 256), which would multiply the tiles per image. This
    # mIoU only ranks checkpoints; `phasewatch evaluate` scores the bundle with its own halo.
    overlap = default_overlap(tile, 0)
    halo = overlap // 2
    maps = segment_many((ArrayInput(s.image) for s in samples), backend, tile, overlap, batch, halo=halo)
    cm = np.zeros((num_classes, num_classes), np.int64)
    for sample, predicted in zip(samples, maps, strict=True):
        cm += seg_scores.confusion_matrix(sample.label, predicted.classes, num_classes, ignore=255)
    model.train()
    return {"mean_iou": float(seg_scores.mean_iou(cm)), "pixel_accuracy": float(seg_scores.pixel_accuracy(cm)),
            "per_class_iou": [None if math.isnan(v) else float(v) for v in seg_scores.per_class_iou(cm)]}


# -- the loop ---------------------------------------------------------------------------


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(requested)


def seed_everything(seed: int) -> np.random.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # cuDNN's autotuner picks kernels by timing, so runs with one seed could differ on a GPU.
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    return np.random.default_rng(seed)


def learning_rate(step: int, total: int, base: float, schedule: str, warmup: int, power: float = 0.9) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return base * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "poly":
        return base * (1 - progress) ** power
    raise TrainError(f"unknown schedule '{schedule}' (cosine or poly)")


def schedule_step(step: int, total: int, elapsed: float, time_limit: float) -> int:
    """Where the learning-rate schedule stands: a run with a time limit advances by the clock
    too, so one that the limit cuts short still ends annealed instead of mid-schedule."""
    return max(step, min(total, int(total * elapsed / time_limit)))


def make_optimiser(model: torch.nn.Module, train_cfg: dict[str, Any]) -> torch.optim.Optimizer:
    name, lr = train_cfg.get("optimizer", "adamw"), float(train_cfg.get("lr", 1e-3))
    decay = float(train_cfg.get("weight_decay", 1e-4))
    # Frozen parameters (``[model] freeze``) stay out: weight decay would still move them.
    trainable = [p for p in model.parameters() if p.requires_grad]
    if name == "adamw":
        return torch.optim.AdamW(trainable, lr=lr, weight_decay=decay)
    if name == "sgd":
        return torch.optim.SGD(trainable, lr=lr, momentum=0.9, weight_decay=decay, nesterov=True)
    raise TrainError(f"unknown optimizer '{name}' (adamw or sgd)")


def checkpoint_config(config: dict[str, Any]) -> dict[str, Any]:
    """The part of the config the export stage needs to rebuild and describe the model."""
    model = config["model"]
    return {
        "architecture": model["architecture"],
        "model_kwargs": model_kwargs(config),
        "in_channels": int(model.get("in_channels", 1)),
        "classes": [dict(c) for c in config["classes"]],
        "tile": int(model["tile"]),
        "export_tile": int(model.get("export_tile", model["tile"])),
        "normalisation": dict(config.get("normalisation", {})),
        "scale": float(model.get("scale", 1.0)),
        "pixel_size_um": model.get("pixel_size_um"),
    }


def model_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """``[model] kwargs`` with ``[model] encoder`` among them: the encoder is part of what
    rebuilds the network (``models.build_model``), so the checkpoint and manifest carry it there."""
    model = config["model"]
    kwargs = dict(model.get("kwargs", {}))
    if "encoder" in model:
        if kwargs.get("encoder", model["encoder"]) != model["encoder"]:
            raise TrainError(f"{config['config_file']}: [model] encoder {model['encoder']!r} and kwargs.encoder "
                             f"{kwargs['encoder']!r} differ; give it once")
        kwargs["encoder"] = model["encoder"]
    return kwargs


def batch_of(samples: list[Sample], weights: np.ndarray, size: int, tile: int, aug: augment.AugmentConfig,
             rng: np.random.Generator, weight_map: dict[str, Any] | None) -> tuple:
    images, labels, pixel_weights = [], [], []
    for index in rng.choice(len(samples), size=size, p=weights):
        image, label = augment.sample(samples[index].image, samples[index].label, tile, aug, rng)
        images.append(image)
        labels.append(label)
        if weight_map is not None:
            pixel_weights.append(losses.interface_weight_map(label, **weight_map))
    pw = torch.from_numpy(np.stack(pixel_weights)) if pixel_weights else None
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels).astype(np.int64)), pw


def train(config: dict[str, Any], out_dir: Path, data_root: Path | None = None, device: str = "auto",
          seed: int | None = None, epochs: int | None = None, max_steps: int | None = None,
          splits: Splits | None = None, clock: Callable[[], float] = time.time) -> Path:
    """Train, keep the best checkpoint in ``out_dir/checkpoint.pt``, log to ``out_dir/log.jsonl``;
    export a bundle to ``out_dir/bundle`` when the config's [export] asks. Returns the checkpoint.
    ``splits`` (already loaded) replaces the config's data, as cross-validation's folds do.
    ``clock`` measures ``time_limit_min`` and the recorded seconds: wall time, or the process's CPU
    time (``time.process_time``) where runs on a shared machine must get the same compute."""
    started = clock()
    seed = int(config.get("seed", 0) if seed is None else seed)
    rng = seed_everything(seed)
    dev = pick_device(device)
    if dev.type == "cpu":
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    data_root = data_root or Path(config["data"].get("root") or default_data_root())
    splits = splits or load_splits(config, data_root)
    ckpt_config = checkpoint_config(config)
    tile, num_classes = ckpt_config["tile"], len(ckpt_config["classes"])
    train_cfg = config["train"]
    model, parent = initial_model(config, ckpt_config)
    model = model.to(dev)
    optimiser = make_optimiser(model, train_cfg)
    loss_fn = losses.build_loss(train_cfg.get("losses", [{"name": "ce"}]), num_classes)
    weight_map = train_cfg.get("weight_map")
    aug = augment.AugmentConfig.from_dict(config.get("augment", {}))
    batch = int(train_cfg.get("batch", 8))
    steps_per_epoch = int(train_cfg.get("steps_per_epoch", 100))
    epochs = int(epochs or train_cfg.get("epochs", 10))
    total = min(epochs * steps_per_epoch, max_steps or 10**9)
    time_limit = float(train_cfg.get("time_limit_min", 0)) * 60 or math.inf
    pool, weights = sampling_weights(splits)
    scaler = torch.amp.GradScaler("cuda", enabled=False)  # bf16 autocast needs no loss scaling

    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path, log_path = out_dir / "checkpoint.pt", out_dir / "log.jsonl"
    log_path.write_text("")
    best, step, epoch, stopped_early = -1.0, 0, 0, False
    model.train()
    while step < total and not stopped_early:
        epoch += 1
        epoch_started, running, epoch_steps = clock(), 0.0, 0
        bar = tqdm(range(min(steps_per_epoch, total - step)), desc=f"epoch {epoch}", unit="step",
                   leave=False, file=sys.stderr, disable=None)
        for _ in bar:
            lr = learning_rate(schedule_step(step, total, clock() - started, time_limit), total,
                               float(train_cfg.get("lr", 1e-3)), train_cfg.get("schedule", "cosine"),
                               int(train_cfg.get("warmup_steps", 0)))
            for group in optimiser.param_groups:
                group["lr"] = lr
            images, labels, pixel_weights = batch_of(pool, weights, batch, tile, aug, rng, weight_map)
            images, labels = images.to(dev), labels.to(dev)
            with autocast(dev):
                logits = model(images)
            loss = loss_fn(logits.float(), labels, pixel_weights.to(dev) if pixel_weights is not None else None)
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
            value = loss.item()
            running += value
            epoch_steps += 1
            step += 1
            bar.set_postfix(loss=f"{value:.3f}")
            if clock() - started > time_limit:
                stopped_early = True
                break
        val = validate(model, splits.val, tile, num_classes, dev, batch)
        record = {"epoch": epoch, "step": step, "loss": running / max(1, epoch_steps), "lr": lr,
                  "val_mean_iou": val["mean_iou"], "val_pixel_accuracy": val["pixel_accuracy"],
                  "val_per_class_iou": val["per_class_iou"], "seconds": round(clock() - epoch_started, 1)}
        improved = val["mean_iou"] > best
        if improved:
            best = val["mean_iou"]
            torch.save({
                "model": model.state_dict(),
                "config": ckpt_config,
                "data": splits.description,
                "metrics": {"val_mean_iou": val["mean_iou"], "val_pixel_accuracy": val["pixel_accuracy"],
                            "val_per_class_iou": val["per_class_iou"], "epoch": epoch, "step": step},
                "training": {"config_file": config["config_file"], "epochs": epoch, "steps": step, "seed": seed,
                             "device": str(dev), "batch": batch, "losses": train_cfg.get("losses"),
                             "optimizer": train_cfg.get("optimizer", "adamw"), "seconds": 0.0,
                             "parent": parent},
            }, checkpoint_path)
        with open(log_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        log.info("epoch %3d step %5d loss %.4f val mIoU %.4f acc %.4f lr %.2e %.0fs%s", epoch, step, record["loss"],
                 val["mean_iou"], val["pixel_accuracy"], lr, record["seconds"], " *" if improved else "")
    finish_checkpoint(checkpoint_path, clock() - started, step, stopped_early)
    export = config.get("export", {})
    if export.get("enabled", False):
        export_trained(checkpoint_path, out_dir / "bundle", config, splits, int(export.get("tiles", 4)))
    return checkpoint_path


def finish_checkpoint(path: Path, seconds: float, steps: int, stopped_early: bool) -> None:
    """Record the whole run's time in the best checkpoint (saved before the run ended)."""
    ckpt = torch.load(path, weights_only=True)
    ckpt["training"].update(seconds=round(seconds, 1), total_steps=steps, stopped_at_time_limit=stopped_early)
    torch.save(ckpt, path)


def export_trained(checkpoint: Path, bundle_dir: Path, config: dict[str, Any], splits: Splits,
                   count: int) -> Path:
    from phasewatch.export.onnx_export import cut_reference_tiles, export_bundle

    images = sorted({s.path for s in splits.val})  # a volume's slices are samples of one file
    ckpt_config = checkpoint_config(config)
    tiles = cut_reference_tiles(images, ckpt_config, count)
    if bundle_dir.exists():
        shutil.rmtree(bundle_dir)
    bundle = export_bundle(checkpoint, bundle_dir, tiles, name=config.get("name"),
                           tiles_source=f"validation images: {[p.name for p in images]}",
                           tile=ckpt_config["export_tile"])
    # The trust record's reference is the model's own experience: its training and validation fields.
    seen = sorted({s.path for s in splits.train})
    with closing(open_model(bundle, "cpu")) as model:
        calibrate_bundle(model, seen + images, f"training and validation images of {config.get('name')}")
    return bundle
