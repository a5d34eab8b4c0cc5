"""An inference-only copy of a network with BatchNorm folded into the preceding convolution.

Why: DAUGS runs every pool member on thousands of 64x64 patches per study on CPU. In eval mode a BatchNorm that
follows a convolution is an affine map per channel, so it can be folded into the convolution's weights and bias
exactly (up to fp32 rounding), which saves one pass over every activation: UNet2D "default", 64 patches per batch,
fp32, 2-core machine: 1.93 -> 1.69 ms per patch (docs/daugs.md). Used for fp32 only: with bf16 autocast, the folded
weights rounded to bf16 moved near-tied U_pp rankings (docs/daugs.md), so bf16 runs the member unfolded.

Pre-activation residual blocks (BN -> ReLU -> conv, the ResUNet) have no convolution directly before their BN, so
nothing is folded there; only the ResUNet's final conv -> BN pair is. The caller's network is never modified.

``bf16_copy`` is the bf16 counterpart: convolution weights stored in bf16 once, BatchNorm left in fp32, fed bf16
input. It computes exactly what bf16 autocast computes with the original (autocast casts each convolution's input
and weights to bf16 on every call and runs BatchNorm on the bf16 output with fp32 statistics; tested bit for bit),
without re-casting the weights on every call: 0.80x and 0.90x the time per patch in two noisy 2-core runs
(docs/daugs.md).

InstanceNorm UNet2D members (``default_in``) on a CPU: both copies replace each InstanceNorm by
``ChannelsLastInstanceNorm`` (``fast_instance_norm``: the same function without the layout copies that made such a
member cost about 2x a BatchNorm one on a CPU; on a GPU torch's InstanceNorm and autocast stay). Their bf16 copy is
therefore not autocast's arithmetic; it also centres each conv -> InstanceNorm pair (exact in exact arithmetic) so
that bf16 statistics stay accurate. Tested against fp32, not bit for bit.

In the bf16 copy, ReLU is ``Bf16ReLU``: torch's bf16 ReLU on a CPU converts every element to fp32 and back, and
took 4x the time of an fp32 ReLU on half the bytes (64 patches x 16 x 64 x 64, channels-last, 2-core AMD EPYC:
0.41-0.49 ms against 0.11 ms). A bf16 number is negative exactly when its sign bit is set, so clamping its 16 bits,
read as a signed integer, at 0 is ReLU: the same values (a -0 becomes +0), 0.06 ms. A bf16 DAUGS study gained 2-4 %
on an idle CPU (docs/daugs.md, twenty-first session).

``cached_copy`` keeps one copy of each kind per network for as long as the network lives, and makes a new one when the
network's weights or buffers changed: a DAUGS study otherwise deep-copies all 50 members again for every search (6 %
of a profiled study's time).
"""
from __future__ import annotations

import copy
import weakref

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .fast_instance_norm import centre_unet2d, is_replaceable, replace_instance_norms
from .unet import UNet2D


def _fold_sequential(seq: nn.Sequential) -> int:
    """Fold Conv2d -> BatchNorm2d pairs inside one Sequential (in place); returns how many were folded."""
    layers = list(seq)
    out, i, n = [], 0, 0
    while i < len(layers):
        conv = layers[i]
        bn = layers[i + 1] if i + 1 < len(layers) else None
        if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats
                and bn.running_mean is not None and conv.out_channels == bn.num_features):
            out.append(fuse_conv_bn_eval(conv, bn))
            i += 2
            n += 1
        else:
            out.append(conv)
            i += 1
    if n:
        for k in list(seq._modules):
            del seq._modules[k]
        for k, m in enumerate(out):
            seq.add_module(str(k), m)
    return n


def uses_channels_last(network: nn.Module) -> bool:
    """Whether the network's 4-D weights are laid out channels-last (the registry loads networks so)."""
    return any(p.ndim == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
               for p in network.parameters())


def _frozen(net: nn.Module, channels_last: bool) -> nn.Module:
    """An inference copy's last touches: the original's memory format, no gradients."""
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    for p in net.parameters():
        p.requires_grad_(False)
    return net


