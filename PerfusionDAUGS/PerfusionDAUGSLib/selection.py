"""Evaluate every pool member on a series (segmentation, U-map, U_pp, U_tot) and choose one: DAUGS and established.

DAUGS chooses, per series, the member with the lowest U_pp at U-map stride 2; the "established" baseline is the member
with the best validation Dice, whatever the series.

Exhaustive search runs every member on all 1089 stride-2 patches (the 25 stride-16 patches of the segmentation are
among them, so they are not run twice). On 2 CPU cores that is minutes per study for a 50-member pool, so the fast path
ranks in stages, adding patches to running per-member sums (every stage's windows are windows of the stride-2 grid, so
a later stage only runs the patches it adds and the last stage is exact):

1. every member at the ranking stride (``rank_stride``, 32: 9 windows per slice, whose mean is also its coarse
   segmentation) -> coarse U_pp;
2. ``schedule`` stages ``(stride, max_members, tolerance[, "phased"])``, default
   ``((16, 16, 2.5), (8, 6, 1.0, "phased"), (4, 3, 0.1), (2, 2, 0.05))``: the best ``max_members`` members whose U_pp
   at the previous stage is within ``(1 + tolerance)`` of the best go on to the next stage (at least one always
   does); from stride 16 on a member also has its full segmentation. A "phased" stage runs the stride's grid with
   its windows shifted through every start phase modulo 8 (``patching.phased_offsets``): the networks pool by 2
   three times, so a plain stride-8 grid (all windows at phase 0) misses part of the disagreement the stride-2 U-map
   measures, and ranks the members worse (docs/daugs.md: over 26 series the exhaustive winner ranked up to 10th on
   the plain grid, at most 4th on the phase-cycled one);
3. the chosen member is the lowest U_pp at the last stride (2), among the members evaluated there; the established
   member's segmentation is completed at the segmentation stride.

A stage may instead be a race, ``(stride, max_members, tolerance, "race")``: its candidates see the stride's windows
in rounds of start phases (``patching.phase_rounds``; on a 128-pixel image the first two rounds are the stride-4 grid)
and a member drops out as soon as its U_pp on the windows seen so far is more than ``race_margin * sqrt((N - n) / n)``
above the best (n of the grid's N windows seen); the survivors finish the grid, so the choice stays exact among them.
In place of the last two default stages, a race of the best 3 within +10 % chose as the default did on 46 phantom
series of the shipped pool, with 1-5 % fewer patch forwards, but in smaller batches: a timed 3-slice study took as
long (ratio 1.01; docs/daugs.md, ninth session). The default's misses are winners lost before its last stages, which
no last stage recovers, so the default schedule is unchanged.

Members whose U_pp were only measured at a coarse stride keep that value, labelled with its stride (and their
segmentation with the stride it rests on).
Patches are extracted once per batch and fed to each member in turn: on CPU this is faster than stacking members with
``torch.func.stack_module_state`` + ``vmap`` (grouped convolutions; measured 3-6x slower here). bf16 autocast is
optional (``bf16=True``); see docs/daugs.md for its measured effect on speed and on the choice.
The ``Exhaustive`` cost, for scale: 50 members x 3 slices x 1089 = 163,350 patch forwards per study.
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from PerfusionSegLib.errors import InvalidParameterError
from PerfusionSegLib.networks.inference_copy import cached_copy, uses_channels_last

from .patching import PatchAccumulator, _margins, extract_patches, make_grid, phase_rounds, phased_offsets
from .umap import (MYOCARDIUM_LABEL, PATCH_SIZE, SEG_STRIDE, UMAP_MARGIN, UMAP_STRIDE, MemberEvaluation,
                   labels_from_probabilities, uncertainty_scores)

# every member first at stride 32 (9 windows per slice, no full segmentation), then the best <= 16 within +250 % at
# stride 16 (with their segmentation), <= 6 within +100 % on the phase-cycled stride-8 windows, <= 3 within +10 % at 4
# (the plain stride-4 grid added to those) and <= 2 within +5 % at 2. Replayed on 40 phantom series of the shipped
# pool (docs/daugs.md, sixth session): same member as the exhaustive search in 19/20 and 14/20, with 2,671 and 2,859
# patch forwards per series; the previous default ((16, 12, 1.5), (8, 6, 1.0), (4, 4, 0.25), (2, 2, 0.1)) agreed in
# 15/20 and 13/20 with 2,998 and 3,130. Its misses on 40-59 are winners cut before the phased stage; >= 95 % costs
# about 4,200 (docs/daugs.md).
DEFAULT_SCHEDULE = ((16, 16, 2.5), (8, 6, 1.0, "phased"), (4, 3, 0.1), (2, 2, 0.05))
RANK_STRIDE = 32
# racing stages: with a margin of 0.04, a race of the best 3 within +10 % after the phased stage chose as the default
# schedule did on 46 phantom series of the shipped pool (docs/daugs.md, ninth session)
RACE_MARGIN = 0.04


# --------------------------------------------------------------------------------------------------------------------
# members: anything with a network (LoadedModel from the registry, a PoolMember, or a bare nn.Module)
# --------------------------------------------------------------------------------------------------------------------
def _network_of(member):
    if isinstance(member, torch.nn.Module):
        return member
    if getattr(member, "model", None) is not None:           # PoolMember -> registry LoadedModel
        return _network_of(member.model)
    if isinstance(getattr(member, "network", None), torch.nn.Module):   # registry LoadedModel
        return member.network
    raise InvalidParameterError(f"pool member {member!r} holds no network")


def _device_of(network) -> torch.device:
    for p in network.parameters():
        return p.device
    return torch.device("cpu")


def members_of(pool_or_members) -> Tuple[List[str], list, Optional[str]]:
    """(names, members, established name) from a ModelPool, a dict name -> member, or a list of (name, member)."""
    if hasattr(pool_or_members, "members") and hasattr(pool_or_members, "established"):
        names = [m.name for m in pool_or_members.members]
        return names, list(pool_or_members.members), pool_or_members.established
    if isinstance(pool_or_members, dict):
        return list(pool_or_members), list(pool_or_members.values()), None
    items = list(pool_or_members)
    if items and isinstance(items[0], tuple):
        return [str(n) for n, _ in items], [m for _, m in items], None
    return [f"member{i:02d}" for i in range(len(items))], items, None


class _Predictor:
    """Softmax probabilities of one network for a batch of patches, on the network's device, optional bf16.

    fp32 runs an inference copy of the member with BatchNorm folded into the convolutions (exact up to rounding,
    12-14 % less time per patch); the member's own network is not modified. bf16 computes what bf16 autocast
    computes with the unfolded member: folded weights rounded to bf16 moved near-tied U_pp rankings (on 3 phantom
    series of the agreement benchmark the fast bf16 search then chose members 5.2 / 20.6 / 0.5 % worse in stride-2
    U_pp than the exhaustive choice; unfolded bf16 chose as fp32 did, 4.0 / 0 / 0 %; docs/daugs.md). It runs a copy
    with bf16 convolution weights (``bf16_copy``: the same numbers, bit for bit, without casting the weights on every
    call) where the member's layers allow it, else autocast itself. Both copies are made once per member and reused
    by later studies (``cached_copy``)."""

    def __init__(self, member, bf16: bool = False):
        original = _network_of(member)
        self.device = _device_of(original)
        self.bf16 = bool(bf16)
        # conv nets run faster channels-last on CPU (oneDNN; the registry loads them so); keep what the net uses
        self.channels_last = uses_channels_last(original)
        copy16 = cached_copy(original, "bf16") if self.bf16 else None
        self.bf16_input = copy16 is not None
        self.network = copy16 if self.bf16_input else original.eval() if self.bf16 else cached_copy(original, "fp32")

    def __call__(self, patches: torch.Tensor) -> torch.Tensor:
        x = patches.to(self.device, non_blocking=True)
        if self.bf16_input:
            x = x.to(torch.bfloat16)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = self.bf16 and not self.bf16_input
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = self.network(x)
        # the cast to fp32 inside the softmax: the same numbers as .float().softmax(), one pass fewer over the output
        return torch.softmax(logits, dim=1, dtype=torch.float32).cpu()


# --------------------------------------------------------------------------------------------------------------------
# running per-member, per-image sums
# --------------------------------------------------------------------------------------------------------------------
class _MemberState:
    """Accumulators of one member on one image: segmentation (all classes, whole patches) and U-map (myocardium)."""

    def __init__(self, image_shape, n_classes: int, patch: int, margin, seg_offsets: np.ndarray):
        self.seg = PatchAccumulator(image_shape, (patch, patch), n_maps=n_classes, margin=0, with_squares=False)
        self.umap = PatchAccumulator(image_shape, (patch, patch), n_maps=1, margin=margin)
        self.seg_needed = {tuple(o) for o in seg_offsets.tolist()}
        self.umap_done: set = set()
        self.stride_reached: Optional[int] = None


@dataclass
class SelectionResult:
    """The outcome on one series (image): per-member evaluations (at the finest stride each reached) and the choice."""

    evaluations: Dict[str, MemberEvaluation]
    chosen: str
    established: Optional[str]
    mode: str                               # "exhaustive" | "fast"
    n_patch_forwards: int
    seconds: float
    flags: tuple = ()
    myocardium_channel: int = MYOCARDIUM_LABEL

    def ranking(self) -> List[str]:
        """Every evaluated member in the order the search ranked them: the chosen member, then the others refined
        furthest (finest U-map stride) first and by U_pp, U_tot and pool order within a stride; members that
        segment no myocardium last."""
        ev, order = self.evaluations, {n: i for i, n in enumerate(self.evaluations)}
        ranked = sorted(ev, key=lambda n: (not math.isfinite(ev[n].upp), ev[n].umap_stride, ev[n].upp, ev[n].utot,
                                           order[n]))
        return [self.chosen] + [n for n in ranked if n != self.chosen]

    def ensemble(self, k: int, threshold: float = 0.5) -> Tuple[List[str], np.ndarray]:
        """(members, labels): labels from the mean class probabilities of the ``k`` best-ranked members (``ranking``)
        that segment myocardium and were segmented at the chosen member's segmentation stride; fewer when fewer
        qualify. ``k = 1`` gives the chosen member's own labels."""
        if int(k) < 1:
            raise InvalidParameterError(f"an ensemble needs at least 1 member, got {k}")
        ev, chosen = self.evaluations, self.evaluations[self.chosen]
        names = [self.chosen] + [n for n in self.ranking()[1:] if math.isfinite(ev[n].upp)
                                 and ev[n].seg_stride == chosen.seg_stride][:int(k) - 1]
        if len(names) == 1:
            return names, chosen.labels
        mean = np.mean([ev[n].mean_probabilities for n in names], axis=0)
        return names, labels_from_probabilities(mean, self.myocardium_channel, threshold)

    @property
    def upp(self) -> Dict[str, float]:
        return {k: v.upp for k, v in self.evaluations.items()}

    @property
    def utot(self) -> Dict[str, float]:
        return {k: v.utot for k, v in self.evaluations.items()}

    @property
    def upp_stride(self) -> Dict[str, int]:
        return {k: v.umap_stride for k, v in self.evaluations.items()}

    @property
    def chosen_evaluation(self) -> MemberEvaluation:
        return self.evaluations[self.chosen]


