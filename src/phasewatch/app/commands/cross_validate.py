"""``phasewatch cross-validate --config FILE --folds K``: train the config's recipe K times, each
time holding out a group of specimens, and score every specimen on the model that never saw it
(needs torch and ``[data] specimen`` in the config)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from phasewatch.app.common import ArgumentError, add_recipe_overrides, apply_recipe_overrides, check_before_torch
from phasewatch.errors import PhasewatchError
from phasewatch.service.logs import setup_logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="TOML training config with [data] specimen")
    parser.add_argument("--folds", required=True, type=int,
                        help="groups of specimens (as many as there are specimens: leave-one-specimen-out)")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default runs/NAME-cv)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="folder the config's data paths are relative to (default $PHASEWATCH_DATA or "
                             "../shared/data)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    add_recipe_overrides(parser)


def run(args: argparse.Namespace) -> int:
    try:
        check_before_torch(args.config, folders=(args.data_root,))
        if args.folds < 2:
            raise ArgumentError(f"--folds {args.folds}: needs at least 2")
    except PhasewatchError as exc:
        print(f"phasewatch cross-validate: {exc}", file=sys.stderr)
        return 1
    from phasewatch.export.crossval import cross_validate, report_table
    from phasewatch.export.train import default_data_root, load_config

    setup_logging("INFO")  # each fold's progress lines
    try:
        config = apply_recipe_overrides(load_config(args.config), args)
        out = args.out or Path("runs") / f"{config.get('name', args.config.stem)}-cv"
        data_root = args.data_root or Path(config["data"].get("root") or default_data_root())
        report = cross_validate(config, out, args.folds, data_root, args.device)
    except PhasewatchError as exc:
        print(f"phasewatch cross-validate: {exc}", file=sys.stderr)
        return 1
    print(report_table(report))
    print(f"report: {out / 'report.json'}", file=sys.stderr)
    return 0
