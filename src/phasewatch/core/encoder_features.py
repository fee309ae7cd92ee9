"""Image features from a bundled model's encoder, through ONNX Runtime (no torch).

The features for FID and KID should come from a network that has seen micrographs;
InceptionV3's ImageNet weights cannot be downloaded here and fit micrographs poorly anyway.
A bundle's U-Net encoder has seen micrographs of its kind. Its deepest tensor is the input
of the first upsampling node (ConvTranspose or Resize) of the graph; the ONNX file is
loaded with the ``onnx`` package, that tensor is made the graph's only output (so ONNX
Runtime prunes the decoder) and each crop's map is pooled to its per-channel mean and
standard deviation, a vector of 2 x channels.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from phasewatch.backends.onnxruntime import session_options
from phasewatch.bundle import Bundle
from phasewatch.errors import PhasewatchError, one_line

UPSAMPLING_OPS = ("ConvTranspose", "Resize", "Upsample")


class FeatureError(PhasewatchError, ValueError):
    """A bundle whose encoder cannot give features; the message names it."""


@dataclass
class Encoder:
    session: Any  # onnxruntime.InferenceSession
    input_name: str
    output_name: str
    description: str


def open_encoder(bundle: Bundle, threads: int | None = None) -> Encoder:
    try:
        import onnx
        import onnxruntime as ort
    except ImportError as exc:
        raise FeatureError(f"encoder features need the onnx and onnxruntime packages: {exc}") from exc
    try:
        model = onnx.load(str(bundle.onnx_path))
    except Exception as exc:  # onnx raises protobuf's own error types
        raise FeatureError(f"{bundle.onnx_path}: cannot read: {one_line(exc)}") from exc
    node = next((n for n in model.graph.node if n.op_type in UPSAMPLING_OPS), None)
    if node is None:
        raise FeatureError(f"{bundle.onnx_path}: no upsampling node, so no encoder output to take features from")
    name = node.input[0]
    del model.graph.output[:]
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    try:
        session = ort.InferenceSession(model.SerializeToString(), sess_options=session_options(threads),
                                       providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own, mostly multi-line, exception types
        raise FeatureError(f"{bundle.onnx_path}: cannot open the encoder: {one_line(exc)}") from exc
    description = (f"encoder of bundle '{bundle.name}' ({bundle.architecture}): tensor '{name}' (input of the first "
                   f"{node.op_type}), per-channel mean and std over each crop")
    return Encoder(session, model.graph.input[0].name, name, description)


def encode(encoder: Encoder, crops: np.ndarray, batch: int = 16) -> np.ndarray:
    """float32 N x C x H x W normalised crops -> N x 2K pooled features (mean, std per channel)."""
    return np.concatenate(list(_pooled(encoder, crops, batch)))


def _pooled(encoder: Encoder, crops: np.ndarray, batch: int) -> Iterator[np.ndarray]:
    for start in range(0, len(crops), batch):
        (maps,) = encoder.session.run([encoder.output_name], {encoder.input_name: crops[start:start + batch]})
        yield np.concatenate([maps.mean(axis=(2, 3)), maps.std(axis=(2, 3))], axis=1)
