"""``phasewatch export-triton BUNDLE REPO``: a Triton model repository entry for a bundle.

Writes ``REPO/NAME/config.pbtxt`` and ``REPO/NAME/VERSION/`` (``model.onnx`` for Triton's ONNX
Runtime backend, or a gated FP16 TensorRT engine as ``model.plan``, and the bundle's manifest);
see ``src/phasewatch/backends/triton/repository.py`` and docs/SCALE_OUT.md. Needs neither torch nor tritonclient.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from phasewatch.backends.engines import EngineOptions, engine_folders
from phasewatch.backends.tensorrt import ENGINE_SUFFIX
from phasewatch.backends.triton.repository import (
    INSTANCE_KINDS,
    PLATFORMS,
    Network,
    Serving,
    TritonExportError,
    engine_network,
    onnx_network,
    write_entry,
)
from phasewatch.bundle import Bundle, load_bundle
from phasewatch.errors import PhasewatchError
from phasewatch.service.config import DEFAULT_CONFIG_PATH, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", help="bundle folder or bundled model name")
    parser.add_argument("repo", type=Path, help="the Triton model repository (created if missing)")
    parser.add_argument("--name", default="", help="the model's name on the server (default: the bundle's)")
    parser.add_argument("--version", type=int, default=1, help="the model version folder (default 1)")
    parser.add_argument("--platform", choices=PLATFORMS, default="onnxruntime",
                        help="onnxruntime: the FP32 ONNX; tensorrt: a gated engine from build-engine, which "
                             "runs only on the GPU and TensorRT version it was built with")
    parser.add_argument("--engine", type=Path, default=None,
                        help="--platform tensorrt: the engine file (default: the bundle's only engine in "
                             "DATA/engines/MODEL/, where build-engine keeps it, or in the bundle's old engines/)")
    parser.add_argument("--config", type=Path, default=None,
                        help=f"the service's TOML file, for its data folder (default {DEFAULT_CONFIG_PATH} "
                             "when it exists)")
    parser.add_argument("--data", type=Path, default=None,
                        help="the service's data folder, whose engines/ build-engine wrote (default: the "
                             "configuration's, /var/lib/phasewatch)")
    parser.add_argument("--instances", type=int, default=1,
                        help="copies of the model Triton runs (per GPU; default 1)")
    parser.add_argument("--instance-kind", choices=INSTANCE_KINDS, default=None,
                        help="where they run (default: gpu for tensorrt, auto for onnxruntime: each GPU, else CPU)")
    parser.add_argument("--preferred-batch", type=int, nargs="+", default=(),
                        help="batch sizes dynamic batching waits to fill (default: the max batch)")
    parser.add_argument("--max-batch", type=int, default=8,
                        help="--platform onnxruntime: the most tiles the server batches together (default 8)")


def only_engine(bundle: Bundle, root: Path) -> Path:
    """The one engine of ``bundle`` under the engines ``root`` or, failing any, in the bundle."""
    folders = engine_folders(root, bundle)
    for folder in folders:
        engines = sorted(folder.glob(f"*{ENGINE_SUFFIX}"))
        if len(engines) == 1:
            return engines[0]
        if engines:
            raise TritonExportError(f"{folder}: {len(engines)} engines; name one with --engine")
    raise TritonExportError(f"no engine in {' or '.join(map(str, folders))} (build one with: "
                            f"phasewatch build-engine {bundle.path}, or name one with --engine)")


def network(bundle: Bundle, args: argparse.Namespace) -> Network:
    if args.platform == "tensorrt":
        if args.engine is not None:
            return engine_network(bundle, args.engine)
        config = load_config(args.config, {"data": args.data})
        root = EngineOptions.from_table(config.backend_settings["tensorrt"]).root
        return engine_network(bundle, only_engine(bundle, root))
    if args.max_batch < 1:
        raise TritonExportError(f"--max-batch {args.max_batch}: must be at least 1")
    return onnx_network(bundle, args.max_batch)


def run(args: argparse.Namespace) -> int:
    try:
        bundle = load_bundle(args.bundle)
        kind = args.instance_kind or ("gpu" if args.platform == "tensorrt" else "auto")
        serving = Serving(args.instances, kind, tuple(args.preferred_batch))
        entry = write_entry(bundle, network(bundle, args), args.repo, args.name, args.version, serving)
    except PhasewatchError as exc:
        print(f"phasewatch export-triton: {exc}", file=sys.stderr)
        return 2
    print(f"{entry}: {bundle.name} ({args.platform}, version {args.version}, ONNX {bundle.onnx_sha256[:12]})")
    return 0
