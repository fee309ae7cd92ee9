"""``phasewatch train --config FILE``: train a model on labelled micrographs (needs torch)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from phasewatch.app.common import add_recipe_overrides, apply_recipe_overrides, check_before_torch
from phasewatch.errors import PhasewatchError
from phasewatch.service.logs import setup_logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path,
                        help="TOML training config (see src/phasewatch/export/configs/ for the bundled models')")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default runs/NAME)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="folder the config's data paths are relative to (default $PHASEWATCH_DATA or "
                             "../shared/data)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--cpu-clock", action="store_true",
                        help="measure the time limit in this process's CPU time, not wall time, so that runs "
                             "sharing a machine get the same compute (pin each with taskset for one thread)")
    add_recipe_overrides(parser)


def run(args: argparse.Namespace) -> int:
    try:
        check_before_torch(args.config, folders=(args.data_root,))
    except PhasewatchError as exc:
        print(f"phasewatch train: {exc}", file=sys.stderr)
        return 1
    from phasewatch.export.train import load_config, train

    setup_logging("INFO")  # the epochs' progress lines
    try:
        config = apply_recipe_overrides(load_config(args.config), args)
        out = args.out or Path("runs") / config.get("name", args.config.stem)
        checkpoint = train(config, out, args.data_root, args.device, args.seed, args.epochs, args.max_steps,
                           clock=time.process_time if args.cpu_clock else time.time)
    except PhasewatchError as exc:
        print(f"phasewatch train: {exc}", file=sys.stderr)
        return 1
    print(f"best checkpoint: {checkpoint}", file=sys.stderr)
    return 0
