"""InstanceNorm for inference on channels-last CPU tensors, and the per-channel centring that keeps it exact in bf16.

Why: an InstanceNorm UNet2D member cost about 2x a BatchNorm one per patch on a 2-core CPU (bf16 autocast 1.92
against 0.99 ms; docs/training.md, fifteenth session). The normalisation arithmetic is not the cost: PyTorch's
``instance_norm`` drops the channels-last layout (the convolutions and pooling that follow then pay for copies),
``group_norm``'s channels-last kernel is slow with one channel per group, and a broadcast multiply by a per-(sample,
channel) scale is slow on a channels-last tensor. Here the statistics come from the (N, H*W, C) view of the channels-
last storage (two sums, accumulated in fp32 by torch), and the affine map is one batched matmul with a diagonal
(oneDNN), so the output stays channels-last and nothing is copied.

bf16: the sums are rounded to bf16, so E[x^2] - E[x]^2 cancels badly where a channel's mean is large against its
spread (on trained pool members mean^2 / E[x^2] reaches 0.98). InstanceNorm does not change when a constant is added
to a channel of its input, so ``centre_unet2d`` folds into the bias of each convolution that feeds an InstanceNorm
minus that channel's expected value, computed from the weights alone (a ReLU after an InstanceNorm of scale g and
shift b has mean E[relu(g z + b)], z standard normal). The result is the same function up to rounding, with the
rounding of a centred tensor. Measured on a trained member, 64 phantom patches: myocardium probability within 1.0e-3
(mean abs) of fp32, against 1.8e-3 uncentred and 6.3e-4 for bf16 autocast.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ..errors import InvalidParameterError
from .unet import UNet2D

# a typical per-frame mean of a DAUGS input (a 128x128 crop scaled to [0, 1]); only sets the first convolution's
# centring, which needs to be roughly right, not exact
INPUT_MEAN = 0.2


class ChannelsLastInstanceNorm(nn.Module):
    """Inference-only replacement of an affine ``nn.InstanceNorm2d`` (no running statistics): the same function,
    fast on channels-last tensors, in the input's dtype (fp32 or bf16; statistics and the affine map in fp32)."""

    def __init__(self, norm: nn.InstanceNorm2d):
        super().__init__()
        if not is_replaceable(norm):
            raise InvalidParameterError("only affine InstanceNorm2d without running statistics can be replaced")
        self.register_buffer("weight", norm.weight.detach().float().clone())
        self.register_buffer("bias", norm.bias.detach().float().clone())
        self.eps = float(norm.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        x3 = x.permute(0, 2, 3, 1).reshape(n, h * w, c)          # a view when x is channels-last
        inv = 1.0 / (h * w)
        mean = x3.sum(dim=1).float() * inv
        var = ((x3 * x3).sum(dim=1).float() * inv - mean * mean).clamp_min_(0.0)
        scale = self.weight * torch.rsqrt(var + self.eps)
        shift = self.bias - mean * scale
        y = torch.baddbmm(shift.to(x.dtype).unsqueeze(1), x3, torch.diag_embed(scale.to(x.dtype)))
        return y.view(n, h, w, c).permute(0, 3, 1, 2)


def is_replaceable(module: nn.Module) -> bool:
    return (isinstance(module, nn.InstanceNorm2d) and module.affine and not module.track_running_stats
            and module.weight is not None)


def replace_instance_norms(network: nn.Module) -> int:
    """Swap every replaceable InstanceNorm2d of ``network`` (in place) for ``ChannelsLastInstanceNorm``."""
    n = 0
    for parent in list(network.modules()):
        for name, child in list(parent.named_children()):
            if is_replaceable(child):
                setattr(parent, name, ChannelsLastInstanceNorm(child))
                n += 1
    return n


def _relu_mean(norm: nn.InstanceNorm2d) -> torch.Tensor:
    """E[relu(g z + b)] per channel, z ~ N(0, 1): the expected value after InstanceNorm(affine g, b) and ReLU."""
    g = norm.weight.detach().float().abs().clamp_min(1e-6)
    a = norm.bias.detach().float() / g
    cdf = 0.5 * (1.0 + torch.erf(a / math.sqrt(2.0)))
    pdf = torch.exp(-0.5 * a * a) / math.sqrt(2.0 * math.pi)
    return g * (a * cdf + pdf)


def _conv_mean(conv: nn.Module, m_in: torch.Tensor) -> torch.Tensor:
    """Expected output per channel of a convolution whose input channels have means ``m_in`` (borders ignored)."""
    w = conv.weight.detach().float()
    if isinstance(conv, nn.ConvTranspose2d):       # (in, out, kh, kw); each output pixel gets 1/(sh*sw) of the taps
        out = torch.einsum("io...,i->o", w, m_in) / float(conv.stride[0] * conv.stride[1])
    else:
        out = torch.einsum("oi...,i->o", w, m_in)
    return out if conv.bias is None else out + conv.bias.detach().float()


def _centre_sequential(seq: nn.Sequential, m: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Walk conv -> InstanceNorm -> ReLU layers, centring each conv that feeds an InstanceNorm; returns the expected
    per-channel output (None where it cannot be told)."""
    layers = list(seq)
    last_norm = None
    for i, layer in enumerate(layers):
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if isinstance(layer, nn.Conv2d):
            if m is None or m.numel() != layer.in_channels:
                m = None
                continue
            m = _conv_mean(layer, m)
            if isinstance(nxt, nn.InstanceNorm2d):
                bias = -m if layer.bias is None else layer.bias.detach().float() - m
                layer.bias = nn.Parameter(bias.to(layer.weight.dtype), requires_grad=False)
        elif isinstance(layer, nn.InstanceNorm2d):
            last_norm, m = layer, None
        elif isinstance(layer, nn.ReLU) and last_norm is not None:
            m, last_norm = _relu_mean(last_norm), None
        else:
            m, last_norm = None, None
    return m


def centre_unet2d(net: UNet2D, input_mean: float = INPUT_MEAN) -> int:
    """Fold a per-channel centring into every conv -> InstanceNorm pair of ``net`` (in place; InstanceNorm's output is
    unchanged in exact arithmetic). Max-pooling's rise of the mean is ignored: the centring only has to be rough.
    Returns how many convolutions were centred."""
    before = {id(c): c.bias for c in net.modules() if isinstance(c, nn.Conv2d)}
    m: Optional[torch.Tensor] = torch.full((net.config["in_channels"],), float(input_mean))
    skips = []
    for enc in net.encoder:
        m = _centre_sequential(enc.body, m)
        skips.append(m)
    for up, dec, skip in zip(net.upsamplers, net.decoder, reversed(skips[:-1])):
        u = _conv_mean(up, m) if isinstance(up, nn.ConvTranspose2d) and m is not None else None
        m = _centre_sequential(dec.body, torch.cat([u, skip]) if u is not None and skip is not None else None)
    return sum(1 for c in net.modules() if isinstance(c, nn.Conv2d) and c.bias is not before[id(c)])


__all__ = ["ChannelsLastInstanceNorm", "centre_unet2d", "is_replaceable", "replace_instance_norms"]
