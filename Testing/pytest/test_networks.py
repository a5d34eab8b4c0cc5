"""Networks, loss and model registry: shapes, parameter counts, safe loading, integrity checks."""
from __future__ import annotations

import copy
import io
import json
import os

import numpy as np
import pytest
import torch

from PerfusionSegLib.errors import InvalidParameterError, UnreadableFileError
from PerfusionSegLib.networks import architecture_name, build_network
from PerfusionSegLib.networks.blocks import PreActResidualBlock, count_parameters
from PerfusionSegLib.networks.losses import CEJaccardLoss, soft_jaccard_loss
from PerfusionSegLib.networks.registry import (ModelIntegrityError, default_models_dir, list_models, load_model,
                                               resolve_device, save_model)
from PerfusionSegLib.networks.resunet import ResUNet
from PerfusionSegLib.networks.unet import UNet2D

torch.manual_seed(0)


def test_resunet_published_config_has_about_3_7_million_parameters():
    net = build_network("resunet", config="xue2020")
    n = count_parameters(net)
    assert 3.6e6 <= n <= 3.8e6, n
    assert net.config["in_channels"] == 48 and net.config["n_classes"] == 4
    assert net.config["filters"] == [96, 128] and net.config["blocks"] == [2, 3]
    assert isinstance(net.down[0][0], PreActResidualBlock)
    assert len(net.down[0]) == 2 and len(net.down[1]) == 3
    assert any(isinstance(m, torch.nn.LeakyReLU) for m in net.modules())
    relu = build_network("resunet", config="xue2020_relu")
    assert not any(isinstance(m, torch.nn.LeakyReLU) for m in relu.modules())
    assert count_parameters(relu) == n


def test_resunet_output_shape_and_size_check():
    net = build_network("resunet", config="small").eval()
    with torch.inference_mode():
        y = net(torch.randn(2, 48, 32, 48))
    assert y.shape == (2, 4, 32, 48)
    with pytest.raises(InvalidParameterError):
        net(torch.randn(1, 48, 36, 36))   # not a multiple of 8


def test_resunet_is_configurable():
    net = ResUNet(in_channels=12, n_classes=3, filters=(8, 12, 16), blocks=(1, 2, 1), bridge_blocks=1,
                  final_channels=4, activation="relu")
    assert net.divisor == 16
    assert net(torch.randn(1, 12, 32, 32)).shape == (1, 3, 32, 32)
    with pytest.raises(InvalidParameterError):
        ResUNet(filters=(8, 12), blocks=(1,))
    with pytest.raises(InvalidParameterError):
        build_network("resunet", config="xue2020", activation="gelu")


def test_unet_configs_shapes_and_parameter_counts():
    default = build_network("unet2d")
    assert 0.45e6 <= count_parameters(default) <= 2e6
    daugs = build_network("unet2d", config="daugs2024")
    assert daugs.config["in_channels"] == 30 and daugs.config["n_classes"] == 4
    assert count_parameters(daugs) > count_parameters(default)
    with torch.inference_mode():
        assert daugs.eval()(torch.randn(3, 30, 64, 64)).shape == (3, 4, 64, 64)
    bil = UNet2D(in_channels=5, n_classes=2, features=(4, 8, 16), up_mode="bilinear")
    assert bil(torch.randn(1, 5, 16, 16)).shape == (1, 2, 16, 16)
    with pytest.raises(InvalidParameterError):
        bil(torch.randn(1, 5, 18, 18))
    with pytest.raises(InvalidParameterError):
        build_network("vnet")
    # blocks per level: three convolutions a level add exactly one conv (+ norm) per level, and keep the shapes
    three = UNet2D(in_channels=5, n_classes=2, features=(4, 8, 16), up_mode="bilinear", convs_per_level=3)
    extra = sum(f * f * 9 + 2 * f for f in (4, 8, 16)) + sum(f * f * 9 + 2 * f for f in (4, 8))
    assert count_parameters(three) == count_parameters(bil) + extra and three.config["convs_per_level"] == 3
    assert three(torch.randn(1, 5, 16, 16)).shape == (1, 2, 16, 16)
    for bad in (0, 2.5, True):
        with pytest.raises(InvalidParameterError, match="convs_per_level"):
            UNet2D(features=(4, 8), convs_per_level=bad)
    # the default keeps the weights' names of the shipped members (two convolutions a level)
    assert "encoder.0.body.3.weight" in dict(bil.named_parameters()) and "encoder.0.body.6.weight" not in \
        dict(bil.named_parameters())


