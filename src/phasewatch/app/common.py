"""Argument helpers that several commands share (a command never imports another command)."""

from __future__ import annotations

import argparse
from pathlib import Path

from phasewatch.backends.registry import KINDS, Settings
from phasewatch.errors import PhasewatchError
from phasewatch.imageio.formats import images_in
from phasewatch.tomlfile import tomllib


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


# --triton-* flag -> its [model.triton] key (segment's flags for the one backend with settings).
TRITON_FLAGS = {"triton_url": "url", "triton_model": "model", "triton_protocol": "protocol",
                "triton_shared_memory": "shared_memory"}


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """--backend and the triton backend's flags (its [model.triton] keys)."""
    parser.add_argument("--backend", choices=KINDS, default="auto")
    parser.add_argument("--triton-url", metavar="HOST:PORT",
                        help="--backend triton: the server (default: this host, 8001 for grpc, 8000 for http)")
    parser.add_argument("--triton-model", help="--backend triton: the model's name there (default: the bundle's)")
    parser.add_argument("--triton-protocol", choices=("grpc", "http"), help="--backend triton: default grpc")
    parser.add_argument("--triton-shared-memory", action="store_true", default=None,
                        help="--backend triton: tiles and logits through system shared memory (server on this host)")


def backend_settings(args: argparse.Namespace) -> Settings:
    """The [model.<kind>] tables the flags of :func:`add_backend_arguments` give."""
    triton = {key: getattr(args, flag) for flag, key in TRITON_FLAGS.items() if getattr(args, flag) is not None}
    return {"triton": triton} if triton else {}


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
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (replaces [train] lr)")


def apply_recipe_overrides(config: dict, args: argparse.Namespace) -> dict:
    if args.time_limit_min is not None:
        config["train"]["time_limit_min"] = args.time_limit_min
    if args.init_from is not None:
        config["model"]["init_from"] = args.init_from
    if args.lr is not None:
        config["train"]["lr"] = args.lr
    return config


def check_before_torch(config: Path | None = None, files: tuple[Path, ...] = (),
                       folders: tuple[Path | None, ...] = ()) -> None:
    """Raise :class:`ArgumentError` naming the first ``config`` that is not a readable TOML file,
    file that is not a file, or folder given that is not a folder: the training commands call
    this before they import torch, which takes seconds, so that a typo fails at once."""
    if config is not None:
        try:
            tomllib.loads(config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ArgumentError(f"{config}: {exc}") from exc
    for path in files:
        if not path.is_file():
            raise ArgumentError(f"{path}: no such file")
    for folder in folders:
        if folder is not None and not folder.is_dir():
            raise ArgumentError(f"{folder}: no such folder")
