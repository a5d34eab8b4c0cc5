"""networks.compiled_inference: one torch.compile'd forward shared by every network of a structure (opt-in path)."""
import logging

import numpy as np
import pytest
import torch

from PerfusionSegLib.networks import build_network
from PerfusionSegLib.networks import compiled_inference as ci


def _instance_net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = build_network("unet2d", config="tiny", norm="instance")
    with torch.no_grad():   # affine InstanceNorm starts at (1, 0): move it, so the weights matter
        for m in net.modules():
            if isinstance(m, torch.nn.InstanceNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval().to(memory_format=torch.channels_last)


def _patches(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 30, 64, 64, generator=g).contiguous(memory_format=torch.channels_last)


def test_compiled_fp32_equals_the_eager_network_for_a_padded_and_a_split_batch():
    net = _instance_net(0)
    fast = ci.CompiledNetwork(net, torch.float32, batch_size=4)
    for n in (3, 6):   # 3: padded to 4; 6: a full batch of 4, then 2 padded
        x = _patches(n, seed=n)
        with torch.inference_mode():
            ref, out = net(x), fast(x)
        assert out.shape == ref.shape
        assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4), float((out - ref).abs().max())


def test_members_of_one_structure_share_the_compiled_code_and_keep_their_own_weights():
    a, b = _instance_net(1), _instance_net(2)
    fa, fb = ci.CompiledNetwork(a, torch.float32, batch_size=4), ci.CompiledNetwork(b, torch.float32, batch_size=4)
    assert fa._compiled is fb._compiled
    x = _patches(4, seed=9)
    with torch.inference_mode():
        out_a, out_b = fa(x), fb(x)
        assert torch.allclose(out_a, a(x), atol=1e-4, rtol=1e-4)
        assert torch.allclose(out_b, b(x), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(out_a, out_b, atol=1e-2)    # different weights, different answers


def test_compiled_bf16_errs_from_fp32_no_more_than_autocast_does():
    net = _instance_net(3)
    fast = ci.CompiledNetwork(net, torch.bfloat16, batch_size=4)
    x = _patches(4, seed=3)
    with torch.inference_mode():
        exact = net(x).softmax(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = net(x).float().softmax(1)
        out = fast(x.to(torch.bfloat16)).float().softmax(1)
    assert out.dtype == torch.float32 and out.shape == exact.shape
    err, err_autocast = (out - exact).abs().mean(), (autocast - exact).abs().mean()
    assert float(err) <= 2 * float(err_autocast) + 1e-4, (float(err), float(err_autocast))
    assert float((out.argmax(1) == exact.argmax(1)).float().mean()) > 0.97


def test_a_compiler_failure_falls_back_to_the_eager_network_with_a_warning(monkeypatch, caplog):
    def broken(fn, **kw):
        def call(*a, **k):
            raise RuntimeError("no C++ compiler")
        return call

    monkeypatch.setattr(ci, "_COMPILED", {})
    monkeypatch.setattr(torch, "compile", broken)
    net = _instance_net(4)
    fast = ci.CompiledNetwork(net, torch.float32, batch_size=4)
    x = _patches(2, seed=4)
    with caplog.at_level(logging.WARNING), torch.inference_mode():
        out = fast(x)
        assert torch.allclose(out, net(x), atol=1e-5)
    assert "torch.compile failed" in caplog.text
    assert fast._failed


def test_selection_through_compiled_members_chooses_as_the_eager_path():
    from PerfusionDAUGSLib.selection import select_members

    members = [(f"m{i}", _instance_net(10 + i)) for i in range(3)]
    rng = np.random.default_rng(0)
    image = rng.random((30, 96, 96)).astype(np.float32)
    eager = select_members(members, [image], fast=False, umap_stride=16, seg_stride=16)[0]
    compiled = select_members(members, [image], fast=False, umap_stride=16, seg_stride=16, compiled=True)[0]
    assert compiled.chosen == eager.chosen
    for name in eager.upp:
        assert compiled.upp[name] == pytest.approx(eager.upp[name], rel=1e-3, abs=1e-6)


def test_compiled_and_batch_norm_adaptation_are_refused_together():
    from PerfusionDAUGSLib.selection import select_members
    from PerfusionSegLib.errors import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="do not combine"):
        select_members([("m", _instance_net(0))], [np.zeros((30, 64, 64), np.float32)], compiled=True,
                       adapt_bn=True)
