"""Xue's full-image ResUNet for perfusion segmentation (Xue et al., Radiology: AI 2020).

Input: the first-pass frames as channels (48 frames at 0.5 s), 176x176 at 1 mm centred on the LV. Layout:
an input block (conv3x3) at full resolution; down levels, each a 2x max-pool followed by pre-activation residual
blocks ([2, 3] blocks at [96, 128] filters); a bridge one level lower; up levels that up-sample bilinearly, concatenate
the skip of the same resolution and run residual blocks (mirroring the encoder); a last full-resolution fusion with the
input block and a 1x1 head to the classes (background, LV blood pool, myocardium, RV = project codes 0-3).
Spatial size must be divisible by 2**(levels + 1) (176 = 11 * 16 for two levels).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidParameterError
from .blocks import PreActResidualBlock, count_parameters, he_init, make_activation

# published configuration (filters 96/128, [2, 3] blocks). The decoder mirrors the encoder and the bridge holds
# 3 blocks: with these the network has 3.71 M parameters, the size the paper reports (~3.7 M).
XUE2020 = dict(in_channels=48, n_classes=4, filters=(96, 128), blocks=(2, 3), bridge_blocks=3,
               decoder_blocks=(2, 3), final_channels=32, activation="leaky_relu", negative_slope=0.01)

CONFIGS = {
    "xue2020": XUE2020,
    "xue2020_relu": dict(XUE2020, activation="relu"),  # as the public code
    # a light variant for tests and quick experiments
    "small": dict(in_channels=48, n_classes=4, filters=(16, 24), blocks=(1, 1), bridge_blocks=1,
                  decoder_blocks=(1, 1), final_channels=8, activation="relu"),
}


class ResUNet(nn.Module):
    def __init__(self, in_channels: int = 48, n_classes: int = 4, filters: Sequence[int] = (96, 128),
                 blocks: Sequence[int] = (2, 3), bridge_blocks: int = 3, decoder_blocks: Sequence[int] | None = None,
                 final_channels: int = 32, activation: str = "leaky_relu", negative_slope: float = 0.01,
                 init_weights: bool = True):
        super().__init__()
        filters, blocks = tuple(int(f) for f in filters), tuple(int(b) for b in blocks)
        decoder_blocks = tuple(int(b) for b in (decoder_blocks if decoder_blocks is not None else blocks))
        if not filters or len(filters) != len(blocks) or len(decoder_blocks) != len(blocks):
            raise InvalidParameterError("filters, blocks and decoder_blocks need one entry per level")
        if min(filters) < 1 or min(blocks) < 1 or min(decoder_blocks) < 1 or bridge_blocks < 1 or in_channels < 1 \
                or n_classes < 2 or final_channels < 1:
            raise InvalidParameterError("ResUNet sizes must be positive (and at least 2 classes)")
        self.config = dict(in_channels=int(in_channels), n_classes=int(n_classes), filters=list(filters),
                           blocks=list(blocks), bridge_blocks=int(bridge_blocks), decoder_blocks=list(decoder_blocks),
                           final_channels=int(final_channels), activation=activation,
                           negative_slope=float(negative_slope))
        act = dict(activation=activation, negative_slope=negative_slope)
        self.levels = len(filters)

        # input block: full resolution, frames -> filters[0]
        self.input_block = nn.Conv2d(in_channels, filters[0], 3, padding=1, bias=False)
        self.down = nn.ModuleList()
        c = filters[0]
        for f, n in zip(filters, blocks):
            self.down.append(nn.Sequential(*[PreActResidualBlock(c if i == 0 else f, f, **act) for i in range(n)]))
            c = f
        self.bridge = nn.Sequential(*[PreActResidualBlock(c, c, **act) for _ in range(bridge_blocks)])
        self.up = nn.ModuleList()
        for lvl in reversed(range(self.levels)):
            f, n = filters[lvl], decoder_blocks[lvl]
            self.up.append(nn.Sequential(*[PreActResidualBlock(c + f if i == 0 else f, f, **act) for i in range(n)]))
            c = f
        # full-resolution fusion with the input block, kept narrow: at 176x176 this stage dominates the cost
        self.final = nn.Sequential(nn.BatchNorm2d(c + filters[0]), make_activation(activation, negative_slope),
                                   nn.Conv2d(c + filters[0], final_channels, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(final_channels), make_activation(activation, negative_slope))
        self.head = nn.Conv2d(final_channels, n_classes, 1)
        if init_weights:   # False when trained weights will replace everything (faster loading)
            he_init(self, activation, negative_slope)

    @property
    def divisor(self) -> int:
        """Input height and width must be multiples of this."""
        return 2 ** (self.levels + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, frames, H, W) -> logits (N, classes, H, W)."""
        if x.shape[-1] % self.divisor or x.shape[-2] % self.divisor:
            raise InvalidParameterError(f"ResUNet input size {tuple(x.shape[-2:])} must be divisible by {self.divisor}")
        stem = self.input_block(x)
        skips = []
        h = stem
        for level in self.down:
            h = level(F.max_pool2d(h, 2))
            skips.append(h)
        h = self.bridge(F.max_pool2d(h, 2))
        for level, skip in zip(self.up, reversed(skips)):
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = level(torch.cat([h, skip], dim=1))
        h = F.interpolate(h, size=stem.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(self.final(torch.cat([h, stem], dim=1)))


def build_resunet(config: str | None = "xue2020", **overrides) -> ResUNet:
    """A ResUNet from a named configuration, with keyword overrides."""
    if config is not None and config not in CONFIGS:
        raise InvalidParameterError(f"unknown ResUNet configuration {config!r}; known: {sorted(CONFIGS)}")
    kwargs = dict(CONFIGS[config]) if config else {}
    kwargs.update(overrides)
    return ResUNet(**kwargs)


__all__ = ["ResUNet", "CONFIGS", "XUE2020", "build_resunet", "count_parameters"]