def test_he_init_scales_conv_weights():
    net = build_network("unet2d", config="tiny")
    conv = net.encoder[1].body[0]                       # 8 -> 16 channels, 3x3
    fan_out = conv.out_channels * 9
    assert abs(conv.weight.std().item() - np.sqrt(2.0 / fan_out)) < 0.35 * np.sqrt(2.0 / fan_out)


def test_build_network_round_trips_config():
    net = build_network("unet2d", config="tiny")
    twin = build_network(architecture_name(net), **net.config)
    assert twin.config == net.config and count_parameters(twin) == count_parameters(net)


def test_unet_normalisation_options_and_the_older_cards_spelling():
    from torch import nn

    inst = build_network("unet2d", config="default_in")
    norms = [m for m in inst.modules() if isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d))]
    assert norms and all(isinstance(m, nn.InstanceNorm2d) and m.affine for m in norms)
    assert count_parameters(inst) == count_parameters(build_network("unet2d"))       # same weights, other statistics
    twin = build_network(architecture_name(inst), **inst.config)
    assert twin.config == inst.config and twin.config["norm"] == "instance"
    # each patch normalised by its own statistics: a gain on the input intensity changes nothing, as it does with
    # BatchNorm's frozen statistics (an offset would: the convolutions' zero padding does not carry it)
    inst.eval()
    batch = build_network("unet2d").eval()
    x = torch.rand(2, 30, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(inst(2.5 * x), inst(x), atol=1e-3)
        assert not torch.allclose(batch(2.5 * x), batch(x), atol=1e-3)
    # a card written before the norm option (batch_norm only) builds the network it always did
    old = dict(build_network("unet2d", config="tiny").config)
    old.pop("norm")
    assert any(isinstance(m, nn.BatchNorm2d) for m in build_network("unet2d", **old).modules())
    plain = build_network("unet2d", **dict(old, batch_norm=False))
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) for m in plain.modules())
    assert plain.config["norm"] == "none"
    with pytest.raises(InvalidParameterError):
        build_network("unet2d", config="tiny", norm="group")


def test_loss_is_small_for_a_confident_correct_prediction_and_large_otherwise():
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, 2:6, 2:6] = 2
    good = torch.nn.functional.one_hot(target, 4).permute(0, 3, 1, 2).float() * 20
    bad = torch.roll(good, shifts=1, dims=1)
    loss = CEJaccardLoss()
    assert loss(good, target).item() < 0.01
    assert loss(bad, target).item() > 1.0
    # equal weights: the loss is exactly CE + Jaccard
    ce = torch.nn.functional.cross_entropy(bad, target)
    assert loss(bad, target).item() == pytest.approx(ce.item() + soft_jaccard_loss(bad, target).item(), rel=1e-6)


def _tiny_card():
    return {"input": {"n_frames": 30, "size": 32}, "training": {"data": "unit test"}, "metrics": {}}


def test_registry_round_trip_fp32_and_fp16(tmp_path):
    net = build_network("unet2d", config="tiny").eval()
    x = torch.rand(2, 30, 32, 32)
    with torch.inference_mode():
        ref = net(x).softmax(1).numpy()
    card32 = save_model(net, _tiny_card(), tmp_path, "tiny32")
    card16 = save_model(net, _tiny_card(), tmp_path, "tiny16", half=True)
    c = json.loads(card32.read_text())
    assert c["architecture"] == "unet2d" and c["config"] == net.config and len(c["weights_sha256"]) == 64
    assert c["input"]["n_frames"] == 30 and c["training"]["data"] == "unit test"
    size32, size16 = (tmp_path / "tiny32.pt").stat().st_size, (tmp_path / "tiny16.pt").stat().st_size
    assert size16 < 0.7 * size32
    m32 = load_model(card32, device="cpu")
    m16 = load_model("tiny16", device="cpu", models_dir=tmp_path)
    assert json.loads(card16.read_text())["weights_sha256"] != c["weights_sha256"]    # fp16 weights, their own hash
    assert not m32.network.training and m32.device.type == "cpu"
    np.testing.assert_allclose(m32.predict_proba(x.numpy()), ref, atol=1e-5)
    assert np.abs(m16.predict_proba(x.numpy()) - ref).max() < 2e-2
    names = [m["name"] for m in list_models(tmp_path)]
    assert names == ["tiny16", "tiny32"]