class PoolEvaluator:
    """Runs pool members on a set of images (frames as channels), adding patches stage by stage.

    ``batch_size`` 64: on 2 CPU cores a 64-patch batch cost 0.90 ms per patch, a 128-patch one 0.97-1.00 (UNet2D
    "default", bf16 inference copy; the larger batch falls out of cache)."""

    def __init__(self, pool_or_members, images: Sequence[np.ndarray], *, seg_stride: int = SEG_STRIDE,
                 patch: int = PATCH_SIZE, margin=UMAP_MARGIN, batch_size: int = 64, bf16: bool = False,
                 myocardium_channel: int = MYOCARDIUM_LABEL, adapt_bn: bool = False):
        self.names, members, self.established = members_of(pool_or_members)
        if not self.names:
            raise InvalidParameterError("the model pool is empty")
        if len(set(self.names)) != len(self.names):
            raise InvalidParameterError("pool member names must be unique")
        self.predictors = [_Predictor(m, bf16=bf16) for m in members]
        self.images = [self._as_image(im) for im in images]
        if not self.images:
            raise InvalidParameterError("no images to evaluate")
        self.patch = int(patch)
        self.margin = margin
        self.seg_stride = int(seg_stride)
        # adapt_bn: each member runs on each image with its BatchNorm statistics re-estimated from that image's
        # segmentation windows (networks.bn_adaptation); made on first use, one predictor per (member, image)
        self.adapt_bn = bool(adapt_bn)
        self._members, self._bf16 = members, bool(bf16)
        self._adapted: Dict[Tuple[int, int], _Predictor] = {}
        self.batch_size = max(1, int(batch_size))
        self.myo = int(myocardium_channel)
        self.n_forwards = 0
        self.n_classes = self._probe_classes()
        self.states = [[_MemberState(im.shape[1:], self.n_classes, self.patch, self.margin,
                                     make_grid(im.shape[1:], self.patch, self.seg_stride).offsets)
                        for im in self.images] for _ in self.names]

    @staticmethod
    def _as_image(image) -> torch.Tensor:
        a = np.asarray(image, dtype=np.float32)
        if a.ndim != 3 or not np.all(np.isfinite(a)):
            raise InvalidParameterError(f"a DAUGS input must be a finite (frames, H, W) array, got shape {a.shape}")
        return torch.from_numpy(np.ascontiguousarray(a))

    def _probe_classes(self) -> int:
        im = self.images[0]
        if min(im.shape[1:]) < self.patch:
            raise InvalidParameterError(f"image {tuple(im.shape[1:])} is smaller than the {self.patch}-pixel patch")
        probe = extract_patches(im, np.zeros((1, 2), np.int64), (self.patch, self.patch))
        k = int(self.predictors[0](probe).shape[1])
        if not 0 <= self.myo < k:
            raise InvalidParameterError(f"the networks give {k} classes; no myocardium channel {self.myo}")
        return k

    def predictor(self, m: int, i: int) -> "_Predictor":
        """The predictor of member ``m`` on image ``i`` (its BatchNorm adapted to the image when ``adapt_bn``)."""
        if not self.adapt_bn:
            return self.predictors[m]
        key = (int(m), int(i))
        if key not in self._adapted:
            from PerfusionSegLib.networks.bn_adaptation import adapt_batchnorm

            network = _network_of(self._members[m])
            offsets = make_grid(self.images[i].shape[1:], self.patch, self.seg_stride).offsets
            windows = extract_patches(self.images[i], offsets, (self.patch, self.patch),
                                      channels_last=self.predictors[m].channels_last)
            self._adapted[key] = _Predictor(adapt_batchnorm(network, windows), bf16=self._bf16)
        return self._adapted[key]

    def _probabilities(self, m: int, patches: torch.Tensor, images_of_rows: Sequence[int]) -> torch.Tensor:
        """Member ``m``'s softmax for a batch whose rows come from ``images_of_rows`` (image-major runs)."""
        if not self.adapt_bn:
            return self.predictors[m](patches)
        out, start = [], 0
        for i, run in itertools.groupby(images_of_rows):
            n = len(list(run))
            out.append(self.predictor(m, i)(patches[start:start + n]))
            start += n
        return torch.cat(out) if len(out) > 1 else out[0]

    def advance(self, member_indices: Sequence[int], stride: int,
                image_indices: Optional[Sequence[int]] = None, segmentation: bool = True) -> None:
        """Run members on every window of stride ``stride`` (U-map) they have not seen yet, plus any segmentation
        window (stride ``seg_stride``) still missing, on the given images (default all).
        ``segmentation=False``: only the stride's own windows (a coarse ranking stage); the segmentation then rests
        on those of them that are segmentation windows, and :meth:`evaluation` reports that coarser stride."""
        images = list(range(len(self.images))) if image_indices is None else list(image_indices)
        self.advance_pairs({int(m): images for m in member_indices}, stride, segmentation=segmentation)

    def advance_pairs(self, pairs: Dict[int, Sequence[int]], stride: int, segmentation: bool = True,
                      phase_step: Optional[int] = None, offsets: Optional[Dict[int, np.ndarray]] = None,
                      unfinished: Sequence[int] = ()) -> None:
        """:meth:`advance` for member -> images pairs. Windows of all images share batches; each batch of patches
        is extracted once and fed to every member that needs it. ``phase_step``: the stride's windows are the
        phase-cycled grid of :func:`patching.phased_offsets` (on the U-map grid of that step) instead of the plain
        grid. ``offsets``: image -> the windows to add instead of a grid (a racing round: part of the stride's
        grid); ``unfinished``: images whose grid of ``stride`` the members have not seen whole yet, where the stride
        they are reported at stays the previous one."""
        member_indices = [m for m in pairs if len(pairs[m])]
        image_indices = sorted({i for m in member_indices for i in pairs[m]})

        def windows(i):
            if offsets is not None:
                return np.asarray(offsets[i], np.int64).reshape(-1, 2)
            if phase_step:
                return phased_offsets(self.images[i].shape[1:], self.patch, stride, phase_step)
            return make_grid(self.images[i].shape[1:], self.patch, stride).offsets
        grids = {i: {tuple(o) for o in windows(i).tolist()} for i in image_indices}
        todo = {}
        for m in member_indices:
            todo[m] = set()
            for i in pairs[m]:
                st = self.states[m][i]
                wanted = (grids[i] - st.umap_done) | (st.seg_needed if segmentation else set())
                todo[m].update((i,) + o for o in wanted)
        union = sorted(set().union(*todo.values()))              # image-major: one extraction per image and batch
        # extracted in the layout the networks run on, once per batch (each member's own conversion is then a no-op;
        # row subsets of a channels-last batch stay channels-last)
        cl = any(self.predictors[m].channels_last for m in member_indices)
        bf16_batch = bool(member_indices) and not self.adapt_bn and all(
            self.predictors[m].bf16_input and self.predictors[m].device.type == "cpu" for m in member_indices)
        for start in range(0, len(union), self.batch_size):
            chunk = union[start:start + self.batch_size]
            parts = []
            for i in sorted({it[0] for it in chunk}):
                offs = np.asarray([it[1:] for it in chunk if it[0] == i], np.int64)
                parts.append(extract_patches(self.images[i], offs, (self.patch, self.patch), channels_last=cl))
            patches = torch.cat(parts) if len(parts) > 1 else parts[0]
            if cl:
                patches = patches.contiguous(memory_format=torch.channels_last)
            if bf16_batch:      # cast once per batch, not once per member (each member's own cast is then a no-op)
                patches = patches.to(torch.bfloat16)
            for m in member_indices:
                rows = [j for j, it in enumerate(chunk) if it in todo[m]]
                if not rows:
                    continue
                probs = self._probabilities(m, patches if len(rows) == len(chunk) else patches[rows],
                                            [chunk[j][0] for j in rows])
                self.n_forwards += len(rows)
                items = [chunk[j] for j in rows]
                for i in sorted({it[0] for it in items}):
                    st = self.states[m][i]
                    u_rows = [r for r, it in enumerate(items) if it[0] == i and it[1:] in grids[i]
                              and it[1:] not in st.umap_done]
                    if u_rows:
                        st.umap.add(probs[u_rows][None, :, self.myo], np.asarray([items[r][1:] for r in u_rows]))
                        st.umap_done.update(items[r][1:] for r in u_rows)
                    s_rows = [r for r, it in enumerate(items) if it[0] == i and it[1:] in st.seg_needed]
                    if s_rows:
                        st.seg.add(probs[s_rows].permute(1, 0, 2, 3), np.asarray([items[r][1:] for r in s_rows]))
                        st.seg_needed.difference_update(items[r][1:] for r in s_rows)
        for m in member_indices:
            for i in pairs[m]:
                if i in unfinished:
                    continue
                st = self.states[m][i]
                st.stride_reached = int(stride) if st.stride_reached is None else min(st.stride_reached, int(stride))

    def evaluation(self, m: int, i_img: int, threshold: float = 0.5) -> MemberEvaluation:
        state = self.states[m][i_img]
        if state.stride_reached is None:
            raise InvalidParameterError(f"member {self.names[m]} has not been run on image {i_img}")
        mean = state.seg.mean()
        labels = labels_from_probabilities(mean, self.myo, threshold)
        umap = state.umap.std()[0]
        scores = uncertainty_scores(umap, labels == MYOCARDIUM_LABEL)
        # a member seen only in a coarse ranking stage has a segmentation from that stage's windows
        seg_stride = self.seg_stride if not state.seg_needed else max(self.seg_stride, state.stride_reached)
        return MemberEvaluation(member=self.names[m], mean_probabilities=mean, labels=labels, umap=umap,
                                scores=scores, umap_stride=state.stride_reached, seg_stride=seg_stride,
                                n_umap_patches=len(state.umap_done), flags=scores.flags)


