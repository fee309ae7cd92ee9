"""The FP16 gate: an FP16 model must agree with FP32 ONNX before it is kept.

``phasewatch export`` applies it to the FP16 ONNX, ``phasewatch build-engine`` to the TensorRT
engine built from that ONNX; both compare on the bundle's reference tiles
(:data:`REFERENCE_TILES_FILE`, real micrograph tiles normalised as the runtime does, written by
``phasewatch export``). The bars are the product's: argmax agreement >= 99.9 % of pixels and
every class's pixel fraction within 0.1 percentage point. Fractions are over all tile pixels,
every class included (excluded classes such as a data bar must not drift either).

What the gate measures depends on where the candidate runs. At export, the FP16 ONNX runs on
ONNX Runtime's CPU provider, which has few float16 kernels and computes most nodes in float32
after casting (it inserts the casts itself): that gate measures the rounding of the weights to
float16 and little of float16 arithmetic. At ``build-engine`` the candidate is the TensorRT
engine on the GPU, whose kernels compute in float16: that gate measures the arithmetic too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from phasewatch.bundle import Bundle
from phasewatch.errors import PhasewatchError

MIN_ARGMAX_AGREEMENT = 0.999
MAX_FRACTION_DIFF_PP = 0.1
REFERENCE_TILES_FILE = "reference_tiles.npy"  # the manifest's ``reference_tiles`` may name another


class GateError(PhasewatchError):
    """Reference tiles missing or unusable; the message is one line naming the file."""


@dataclass(frozen=True)
class GateResult:
    max_abs_logit_diff: float
    argmax_agreement: float  # fraction of pixels whose class is the same, 0..1
    max_fraction_diff_pp: float  # largest per-class fraction difference, percentage points
    fraction_diff_pp: tuple[float, ...]  # per class id
    tiles: int
    pixels: int

    @property
    def passed(self) -> bool:
        return (
            self.argmax_agreement >= MIN_ARGMAX_AGREEMENT
            and self.max_fraction_diff_pp <= MAX_FRACTION_DIFF_PP
        )

    def reason(self) -> str:
        return (
            f"argmax agreement {100 * self.argmax_agreement:.3f} % (need >= "
            f"{100 * MIN_ARGMAX_AGREEMENT:.1f} %), largest class-fraction difference "
            f"{self.max_fraction_diff_pp:.3f} pp (need <= {MAX_FRACTION_DIFF_PP} pp)"
        )

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed,
                "bars": {"min_argmax_agreement": MIN_ARGMAX_AGREEMENT,
                         "max_fraction_diff_pp": MAX_FRACTION_DIFF_PP}}


def compare_logits(reference: np.ndarray, candidate: np.ndarray) -> GateResult:
    """Agreement numbers for two N x K x H x W logit arrays (reference = the higher precision)."""
    if reference.shape != candidate.shape or reference.ndim != 4:
        raise ValueError(f"logits shapes differ or are not N x K x H x W: {reference.shape} "
                         f"vs {candidate.shape}")
    num_classes = reference.shape[1]
    ref_classes = reference.argmax(axis=1).ravel()
    cand_classes = candidate.argmax(axis=1).ravel()
    pixels = ref_classes.size
    ref_fractions = np.bincount(ref_classes, minlength=num_classes) / pixels
    cand_fractions = np.bincount(cand_classes, minlength=num_classes) / pixels
    diff_pp = np.abs(ref_fractions - cand_fractions) * 100
    return GateResult(
        max_abs_logit_diff=float(np.abs(reference - candidate).max()),
        argmax_agreement=float(np.mean(ref_classes == cand_classes)),
        max_fraction_diff_pp=float(diff_pp.max()),
        fraction_diff_pp=tuple(float(v) for v in diff_pp),
        tiles=int(reference.shape[0]),
        pixels=int(pixels),
    )


def load_reference_tiles(bundle: Bundle) -> np.ndarray:
    """The bundle's reference tiles, checked against its channels and tile size."""
    path = bundle.path / str(bundle.manifest.get("reference_tiles", REFERENCE_TILES_FILE))
    if not path.is_file():
        raise GateError(f"{path}: no reference tiles in the bundle; re-export it with "
                        "phasewatch export --tiles IMAGES so that the engine can be validated")
    try:
        tiles = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise GateError(f"{path}: cannot read reference tiles: {exc}") from exc
    expected = (bundle.input_channels, bundle.tile, bundle.tile)
    if tiles.ndim != 4 or tiles.shape[1:] != expected or len(tiles) == 0:
        raise GateError(f"{path}: reference tiles have shape {tiles.shape}, expected N x "
                        f"{' x '.join(map(str, expected))}")
    return np.ascontiguousarray(tiles, dtype=np.float32)


def resize_tiles(tiles: np.ndarray, side: int) -> np.ndarray:
    """N x C x side x side inputs from the reference tiles: cropped at the centre when smaller,
    mirrored outwards when larger (real texture at every size, not padding)."""
    height, width = tiles.shape[2:]
    if side <= min(height, width):
        y0, x0 = (height - side) // 2, (width - side) // 2
        return np.ascontiguousarray(tiles[:, :, y0 : y0 + side, x0 : x0 + side])
    pad = ((0, 0), (0, 0), (0, max(0, side - height)), (0, max(0, side - width)))
    return np.ascontiguousarray(np.pad(tiles, pad, mode="symmetric")[:, :, :side, :side])


def fp32_logits(onnx_path: Path, tiles: np.ndarray) -> np.ndarray:
    """The FP32 reference: the bundle's ONNX on onnxruntime's CPU provider."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.asarray(session.run(None, {name: tiles})[0], dtype=np.float32)
