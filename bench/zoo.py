"""The zoo at one CPU budget: random init vs ImageNet vs fine-tuned from a bundle, per data set.

For a data set's training config (``src/phasewatch/export/configs/NAME.toml``) it trains each arm
for the same ``--minutes`` of the process's CPU time (not wall time: on a shared machine the
arms would otherwise get whatever the other work leaves them) on the same seed, exports the bundle (every export gate
applies) and scores it with ``phasewatch evaluate``'s code on the config's ``test`` split:

- ``unet-random``: the config's own recipe (the bundled U-Net, 1.1 M parameters), random init;
- ``lite0-imagenet``: U-Net decoder on EfficientNet-Lite0 with its ImageNet weights
  (``encoder = "efficientnet-lite0"``, ``pretrained = true``, input in [-1, 1], lr 1e-3);
- ``lite0-random``: the same network and recipe from random weights, so that the gain of the
  ImageNet weights is told apart from that of the larger network;
- ``unet-from-bundle``: the config's recipe started from another bundled model that never saw
  this data (``init_from``, :data:`PARENTS`).

An arm whose export a gate refused keeps the refusal (``OUT/ARM/export-refused.txt``) and its
validation mIoU in the table, with no test scores: the bundle the appliance would run does not
exist. Arms already trained (``OUT/ARM/bundle`` exists) are not trained again, so ``--train-only``
first and a later run that only scores is the way to use a busy machine. Run it on one core
(``taskset -c 1``): training and scoring use as many threads as the process may run on.

Run: ``taskset -c 1 python bench/zoo.py --data superalloy --minutes 3 --out runs/zoo/superalloy``
(``--json`` for the rows; needs the export extra and the shared data).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

ARMS = ("unet-random", "lite0-imagenet", "lite0-random", "unet-from-bundle")
PARENTS = {"superalloy": "uhcs-carbide", "uhcs-carbide": "superalloy", "uhcs-microconstituent": "superalloy",
           "ebc": "superalloy", "tomography": "superalloy"}
CONFIGS = Path(__file__).resolve().parents[1] / "src" / "phasewatch" / "export" / "configs"


def arm_config(base: dict[str, Any], data: str, arm: str, minutes: float) -> dict[str, Any]:
    """The training config of one arm: the data set's recipe with only what the arm changes."""
    config = copy.deepcopy(base)
    config["name"] = f"{data}-{arm}"
    config["train"]["time_limit_min"] = minutes
    config.setdefault("export", {})["enabled"] = True
    model = config["model"]
    if arm.startswith("lite0"):
        model.pop("kwargs", None)
        model["encoder"] = "efficientnet-lite0"
        model["pretrained"] = arm == "lite0-imagenet"
        config["normalisation"]["std"] = [0.5] * len(config["normalisation"].get("std", [0.25]))
        config["train"]["lr"] = 1e-3
    elif arm == "unet-from-bundle":
        model["init_from"] = PARENTS[data]
    return config