def _rank(evals: Dict[str, MemberEvaluation], names: Sequence[str]) -> List[str]:
    """Names by ascending U_pp (inf last), ties by U_tot then pool order."""
    order = {n: i for i, n in enumerate(names)}
    return sorted(names, key=lambda n: (evals[n].upp, evals[n].utot, order[n]))


def select_members(pool_or_members, images: Sequence[np.ndarray], *, umap_stride: int = UMAP_STRIDE,
                   seg_stride: int = SEG_STRIDE, fast: bool = True, schedule=DEFAULT_SCHEDULE,
                   rank_stride: Optional[int] = RANK_STRIDE, race_margin: float = RACE_MARGIN,
                   patch: int = PATCH_SIZE, margin=UMAP_MARGIN, batch_size: int = 64, bf16: bool = False,
                   established: Optional[str] = None, myocardium_channel: int = MYOCARDIUM_LABEL,
                   adapt_bn: bool = False) -> List[SelectionResult]:
    """Choose a member per image (DAUGS: lowest U_pp at ``umap_stride``) and report the established one.

    ``fast=False``: exhaustive (every member at ``umap_stride``). ``fast=True``: staged search (module docstring):
    every member first at ``rank_stride`` (coarser than ``seg_stride``: only that stride's windows, segmentation
    included; ``None`` or ``seg_stride``: every member at the segmentation stride), then the stages of
    ``schedule``; stages finer than ``umap_stride`` are dropped, and when none is at ``umap_stride`` a last stage
    there keeps the best member. The chosen and the established member always get the full segmentation
    (``seg_stride``). ``adapt_bn``: every member's BatchNorm statistics are re-estimated on each image before it
    segments it (:class:`PoolEvaluator`). Returns one :class:`SelectionResult` per image.
    """
    t0 = time.perf_counter()
    ev = PoolEvaluator(pool_or_members, images, seg_stride=seg_stride, patch=patch, margin=margin,
                       batch_size=batch_size, bf16=bf16, myocardium_channel=myocardium_channel, adapt_bn=adapt_bn)
    est = established or (ev.established if ev.established in ev.names else None)   # a partly loaded pool
    if est is not None and est not in ev.names:
        raise InvalidParameterError(f"established member {est!r} is not in the pool")
    n_members = len(ev.names)
    all_idx = list(range(n_members))
    results: List[SelectionResult] = []
    if not fast:
        ev.advance(all_idx, umap_stride)
        for i_img in range(len(ev.images)):
            evals = {ev.names[m]: ev.evaluation(m, i_img) for m in all_idx}
            results.append(_result(evals, ev.names, est, "exhaustive", ev))
    else:
        # never finer than the U-map stride asked for; the last stage is always at that stride
        stages = [_stage(st) for st in schedule if int(st[0]) >= int(umap_stride)]
        if not stages or stages[-1][0] != int(umap_stride):
            stages.append((int(umap_stride), 1, 0.0, None))
        # stage 1: every member on every image at the ranking stride, all in shared batches
        first = int(seg_stride) if rank_stride is None else max(int(rank_stride), int(seg_stride))
        lead, trail = _margins(margin, (patch, patch))
        if first > patch - lead - trail:    # a U-map at this stride would leave pixels no patch interior covers
            first = int(seg_stride)
        ev.advance(all_idx, first, segmentation=first == int(seg_stride))
        n_img = len(ev.images)
        evals = [{ev.names[m]: ev.evaluation(m, i) for m in all_idx} for i in range(n_img)]
        candidates = [list(ev.names) for _ in range(n_img)]
        for stride, max_members, tol, kind in stages:
            pairs: Dict[int, List[int]] = {}
            for i in range(n_img):
                ranked = _rank(evals[i], candidates[i])
                best = evals[i][ranked[0]].upp
                candidates[i] = [n for n in ranked[:max(1, max_members)]
                                 if n == ranked[0] or (math.isfinite(best) and evals[i][n].upp <= best * (1.0 + tol))]
                for n in candidates[i]:
                    pairs.setdefault(ev.names.index(n), []).append(i)
            if kind == "race":
                _race(ev, evals, candidates, stride, race_margin)
                continue
            ev.advance_pairs(pairs, stride,
                             phase_step=int(umap_stride) if kind == "phased" and stride > umap_stride else None)
            _refresh(ev, evals, pairs)
        for i in range(n_img):
            res = _result(evals[i], ev.names, est, "fast", ev, final=candidates[i])
            if res.evaluations[res.chosen].umap_stride != int(umap_stride):   # fallback member: give it its U-map
                m = ev.names.index(res.chosen)
                ev.advance([m], umap_stride, [i])
                res.evaluations[res.chosen] = ev.evaluation(m, i)
            if est is not None and res.evaluations[est].seg_stride != int(seg_stride):
                m = ev.names.index(est)                # the baseline's segmentation at the published stride
                ev.advance([m], seg_stride, [i])
                res.evaluations[est] = ev.evaluation(m, i)
            results.append(res)
    seconds = time.perf_counter() - t0
    for r in results:
        r.seconds = seconds / len(results)
        r.n_patch_forwards = ev.n_forwards // len(results)
    return results


