"""``phasewatch export``: a training checkpoint -> a model bundle folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from phasewatch.runtime.errors import PhasewatchError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint written by `phasewatch train`")
    parser.add_argument("--out", required=True, type=Path, help="bundle folder to create (must not exist)")
    parser.add_argument("--name", help="model name in the manifest (default: the folder name)")
    parser.add_argument(
        "--tiles",
        nargs="+",
        type=Path,
        metavar="DIR_OR_IMAGE",
        help="micrographs (or folders of them) to cut the parity tiles from; "
        "without them parity runs on synthetic tiles",
    )
    parser.add_argument("--tile-count", type=int, default=4, help="number of parity tiles (default 4)")
    parser.add_argument("--tile", type=int, default=None,
                        help="tile the bundle runs at (default: the checkpoint's export tile, else its training tile)")


def run(args: argparse.Namespace) -> int:
    from phasewatch.export.onnx_export import (
        cut_reference_tiles,
        export_bundle,
        image_files,
        load_checkpoint,
    )

    try:
        tiles, source = None, None
        if args.tiles:
            images = image_files(args.tiles)
            config = load_checkpoint(args.checkpoint)["config"]
            tiles = cut_reference_tiles(images, config, args.tile_count, args.tile)
            source = ", ".join(p.name for p in images[: args.tile_count])
        else:
            print(
                "phasewatch export: no --tiles given; parity is checked on synthetic tiles only",
                file=sys.stderr,
            )
        bundle = export_bundle(args.checkpoint, args.out, tiles, name=args.name, tiles_source=source,
                               tile=args.tile)
    except PhasewatchError as exc:
        print(f"phasewatch export: {exc}", file=sys.stderr)
        return 1
    print(bundle)
    return 0