class Bf16ReLU(nn.ReLU):
    """ReLU that, on bf16 tensors, clamps the bits read as int16 at 0 (module docstring: the same values, several
    times faster on a CPU than torch's bf16 ReLU); any other dtype goes to ``torch.relu``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.bfloat16:
            return super().forward(x)
        out = x if self.inplace else x.clone()
        out.view(torch.int16).clamp_min_(0)       # sign bit set (negative or -0) -> all bits 0 (+0)
        return out


def _fast_bf16_relus(net: nn.Module) -> None:
    """Replace every plain ``nn.ReLU`` of ``net`` (in place) by a ``Bf16ReLU``."""
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.ReLU:
                setattr(parent, name, Bf16ReLU(inplace=child.inplace))


# leaf modules whose bf16 copy computes what bf16 autocast computes (anything else: no copy, use autocast)
_BF16_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BF16_SAME = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.ReLU, nn.LeakyReLU, nn.MaxPool1d, nn.MaxPool2d,
              nn.MaxPool3d, nn.Identity, nn.Dropout, nn.Dropout2d)


def _on_cpu(network: nn.Module) -> bool:
    return all(p.device.type == "cpu" for p in network.parameters())


def bf16_copy(network: nn.Module) -> nn.Module | None:
    """An eval-mode deep copy with convolution weights and biases in bf16 and everything else as it was, to be fed
    bf16 input: the same numbers as running ``network`` under bf16 autocast, without casting the weights on every
    call. ``None`` when the network holds a leaf module outside the known set (its autocast behaviour is not known
    here); the caller then uses autocast. Layers called functionally in ``forward`` (``torch.cat``, pooling) behave
    alike either way for the networks of this package (tests compare them bit for bit). An InstanceNorm UNet2D gets
    centred convolutions and ``ChannelsLastInstanceNorm`` (statistics and affine map in fp32), close to fp32 but not
    autocast's numbers (module docstring)."""
    leaves = [m for m in network.modules() if not list(m.children())]
    # InstanceNorm: replaced by the channels-last version (a CPU fix; GPUs keep autocast), centred by walking the
    # UNet2D's known layout
    instance_norm_ok = isinstance(network, UNet2D) and _on_cpu(network)
    if not leaves or not all(isinstance(m, _BF16_CONVS + _BF16_SAME) or (instance_norm_ok and is_replaceable(m))
                             for m in leaves):
        return None
    net = copy.deepcopy(network).eval()
    if any(is_replaceable(m) for m in leaves):
        with torch.no_grad():
            centre_unet2d(net)
        replace_instance_norms(net)
    for m in net.modules():
        if isinstance(m, _BF16_CONVS):
            m.to(torch.bfloat16)
    _fast_bf16_relus(net)
    return _frozen(net, uses_channels_last(network))


def inference_copy(network: nn.Module) -> nn.Module:
    """An eval-mode deep copy with Conv2d -> BatchNorm2d pairs folded (within each ``nn.Sequential``) and affine
    InstanceNorms replaced by ``ChannelsLastInstanceNorm``, in the original's memory format (channels-last stays
    channels-last). Attributes ``folded_batch_norms`` and ``replaced_instance_norms`` count them."""
    net = copy.deepcopy(network).eval()
    n = 0
    with torch.no_grad():
        for module in list(net.modules()):
            if isinstance(module, nn.Sequential):
                n += _fold_sequential(module)
    replaced = replace_instance_norms(net) if _on_cpu(net) else 0
    net = _frozen(net, uses_channels_last(network))
    net.folded_batch_norms = n
    net.replaced_instance_norms = replaced
    return net


_COPIES: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()
_MAKERS = {"bf16": bf16_copy, "fp32": inference_copy}


def _state_key(network: nn.Module) -> tuple:
    """Changes whenever a parameter or buffer is modified in place (``_version``), replaced or moved (storage)."""
    return tuple((t.data_ptr(), t._version, t.dtype, str(t.device))
                 for t in list(network.parameters()) + list(network.buffers()))


def cached_copy(network: nn.Module, kind: str):
    """``bf16_copy`` (kind "bf16") or ``inference_copy`` ("fp32") of ``network``, made once and reused while the
    network's state is unchanged. The copy shares nothing with the network, so callers must not modify it."""
    if kind not in _MAKERS:
        raise ValueError(f"kind must be one of {sorted(_MAKERS)}, got {kind!r}")
    key = _state_key(network)
    per_kind = _COPIES.setdefault(network, {})
    hit = per_kind.get(kind)
    if hit is None or hit[0] != key:
        hit = per_kind[kind] = (key, _MAKERS[kind](network))
    return hit[1]
