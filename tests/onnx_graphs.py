"""Tiny fully-convolutional ONNX nets and bundles for tests, built with the onnx helper API.

A net is a stack of 3x3 convolutions (ReLU between them) with the given dilations,
then a 1x1 classifier. Each 3x3 conv of dilation d sees d pixels further on each side,
so the receptive-field halo is exactly ``sum(layers)`` (see :func:`conv_net_halo`).
Input 'input' is [N, C, H, W] and output 'logits' [N, K, H, W] with N, H and W all
dynamic, so the same graph runs tile batches and whole images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from phasewatch.bundle import sha256_file, write_manifest

OPSET = 17
IR_VERSION = 8  # readable by older onnxruntime builds too (e.g. JetPack wheels)


def conv_net_halo(layers: Sequence[int]) -> int:
    return int(sum(layers))


def make_conv_net(
    path: Path,
    in_channels: int,
    num_classes: int,
    layers: Sequence[int] = (1, 2),
    width: int = 8,
    seed: int = 0,
) -> Path:
    """Write the net to ``path``; ``layers`` are the dilations of the 3x3 convs."""
    rng = np.random.default_rng(seed)
    nodes, weights = [], []
    current, channels = "input", in_channels
    specs = [(width, 3, d) for d in layers] + [(num_classes, 1, 1)]
    for i, (out_channels, kernel, dilation) in enumerate(specs):
        fan_in = channels * kernel * kernel
        w = rng.normal(0, 1 / np.sqrt(fan_in), (out_channels, channels, kernel, kernel))
        b = rng.normal(0, 0.1, out_channels)
        weights += [
            numpy_helper.from_array(w.astype(np.float32), f"w{i}"),
            numpy_helper.from_array(b.astype(np.float32), f"b{i}"),
        ]
        last = i == len(specs) - 1
        out = "logits" if last else f"conv{i}"
        pad = dilation * (kernel // 2)
        nodes.append(
            helper.make_node(
                "Conv",
                [current, f"w{i}", f"b{i}"],
                [out],
                kernel_shape=[kernel, kernel],
                dilations=[dilation, dilation],
                pads=[pad, pad, pad, pad],
            )
        )
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"relu{i}"]))
            out = f"relu{i}"
        current, channels = out, out_channels
    graph = helper.make_graph(
        nodes,
        "tiny_conv_net",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", in_channels, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", num_classes, "H", "W"])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path = Path(path)
    onnx.save(model, str(path))
    return path


def make_bundle(
    directory: Path,
    in_channels: int = 1,
    num_classes: int = 3,
    tile: int = 64,
    layers: Sequence[int] = (1, 2),
    width: int = 8,
    seed: int = 0,
    name: str = "tiny",
) -> Path:
    """A valid model bundle (model.onnx + manifest.json) around :func:`make_conv_net`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    onnx_path = make_conv_net(directory / "model.onnx", in_channels, num_classes, layers, width, seed)
    palette = [(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    manifest = {
        "format": 1,
        "name": name,
        "architecture": "tiny-conv",
        "classes": [
            {"id": k, "name": f"class{k}", "colour": list(palette[k % len(palette)]), "role": "phase"}
            for k in range(num_classes)
        ],
        "input": {"channels": in_channels, "dtype": "float32", "layout": "NCHW", "name": "input"},
        "normalisation": {"mean": [0.5] * in_channels, "std": [0.25] * in_channels},
        "tile": tile,
        "halo": conv_net_halo(layers),
        "scale": 1.0,
        "pixel_size_um": None,
        "output": "logits",
        "onnx_sha256": sha256_file(onnx_path),
    }
    write_manifest(directory, manifest)
    return directory
