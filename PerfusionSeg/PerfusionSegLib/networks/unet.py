"""Vanilla 2D U-Net for DAUGS patch segmentation (Ronneberger 2015 shape; frames as channels).

DAUGS (uncertainty-guided pool selection) runs a 2D U-Net on 64x64 patches of a 128x128 crop, the 30 first-pass
frames (pchip-resampled, scaled to [0, 1]) as input channels. Classes: background, blood pool, myocardium, RV
(project codes 0-3; RV added to the published three classes because the AHA split needs the insertion points).
Each level: (conv3x3-norm-ReLU) x2 (``convs_per_level``; norm: BatchNorm, or InstanceNorm with ``norm="instance"``);
down by 2x max-pool; up by 2x transposed convolution (or bilinear) with skip concatenation; 1x1 head. He
initialisation.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidParameterError
from .blocks import DoubleConv, count_parameters, he_init

CONFIGS = {
    # default: light enough for a 50-member pool on CPU (0.49 M parameters)
    "default": dict(in_channels=30, n_classes=4, features=(16, 32, 64, 128), activation="relu", up_mode="transpose"),
    # the DAUGS paper describes a vanilla 2D U-Net on 64x64 patches with 30 frames; its widths are not stated in the
    # material available here, so this is the classic U-Net layout at half the original width (32..256, 3 poolings
    # down to 8x8): 1.94 M parameters
    "daugs2024": dict(in_channels=30, n_classes=4, features=(32, 64, 128, 256), activation="relu", up_mode="transpose"),
    # lite: "default" at half the width (0.12 M parameters), 0.43x its patch cost on a 2-core CPU in bf16; with the
    # pool recipe it did not reach the pool's 0.87 validation Dice in 93 epochs (docs/daugs.md, fourteenth session)
    "lite": dict(in_channels=30, n_classes=4, features=(8, 16, 32, 64), activation="relu", up_mode="transpose"),
    "tiny": dict(in_channels=30, n_classes=4, features=(8, 16), activation="relu", up_mode="bilinear"),
    # default_in: "default" with InstanceNorm in place of BatchNorm (each patch normalised by its own statistics, as
    # nnU-Net does): tried for the transfer of phantom training to real scans (docs/phantom.md, fourteenth session)
    "default_in": dict(in_channels=30, n_classes=4, features=(16, 32, 64, 128), activation="relu",
                       up_mode="transpose", norm="instance"),
}


class UNet2D(nn.Module):
    def __init__(self, in_channels: int = 30, n_classes: int = 4, features: Sequence[int] = (16, 32, 64, 128),
                 activation: str = "relu", negative_slope: float = 0.01, up_mode: str = "transpose",
                 batch_norm: bool = True, norm: str | None = None, convs_per_level: int = 2,
                 init_weights: bool = True):
        super().__init__()
        features = tuple(int(f) for f in features)
        norm = norm or ("batch" if batch_norm else "none")        # ``batch_norm``: the older cards' spelling
        if len(features) < 2 or min(features) < 1 or in_channels < 1 or n_classes < 2:
            raise InvalidParameterError("UNet2D needs at least two levels of positive widths and 2 classes")
        if isinstance(convs_per_level, bool) or int(convs_per_level) != convs_per_level or convs_per_level < 1:
            raise InvalidParameterError(f"convs_per_level must be a whole number >= 1, got {convs_per_level!r}")
        if up_mode not in ("transpose", "bilinear"):
            raise InvalidParameterError(f"up_mode must be 'transpose' or 'bilinear', got {up_mode!r}")
        self.config = dict(in_channels=int(in_channels), n_classes=int(n_classes), features=list(features),
                           activation=activation, negative_slope=float(negative_slope), up_mode=up_mode,
                           batch_norm=norm == "batch", norm=norm, convs_per_level=int(convs_per_level))
        act = dict(activation=activation, negative_slope=negative_slope, norm=norm, n_convs=int(convs_per_level))
        self.encoder = nn.ModuleList()
        c = in_channels
        for f in features:
            self.encoder.append(DoubleConv(c, f, **act))
            c = f
        self.upsamplers = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for f in reversed(features[:-1]):
            if up_mode == "transpose":
                self.upsamplers.append(nn.ConvTranspose2d(c, f, 2, stride=2))
                self.decoder.append(DoubleConv(2 * f, f, **act))
            else:
                self.upsamplers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
                self.decoder.append(DoubleConv(c + f, f, **act))
            c = f
        self.head = nn.Conv2d(c, n_classes, 1)
        if init_weights:   # False when trained weights will replace everything (faster loading)
            he_init(self, activation, negative_slope)

    @property
    def divisor(self) -> int:
        return 2 ** (len(self.encoder) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, frames, H, W) -> logits (N, classes, H, W); H and W multiples of ``divisor``."""
        if x.shape[-1] % self.divisor or x.shape[-2] % self.divisor:
            raise InvalidParameterError(f"UNet2D input size {tuple(x.shape[-2:])} must be divisible by {self.divisor}")
        skips = []
        h = x
        for i, enc in enumerate(self.encoder):
            h = enc(h if i == 0 else F.max_pool2d(h, 2))
            skips.append(h)
        for up, dec, skip in zip(self.upsamplers, self.decoder, reversed(skips[:-1])):
            h = dec(torch.cat([up(h), skip], dim=1))
        return self.head(h)


def build_unet(config: str | None = "default", **overrides) -> UNet2D:
    if config is not None and config not in CONFIGS:
        raise InvalidParameterError(f"unknown UNet2D configuration {config!r}; known: {sorted(CONFIGS)}")
    kwargs = dict(CONFIGS[config]) if config else {}
    kwargs.update(overrides)
    return UNet2D(**kwargs)


__all__ = ["UNet2D", "CONFIGS", "build_unet", "count_parameters"]
