"""Argument helpers that several commands share (a command never imports another command)."""

from __future__ import annotations

import argparse
from pathlib import Path

from phasewatch.errors import PhasewatchError
from phasewatch.imageio.formats import images_in


class ArgumentError(PhasewatchError):
    """A command-line value that cannot be used; the message is one line naming the option."""


def expand_inputs(paths: list[Path]) -> list[Path]:
    """Files as given; folders replaced by the images they hold (sorted, not recursive)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += images_in(path)
        else:
            files.append(path)
    return files


def parse_spacing(text: str) -> tuple[float, float, float]:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3 or not all(v > 0 for v in values):
        raise ArgumentError(f"--spacing must be three positive numbers Z,Y,X in µm, not '{text}'")
    return values[0], values[1], values[2]


def add_recipe_overrides(parser: argparse.ArgumentParser) -> None:
    """Options that change a config's recipe for one run (A/B comparisons, cross-validation)."""
    parser.add_argument("--time-limit-min", type=float, default=None,
                        help="stop training after this many minutes (replaces [train] time_limit_min)")
    parser.add_argument("--init-from", default=None,
                        help="start from this bundle (name or folder; replaces [model] init_from)")


def apply_recipe_overrides(config: dict, args: argparse.Namespace) -> dict:
    if args.time_limit_min is not None:
        config["train"]["time_limit_min"] = args.time_limit_min
    if args.init_from is not None:
        config["model"]["init_from"] = args.init_from
    return config
