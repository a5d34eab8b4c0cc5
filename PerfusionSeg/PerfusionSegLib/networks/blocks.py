"""Building blocks shared by the segmentation networks (activation factory, residual and double-conv blocks)."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import InvalidParameterError

ACTIVATIONS = ("relu", "leaky_relu")


def make_activation(name: str, negative_slope: float = 0.01) -> nn.Module:
    """ReLU or LeakyReLU by name (Xue's paper uses LeakyReLU, the public code ReLU: both are offered)."""
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "leaky_relu":
        return nn.LeakyReLU(negative_slope, inplace=True)
    raise InvalidParameterError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


class PreActResidualBlock(nn.Module):
    """Pre-activation residual block (He 2016): BN-act-conv3x3-BN-act-conv3x3 plus the (projected) input."""

    def __init__(self, in_channels: int, out_channels: int, activation: str = "relu", negative_slope: float = 0.01):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.act1 = make_activation(activation, negative_slope)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act2 = make_activation(activation, negative_slope)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        # a 1x1 projection only where the channel count changes (identity otherwise, as in the original design)
        self.shortcut = (nn.Identity() if in_channels == out_channels
                         else nn.Conv2d(in_channels, out_channels, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.act1(self.bn1(x)))
        out = self.conv2(self.act2(self.bn2(out)))
        return out + self.shortcut(x)


NORMS = ("batch", "instance", "none")


def make_norm(norm: str, channels: int) -> nn.Module | None:
    """BatchNorm (statistics of the training set, frozen at inference), InstanceNorm (each sample's own statistics,
    at training and inference alike; nnU-Net's choice, robust to intensity shifts between scanners) or none."""
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if norm == "none":
        return None
    raise InvalidParameterError(f"unknown normalisation {norm!r}; known: {', '.join(NORMS)}")


class DoubleConv(nn.Module):
    """The vanilla U-Net unit: (conv3x3-norm-act) twice (``n_convs`` times; the layer layout, hence the weights'
    names, of the two-convolution unit is the same whatever ``n_convs``)."""

    def __init__(self, in_channels: int, out_channels: int, activation: str = "relu", negative_slope: float = 0.01,
                 norm: str = "batch", n_convs: int = 2):
        super().__init__()
        if isinstance(n_convs, bool) or int(n_convs) != n_convs or n_convs < 1:
            raise InvalidParameterError(f"a U-Net unit needs a whole number of convolutions >= 1, got {n_convs!r}")
        layers = []
        for c_in in (in_channels,) + (out_channels,) * (int(n_convs) - 1):
            layers.append(nn.Conv2d(c_in, out_channels, 3, padding=1, bias=norm == "none"))
            n = make_norm(norm, out_channels)
            if n is not None:
                layers.append(n)
            layers.append(make_activation(activation, negative_slope))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def he_init(module: nn.Module, activation: str = "relu", negative_slope: float = 0.01) -> None:
    """He (Kaiming) normal initialisation of every convolution; BN to (1, 0)."""
    nonlin = "leaky_relu" if activation == "leaky_relu" else "relu"
    a = negative_slope if activation == "leaky_relu" else 0.0
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, a=a, mode="fan_out", nonlinearity=nonlin)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters (what papers report)."""
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad))