def _stage(stage) -> tuple:
    """(stride, max_members, tolerance[, "phased" | "race"]) -> (stride, max_members, tolerance, kind or None)."""
    if len(stage) not in (3, 4) or (len(stage) == 4 and stage[3] not in ("phased", "race", True, False, None)):
        raise InvalidParameterError("a schedule stage is (stride, max_members, tolerance[, 'phased' | 'race']), "
                                    f"got {stage!r}")
    kind = stage[3] if len(stage) == 4 else None
    kind = "phased" if kind is True else (None if kind is False else kind)
    return int(stage[0]), int(stage[1]), float(stage[2]), kind


def _refresh(ev: PoolEvaluator, evals: List[Dict[str, MemberEvaluation]], pairs: Dict[int, List[int]]) -> None:
    """Re-read the evaluation of every member -> images pair that was just advanced."""
    for m, imgs in pairs.items():
        for i in imgs:
            evals[i][ev.names[m]] = ev.evaluation(m, i)


def _race(ev: PoolEvaluator, evals: List[Dict[str, MemberEvaluation]], candidates: List[List[str]], stride: int,
          margin: float) -> None:
    """A racing stage: the candidates of each image see the windows of the stride's grid in rounds of start phases
    (``patching.phase_rounds``); after each round, a member whose U_pp on the windows seen so far exceeds the best
    one's by more than ``margin * sqrt((N - n) / n)`` (n of the N grid windows seen) drops out. The last round
    completes the grid, so the survivors' U_pp are exact, and a clear loser costs a round or two instead of the
    whole grid. Updates ``evals`` and ``candidates`` (the survivors) in place."""
    names = ev.names
    rounds = {i: phase_rounds(ev.images[i].shape[1:], ev.patch, stride) for i in range(len(ev.images))}
    grid = {i: {tuple(o) for r in rounds[i] for o in r.tolist()} for i in rounds}
    alive = {i: [names.index(n) for n in candidates[i]] for i in rounds}
    for r in range(max(len(v) for v in rounds.values())):
        group = [i for i in rounds if r < len(rounds[i])]
        racing = [i for i in group if r < len(rounds[i]) - 1]       # not this image's last round
        pairs: Dict[int, List[int]] = {}
        for i in group:
            for m in alive[i]:
                pairs.setdefault(m, []).append(i)
        ev.advance_pairs(pairs, stride, offsets={i: rounds[i][r] for i in group}, unfinished=racing)
        _refresh(ev, evals, pairs)
        for i in racing:
            ups = [evals[i][names[m]].upp for m in alive[i]]
            best = min(ups)
            n = len(ev.states[alive[i][0]][i].umap_done & grid[i])     # the grid's windows seen so far
            if math.isfinite(best) and n:
                tol = float(margin) * math.sqrt(max(len(grid[i]) - n, 0) / n)
                alive[i] = [m for m, u in zip(alive[i], ups) if u <= best * (1.0 + tol)]
    for i in rounds:
        candidates[i] = [names[m] for m in alive[i]]


def _result(evals: Dict[str, MemberEvaluation], names: Sequence[str], established: Optional[str], mode: str,
            ev: PoolEvaluator, final: Optional[Sequence[str]] = None) -> SelectionResult:
    pool = list(final) if final is not None else list(names)
    ranked = _rank(evals, pool)
    chosen = ranked[0]
    flags = []
    if not math.isfinite(evals[chosen].upp):
        flags.append("no_member_segments_myocardium")
        if established is not None:       # nothing to choose between: fall back on the established member
            chosen = established
    return SelectionResult(evaluations=evals, chosen=chosen, established=established, mode=mode,
                           n_patch_forwards=0, seconds=0.0, flags=tuple(flags), myocardium_channel=ev.myo)
