"""The post-processing in the graph (issue 25): ``model.head.onnx``, the bundle's ``model.onnx``
with nodes appended after its logits so that the runtime receives a uint8 class map and a uint8
softmax margin (N x H x W each) instead of N x K x H x W float logits. No retraining: the
network's nodes and weights are the bundle's own, untouched.

The appended nodes compute what ``core/tiling.py`` computes on the logits of a field run in one
pass, in the same order of float32 operations: ``ArgMax`` (first maximum wins, as
``argmax_classes``), and ``round(255 x (1 - exp(second - best)) / sum_k exp(l_k - best))``
(``softmax_margin``). The runtime uses the head only for a field its tile plan runs in one pass
(``tiling.segment_many``): where tiles overlap, today's Gaussian blend of logits has no uint8
equivalent. Resizing back to the field (bundles at scale != 1) stays outside the graph: it is a
nearest-neighbour pick on the uint8 maps (cv2, ``pipeline.segment_images``), about a millisecond.

Written by ``phasewatch add-head BUNDLE...``, which records ``head`` (file, sha256,
parity on the bundle's reference tiles) in the manifest; a bundle without it runs as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from phasewatch.bundle import BundleError, load_bundle, sha256_file, write_manifest

HEAD_FILE = "model.head.onnx"
OUTPUTS = ("classes", "margin")


def fuse_head(model: Any) -> Any:
    """``model`` (an onnx ModelProto whose first output is N x K x H x W logits, K >= 2) with the
    head appended: outputs ``classes`` and ``margin``, uint8 N x H x W; the logits are no longer
    an output, so the runtime never copies them out."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    fused = onnx.ModelProto()
    fused.CopyFrom(model)
    graph = fused.graph
    logits = graph.output[0].name
    dims = graph.output[0].type.tensor_type.shape.dim
    if len(dims) != 4 or (dims[1].HasField("dim_value") and dims[1].dim_value < 2):
        raise ValueError(f"the model's output {logits} is not N x K x H x W logits with K >= 2")

    def name(suffix: str) -> str:
        return f"head/{suffix}"

    constants: dict[str, np.ndarray] = {
        "k2": np.array([2], np.int64), "axis1": np.array([1], np.int64), "zero": np.array([0], np.int64),
        "one_i": np.array([1], np.int64), "two_i": np.array([2], np.int64),
        "one": np.array(1.0, np.float32), "scale": np.array(255.0, np.float32),
    }
    graph.initializer.extend(numpy_helper.from_array(v, name(k)) for k, v in constants.items())
    c = {k: name(k) for k in constants}
    graph.node.extend([
        # classes: first maximum wins (select_last_index 0), like np.argmax
        helper.make_node("ArgMax", [logits], [name("argmax")], axis=1, keepdims=0),
        helper.make_node("Cast", [name("argmax")], [OUTPUTS[0]], to=TensorProto.UINT8),
        # the two largest logits of each pixel
        helper.make_node("TopK", [logits, c["k2"]], [name("top2"), name("top2_index")], axis=1),
        helper.make_node("Slice", [name("top2"), c["zero"], c["one_i"], c["axis1"]], [name("best")]),
        helper.make_node("Slice", [name("top2"), c["one_i"], c["two_i"], c["axis1"]], [name("second")]),
        # softmax_margin: total = sum_k exp(l_k - best); (1 - exp(second - best)) / total x 255
        helper.make_node("Sub", [logits, name("best")], [name("shifted")]),
        helper.make_node("Exp", [name("shifted")], [name("exp")]),
        helper.make_node("ReduceSum", [name("exp"), c["axis1"]], [name("total")], keepdims=0),
        helper.make_node("Sub", [name("second"), name("best")], [name("gap")]),
        helper.make_node("Exp", [name("gap")], [name("exp_gap")]),
        helper.make_node("Sub", [c["one"], name("exp_gap")], [name("diff4")]),
        helper.make_node("Squeeze", [name("diff4"), c["axis1"]], [name("diff")]),
        helper.make_node("Div", [name("diff"), name("total")], [name("p_margin")]),
        helper.make_node("Mul", [name("p_margin"), c["scale"]], [name("margin255")]),
        helper.make_node("Round", [name("margin255")], [name("rounded")]),  # half to even, as np.round
        helper.make_node("Cast", [name("rounded")], [OUTPUTS[1]], to=TensorProto.UINT8),
    ])
    shape = [d.dim_param or d.dim_value for d in (dims[0], dims[2], dims[3])]
    del graph.output[:]
    graph.output.extend(helper.make_tensor_value_info(o, TensorProto.UINT8, shape) for o in OUTPUTS)
    onnx.checker.check_model(fused)
    return fused


def head_parity(onnx_path: Path, head_path: Path, tiles: np.ndarray) -> dict[str, Any]:
    """Class map and margin of the head against ``tiling``'s argmax and margin of the plain
    model's logits, on ``tiles`` (N x C x H x W): pixels that differ, and by how much."""
    import onnxruntime as ort

    from phasewatch.core.tiling import argmax_classes, softmax_margin

    plain = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    head = ort.InferenceSession(str(head_path), providers=["CPUExecutionProvider"])
    inputs = {plain.get_inputs()[0].name: np.ascontiguousarray(tiles, np.float32)}
    logits = plain.run(None, inputs)[0]
    classes, margin = head.run(None, inputs)
    ones = np.ones(logits.shape[2:], np.float32)
    want_classes = np.stack([argmax_classes(x) for x in logits])
    want_margin = np.stack([softmax_margin(x, ones) for x in logits])
    step = np.abs(margin.astype(np.int16) - want_margin)
    return {"pixels": int(classes.size), "classes_differ": int((classes != want_classes).sum()),
            "margin_differ": int((step > 0).sum()), "margin_max_step": int(step.max())}


def write_head(bundle_path: Path) -> dict[str, Any]:
    """Write ``model.head.onnx`` beside the bundle's ``model.onnx`` and its ``head`` block in the
    manifest (file, sha256, parity on the bundle's reference tiles)."""
    import onnx

    bundle = load_bundle(bundle_path)
    head_path = bundle.path / HEAD_FILE
    onnx.save(fuse_head(onnx.load(str(bundle.onnx_path))), str(head_path))
    reference = bundle.manifest.get("reference_tiles")
    if not reference:
        raise BundleError(f"{bundle.path}: no reference tiles to check the head against")
    tiles = np.load(bundle.path / str(reference))
    block = {"file": HEAD_FILE, "sha256": sha256_file(head_path),
             "parity": head_parity(bundle.onnx_path, head_path, tiles)}
    write_manifest(bundle.path, {**bundle.manifest, "head": block})
    return block
