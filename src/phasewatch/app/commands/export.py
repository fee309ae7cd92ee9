"""``phasewatch export``: a training checkpoint (or an existing bundle, exported again) -> a model bundle folder."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from phasewatch.errors import PhasewatchError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="checkpoint written by `phasewatch train`")
    source.add_argument("--bundle", help="bundle (folder or bundled name) to export again under this version's "
                                         "exporter (dynamic sizes); its trust calibration is carried over")
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
    try:
        with tempfile.TemporaryDirectory() as work:
            bundle = _export(args, args.checkpoint or _checkpoint_of(args.bundle, Path(work)))
    except PhasewatchError as exc:
        print(f"phasewatch export: {exc}", file=sys.stderr)
        return 1
    print(bundle)
    return 0


def _checkpoint_of(ref: str, work: Path) -> Path:
    from phasewatch.bundle import load_bundle
    from phasewatch.export.finetune import checkpoint_from_bundle

    return checkpoint_from_bundle(load_bundle(ref), work / "from-bundle.pt")


def _export(args: argparse.Namespace, checkpoint: Path) -> Path:
    from phasewatch.bundle import load_bundle, write_manifest
    from phasewatch.export.onnx_export import cut_reference_tiles, export_bundle, image_files, load_checkpoint

    tiles, source = None, None
    if args.tiles:
        images = image_files(args.tiles)
        config = load_checkpoint(checkpoint)["config"]
        tiles = cut_reference_tiles(images, config, args.tile_count, args.tile)
        source = ", ".join(p.name for p in images[: args.tile_count])
    else:
        print("phasewatch export: no --tiles given; parity is checked on synthetic tiles only", file=sys.stderr)
    parent = load_bundle(args.bundle) if args.bundle else None
    bundle = export_bundle(checkpoint, args.out, tiles, name=args.name or (parent.name if parent else None),
                           tiles_source=source, tile=args.tile)
    if parent is not None and "trust" in parent.manifest:
        # The same weights compute the same function (the parity gates say so), and the trust
        # measures of the input do not depend on the export: the calibration still holds.
        manifest = load_bundle(bundle).manifest
        write_manifest(bundle, {**manifest, "trust": {**parent.manifest["trust"],
                                                      "carried_from": parent.onnx_sha256}})
    return bundle
