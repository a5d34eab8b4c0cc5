"""Test-time BatchNorm adaptation (AdaBN, Li et al. 2016): a network's BatchNorm statistics re-estimated on the series
it is about to segment.

Why: our networks learn on the phantom, and the activations of a real series have other means and spreads than the
phantom's, so the BatchNorm statistics frozen at training normalise them wrongly. Re-estimating them from the series'
own input (no labels, nothing learnt) moved the myocardium Dice on the 47 coarsely labelled ml_perfusion series from
0.600 to 0.644 for one 30-minute phantom-trained patch U-Net, and up by 0.03-0.07 for each of 12 more such networks
(docs/daugs.md, fourteenth session). The statistics must come from inputs like those the network then sees: for the
DAUGS patch networks, the 25 stride-16 windows of the series; one forward of the whole 128 x 128 image gave other
statistics (zero padding at other places) and lowered the same figure to 0.587.

The caller's network is never modified: the adapted network is an eval-mode deep copy.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import InvalidParameterError


def has_batchnorm(network: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in network.modules())


def adapt_batchnorm(network: nn.Module, inputs: torch.Tensor) -> nn.Module:
    """An eval-mode copy of ``network`` whose BatchNorm running statistics are those of ``inputs`` (one batch, in
    the network's input layout). One batch on purpose: with ``momentum=None`` PyTorch averages the per-batch means
    and variances, which over several batches is not the variance of the whole set. A network without BatchNorm is
    returned as it is."""
    if not has_batchnorm(network):
        return network
    if inputs.ndim < 2 or inputs.shape[0] < 1:
        raise InvalidParameterError(f"BatchNorm adaptation needs a batch of inputs, got shape {tuple(inputs.shape)}")
    adapted = copy.deepcopy(network)
    for m in adapted.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if not m.track_running_stats:
                raise InvalidParameterError("BatchNorm without running statistics cannot be adapted")
            m.reset_running_stats()
            m.momentum = None            # cumulative average: after one batch, exactly that batch's statistics
    device = next((p.device for p in adapted.parameters()), torch.device("cpu"))
    adapted.train()
    with torch.no_grad():
        adapted(inputs.to(device))
    adapted.eval()
    for p in adapted.parameters():
        p.requires_grad_(False)
    return adapted


__all__ = ["adapt_batchnorm", "has_batchnorm"]
