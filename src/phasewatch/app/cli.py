"""The ``phasewatch`` command: one sub-command per job, each in a module of its own.

A command's module is imported only when that command runs, so that ``phasewatch
segment`` never pays for (or needs) PyTorch, which only the export commands import.
Each command module provides ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "segment": ("phasewatch.app.commands.segment", "segment micrographs: class maps, overlays, measurements"),
    "serve": ("phasewatch.app.commands.serve", "run the daemon: watch a folder, segment, serve the web page"),
    "demo": ("phasewatch.app.commands.demo",
             "the appliance in one command: service and page on a simulated microscope of known truth"),
    "calibrate-trust": ("phasewatch.app.commands.calibrate_trust",
                        "set a bundle's trust calibration from its training images"),
    "reanalyse": ("phasewatch.app.commands.reanalyse",
                  "run a model over an archive's folder tree, locally or on a Dask cluster; resumable"),
    "reanalyse-compare": ("phasewatch.app.commands.reanalyse_compare",
                          "two models' re-analyses of one archive per specimen: fractions, differences, CIs"),
    "doctor": ("phasewatch.app.commands.doctor", "print what the service would use: backends, model, folders"),
    "export-triton": ("phasewatch.app.commands.export_triton",
                      "write a Triton Inference Server model repository entry for a bundle"),
    "measure-volume": ("phasewatch.app.commands.measure_volume",
                       "3D measurements of a stack of class maps: fractions, components, Euler number"),
    "teach": ("phasewatch.app.commands.teach",
              "fine-tune a model on a material's labelled fields, gate it, keep it as DATA/models/NAME@N"),
    "dataset": ("phasewatch.app.commands.dataset",
                "a material's labelled fields as images + class-id labels in the layout train reads"),
    "audit": ("phasewatch.app.commands.audit", "verify (or show) the data folder's hash-chained audit record"),
    "train": ("phasewatch.app.commands.train", "train a segmentation model from a config file (needs torch)"),
    "cross-validate": ("phasewatch.app.commands.cross_validate",
                       "train a recipe once per group of held-out specimens and score each (needs torch)"),
    "synth": ("phasewatch.app.commands.synth",
              "generated training pairs: train a generator, generate, score FID/KID (train/generate need torch)"),
    "evaluate": ("phasewatch.app.commands.evaluate", "score a model bundle on labelled micrographs"),
    "export": ("phasewatch.app.commands.export", "checkpoint -> model bundle (ONNX, FP16 ONNX, parity report)"),
    "quantise": ("phasewatch.app.commands.quantise", "add a gated INT8 model for the CPU to a bundle"),
    "add-head": ("phasewatch.app.commands.add_head",
                 "add model.head.onnx: the network with its softmax/argmax in the graph (needs onnx)"),
    "build-engine": ("phasewatch.app.commands.build_engine", "build a validated FP16 TensorRT engine for a bundle"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: phasewatch COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "phasewatch COMMAND --help shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"phasewatch: unknown command '{name}'\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, help_ = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"phasewatch {name}", description=help_)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
