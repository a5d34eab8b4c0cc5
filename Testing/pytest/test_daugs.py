"""DAUGS: patches, accumulation, U-map (no NaN, border rule), U_pp/U_tot, member selection, pools, input-grid outputs."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from PerfusionDAUGSLib.patching import (PatchAccumulator, check_coverage, contribution_mask, contribution_rects,
                                        extract_patches, iter_patch_batches, make_grid, patch_offsets, phase_rounds,
                                        phased_offsets)
from PerfusionDAUGSLib.selection import PoolEvaluator, select_members
from PerfusionDAUGSLib.umap import labels_from_probabilities, uncertainty_scores
from PerfusionSegLib.errors import InvalidParameterError


# ---------------------------------------------------------------------------------------------------------------------
# tiny test networks (channels = frames; 4 classes: background, blood pool, myocardium, RV)
# ---------------------------------------------------------------------------------------------------------------------
class ConstantNet(nn.Module):
    """Same logits at every pixel of every patch: a translation-equivariant constant output."""

    def __init__(self, logits=(0.0, 0.0, 3.0, 0.0)):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits, dtype=torch.float32), requires_grad=False)

    def forward(self, x):
        return self.logits[None, :, None, None].expand(x.shape[0], -1, x.shape[2], x.shape[3]) + 0.0 * x[:, :1]


class PixelNet(nn.Module):
    """Myocardium where the peak over frames is bright; each pixel depends on itself only, plus a bounded term of the
    whole patch (``context`` x sin(60 x patch mean)): context 0 is perfectly consistent over overlapping patches
    (U-map 0), larger context less and less so, without pushing every pixel to one class."""

    def __init__(self, context: float = 0.0):
        super().__init__()
        self.context = float(context)
        self.scale = nn.Parameter(torch.tensor(12.0), requires_grad=False)

    def forward(self, x):
        c0 = x.amax(dim=1, keepdim=True)
        patch_mean = c0.mean(dim=(2, 3), keepdim=True)
        myo = self.scale * (c0 - 0.5) + 3.0 * self.context * torch.sin(60.0 * patch_mean)
        zeros = torch.zeros_like(myo)
        return torch.cat([zeros, zeros - 2.0, myo, zeros - 2.0], dim=1)


def ring_image(size=128, channels=3, seed=0, noise=0.05):
    rng = np.random.default_rng(seed)
    yy, xx = np.indices((size, size))
    r = np.hypot(yy - size / 2 + 3.5, xx - size / 2 + 2.5) * (128 / size)
    ring = ((r > 14) & (r < 22)).astype(np.float32)
    img = np.stack([ring * 0.9 + 0.05 + noise * rng.standard_normal((size, size)) for _ in range(channels)])
    return img.astype(np.float32), ring.astype(bool)


# ---------------------------------------------------------------------------------------------------------------------
# patching
# ---------------------------------------------------------------------------------------------------------------------
def test_patch_counts_match_daugs():
    g16 = make_grid((128, 128), 64, 16)
    g2 = make_grid((128, 128), 64, 2)
    assert g16.n_patches == 25 and list(g16.offsets_y) == [0, 16, 32, 48, 64]
    assert g2.n_patches == 1089 and g2.offsets_y[-1] == 64 and len(g2.offsets_y) == 33
    assert g2.offsets.shape == (1089, 2)


def test_offsets_reach_the_far_border_for_any_size():
    assert list(patch_offsets(97, 64, 16)) == [0, 16, 32, 33]
    for size, stride in [(131, 16), (97, 2), (64, 5), (101, 7)]:
        offs = patch_offsets(size, 64, stride)
        assert offs[0] == 0 and offs[-1] == size - 64 and np.all(np.diff(offs) > 0) and np.all(np.diff(offs) <= stride)
        assert check_coverage(make_grid((size, size), 64, stride)) == 0
    with pytest.raises(InvalidParameterError):
        patch_offsets(50, 64, 2)
    with pytest.raises(InvalidParameterError):
        patch_offsets(128, 64, 0)


def test_phased_offsets_cycle_the_pooling_phase_and_stay_on_the_umap_grid():
    offs = phased_offsets((128, 128), 64, 8, 2)
    assert offs.shape == (81, 2)                                   # one window per stride-8 grid window
    fine = {tuple(o) for o in make_grid((128, 128), 64, 2).offsets.tolist()}
    assert {tuple(o) for o in offs.tolist()} <= fine               # windows of the stride-2 U-map grid
    phases = {(y % 8, x % 8) for y, x in offs.tolist()}
    assert len(phases) == 16                                       # every (row, column) phase in {0, 2, 4, 6}^2
    plain = {(y % 8, x % 8) for y, x in make_grid((128, 128), 64, 8).offsets.tolist()}
    assert plain == {(0, 0)}                                       # what the plain grid misses
    for size in (97, 131):                                         # odd sizes: the far border is an odd offset
        o = phased_offsets((size, size), 64, 8, 2)
        fine = {tuple(v) for v in make_grid((size, size), 64, 2).offsets.tolist()}
        assert {tuple(v) for v in o.tolist()} <= fine and o.min() >= 0 and o.max() <= size - 64
    # one phase only when the step is the stride: the plain grid
    same = phased_offsets((128, 128), 64, 8, 8)
    assert np.array_equal(same, make_grid((128, 128), 64, 8).offsets)
    with pytest.raises(InvalidParameterError):
        phased_offsets((128, 128), 64, 8, 0)


def test_extract_patches_equals_slicing_and_batches_cover_everything():
    rng = np.random.default_rng(1)
    img = rng.random((3, 21, 17), dtype=np.float32)
    grid = make_grid(img.shape, (8, 6), (3, 4))
    seen = 0
    for offs, patches in iter_patch_batches(img, grid, batch_size=7):
        assert patches.shape[1:] == (3, 8, 6)
        for (y, x), p in zip(offs, patches.numpy()):
            np.testing.assert_array_equal(p, img[:, y:y + 8, x:x + 6])
        seen += len(offs)
    assert seen == grid.n_patches
    with pytest.raises(InvalidParameterError):
        extract_patches(img, np.array([[20, 0]]), (8, 6))
    offs = grid.offsets[::5]
    cl = extract_patches(img, offs, (8, 6), channels_last=True)
    assert cl.is_contiguous(memory_format=torch.channels_last) and not cl.is_contiguous()
    assert torch.equal(cl, extract_patches(img, offs, (8, 6)))


def _naive_stats(values, offsets, shape, rects):
    """Per pixel: the list of contributing patch values -> mean, population std (plain Python loops)."""
    H, W = shape
    lists = [[[] for _ in range(W)] for _ in range(H)]
    for v, (oy, ox), (y0, y1, x0, x1) in zip(values, offsets, rects):
        for py in range(y0, y1):
            for px in range(x0, x1):
                lists[oy + py][ox + px].append(float(v[py, px]))
    mean = np.array([[np.mean(c) for c in row] for row in lists])
    std = np.array([[np.std(c) for c in row] for row in lists])
    count = np.array([[len(c) for c in row] for row in lists])
    return mean, std, count


@pytest.mark.parametrize("margin", [0, (1, 1), (2, 1)])
def test_accumulation_equals_naive_loop(margin):
    rng = np.random.default_rng(2)
    shape, patch = (13, 11), (6, 5)
    grid = make_grid(shape, patch, 2)
    vals = rng.random((grid.n_patches, *patch))
    acc = PatchAccumulator(shape, patch, n_maps=1, margin=margin)
    half = grid.n_patches // 2                 # in two batches, like the real loop
    acc.add(vals[None, :half], grid.offsets[:half])
    acc.add(vals[None, half:], grid.offsets[half:])
    rects = contribution_rects(grid.offsets, shape, patch, margin)
    mean, std, count = _naive_stats(vals, grid.offsets, shape, rects)
    np.testing.assert_array_equal(acc.counts(), count)
    np.testing.assert_allclose(acc.mean()[0], mean, atol=1e-6)
    np.testing.assert_allclose(acc.std()[0], std, atol=1e-6)
    mask = contribution_mask(grid.offsets, shape, patch, margin)
    assert mask.sum() == count.sum()


def test_border_rule_defines_every_pixel_where_the_public_rule_leaves_gaps():
    grid = make_grid((128, 128), 64, 2)
    assert check_coverage(grid, (5, 1)) == 0
    # the public release dropped the rim of every patch: rows 0..4 and row 127 had no value
    public = np.zeros((128, 128), int)
    for oy, ox in grid.offsets:
        public[oy + 5:oy + 63, ox + 5:ox + 63] += 1
    assert (public == 0).sum() > 0 and (public[:5] == 0).all() and (public[127] == 0).all()
    with pytest.raises(InvalidParameterError):
        contribution_rects(grid.offsets, (128, 128), (64, 64), (40, 30))


# ---------------------------------------------------------------------------------------------------------------------
# U-map and scores
# ---------------------------------------------------------------------------------------------------------------------
def test_umap_of_a_constant_model_is_zero_and_defined_everywhere():
    img, _ = ring_image(channels=2)
    ev = PoolEvaluator([("const", ConstantNet())], [img])
    ev.advance([0], 2)
    e = ev.evaluation(0, 0)
    assert e.umap.shape == (128, 128) and np.all(np.isfinite(e.umap))
    assert float(np.abs(e.umap).max()) < 1e-6
    assert (e.labels == 2).all()                      # mean myocardium probability e^3/(e^3+3) > 0.5 everywhere
    assert e.utot < 1e-8 and e.upp < 1e-12
    assert e.n_umap_patches == 1089 and e.umap_stride == 2


def test_umap_has_no_nan_and_stays_in_range_including_borders():
    img, _ = ring_image(channels=2, seed=3)
    ev = PoolEvaluator([("ctx", PixelNet(context=1.0))], [img])
    ev.advance([0], 2)
    e = ev.evaluation(0, 0)
    u = e.umap
    assert np.all(np.isfinite(u)) and u.min() >= 0.0 and u.max() <= 0.5
    assert u.max() > 0.01                            # context-dependent member: a real, non-zero U-map
    assert np.isfinite(u[:5]).all() and np.isfinite(u[-1]).all() and np.isfinite(u[:, :5]).all()
    assert u[0, 0] == 0.0                            # the corner is seen by one patch only
    assert math.isfinite(e.upp) and e.upp > 0


def test_scores_definitions():
    umap = np.zeros((6, 6), np.float32)
    umap[1, 1], umap[2, 3] = 0.3, 0.4
    labels = np.zeros((6, 6), np.uint8)
    labels[2:4, 2:4] = 2
    labels[0, 0] = 1
    s = uncertainty_scores(umap, labels)
    assert s.utot == pytest.approx(0.09 + 0.16)
    assert s.upp == pytest.approx((0.09 + 0.16) / 4) and s.n_myocardium == 4 and s.valid
    empty = uncertainty_scores(umap, np.zeros((6, 6), np.uint8))
    assert empty.upp == math.inf and "empty_myocardium" in empty.flags and not empty.valid
    with pytest.raises(InvalidParameterError):
        uncertainty_scores(umap * np.nan, labels)


def test_labels_from_probabilities_myocardium_threshold():
    p = np.zeros((4, 2, 3), np.float32)
    p[2] = [[0.5, 0.49, 0.1], [0.6, 0.2, 0.0]]
    p[1] = [[0.5, 0.51, 0.2], [0.4, 0.1, 0.3]]
    p[0] = 1 - p[1] - p[2]
    lab = labels_from_probabilities(p)
    assert lab.tolist() == [[2, 1, 0], [2, 0, 0]]


# ---------------------------------------------------------------------------------------------------------------------
# selection
# ---------------------------------------------------------------------------------------------------------------------
def _planted_pool():
    members = [("noisy_a", PixelNet(1.5)), ("noisy_b", PixelNet(0.6)), ("good", PixelNet(0.05)),
               ("noisy_c", PixelNet(3.0)), ("blank", ConstantNet((3.0, 0.0, 0.0, 0.0)))]
    return members


def test_selection_picks_the_planted_best_and_fast_equals_exhaustive():
    # half-size geometry (64 image, 32 patches: 289 windows at stride 2) keeps the exhaustive search quick
    img1, ring = ring_image(size=64, channels=2, seed=4)
    img2, _ = ring_image(size=64, channels=2, seed=5, noise=0.1)
    members = _planted_pool()
    exhaustive = select_members(members, [img1, img2], fast=False, established="noisy_b", patch=32)
    fast = select_members(members, [img1, img2], fast=True, established="noisy_b", patch=32)
    for ex, fa in zip(exhaustive, fast):
        assert ex.chosen == "good" and fa.chosen == "good"
        assert ex.established == "noisy_b"
        upp = ex.upp
        assert upp["good"] < 0.5 * min(upp["noisy_a"], upp["noisy_b"], upp["noisy_c"])
        assert upp["blank"] == math.inf and "empty_myocardium" in ex.evaluations["blank"].flags
        assert set(ex.upp_stride.values()) == {2}
        assert fa.upp_stride["good"] == 2 and fa.upp["good"] == pytest.approx(ex.upp["good"], rel=1e-6)
        assert fa.n_patch_forwards < ex.n_patch_forwards
    seg = exhaustive[0].chosen_evaluation.labels == 2
    dice = 2 * (seg & ring).sum() / (seg.sum() + ring.sum())
    assert dice > 0.9


def test_coarse_ranking_stage_segments_fully_only_candidates_chosen_and_established():
    img, ring = ring_image(size=64, channels=2, seed=4)
    members = _planted_pool()
    # half-size geometry: 32-pixel patches, segmentation stride 8, ranking stride 16 (9 windows)
    kw = dict(fast=True, seg_stride=8, established="noisy_a", patch=32, schedule=((8, 2, 1e9), (2, 1, 0.0)))
    coarse = select_members(members, [img], rank_stride=16, **kw)[0]
    full = select_members(members, [img], rank_stride=None, **kw)[0]
    ev = coarse.evaluations
    assert coarse.chosen == full.chosen == "good"
    assert ev["good"].seg_stride == 8 and ev["good"].umap_stride == 2
    assert ev["noisy_a"].seg_stride == 8                        # the established baseline: full segmentation
    only_ranked = [n for n, e in ev.items() if e.umap_stride == 16]
    assert only_ranked and all(ev[n].seg_stride == 16 and ev[n].n_umap_patches == 9 for n in only_ranked)
    assert all(e.seg_stride == 8 for e in full.evaluations.values())
    # a ranking stride whose windows leave gaps for the patch margin falls back to the segmentation stride
    gaps = select_members(members, [img], rank_stride=32, **kw)[0]
    assert all(e.seg_stride == 8 for e in gaps.evaluations.values()) and gaps.chosen == "good"
    # same windows for the chosen member either way: same segmentation and U-map
    assert np.array_equal(coarse.chosen_evaluation.labels, full.chosen_evaluation.labels)
    assert coarse.upp["good"] == pytest.approx(full.upp["good"], rel=1e-6)
    assert coarse.n_patch_forwards < full.n_patch_forwards


def test_a_phased_stage_keeps_the_final_umap_exact():
    img, _ = ring_image(size=64, channels=2, seed=4)
    members = _planted_pool()
    exhaustive = select_members(members, [img], fast=False, patch=32)[0]
    sched = ((16, 5, 10.0), (8, 3, 10.0, "phased"), (4, 2, 10.0), (2, 1, 0.0))
    fast = select_members(members, [img], fast=True, patch=32, schedule=sched)[0]
    assert fast.chosen == exhaustive.chosen == "good"
    assert fast.upp_stride["good"] == 2
    assert fast.upp["good"] == pytest.approx(exhaustive.upp["good"], rel=1e-9)
    # the same 289 windows (the phased ones are among them), summed in another order
    assert fast.chosen_evaluation.n_umap_patches == exhaustive.chosen_evaluation.n_umap_patches == 289
    assert np.allclose(fast.chosen_evaluation.umap, exhaustive.chosen_evaluation.umap, rtol=0, atol=1e-6)
    with pytest.raises(InvalidParameterError):
        select_members(members, [img], fast=True, patch=32, schedule=((8, 3, 1.0, "twisted"),))


def test_phase_rounds_partition_the_grid_into_image_wide_rounds():
    grid = {tuple(o) for o in make_grid((128, 128), 64, 2).offsets.tolist()}
    rounds = phase_rounds((128, 128), 64, 2)
    assert len(rounds) == 8                                         # 16 start phases, 2 a round
    seen = [tuple(o) for r in rounds for o in r.tolist()]
    assert len(seen) == len(set(seen)) == len(grid) == 1089 and set(seen) == grid
    for r in rounds:
        assert len({(y % 8, x % 8) for y, x in r.tolist()}) == 2    # two phases a round ...
        assert r[:, 0].min() <= 6 and r[:, 0].max() >= 58 and r[:, 1].min() <= 6 and r[:, 1].max() >= 58  # ... image-wide
    # on a 128-pixel image the first two rounds are the stride-4 grid
    assert {tuple(o) for o in np.concatenate(rounds[:2]).tolist()} == {tuple(o) for o in make_grid((128, 128), 64, 4).offsets.tolist()}
    odd = phase_rounds((97, 131), 64, 2)
    assert sum(len(r) for r in odd) == len(make_grid((97, 131), 64, 2).offsets)
    assert len(phase_rounds((64, 64), 64, 2)) == 1                # a single window: one round
    with pytest.raises(InvalidParameterError):
        phase_rounds((128, 128), 64, 2, per_round=0)


def test_a_racing_stage_drops_clear_losers_early_and_keeps_the_winner_exact():
    img, _ = ring_image(size=64, channels=2, seed=4)
    members = _planted_pool()
    exhaustive = select_members(members, [img], fast=False, patch=32)[0]
    sched = ((16, 5, 1e9), (2, 5, 1e9, "race"))          # every member with myocardium enters the race
    raced = select_members(members, [img], fast=True, patch=32, schedule=sched, race_margin=0.02)[0]
    # an infinite margin keeps every candidate to the end: each then has its exact stride-2 U_pp
    full = select_members(members, [img], fast=True, patch=32, schedule=sched, race_margin=math.inf)[0]
    assert raced.chosen == full.chosen == exhaustive.chosen == "good"
    assert raced.upp_stride["good"] == 2
    assert raced.upp["good"] == pytest.approx(exhaustive.upp["good"], rel=1e-9)
    assert raced.chosen_evaluation.n_umap_patches == 289
    for name, e in full.evaluations.items():
        if e.umap_stride == 2:
            assert e.upp == pytest.approx(exhaustive.upp[name], rel=1e-9)
    dropped = [n for n, e in raced.evaluations.items() if e.umap_stride != 2 and 25 < e.n_umap_patches < 289]
    assert dropped                                                  # the noisy members left the race part-way
    assert raced.n_patch_forwards < full.n_patch_forwards


def test_fast_path_never_goes_finer_than_the_umap_stride():
    img, _ = ring_image(size=64, channels=2, seed=7)
    res = select_members(_planted_pool(), [img], fast=True, umap_stride=8, patch=32)[0]
    assert min(res.upp_stride.values()) == 8 and res.upp_stride[res.chosen] == 8 and res.chosen == "good"
    assert res.chosen_evaluation.n_umap_patches == 25          # 5 x 5 windows at stride 8 on 64 with 32 patches


def test_bn_adapted_selection_adapts_each_member_to_each_image_alone():
    """adapt_bn: a member's statistics come from one image's segmentation windows, so an image's result does not
    depend on which other images share the batches; and adaptation does change what a BN network predicts."""
    from PerfusionSegLib.networks import build_network
    from PerfusionSegLib.networks.bn_adaptation import adapt_batchnorm

    torch.manual_seed(3)
    members = [(f"m{i}", build_network("unet2d", config="tiny", in_channels=3).eval()) for i in range(2)]
    rng = np.random.default_rng(0)
    bright = (2.0 + rng.random((3, 96, 96))).astype(np.float32)
    dim = (0.2 * rng.random((3, 96, 96))).astype(np.float32)
    together = select_members(members, [bright, dim], fast=False, umap_stride=16, adapt_bn=True)
    alone = select_members(members, [dim], fast=False, umap_stride=16, adapt_bn=True)[0]
    for name in ("m0", "m1"):
        assert np.allclose(together[1].evaluations[name].mean_probabilities,
                           alone.evaluations[name].mean_probabilities, atol=1e-5)
        assert together[1].upp[name] == pytest.approx(alone.upp[name], rel=1e-4, abs=1e-9)
    plain = select_members(members, [dim], fast=False, umap_stride=16)[0]
    assert not np.allclose(plain.evaluations["m0"].mean_probabilities, alone.evaluations["m0"].mean_probabilities,
                           atol=1e-3)
    # the evaluator's adapted member is the network adapted on that image's stride-16 windows
    ev = PoolEvaluator(members, [bright, dim], adapt_bn=True)
    grid = make_grid((96, 96), 64, 16)
    ref = adapt_batchnorm(members[0][1], extract_patches(torch.from_numpy(dim), grid.offsets, (64, 64)))
    probe = extract_patches(torch.from_numpy(dim), grid.offsets[:2], (64, 64))
    with torch.no_grad():
        expected = torch.softmax(ref(probe), 1)
    assert torch.allclose(ev.predictor(0, 1)(probe), expected, atol=1e-4)
    assert ev.predictor(0, 1) is ev.predictor(0, 1) and ev.predictor(0, 0) is not ev.predictor(0, 1)


class _UnknownLeaf(nn.Module):
    def forward(self, x):
        return x


class _AutocastOnly(nn.Module):
    """The same network behind a leaf that ``bf16_copy`` does not know: the selection then runs it under bf16
    autocast itself (the arithmetic its bf16 copy must reproduce)."""

    def __init__(self, net):
        super().__init__()
        self.net, self.tag = net, _UnknownLeaf()

    def forward(self, x):
        return self.tag(self.net(x))


def test_bf16_selection_computes_what_autocast_computes_bit_for_bit():
    """bf16 search: members run as bf16 copies on batches cast to bf16 once (not once per member); U-maps, U_pp and
    segmentations must equal, bit for bit, those of the same members run under bf16 autocast."""
    from PerfusionSegLib.networks import build_network

    nets = []
    for seed in range(3):
        torch.manual_seed(seed)
        net = build_network("unet2d", in_channels=3, features=(4, 8, 16), up_mode="transpose").eval()
        nets.append(net.to(memory_format=torch.channels_last))      # as the registry loads them
    copies = [(f"m{i}", n) for i, n in enumerate(nets)]
    wrapped = [(f"m{i}", _AutocastOnly(n)) for i, n in enumerate(nets)]
    assert all(p.bf16_input for p in PoolEvaluator(copies, [ring_image(96)[0]], bf16=True).predictors)
    assert not any(p.bf16_input for p in PoolEvaluator(wrapped, [ring_image(96)[0]], bf16=True).predictors)
    images = [ring_image(96, seed=1)[0], ring_image(96, seed=2, noise=0.1)[0]]
    for fast in (False, True):
        a = select_members(copies, images, fast=fast, bf16=True, umap_stride=4)
        b = select_members(wrapped, images, fast=fast, bf16=True, umap_stride=4)
        for ra, rb in zip(a, b):
            assert ra.chosen == rb.chosen and ra.n_patch_forwards == rb.n_patch_forwards
            for name in ra.evaluations:
                ea, eb = ra.evaluations[name], rb.evaluations[name]
                assert ea.upp == eb.upp or (math.isinf(ea.upp) and math.isinf(eb.upp))
                assert np.array_equal(ea.umap, eb.umap)
                assert np.array_equal(ea.mean_probabilities, eb.mean_probabilities)


def test_selection_rejects_bad_input():
    with pytest.raises(InvalidParameterError):
        select_members([], [ring_image()[0]])
    with pytest.raises(InvalidParameterError):
        select_members([("a", ConstantNet())], [np.zeros((2, 40, 40), np.float32)])
    with pytest.raises(InvalidParameterError):
        select_members([("a", ConstantNet())], [ring_image()[0]], established="nope")


# ---------------------------------------------------------------------------------------------------------------------
# pools (registry members)
# ---------------------------------------------------------------------------------------------------------------------
def _tiny_unet(seed):
    from PerfusionSegLib.networks import build_network

    torch.manual_seed(seed)
    return build_network("unet2d", config="tiny", in_channels=3)


def test_pool_round_trip_with_sha256_check(tmp_path):
    from PerfusionDAUGSLib.pool import INDEX_NAME, load_pool, save_pool
    from PerfusionSegLib.networks.registry import ModelIntegrityError

    members = [{"name": f"run{i}_ep{e:03d}", "network": _tiny_unet(10 * i + e), "run": f"run{i}", "epoch": e,
                "val_dice": d} for i, (e, d) in enumerate([(3, 0.88), (5, 0.91), (7, 0.89)])]
    folder = save_pool(members, tmp_path / "pool", name="test-pool", dice_threshold=0.87)
    pool = load_pool(folder, device="cpu")
    assert pool.names == [m["name"] for m in members] and pool.established == "run1_ep005"
    # a pool written again over an old one leaves none of the old members' files behind
    again = save_pool(members[:1], tmp_path / "pool2", name="p2")
    save_pool([dict(members[1], name="other")], again, name="p2")
    assert sorted(f.name for f in again.iterdir()) == ["other.json", "other.pt", "pool.json"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []      # no staging folder left
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("x")
    with pytest.raises(InvalidParameterError, match="not a pool folder"):
        save_pool(members, tmp_path / "notes")
    assert (tmp_path / "notes" / "mine.txt").read_text() == "x"
    # measured results go into the pool's card without touching its members; a second key keeps the first
    from PerfusionDAUGSLib.pool import record_evaluation
    record_evaluation(folder, "phantom_test", {"myo": 0.9})
    record_evaluation(folder, "real", {"myo": 0.7})
    index = json.loads((folder / INDEX_NAME).read_text())
    assert index["evaluation"] == {"phantom_test": {"myo": 0.9}, "real": {"myo": 0.7}}
    assert load_pool(folder, device="cpu").names == pool.names
    with pytest.raises(InvalidParameterError):
        record_evaluation(folder, "", {})
    assert pool.member("run2_ep007").epoch == 7 and pool.member("run0_ep003").val_dice == pytest.approx(0.88)
    x = torch.rand(2, 3, 64, 64)
    for m in members:
        with torch.no_grad():
            a = m["network"].eval()(x)
            b = pool.member(m["name"]).network(x)
        torch.testing.assert_close(a, b)
    # a member replaced afterwards (card rewritten to match the new weights) is refused by the pool index
    index = json.loads((folder / INDEX_NAME).read_text())
    card_path = folder / index["members"][0]["card"]
    card = json.loads(card_path.read_text())
    card["weights_sha256"] = "0" * 64
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelIntegrityError):
        load_pool(folder, device="cpu")
    # corrupt weights are refused by the registry's own check
    card["weights_sha256"] = index["members"][0]["weights_sha256"]
    card_path.write_text(json.dumps(card))
    weights = folder / card["weights"]
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ModelIntegrityError):
        load_pool(folder, device="cpu")


def test_build_pool_from_runs_applies_threshold_and_cap(tmp_path):
    from PerfusionDAUGSLib.pool import build_pool_from_runs, load_pool
    from PerfusionSegLib.networks.registry import save_model

    dices = {"runA": [0.80, 0.88, 0.90], "runB": [0.86, 0.93, 0.87]}
    for run, ds in dices.items():               # the trainer's layout: <run>/checkpoints/eNNN.json + .pt
        for ep, d in enumerate(ds, start=1):
            save_model(_tiny_unet(ep), {"metrics": {"val_dice": d}, "training": {"epoch": ep}},
                       tmp_path / run / "checkpoints", f"e{ep:03d}")
    runs = [tmp_path / "runA" / "checkpoints", tmp_path / "runB" / "checkpoints"]
    folder = build_pool_from_runs(runs, tmp_path / "pool", dice_threshold=0.87, min_epoch_gap=1)
    pool = load_pool(folder, device="cpu")
    assert sorted(pool.names) == ["runA_ep002", "runA_ep003", "runB_ep002", "runB_ep003"]
    assert pool.established == "runB_ep002"
    capped = load_pool(build_pool_from_runs(runs, tmp_path / "pool2", dice_threshold=0.87, max_members=2,
                                            min_epoch_gap=1), device="cpu")
    assert sorted(capped.names) == ["runA_ep003", "runB_ep002"]      # best of each run
    with pytest.raises(InvalidParameterError):
        build_pool_from_runs(runs[:1], tmp_path / "pool3", dice_threshold=0.95)


def test_spaced_by_epoch_applies_the_gap_within_each_run_best_dice_first():
    from PerfusionDAUGSLib.pool import spaced_by_epoch

    c = lambda run, ep, d: {"run": run, "epoch": ep, "val_dice": d}    # noqa: E731
    cands = [c("A", 10, 0.90), c("A", 11, 0.95), c("A", 12, 0.91), c("A", 14, 0.89),
             c("B", 11, 0.94), c("B", 12, 0.93), c("B", None, 0.80)]
    kept = spaced_by_epoch(cands, 2)
    # A: 11 first; 10 and 12 lie 1 epoch from it; 14 is 3 away. B: 11, then 12 is too close; no epoch: kept.
    assert [(k["run"], k["epoch"]) for k in kept] == [("A", 11), ("B", 11), ("A", 14), ("B", None)]
    assert len(spaced_by_epoch(cands, 1)) == len(cands)                  # gap 1: every candidate, best first
    assert [k["val_dice"] for k in spaced_by_epoch(cands, 1)] == sorted((x["val_dice"] for x in cands), reverse=True)
    assert [(k["run"], k["epoch"]) for k in spaced_by_epoch(cands, 4)] == [("A", 11), ("B", 11), ("B", None)]
    with pytest.raises(InvalidParameterError):
        spaced_by_epoch(cands, 0)


def test_build_pool_from_runs_spaces_members_of_a_run_by_epoch(tmp_path):
    from PerfusionDAUGSLib.pool import build_pool_from_runs, load_pool, read_index
    from PerfusionSegLib.networks.registry import save_model

    dices = [0.88, 0.95, 0.94, 0.93, 0.89, 0.90, 0.91]      # epochs 1..7; best is epoch 2
    for ep, d in enumerate(dices, start=1):
        save_model(_tiny_unet(ep), {"metrics": {"val_dice": d}, "training": {"epoch": ep}},
                   tmp_path / "runA" / "checkpoints", f"e{ep:03d}")
    runs = [tmp_path / "runA" / "checkpoints"]
    every = load_pool(build_pool_from_runs(runs, tmp_path / "all", dice_threshold=0.87, min_epoch_gap=1),
                      device="cpu")
    assert len(every.names) == 7
    default = read_index(build_pool_from_runs(runs, tmp_path / "default", dice_threshold=0.87))
    # the default gap, 2: greedy in Dice order 2, 3, 4, 7, 6, 5, 1 keeps 2, 4, 7 (5 and 6 lie next to 4 and 7)
    assert default["min_epoch_gap"] == 2 and [m["epoch"] for m in default["members"]] == [2, 4, 7]
    folder = build_pool_from_runs(runs, tmp_path / "spaced", dice_threshold=0.87, min_epoch_gap=3)
    spaced = load_pool(folder, device="cpu")
    # greedy in Dice order 2, 3, 4, 7, 6, 5, 1: keep 2; 3 and 4 are within 3 epochs of it; keep 7; 6 and 5 are
    # within 3 of 7; 1 of 2
    assert sorted(spaced.names) == ["runA_ep002", "runA_ep007"]
    assert spaced.established == "runA_ep002"
    assert read_index(folder)["min_epoch_gap"] == 3
    with pytest.raises(InvalidParameterError):
        build_pool_from_runs(runs, tmp_path / "bad", dice_threshold=0.87, min_epoch_gap=0)


# ---------------------------------------------------------------------------------------------------------------------
# end to end on a series: outputs on the input grid
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,spacing", [((101, 87), (1.7, 1.9)), ((96, 120), (2.3, 2.3))])
def test_run_daugs_outputs_are_on_the_input_grid(shape, spacing):
    pytest.importorskip("PerfusionSegLib.preprocess", reason="preprocess helper's prepare_for_network not landed")
    from PerfusionDAUGSLib.daugs import run_daugs
    from PerfusionSegLib.series import SliceSeries

    rng = np.random.default_rng(6)
    T = 40
    yy, xx = np.indices(shape)
    r = np.hypot((yy - shape[0] / 2) * spacing[0], (xx - shape[1] / 2) * spacing[1])
    ring = (r > 18) & (r < 28)
    curve = np.exp(-0.5 * ((np.arange(T) - 15) / 4.0) ** 2)
    data = (100 + 300 * curve[:, None, None] * ring[None] + 5 * rng.standard_normal((T, *shape))).astype(np.float32)
    series = SliceSeries(data=data, times=np.arange(T) * 0.8, spacing=spacing)
    members = [("good", PixelNet(0.05)), ("noisy", PixelNet(2.0))]
    res = run_daugs(series, members, keep_member_labels=True, device="cpu")
    assert res.labels.shape == shape and res.labels.dtype == np.uint8
    assert res.umap.shape == shape and res.umap.dtype == np.float32 and np.all(np.isfinite(res.umap))
    assert res.umap.min() >= 0 and res.umap.max() <= 0.5
    assert set(np.unique(res.labels)) <= {0, 1, 2, 3}
    assert res.chosen == "good" and res.member_labels["noisy"].shape == shape
    doc = json.loads(res.to_json())
    assert doc["chosen"] == "good" and set(doc["u_pp"]) == {"good", "noisy"}
    assert doc["u_pp_chosen"] == pytest.approx(res.upp["good"])
    # labels are cleaned on the series grid; the choice and the U-map are not affected
    from PerfusionSegLib.postprocess import clean_labels, count_components
    raw = run_daugs(series, members, keep_member_labels=True, device="cpu", postprocess=False)
    assert raw.chosen == res.chosen and np.array_equal(raw.umap, res.umap)
    for name, labels in raw.member_labels.items():
        np.testing.assert_array_equal(clean_labels(labels), res.member_labels[name])
    np.testing.assert_array_equal(clean_labels(raw.labels), res.labels)
    np.testing.assert_array_equal(res.raw_labels(), raw.labels)
    for name, labels in res.member_labels.items():
        assert count_components(labels == 2) <= count_components(raw.member_labels[name] == 2)
    # BatchNorm adaptation is recorded; members without BatchNorm predict exactly as without it
    adapted = run_daugs(series, members, device="cpu", adapt_bn=True)
    assert adapted.bn_adapted and json.loads(adapted.to_json())["bn_adapted"] is True and not doc["bn_adapted"]
    assert adapted.chosen == res.chosen and np.array_equal(adapted.labels, res.labels)


def test_run_daugs_end_to_end_with_a_saved_pool(tmp_path):
    pytest.importorskip("PerfusionSegLib.preprocess", reason="preprocess helper's prepare_for_network not landed")
    from PerfusionDAUGSLib.daugs import run_daugs
    from PerfusionDAUGSLib.pool import save_pool
    from PerfusionSegLib.networks import build_network
    from PerfusionSegLib.series import SliceSeries

    members = []
    for i, d in enumerate([0.90, 0.92]):
        torch.manual_seed(i)
        members.append({"name": f"m{i}", "network": build_network("unet2d", config="tiny"), "run": "r", "epoch": i,
                        "val_dice": d})
    folder = save_pool(members, tmp_path / "pool", card={"input": {"n_frames": 30, "size": 128, "scale": 2.0,
                                                                    "spacing_mm": None, "temporal": "pchip",
                                                                    "normalise": "robust_max", "patch": 64}})
    rng = np.random.default_rng(8)
    T, shape = 36, (70, 64)
    yy, xx = np.indices(shape)
    ring = (np.hypot(yy - 35, xx - 30) > 8) & (np.hypot(yy - 35, xx - 30) < 13)
    curve = np.exp(-0.5 * ((np.arange(T) - 14) / 4.0) ** 2)
    data = (50 + 200 * curve[:, None, None] * ring[None] + 4 * rng.standard_normal((T, *shape))).astype(np.float32)
    series = SliceSeries(data=data, times=np.arange(T) * 0.9, spacing=(1.8, 1.8), source="synthetic")
    res = run_daugs(series, str(folder), device="cpu")
    assert res.labels.shape == shape and res.umap.shape == shape and np.isfinite(res.umap).all()
    assert res.established == "m1" and res.established_labels.shape == shape
    # these untrained members segment no myocardium (U_pp infinite): the established member is the fallback, flagged
    assert not any(np.isfinite(v) for v in res.upp.values()), res.upp
    assert res.chosen == "m1" and "no_member_segments_myocardium" in res.flags
    assert res.pool_name == "pool" and set(res.upp) == {"m0", "m1"}
    # a series already interpolated 2x (the DAUGS authors' crops) is prepared without a second interpolation
    same = run_daugs(series, str(folder), device="cpu", input_overrides={"scale": 1.0})
    assert same.geometry.to_network_grid(np.ones(shape), order=0).sum() == np.prod(shape)
    assert res.geometry.to_network_grid(np.ones(shape), order=0).sum() > 3 * np.prod(shape)
    with pytest.raises(InvalidParameterError, match="unknown DAUGS input override"):
        run_daugs(series, str(folder), device="cpu", input_overrides={"zoom": 1.0})

    def no_constants(token):
        raise AssertionError(f"non-JSON constant {token} in S_daugs.json")

    doc = json.loads(res.to_json(), parse_constant=no_constants)
    assert doc["chosen"] == res.chosen and doc["established"] == "m1" and doc["umap_stride"] == 2
    assert set(doc["u_pp_stride"].values()) <= {16, 4, 2}


def test_uncertainty_threshold_is_calibrated_per_pool_and_used_by_default(tmp_path):
    from PerfusionDAUGSLib.daugs import run_daugs
    from PerfusionDAUGSLib.pool import load_pool, save_pool
    from PerfusionDAUGSLib.uncertainty_threshold import calibrate_threshold, pool_threshold, store_threshold
    from PerfusionSegLib.networks import build_network
    from PerfusionSegLib.series import SliceSeries

    rng = np.random.default_rng(0)
    good_u, poor_u = rng.uniform(0.01, 0.02, 100), rng.uniform(0.015, 0.05, 20)
    cal = calibrate_threshold(np.r_[good_u, poor_u, np.inf], np.r_[np.full(100, 0.9), np.full(20, 0.4), 0.9])
    assert cal["high_uncertainty_upp"] == pytest.approx(np.quantile(good_u, 0.95))
    assert cal["good_slices"] == 100 and cal["poor_slices"] == 20 and cal["good_flagged"] == 5   # 5 % false alarms
    assert cal["poor_flagged"] == int((poor_u > cal["high_uncertainty_upp"]).sum())
    with pytest.raises(InvalidParameterError, match="calibration slices"):
        calibrate_threshold([0.01] * 3, [0.9] * 3)

    torch.manual_seed(0)
    net = build_network("unet2d", config="tiny")
    with torch.no_grad():                        # some myocardium on noise, so that U_pp is finite and positive
        [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][-1].bias[2] += 2.0
    folder = save_pool([{"name": "m0", "network": net, "val_dice": 0.9}],
                       tmp_path / "pool", card={"input": {"n_frames": 30, "size": 128, "scale": 2.0}})
    assert pool_threshold(load_pool(folder, device="cpu")) is None              # not calibrated: no flag
    series = SliceSeries(data=rng.random((30, 64, 64)).astype(np.float32), times=np.arange(30.0), spacing=(1.8, 1.8))
    assert "high_uncertainty" not in run_daugs(series, str(folder), device="cpu", umap_stride=16).flags
    store_threshold(folder, dict(cal, high_uncertainty_upp=1e-9))               # a threshold every slice exceeds
    pool = load_pool(folder, device="cpu")
    assert pool_threshold(pool) == 1e-9
    res = run_daugs(series, pool, device="cpu", umap_stride=16)
    assert np.isfinite(res.upp_chosen) and "high_uncertainty" in res.flags
    assert "high_uncertainty" not in run_daugs(series, pool, device="cpu", umap_stride=16,
                                               uncertainty_threshold=None).flags
    with pytest.raises(InvalidParameterError):
        store_threshold(folder, {"high_uncertainty_upp": -1})


# ---------------------------------------------------------------------------------------------------------------------
# labels from an ensemble of the best-ranked members (an option, not in the paper)
# ---------------------------------------------------------------------------------------------------------------------
def _planted_evaluation(name, upp, umap_stride, seg_stride, probabilities):
    from PerfusionDAUGSLib.umap import MemberEvaluation, UncertaintyScores

    labels = labels_from_probabilities(probabilities)
    return MemberEvaluation(member=name, mean_probabilities=probabilities, labels=labels,
                            umap=np.zeros(probabilities.shape[1:], np.float32),
                            scores=UncertaintyScores(upp, upp * 10, int((labels == 2).sum())), umap_stride=umap_stride,
                            seg_stride=seg_stride, n_umap_patches=1)


def test_ensemble_ranks_refined_members_first_and_averages_their_probabilities():
    from PerfusionDAUGSLib.selection import SelectionResult

    rng = np.random.default_rng(3)

    def probs():
        p = rng.random((4, 6, 6)).astype(np.float32)
        return p / p.sum(axis=0, keepdims=True)

    planted = {          # name: (U_pp, U-map stride reached, segmentation stride)
        "a": (0.010, 2, 16), "b": (0.008, 4, 16), "c": (0.012, 2, 16), "d": (0.005, 32, 32),
        "e": (math.inf, 16, 16), "f": (0.009, 4, 16), "g": (0.020, 16, 16)}
    evals = {n: _planted_evaluation(n, u, us, ss, probs()) for n, (u, us, ss) in planted.items()}
    sel = SelectionResult(evaluations=evals, chosen="a", established="g", mode="fast", n_patch_forwards=0,
                          seconds=0.0)
    # the chosen member, then stride 2, then stride 4 by U_pp, ...; no myocardium last
    assert sel.ranking() == ["a", "c", "b", "f", "g", "d", "e"]
    names, labels = sel.ensemble(1)
    assert names == ["a"] and labels is evals["a"].labels
    names, labels = sel.ensemble(3)
    assert names == ["a", "c", "b"]
    mean = np.mean([evals[n].mean_probabilities for n in names], axis=0)
    np.testing.assert_array_equal(labels, labels_from_probabilities(mean))
    # members segmented at another stride ("d", from the ranking stage only) or without myocardium ("e") never join
    names, _ = sel.ensemble(50)
    assert names == ["a", "c", "b", "f", "g"]
    with pytest.raises(InvalidParameterError, match="at least 1"):
        sel.ensemble(0)


class BiasedNet(nn.Module):
    """A network with a fixed offset on its myocardium logit: a thicker (> 0) or thinner (< 0) myocardium."""

    def __init__(self, net, bias):
        super().__init__()
        self.net, self.bias = net, float(bias)

    def forward(self, x):
        out = self.net(x)
        return out + torch.tensor([0.0, 0.0, self.bias, 0.0])[None, :, None, None]


def test_run_daugs_ensemble_changes_only_the_labels():
    from PerfusionDAUGSLib.daugs import prepare_daugs_input, run_daugs
    from PerfusionSegLib.series import SliceSeries

    rng = np.random.default_rng(6)
    T, shape = 40, (96, 96)
    yy, xx = np.indices(shape)
    ring = (np.hypot(yy - 48, xx - 48) * 1.8 > 18) & (np.hypot(yy - 48, xx - 48) * 1.8 < 28)
    curve = np.exp(-0.5 * ((np.arange(T) - 15) / 4.0) ** 2)
    data = (100 + 300 * curve[:, None, None] * ring[None] + 5 * rng.standard_normal((T, *shape))).astype(np.float32)
    series = SliceSeries(data=data, times=np.arange(T) * 0.8, spacing=(1.8, 1.8))
    members = [(f"m{k}", BiasedNet(PixelNet(c), b)) for k, (c, b) in
               enumerate(((0.05, 0.0), (0.1, 4.0), (0.1, -4.0), (1.0, 0.0), (2.0, 0.0)))]
    single = run_daugs(series, members, device="cpu", fast=False, umap_stride=8)
    two = run_daugs(series, members, device="cpu", fast=False, umap_stride=8, ensemble=2)
    assert two.chosen == single.chosen and two.upp == single.upp and np.array_equal(two.umap, single.umap)
    assert single.ensemble == [single.chosen] and json.loads(single.to_json())["labels_from"] == [single.chosen]
    ranked = sorted(single.upp, key=single.upp.get)
    assert two.ensemble == ranked[:2] and json.loads(two.to_json())["labels_from"] == ranked[:2]
    # the labels are the selection's ensemble labels, mapped back and cleaned like the chosen member's
    image, _ = prepare_daugs_input(series)
    sel = select_members(members, [image], fast=False, umap_stride=8)[0]
    names, labels = sel.ensemble(2)
    assert names == two.ensemble and np.array_equal(two.network_labels, labels)
    assert np.array_equal(single.network_labels, sel.chosen_evaluation.labels)
    assert not np.array_equal(labels, sel.chosen_evaluation.labels)      # the second-ranked member is thicker
    with pytest.raises(InvalidParameterError, match="ensemble"):
        run_daugs(series, members, device="cpu", ensemble=0)
    with pytest.raises(InvalidParameterError, match="ensemble"):
        run_daugs(series, members, device="cpu", ensemble=2.5)
