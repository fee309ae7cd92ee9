"""The post-processing in the graph (issue 25): ``model.head.onnx``, the bundle's ``model.onnx``
with nodes appended after its logits so that the runtime receives a uint8 class map and a uint8
softmax margin (N x H x W each) instead of N x K x H x W float logits. No retraining: the
network's nodes and weights are the bundle's own, untouched.

The appended nodes compute what ``core/tiling.py`` computes on the logits of a field run in one
pass, class plane by class plane in the same order of float32 operations: the class whose logit
first exceeds the best so far (``argmax_classes``: the first maximum wins, as np.argmax), and
``round(255 x (1 - exp(second - best)) / sum_k exp(l_k - best))`` (``softmax_margin``). The
runtime uses the head only for a field its tile plan runs in one pass (``tiling.segment_many``):
where tiles overlap, today's Gaussian blend of logits has no uint8 equivalent. Resizing back to
the field (bundles at scale != 1) stays outside the graph: it is a nearest-neighbour pick on the
uint8 maps (cv2, ``pipeline.segment_images``), about a millisecond.

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
    if len(dims) != 4 or dims[1].dim_value < 2:
        raise ValueError(f"the model's output {logits} is not N x K x H x W logits with a fixed K >= 2")
    classes = dims[1].dim_value

    def name(suffix: str) -> str:
        return f"head/{suffix}"

    constants: dict[str, np.ndarray] = {
        "axis1": np.array([1], np.int64), "one": np.array(1.0, np.float32), "scale": np.array(255.0, np.float32),
        **{f"class{k}": np.array(k, np.uint8) for k in range(classes)},
    }
    graph.initializer.extend(numpy_helper.from_array(v, name(k)) for k, v in constants.items())
    c = {k: name(k) for k in constants}
    planes = [name(f"logit{k}") for k in range(classes)]  # N x 1 x H x W each
    nodes = [helper.make_node("Split", [logits], planes, axis=1, num_outputs=classes)]
    # Class by class, as argmax_classes and softmax_margin do: class = k where l_k > best (the
    # first maximum wins, as np.argmax), second = max(second, min(best, l_k)), best = max(best, l_k),
    # and the sum of exponentials in class order. The same values as ArgMax, TopK and ReduceSum
    # across the class axis (all 98 real fields of the data sets, bit for bit), which read it
    # strided: on one core of the CPU provider the head took 5.6 ms of a 512 x 512 field that way
    # (TopK alone 5), 1.6 ms this way; 16.5 and 3.0 ms at 864 x 864.
    best, second, label = planes[0], "", c["class0"]
    for k in range(1, classes):
        step = "" if k == classes - 1 else str(k)  # the last step's names are the results'
        nodes += [
            helper.make_node("Greater", [planes[k], best], [name(f"better{k}")]),
            helper.make_node("Where", [name(f"better{k}"), c[f"class{k}"], label], [name(f"label{step}")]),
            helper.make_node("Min", [best, planes[k]], [name(f"low{k}") if k > 1 else name(f"second{step}")]),
        ]
        if k > 1:
            nodes.append(helper.make_node("Max", [second, name(f"low{k}")], [name(f"second{step}")]))
        nodes.append(helper.make_node("Max", [best, planes[k]], [name(f"best{step}")]))
        best, second, label = name(f"best{step}"), name(f"second{step}"), name(f"label{step}")
    # softmax_margin: total = sum_k exp(l_k - best), summed class by class in order;
    # round(255 x (1 - exp(second - best)) / total)
    for k, plane in enumerate(planes):
        nodes += [helper.make_node("Sub", [plane, best], [name(f"shifted{k}")]),
                  helper.make_node("Exp", [name(f"shifted{k}")], [name(f"exp{k}")])]
    nodes += [
        helper.make_node("Sum", [name(f"exp{k}") for k in range(classes)], [name("total")]),
        helper.make_node("Sub", [second, best], [name("gap")]),
        helper.make_node("Exp", [name("gap")], [name("exp_gap")]),
        helper.make_node("Sub", [c["one"], name("exp_gap")], [name("diff")]),
        helper.make_node("Div", [name("diff"), name("total")], [name("p_margin")]),
        helper.make_node("Mul", [name("p_margin"), c["scale"]], [name("margin255")]),
        helper.make_node("Round", [name("margin255")], [name("rounded")]),  # half to even, as np.round
        helper.make_node("Cast", [name("rounded")], [name("margin4")], to=TensorProto.UINT8),
        helper.make_node("Squeeze", [name("margin4"), c["axis1"]], [OUTPUTS[1]]),
        helper.make_node("Squeeze", [label, c["axis1"]], [OUTPUTS[0]]),
    ]
    graph.node.extend(nodes)
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