def test_evaluation_is_recorded_in_the_card_without_touching_the_weights(tmp_path):
    from PerfusionSegLib.networks.registry import record_evaluation

    card = save_model(build_network("unet2d", config="tiny"), _tiny_card(), tmp_path, "m")
    before = (tmp_path / "m.pt").read_bytes()
    record_evaluation(card, "phantom_test", {"myo": 0.9})
    record_evaluation(card, "real_data", {"myo": 0.7})
    doc = json.loads(card.read_text())
    assert doc["evaluation"] == {"phantom_test": {"myo": 0.9}, "real_data": {"myo": 0.7}}
    assert (tmp_path / "m.pt").read_bytes() == before
    load_model(card, device="cpu")                                   # the checksum still holds
    with pytest.raises(InvalidParameterError):
        record_evaluation(card, "", {})


def test_registry_rejects_a_modified_weights_file(tmp_path):
    net = build_network("unet2d", config="tiny")
    card = save_model(net, _tiny_card(), tmp_path, "m")
    weights = tmp_path / "m.pt"
    blob = bytearray(weights.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(ModelIntegrityError, match="sha256"):
        load_model(card, device="cpu")


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch EXPLOITED",))


def test_registry_never_unpickles_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    net = build_network("unet2d", config="tiny")
    card_path = save_model(net, _tiny_card(), tmp_path, "evil")
    state = net.state_dict()
    state["payload"] = _Exploit()
    buf = io.BytesIO()
    torch.save(state, buf)
    (tmp_path / "evil.pt").write_bytes(buf.getvalue())
    card = json.loads(card_path.read_text())
    import hashlib
    card["weights_sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()   # the hash matches: only weights_only saves us
    card_path.write_text(json.dumps(card))
    with pytest.raises(UnreadableFileError, match="state dict"):
        load_model(card_path, device="cpu")
    assert not (tmp_path / "EXPLOITED").exists()


def test_registry_missing_files_and_models_dir(tmp_path, monkeypatch):
    with pytest.raises(UnreadableFileError, match="missing"):
        load_model("no_such_model", models_dir=tmp_path)
    net = build_network("unet2d", config="tiny")
    save_model(net, _tiny_card(), tmp_path / "pool", "member_00")
    (tmp_path / "pool" / "member_00.pt").unlink()
    with pytest.raises(UnreadableFileError, match="member_00.pt"):
        load_model("pool/member_00", models_dir=tmp_path)
    monkeypatch.setenv("PERFUSION_MODELS_DIR", str(tmp_path))
    assert default_models_dir() == tmp_path
    assert list_models()[0]["weights_present"] is False
    monkeypatch.delenv("PERFUSION_MODELS_DIR")
    assert default_models_dir().parts[-2:] == ("Resources", "Models")
    with pytest.raises(InvalidParameterError):
        save_model(net, {}, tmp_path, "../escape")


def test_device_selection():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InvalidParameterError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidParameterError, match="no CUDA"):
            resolve_device("cuda")


def _with_running_statistics(net):
    """Non-trivial BatchNorm statistics and affine parameters (a fresh BN is the identity, which hides folding bugs)."""
    g = torch.Generator().manual_seed(3)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return net.eval()


def test_inference_copy_folds_batch_norm_exactly_and_leaves_the_original_alone():
    from PerfusionSegLib.networks.inference_copy import inference_copy
    torch.manual_seed(0)
    net = _with_running_statistics(build_network("unet2d", config="default")).to(memory_format=torch.channels_last)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fast = inference_copy(net)
    assert fast.folded_batch_norms == 14            # 7 DoubleConv blocks x 2 conv-BN pairs
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    conv = next(m for m in fast.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(2, 30, 64, 64)
    with torch.inference_mode():
        ref, out = net(x), fast(x)
    assert torch.allclose(ref, out, atol=1e-4, rtol=1e-4)
    assert (ref.argmax(1) == out.argmax(1)).float().mean() > 0.999


def test_inference_copy_folds_only_conv_then_batch_norm_in_the_resunet():
    from PerfusionSegLib.networks.inference_copy import inference_copy
    net = _with_running_statistics(build_network("resunet", config="small"))
    fast = inference_copy(net)
    # residual blocks are BN -> act -> conv (nothing to fold); only the final stage's conv -> BN pair folds
    assert fast.folded_batch_norms == 1
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules()) == \
        sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) - 1
    x = torch.rand(1, 48, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(net(x), fast(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("config", ["default", "daugs2024"])
def test_bf16_copy_computes_what_autocast_computes_bit_for_bit(config):
    from PerfusionSegLib.networks.inference_copy import bf16_copy
    torch.manual_seed(1)
    net = _with_running_statistics(build_network("unet2d", config=config)).to(memory_format=torch.channels_last)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fast = bf16_copy(net)
    assert fast is not None
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())     # the original is untouched
    bn = next(m for m in fast.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert bn.running_var.dtype == torch.float32                                    # statistics stay fp32
    from PerfusionSegLib.networks.inference_copy import Bf16ReLU
    relus = [m for m in fast.modules() if isinstance(m, torch.nn.ReLU)]
    assert relus and all(isinstance(m, Bf16ReLU) for m in relus)                    # the fast bf16 ReLU runs
    x = torch.rand(3, 30, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ref = net(x)
        out = fast(x.to(torch.bfloat16))
    assert out.dtype == ref.dtype == torch.bfloat16
    assert torch.equal(out, ref)


def test_bf16_relu_equals_relu_on_every_bf16_value():
    from PerfusionSegLib.networks.inference_copy import Bf16ReLU
    every = torch.arange(-2 ** 15, 2 ** 15, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)   # all 65,536
    finite = every[torch.isfinite(every)]
    ref = torch.relu(finite)
    out = Bf16ReLU()(finite)
    assert torch.equal(out, ref) and not torch.equal(out, finite)       # equal values (-0 -> +0), input untouched
    assert torch.equal(out.view(torch.int16) < 0, torch.zeros_like(out, dtype=torch.bool))   # never a sign bit
    x = torch.randn(2, 4, 8, 8).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    y = x.clone()
    assert Bf16ReLU(inplace=True)(y) is y and torch.equal(y, torch.relu(x))
    assert y.is_contiguous(memory_format=torch.channels_last)
    xf = torch.randn(5)
    assert torch.equal(Bf16ReLU()(xf), torch.relu(xf))                  # other dtypes: torch's ReLU


def test_bf16_copy_declines_layers_it_does_not_know():
    from PerfusionSegLib.networks.inference_copy import bf16_copy
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Upsample(scale_factor=2, mode="bilinear"))
    assert bf16_copy(net) is None
    assert bf16_copy(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())) is not None
    assert bf16_copy(build_network("unet2d", config="tiny")) is None     # bilinear up-sampling: autocast decides


def _instance_norm_unet(seed: int = 4):
    """A default_in UNet2D with non-trivial InstanceNorm affines (a fresh one is (1, 0), which hides bugs)."""
    torch.manual_seed(seed)
    net = build_network("unet2d", config="default_in")
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.InstanceNorm2d):
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.3)
    return net.eval().to(memory_format=torch.channels_last)