def model_size(bundle_path: Path, side: int = 512) -> dict[str, float]:
    """Parameters and FLOPs (2 x multiply-adds, convs and transposed convs) for one side x side field."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from phasewatch.bundle import load_bundle
    from phasewatch.export.models import build_model

    bundle = load_bundle(str(bundle_path))
    model = build_model(bundle.architecture, bundle.channels, bundle.num_classes,
                        **bundle.manifest["model_kwargs"]).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, bundle.channels, side, side))
    return {"parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "gflops_512": counter.get_total_flops() / 1e9}


def score(bundle_path: Path, config: dict[str, Any], data_root: Path) -> dict[str, Any]:
    """``phasewatch evaluate`` on the config's test split, with the wall time per field."""
    from phasewatch.bundle import load_bundle
    from phasewatch.core.pipeline import open_model
    from phasewatch.export.datasets import find_pairs
    from phasewatch.export.evaluate import label_palette, report, score_pairs

    bundle = load_bundle(str(bundle_path))
    test = config["data"]["test"]
    pairs = find_pairs(data_root / test["images"], data_root / test["labels"])
    with closing(open_model(bundle.path, "cpu")) as model:
        started = time.perf_counter()
        scores = score_pairs(pairs, model, label_palette(bundle), report_failure=print)
        seconds = time.perf_counter() - started
    result = report(bundle, model.backend.name, scores)
    result["seconds_per_field"] = seconds / max(1, len(scores.images))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", required=True, help="a config name in src/phasewatch/export/configs")
    parser.add_argument("--minutes", type=float, default=5.0, help="training wall time per arm")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--train-only", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import torch

    from phasewatch.export.onnx_export import ExportError
    from phasewatch.export.train import default_data_root, load_config, train

    base = load_config(CONFIGS / f"{args.data}.toml")
    data_root = default_data_root()
    rows = []
    for arm in args.arms:
        config = arm_config(base, args.data, arm, args.minutes)
        run_dir = args.out / arm
        refused = run_dir / "export-refused.txt"  # the gate's one line: such an arm has no bundle to score
        if not (run_dir / "bundle" / "manifest.json").is_file() and not refused.is_file():
            print(f"training {config['name']} for {args.minutes:g} CPU-min", file=sys.stderr)
            try:
                train(config, run_dir, data_root, device="cpu", clock=time.process_time)
            except ExportError as exc:
                refused.write_text(f"{exc}\n")
        if args.train_only:
            continue
        if refused.is_file():
            training = torch.load(run_dir / "checkpoint.pt", weights_only=True)
            rows.append({"arm": arm, "steps": training["training"].get("total_steps"),
                         "val_mean_iou": training["metrics"]["val_mean_iou"],
                         "export_refused": refused.read_text().strip()})
            continue
        result = score(run_dir / "bundle", config, data_root)
        manifest = json.loads((run_dir / "bundle" / "manifest.json").read_text())
        rows.append({"arm": arm, "steps": manifest["training"].get("total_steps"),
                     "train_seconds": manifest["training"].get("seconds"),
                     "val_mean_iou": manifest["metrics"]["val_mean_iou"], **model_size(run_dir / "bundle"),
                     "evaluation": result})
    if rows:
        (args.out / "zoo.json").write_text(json.dumps(rows, indent=2))
        print(json.dumps(rows, indent=2) if args.json else table(rows))
    return 0


def table(rows: list[dict[str, Any]]) -> str:
    """One line per arm: validation and test mIoU, per-class test IoU, the phase-fraction errors, cost."""
    scored = [row for row in rows if "evaluation" in row]
    names = list(scored[0]["evaluation"]["per_class"]) if scored else []
    head = (f"{'arm':<17} {'steps':>5} {'val':>6} {'mIoU':>6} " + " ".join(f"{n[:10]:>10}" for n in names)
            + f" {'frac err':>8} {'worst':>6} {'s/field':>7} {'M par':>6} {'GFLOP':>6}")
    lines = [head]
    for row in rows:
        start = f"{row['arm']:<17} {row['steps'] or 0:>5} {100 * row['val_mean_iou']:6.2f} "
        if "evaluation" not in row:
            lines.append(start + f"export refused: {row['export_refused'].split(': ', 1)[-1]}")
            continue
        ev = row["evaluation"]
        agreement = ev["measurement_agreement"]
        lines.append(
            start + f"{100 * (ev['mean_iou'] or 0):6.2f} "
            + " ".join(f"{100 * (ev['per_class'][n]['iou'] or 0):10.2f}" for n in names)
            + f" {_points(agreement.get('fraction_error_mean')):>8} {_points(agreement.get('fraction_error_worst')):>6}"
            + f" {ev['seconds_per_field']:7.2f} {row['parameters_m']:6.2f} {row['gflops_512']:6.1f}")
    return "\n".join(lines)


def _points(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


if __name__ == "__main__":
    sys.exit(main())
