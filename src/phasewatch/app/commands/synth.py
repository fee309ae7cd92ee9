"""``phasewatch synth train|generate|score``: generated training pairs and how real they look.

``train`` and ``generate`` need torch (the generator is a PyTorch model); ``score`` runs on
ONNX Runtime alone (a bundled model's encoder), so this module imports torch only inside
the first two.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from phasewatch.app.common import check_before_torch
from phasewatch.errors import PhasewatchError
from phasewatch.service.logs import setup_logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    train = sub.add_parser("train", help="train a mask-conditioned generator on a config's training images")
    train.add_argument("--config", required=True, type=Path, help="training config whose train split is used")
    train.add_argument("--out", required=True, type=Path, help="run folder; a generator.pt there is resumed")
    train.add_argument("--data-root", type=Path, default=None, help="default $PHASEWATCH_DATA or ../shared/data")
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    train.add_argument("--crop", type=int, default=128, help="training crop side, a multiple of 16 (px)")
    train.add_argument("--batch", type=int, default=8)
    train.add_argument("--steps", type=int, default=20000, help="total steps, counting a resumed run's")
    train.add_argument("--minutes", type=float, default=30.0, help="wall-clock limit of this invocation")
    train.add_argument("--width", type=int, default=32, help="generator and discriminator base width")
    train.add_argument("--l1-weight", type=float, default=10.0)
    train.add_argument("--seed", type=int, default=0)

    generate = sub.add_parser("generate", help="write image/mask pairs from a trained generator")
    generate.add_argument("generator", type=Path, help="generator.pt from synth train")
    generate.add_argument("--out", required=True, type=Path, help="folder for images/, labels/, manifest.json")
    generate.add_argument("--count", type=int, default=100)
    generate.add_argument("--size", type=int, default=256, help="side of each pair, a multiple of 16 (px)")
    generate.add_argument("--seed", type=int, default=0)

    score = sub.add_parser("score", help="FID and KID of generated images against real ones")
    score.add_argument("real", type=Path, help="folder of real micrographs")
    score.add_argument("fake", type=Path, help="folder of generated micrographs")
    score.add_argument("--model", default="superalloy", help="bundle whose encoder gives the features")
    score.add_argument("--crop", type=int, default=128, help="score crops of this side (0: whole images)")
    score.add_argument("--stride", type=int, default=64, help="step between crops (px)")
    score.add_argument("--subsets", type=int, default=100, help="KID subsets")
    score.add_argument("--subset-size", type=int, default=100, help="images per KID subset (capped by the sets)")
    score.add_argument("--seed", type=int, default=0)
    score.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    setup_logging("INFO")  # training's progress lines
    try:
        return {"train": _train, "generate": _generate, "score": _score}[args.action](args)
    except PhasewatchError as exc:
        print(f"phasewatch synth {args.action}: {exc}", file=sys.stderr)
        return 1


def _train(args: argparse.Namespace) -> int:
    check_before_torch(args.config, folders=(args.data_root,))
    from phasewatch.export.synth_train import GanSettings, train_generator
    from phasewatch.export.train import default_data_root, load_config

    config = load_config(args.config)
    settings = GanSettings(crop=args.crop, batch=args.batch, steps=args.steps, minutes=args.minutes,
                           width=args.width, l1_weight=args.l1_weight, seed=args.seed)
    data_root = args.data_root or Path(config["data"].get("root") or default_data_root())
    checkpoint = train_generator(config, args.out, data_root, settings, args.device)
    print(f"generator: {checkpoint}", file=sys.stderr)
    return 0


def _generate(args: argparse.Namespace) -> int:
    check_before_torch(files=(args.generator,))
    from phasewatch.export.synth_generate import generate_pairs

    manifest = generate_pairs(args.generator, args.out, args.count, args.size, args.seed)
    print(f"{manifest['count']} pairs in {args.out}", file=sys.stderr)
    return 0


def _score(args: argparse.Namespace) -> int:
    from phasewatch.core.synth_score import format_score, score_folders

    result = score_folders(args.real, args.fake, args.model, args.crop, args.stride, args.subsets,
                           args.subset_size, args.seed)
    print(json.dumps(result, indent=2) if args.json else format_score(result))
    return 0