@pytest.mark.parametrize("channels_last", [True, False])
def test_channels_last_instance_norm_is_instance_norm(channels_last):
    from PerfusionSegLib.networks.fast_instance_norm import ChannelsLastInstanceNorm
    norm = torch.nn.InstanceNorm2d(8, affine=True)
    norm.weight.data.uniform_(0.5, 1.5)
    norm.bias.data.uniform_(-1, 1)
    fast = ChannelsLastInstanceNorm(norm)
    x = torch.randn(5, 8, 16, 12) * 3 + torch.linspace(-4, 4, 8).view(1, 8, 1, 1)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        ref, out = norm(x), fast(x)
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4)
    if channels_last:                                        # the layout survives: no copies downstream
        assert out.is_contiguous(memory_format=torch.channels_last)
    from PerfusionSegLib.errors import InvalidParameterError
    with pytest.raises(InvalidParameterError, match="affine"):
        ChannelsLastInstanceNorm(torch.nn.InstanceNorm2d(8))                    # no affine: not replaced


def test_centring_leaves_an_instance_norm_unet_unchanged_and_centres_its_norm_inputs():
    from PerfusionSegLib.networks.fast_instance_norm import centre_unet2d
    net = _instance_norm_unet()
    centred = copy.deepcopy(net)
    with torch.no_grad():
        assert centre_unet2d(centred) == 14                  # 7 DoubleConv blocks x 2 conv -> IN pairs

    def norm_input_offsets(model, x):
        """Per IN input: |channel mean| / channel std, averaged over samples and channels."""
        out = []
        hooks = [m.register_forward_hook(lambda m, i, o: out.append(
            (i[0].mean((2, 3)).abs() / i[0].std((2, 3)).clamp_min(1e-6)).mean().item()))
            for m in model.modules() if isinstance(m, torch.nn.InstanceNorm2d)]
        with torch.inference_mode():
            y = model(x)
        for h in hooks:
            h.remove()
        return y, np.array(out)

    x = (torch.rand(4, 30, 64, 64) * 0.4).contiguous(memory_format=torch.channels_last)
    ref, before = norm_input_offsets(net, x)
    out, after = norm_input_offsets(centred, x)
    assert torch.allclose(out, ref, atol=1e-3, rtol=1e-3)   # InstanceNorm ignores a per-channel constant
    assert np.median(after) < 0.5 * np.median(before)


