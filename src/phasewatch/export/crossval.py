"""Leave-specimens-out cross-validation: how a training recipe does on specimens it never saw.

A data set that names specimens (``[data] specimen``, a regular expression on the file stem)
is pooled over all its splits (train, val and test), and its specimens are dealt into
``folds`` groups of about equal image count. Each fold trains the config's recipe on the other
folds' specimens, picks its checkpoint on one of them (the smallest specimen of the next fold,
so the model is never chosen on what it is scored on), and scores every specimen of its own
fold through the runtime's sliding window at the bundle's tile. Every specimen is thus
held out exactly once; with as many folds as specimens this is leave-one-specimen-out.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any

from phasewatch.export.datasets import Sample, load_samples, parse_palette
from phasewatch.export.models import input_slices
from phasewatch.export.onnx_export import load_checkpoint, model_from_checkpoint, normalisation_from_config
from phasewatch.export.train import (
    Splits,
    TrainError,
    checkpoint_config,
    pick_device,
    specimen_of,
    specimen_splits,
    train,
    validate,
)

log = logging.getLogger(__name__)


def pooled_samples(config: dict[str, Any], data_root: Path) -> list[Sample]:
    """Every labelled image of every split the config names, normalised as training does."""
    data, model = config["data"], config["model"]
    channels = int(model.get("in_channels", 1))
    normalisation = normalisation_from_config(config.get("normalisation", {}), channels)
    palette = parse_palette(data["palette"]) if "palette" in data else None
    pool: list[Sample] = []
    for split in ("train", "val", "test"):
        if split in data:
            pool += load_samples(data_root / data[split]["images"], data_root / data[split]["labels"], channels,
                                 normalisation, float(model.get("scale", 1.0)), palette,
                                 int(data.get("default_class", 0)), len(config["classes"]),
                                 input_slices(model["architecture"], **model.get("kwargs", {})))
    return pool


def deal_folds(counts: dict[str, int], folds: int) -> list[list[str]]:
    """Specimens into ``folds`` groups of about equal image count (largest first, each to the
    group with the fewest images so far; ties by name, so the deal is reproducible)."""
    if not 2 <= folds <= len(counts):
        raise TrainError(f"--folds {folds}: needs 2 to {len(counts)} (the number of specimens)")
    groups: list[list[str]] = [[] for _ in range(folds)]
    sizes = [0] * folds
    for specimen in sorted(counts, key=lambda s: (-counts[s], s)):
        target = sizes.index(min(sizes))
        groups[target].append(specimen)
        sizes[target] += counts[specimen]
    return groups


def cross_validate(config: dict[str, Any], out_dir: Path, folds: int, data_root: Path,
                   device: str = "auto") -> dict[str, Any]:
    """Train one model per fold (in ``out_dir/fold-N``) and score its held-out specimens; the
    report (also written to ``out_dir/report.json``) has one entry per specimen."""
    where = config["config_file"]
    if "specimen" not in config["data"]:
        raise TrainError(f"{where}: cross-validation needs [data] specimen (a regular expression naming the "
                         "specimen in each file stem)")
    pattern = str(config["data"]["specimen"])
    pool = pooled_samples(config, data_root)
    counts = Counter(specimen_of(s.name, pattern) for s in pool)
    groups = deal_folds(dict(counts), folds)
    ckpt_config = checkpoint_config(config)
    classes = [c["name"] for c in ckpt_config["classes"]]
    specimens: list[dict[str, Any]] = []
    for index, held_out in enumerate(groups):
        following = groups[(index + 1) % len(groups)]
        val_specimen = min(following, key=lambda s: (counts[s], s))
        train_samples, val_samples, split_groups = specimen_splits(
            pool, {"specimen": pattern, "val_specimens": [val_specimen], "leave_out_specimens": held_out}, where)
        description = {"root": str(data_root), "cross_validation": {"fold": index + 1, "folds": len(groups)},
                       "train_images": [s.name for s in train_samples],
                       "val_images": [s.name for s in val_samples], "specimens": split_groups}
        fold_config = copy.deepcopy(config)
        fold_config["export"] = {"enabled": False}
        log.info("fold %d/%d: held out %s, validation %s, %d training images",
                 index + 1, len(groups), held_out, val_specimen, len(train_samples))
        checkpoint = train(fold_config, out_dir / f"fold-{index + 1}", data_root, device,
                           splits=Splits(train_samples, val_samples, description))
        ckpt = load_checkpoint(checkpoint)
        model = model_from_checkpoint(ckpt, checkpoint).to(pick_device(device))
        for specimen in held_out:
            samples = [s for s in pool if specimen_of(s.name, pattern) == specimen]
            scores = validate(model, samples, ckpt_config["export_tile"], len(classes), pick_device(device),
                              int(config["train"].get("batch", 8)))
            specimens.append({
                "specimen": specimen, "fold": index + 1, "images": [s.name for s in samples],
                "validation_specimen": val_specimen, "pixel_accuracy": scores["pixel_accuracy"],
                "mean_iou": scores["mean_iou"],
                "iou": dict(zip(classes, scores["per_class_iou"], strict=True)),
                "checkpoint_epoch": ckpt["metrics"]["epoch"],
                "training_seconds": ckpt["training"]["seconds"],
            })
            # as each fold ends, so that a run stopped part-way still says what it measured
            log.info("fold %d: %s: mIoU %.2f%%, %s", index + 1, specimen, 100 * scores["mean_iou"],
                     ", ".join(f"{c} IoU {v:.2%}" for c, v in specimens[-1]["iou"].items()))
    report = {"config": where, "specimen_pattern": pattern, "folds": groups, "specimens": specimens,
              "parent": config["model"].get("init_from"),
              "time_limit_min": config["train"].get("time_limit_min"),
              "scored": "each held-out specimen's images pooled, through the runtime's sliding window at the export "
                        "tile, from the fold's best checkpoint (FP32 PyTorch)"}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    return report


def report_table(report: dict[str, Any]) -> str:
    """The report as a Markdown table: one row per held-out specimen, IoU per class."""
    classes = list(report["specimens"][0]["iou"]) if report["specimens"] else []
    lines = ["| specimen | fold | images | pixel acc | mIoU | " + " | ".join(f"{c} IoU" for c in classes) + " |",
             "|---|---|---|---|---|" + "---|" * len(classes)]
    for entry in report["specimens"]:
        ious = [entry["iou"][c] for c in classes]
        lines.append(f"| {entry['specimen']} | {entry['fold']} | {len(entry['images'])} | "
                     f"{entry['pixel_accuracy']:.2%} | {entry['mean_iou']:.2%} | "
                     + " | ".join("n/a" if v is None or math.isnan(v) else f"{v:.2%}" for v in ious) + " |")
    return "\n".join(lines)
