"""Inference through one ``torch.compile``'d forward shared by every network of the same structure (opt-in).

Why: an InstanceNorm pool member costs about 2x a BatchNorm one per patch on a CPU, in fp32 and bf16 alike
(docs/training.md, fifteenth session). The normalisation arithmetic is not the cost: eager PyTorch drops the
channels-last layout at each ``instance_norm`` and pays for copies around it. Inductor fuses each
normalisation with its neighbours into generated loops instead. Compiling costs tens of seconds, once per process
and network structure; a DAUGS pool has 50 members of one structure. So the compiled function takes the weights as
an argument (``torch.func.functional_call``): every member runs the same compiled code with its own weights.

Shapes are static: a batch smaller than the compiled one is padded with zeros and the extra rows dropped (each
patch is computed on its own in eval mode, so the padding cannot change the others), which keeps one compiled
graph per (structure, dtype, batch size).

When ``torch.compile`` fails (no C++ compiler, an unsupported platform), the call falls back to the eager network
once and for all, with a warning: the numbers are the same network's, only slower.
"""
from __future__ import annotations

import copy
import logging
import threading

import torch
from torch import nn

from .inference_copy import inference_copy, uses_channels_last

_COMPILED: dict = {}          # (structure, dtype) -> compiled functional forward
_LOCK = threading.Lock()
_log = logging.getLogger(__name__)


def _structure_key(network: nn.Module, dtype: torch.dtype) -> tuple:
    """Networks with the same repr (every layer and its hyper-parameters) share the compiled code."""
    return type(network).__qualname__, repr(network), str(dtype)


class CompiledNetwork:
    """Calls the structure's shared compiled forward with this network's own weights (eval mode, ``dtype``).

    fp32 starts from ``inference_copy`` (BatchNorm folded); bf16 casts every floating weight and buffer to bf16
    (BatchNorm statistics included, unlike autocast; Inductor still reduces the InstanceNorm statistics in fp32).
    Feed it ``dtype`` input; it returns what the network returns, in ``dtype``."""

    def __init__(self, network: nn.Module, dtype: torch.dtype = torch.float32, batch_size: int = 64):
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"dtype must be float32 or bfloat16, got {dtype}")
        net = inference_copy(network) if dtype == torch.float32 else copy.deepcopy(network).eval()
        net = net.to(dtype)
        if uses_channels_last(network):
            net = net.to(memory_format=torch.channels_last)
        for p in net.parameters():
            p.requires_grad_(False)
        self.eager = net
        self.dtype = dtype
        self.batch_size = int(batch_size)
        self.weights = {**dict(net.named_parameters()), **dict(net.named_buffers())}
        key = _structure_key(net, dtype)
        with _LOCK:
            if key not in _COMPILED:
                template = copy.deepcopy(net)   # its own weights are never read: functional_call swaps them in

                def forward(weights, x, _template=template):
                    return torch.func.functional_call(_template, weights, (x,))

                _COMPILED[key] = torch.compile(forward, dynamic=False)
            self._compiled = _COMPILED[key]
        self._failed = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._failed:
            return self.eager(x)
        n, b = x.shape[0], self.batch_size
        outs = []
        try:
            for start in range(0, n, b):
                chunk = x[start:start + b]
                k = chunk.shape[0]
                if k < b:    # static shapes: pad, then drop the padding rows
                    pad = chunk.new_zeros((b - k,) + tuple(chunk.shape[1:]))
                    chunk = torch.cat([chunk, pad]).contiguous(memory_format=_memory_format(chunk))
                outs.append(self._compiled(self.weights, chunk)[:k])
        except Exception as exc:  # noqa: BLE001 - any compiler failure: run eagerly from now on
            _log.warning("torch.compile failed (%s: %s); running the network eagerly", type(exc).__name__, exc)
            self._failed = True
            return self.eager(x)
        return outs[0] if len(outs) == 1 else torch.cat(outs)


def _memory_format(x: torch.Tensor):
    return torch.channels_last if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous() else torch.contiguous_format