def test_copies_of_an_instance_norm_unet_are_fast_and_close_to_fp32():
    from PerfusionSegLib.networks.fast_instance_norm import ChannelsLastInstanceNorm
    from PerfusionSegLib.networks.inference_copy import bf16_copy, inference_copy
    net = _instance_norm_unet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fp32, bf16 = inference_copy(net), bf16_copy(net)
    assert bf16 is not None and fp32.replaced_instance_norms == 14
    for copy_ in (fp32, bf16):
        assert not any(isinstance(m, torch.nn.InstanceNorm2d) for m in copy_.modules())
        assert sum(isinstance(m, ChannelsLastInstanceNorm) for m in copy_.modules()) == 14
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())     # the original is untouched
    assert any(isinstance(m, torch.nn.InstanceNorm2d) for m in net.modules())
    x = torch.rand(8, 30, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        ref = net(x).softmax(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = net(x).float().softmax(1)
        out32 = fp32(x).softmax(1)
        out16 = bf16(x.to(torch.bfloat16)).float().softmax(1)
    assert torch.allclose(out32, ref, atol=1e-4)
    # bf16 is not autocast's arithmetic: hold it to autocast's own distance from fp32
    err16, err_auto = (out16 - ref).abs().mean().item(), (auto - ref).abs().mean().item()
    assert err16 < 3 * err_auto
    assert (out16.argmax(1) == ref.argmax(1)).float().mean() > 0.99


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_instance_norm_copies_on_a_gpu_keep_torch_instance_norm():
    from PerfusionSegLib.networks.inference_copy import bf16_copy, inference_copy
    net = _instance_norm_unet().cuda()
    assert bf16_copy(net) is None                                                  # autocast, as before
    assert inference_copy(net).replaced_instance_norms == 0


def test_cached_copies_are_reused_until_the_network_changes():
    from PerfusionSegLib.networks.inference_copy import cached_copy

    torch.manual_seed(2)
    net = _with_running_statistics(build_network("unet2d", config="default")).to(memory_format=torch.channels_last)
    other = _with_running_statistics(build_network("unet2d", config="default"))
    first = cached_copy(net, "fp32")
    assert cached_copy(net, "fp32") is first                                  # reused
    assert cached_copy(net, "bf16") is not first and cached_copy(other, "fp32") is not first
    x = torch.rand(2, 30, 64, 64)
    with torch.inference_mode():
        before = first(x)
    with torch.no_grad():                                                     # weights changed in place
        next(net.parameters()).mul_(0.5)
    second = cached_copy(net, "fp32")
    assert second is not first
    with torch.inference_mode():
        assert not torch.allclose(second(x), before)
        assert torch.allclose(second(x), net(x), atol=1e-4, rtol=1e-4)
    next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_mean.add_(1.0)   # a buffer
    assert cached_copy(net, "fp32") is not second
    with pytest.raises(ValueError, match="kind"):
        cached_copy(net, "fp16")


# ---------------------------------------------------------------------------------------------------------------------
# test-time BatchNorm adaptation
# ---------------------------------------------------------------------------------------------------------------------
def test_adapt_batchnorm_takes_the_statistics_of_the_inputs_and_leaves_the_network_alone():
    from torch import nn

    from PerfusionSegLib.networks.bn_adaptation import adapt_batchnorm

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = 5.0 + 3.0 * torch.randn(6, 3, 16, 16)            # far from the statistics the BN holds (0 mean, 1 variance)
    adapted = adapt_batchnorm(net, x)
    conv_out = net[0](x).detach()
    bn = adapted[1]
    assert torch.allclose(bn.running_mean, conv_out.mean(dim=(0, 2, 3)), atol=1e-4)
    assert torch.allclose(bn.running_var, conv_out.var(dim=(0, 2, 3), unbiased=True), rtol=1e-4)
    assert not adapted.training and all(not p.requires_grad for p in adapted.parameters())
    # the caller's network is untouched, and the adapted one normalises the inputs' conv output to ~0 mean
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    with torch.no_grad():
        normalised = bn(conv_out)
    assert abs(float(normalised.mean(dim=(0, 2, 3)).sub(bn.bias).abs().max())) < 1e-3
    # no BatchNorm: nothing to adapt, the same network comes back; an empty batch is refused
    plain = nn.Sequential(nn.Conv2d(3, 2, 1))
    assert adapt_batchnorm(plain, x) is plain
    with pytest.raises(InvalidParameterError):
        adapt_batchnorm(net, x[:0])
