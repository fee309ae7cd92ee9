"""``phasewatch build-engine BUNDLE``: a validated FP16 TensorRT engine for this machine's GPU.

The engine goes where the service looks for it: the data folder of the service's configuration
(``--config``, default /etc/phasewatch/phasewatch.toml when it exists; ``--data`` overrides),
``<data>/engines/<model>/``, or ``[model.tensorrt] engines`` when the configuration names a
folder. Run it as the service's user (``sudo -u phasewatch phasewatch build-engine ...``).
Exits 1, with one line saying why, when the build fails or the engine misses the FP16 gate
(see :mod:`phasewatch.export.build_engine`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from phasewatch.backends.engines import EngineOptions
from phasewatch.bundle import load_bundle
from phasewatch.errors import PhasewatchError
from phasewatch.export.build_engine import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_SIDE,
    DEFAULT_WORKSPACE_MB,
    TIMING_CACHE_SUFFIX,
    EngineBuildError,
    build_engine,
)
from phasewatch.service.config import DEFAULT_CONFIG_PATH, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", help="model bundle folder (or bundled model name)")
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                        help=f"largest batch of tiles the engine accepts (default {DEFAULT_MAX_BATCH})")
    parser.add_argument("--opt-batch", type=int, default=None,
                        help="batch size TensorRT tunes for (default: --max-batch)")
    parser.add_argument("--workspace-mb", type=int, default=DEFAULT_WORKSPACE_MB,
                        help=f"TensorRT workspace memory pool limit (default {DEFAULT_WORKSPACE_MB})")
    parser.add_argument("--timing-cache", type=Path, default=None,
                        help=f"timing cache file (default DATA/engines/GPU.smXY.trtVERSION{TIMING_CACHE_SUFFIX}, "
                             "one per GPU: TensorRT refuses another GPU's timings)")
    parser.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE,
                        help="largest tile height and width the engine accepts, for a bundle exported with "
                             f"dynamic height and width (default {DEFAULT_MAX_SIDE}; a multiple of the bundle's "
                             "spatial_multiple; GPU memory grows with max-batch x max-side squared)")
    parser.add_argument("--opt-side", type=int, default=None,
                        help="tile side TensorRT tunes for (default: --max-side, one field per call, as the "
                             "tile planner sends; --opt-batch then defaults to 1)")
    parser.add_argument("--config", type=Path, default=None,
                        help=f"the service's TOML file, for its data folder (default {DEFAULT_CONFIG_PATH} "
                             "when it exists)")
    parser.add_argument("--data", type=Path, default=None,
                        help="the service's data folder; the engine goes to DATA/engines/MODEL/ "
                             "(default: the configuration's, /var/lib/phasewatch)")
    parser.add_argument("--force", action="store_true",
                        help="rebuild even when an engine for this GPU and TensorRT exists")


def _progress(message: str) -> None:
    print(f"build-engine: {message}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, {"data": args.data})
        engines = EngineOptions.from_table(config.backend_settings["tensorrt"]).root
        bundle = load_bundle(args.bundle)
        path = build_engine(bundle, args.max_batch, args.opt_batch, args.workspace_mb,
                            args.timing_cache, args.force, _progress, args.max_side, args.opt_side, engines)
    except PhasewatchError as exc:
        if isinstance(exc, EngineBuildError):
            for line in exc.details:
                print(line, file=sys.stderr)
        print(f"phasewatch build-engine: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0
