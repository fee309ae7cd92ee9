"""``phasewatch export-triton BUNDLE REPO``: a Triton model repository entry for a bundle.

Writes ``REPO/NAME/config.pbtxt`` and ``REPO/NAME/VERSION/`` (``model.onnx`` for Triton's ONNX
Runtime backend, or a gated FP16 TensorRT engine as ``model.plan``, and the bundle's manifest);
see ``src/phasewatch/backends/triton/repository.py`` and docs/SCALE_OUT.md. Needs neither torch nor tritonclient.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from phasewatch.backends.tensorrt import ENGINE_SUFFIX
from phasewatch.backends.triton.repository import (
    PLATFORMS,
    Network,
    TritonExportError,
    engine_network,
    onnx_network,
    write_entry,
)
from phasewatch.bundle import Bundle, load_bundle
from phasewatch.errors import PhasewatchError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", help="bundle folder or bundled model name")
    parser.add_argument("repo", type=Path, help="the Triton model repository (created if missing)")
    parser.add_argument("--name", default="", help="the model's name on the server (default: the bundle's)")
    parser.add_argument("--version", type=int, default=1, help="the model version folder (default 1)")
    parser.add_argument("--platform", choices=PLATFORMS, default="onnxruntime",
                        help="onnxruntime: the FP32 ONNX; tensorrt: a gated engine from build-engine, which "
                             "runs only on the GPU and TensorRT version it was built with")
    parser.add_argument("--engine", type=Path, default=None,
                        help="--platform tensorrt: the engine file (default: the bundle's only engine)")
    parser.add_argument("--max-batch", type=int, default=8,
                        help="--platform onnxruntime: the most tiles the server batches together (default 8)")


def only_engine(bundle: Bundle) -> Path:
    engines = sorted(bundle.engines_dir.glob(f"*{ENGINE_SUFFIX}"))
    if len(engines) != 1:
        raise TritonExportError(f"{bundle.engines_dir}: {len(engines)} engines; name one with --engine "
                                f"(build one with: phasewatch build-engine {bundle.path})")
    return engines[0]


def network(bundle: Bundle, args: argparse.Namespace) -> Network:
    if args.platform == "tensorrt":
        return engine_network(bundle, args.engine or only_engine(bundle))
    if args.max_batch < 1:
        raise TritonExportError(f"--max-batch {args.max_batch}: must be at least 1")
    return onnx_network(bundle, args.max_batch)


def run(args: argparse.Namespace) -> int:
    try:
        bundle = load_bundle(args.bundle)
        entry = write_entry(bundle, network(bundle, args), args.repo, args.name, args.version)
    except PhasewatchError as exc:
        print(f"phasewatch export-triton: {exc}", file=sys.stderr)
        return 2
    print(f"{entry}: {bundle.name} ({args.platform}, version {args.version}, ONNX {bundle.onnx_sha256[:12]})")
    return 0
