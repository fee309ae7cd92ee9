"""The mask-conditioned GAN that draws labelled micrographs (pix2pix-style), in plain PyTorch.

The generator takes a class map (one-hot) and a map of Gaussian noise and draws the image
that goes with it, so every generated picture arrives with its mask: an unlabelled
picture could not train a segmenter. It is a small U-Net (strided convs down, nearest
upsampling + conv up, so no checkerboard from transposed convs), instance-normalised
because GAN batches on a CPU are a handful of crops. The discriminator is a PatchGAN: it
judges overlapping patches of (mask, image), so it rates texture and the fit of the image
to the mask, not the layout of a whole crop. Both are fully convolutional: a generator
trained on 128 px crops draws 256 or 512 px fields from a larger mask, which is why no
upscaling stage is needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NOISE_CHANNELS = 1


def _down(cin: int, cout: int, norm: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 4, stride=2, padding=1, padding_mode="reflect")]
    if norm:
        layers.append(nn.InstanceNorm2d(cout, affine=True))
    layers.append(nn.LeakyReLU(0.2))
    return nn.Sequential(*layers)


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, padding_mode="reflect"),
                         nn.InstanceNorm2d(cout, affine=True), nn.ReLU())


class MaskToImage(nn.Module):
    """Generator: (one-hot mask K x H x W, noise) -> image C x H x W in [-1, 1]; H, W multiples of 2^depth."""

    def __init__(self, num_classes: int, out_channels: int = 1, width: int = 32, depth: int = 4) -> None:
        super().__init__()
        self.num_classes, self.depth = num_classes, depth
        chans = [min(width * 2**i, 8 * width) for i in range(depth + 1)]
        self.stem = nn.Sequential(nn.Conv2d(num_classes + NOISE_CHANNELS, chans[0], 3, padding=1,
                                            padding_mode="reflect"), nn.LeakyReLU(0.2))
        self.down = nn.ModuleList(_down(chans[i], chans[i + 1]) for i in range(depth))
        self.up = nn.ModuleList(_up(chans[i + 1] + chans[i], chans[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(chans[0], out_channels, 3, padding=1, padding_mode="reflect")

    def forward(self, onehot: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        x = self.stem(torch.cat([onehot, noise], dim=1))
        skips = [x]
        for block in self.down:
            x = block(x)
            skips.append(x)
        skips.pop()
        for block in self.up:
            skip = skips.pop()
            x = block(torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="nearest"), skip], dim=1))
        return torch.tanh(self.head(x))


class PatchDiscriminator(nn.Module):
    """PatchGAN on (one-hot mask, image): one real/fake score per ~34 px patch."""

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            _down(num_classes + in_channels, width, norm=False),
            _down(width, 2 * width),
            _down(2 * width, 4 * width),
            nn.Conv2d(4 * width, 1, 3, padding=1),
        )

    def forward(self, onehot: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([onehot, image], dim=1))


def one_hot(mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    """uint8/int64 N x H x W class ids -> float N x K x H x W."""
    return F.one_hot(mask.long(), num_classes).permute(0, 3, 1, 2).float()
