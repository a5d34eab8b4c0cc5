"""Sliding-window patches over a 2D multi-channel image, and the accumulation of patch outputs back onto the image.

DAUGS runs a patch network (64x64, the frames as channels) over a 128x128 image at a fixed stride: stride 16 gives
offsets 0, 16, ..., 64 per axis (5 x 5 = 25 patches), stride 2 gives 0, 2, ..., 64 (33 x 33 = 1089 patches).
Offsets always start at 0 and end at ``size - patch``: when the stride does not divide ``size - patch`` the last
offset is added, so the patches tile the whole image and every pixel is covered by at least one patch.

Extraction never copies the whole set of overlapping patches (1089 x 30 x 64 x 64 floats would be 535 MB): it takes a
strided view of all window positions (``Tensor.unfold``, no copy) and gathers one batch at a time.
Accumulation adds the contributing rectangle of each patch (the whole patch, or the patch less an edge margin, see
:func:`contribution_rects`) into per-pixel sums, sums of squares and counts, for many maps (pool members) at once,
in float64 so that the variance ``E[x^2] - E[x]^2`` does not lose small standard deviations to cancellation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from PerfusionSegLib.errors import InvalidParameterError

ArrayLike = Union[np.ndarray, torch.Tensor]


def _pair(value, name: str) -> Tuple[int, int]:
    vals = tuple(int(v) for v in np.broadcast_to(np.asarray(value).reshape(-1), (2,)))
    if any(v <= 0 for v in vals):
        raise InvalidParameterError(f"{name} must be positive, got {value}")
    return vals


def patch_offsets(size: int, patch: int, stride: int) -> np.ndarray:
    """Start offsets of the windows along one axis: 0, stride, ..., and ``size - patch`` (always included)."""
    size, patch, stride = int(size), int(patch), int(stride)
    if patch > size:
        raise InvalidParameterError(f"patch size {patch} is larger than the image ({size} pixels)")
    if stride <= 0:
        raise InvalidParameterError(f"stride must be positive, got {stride}")
    offs = np.arange(0, size - patch + 1, stride, dtype=np.int64)
    if offs[-1] != size - patch:
        offs = np.append(offs, size - patch)  # tile up to the far border
    return offs


@dataclass(frozen=True)
class PatchGrid:
    """The windows of one sliding-window pass: image (H, W), patch (ph, pw), stride (sy, sx).

    ``offsets`` is (N, 2) int64 of (y, x) window starts in row-major order (y outer, x inner).
    """

    image_shape: Tuple[int, int]
    patch_shape: Tuple[int, int]
    stride: Tuple[int, int]

    @property
    def offsets_y(self) -> np.ndarray:
        return patch_offsets(self.image_shape[0], self.patch_shape[0], self.stride[0])

    @property
    def offsets_x(self) -> np.ndarray:
        return patch_offsets(self.image_shape[1], self.patch_shape[1], self.stride[1])

    @property
    def offsets(self) -> np.ndarray:
        oy, ox = np.meshgrid(self.offsets_y, self.offsets_x, indexing="ij")
        return np.stack([oy.reshape(-1), ox.reshape(-1)], axis=1)

    @property
    def n_patches(self) -> int:
        return int(self.offsets_y.size * self.offsets_x.size)


def make_grid(image_shape: Sequence[int], patch: Union[int, Sequence[int]] = 64,
              stride: Union[int, Sequence[int]] = 16) -> PatchGrid:
    """A :class:`PatchGrid` for an image of ``image_shape`` (H, W) (trailing two entries are used)."""
    hw = tuple(int(v) for v in tuple(image_shape)[-2:])
    grid = PatchGrid(hw, _pair(patch, "patch size"), _pair(stride, "stride"))
    grid.offsets_y, grid.offsets_x  # validate now (patch larger than image, bad stride)
    return grid


def phased_offsets(image_shape: Sequence[int], patch: Union[int, Sequence[int]], stride: int, step: int) -> np.ndarray:
    """(N, 2) window starts of a stride-``stride`` grid whose windows are shifted by different phases.

    Why: the networks pool by 2 three times, so their output depends on where a window starts modulo 8. The windows
    of a plain grid of stride 8 (or 16, 32) all start at the same phase and never show that part of the
    disagreement the U-map measures at stride 2. Here window (i, j) of the grid is moved by
    (``step`` * ((i + 2j) mod n), ``step`` * ((j + 2i) mod n)), n = stride // step (backwards at the far border), so
    the grid cycles through every phase, and each start is snapped to the stride-``step`` grid: the windows are all
    windows of the finer U-map grid, so a search that adds them there stays exact. ``step``: the U-map stride.
    """
    hw = tuple(int(v) for v in tuple(image_shape)[-2:])
    ph, pw = _pair(patch, "patch size")
    step = int(step)
    if step <= 0 or int(stride) <= 0:
        raise InvalidParameterError(f"stride and step must be positive, got {stride}, {step}")
    n = max(1, int(stride) // step)
    coarse = [patch_offsets(hw[0], ph, stride), patch_offsets(hw[1], pw, stride)]
    fine = [patch_offsets(hw[0], ph, step), patch_offsets(hw[1], pw, step)]
    out = set()
    for i, y in enumerate(coarse[0]):
        for j, x in enumerate(coarse[1]):
            shifted = []
            for axis, (start, phase) in enumerate(((y, step * ((i + 2 * j) % n)), (x, step * ((j + 2 * i) % n)))):
                last = fine[axis][-1]
                v = start + phase if start + phase <= last else start - phase
                shifted.append(int(fine[axis][np.argmin(np.abs(fine[axis] - v))]))     # onto the U-map grid
            out.add(tuple(shifted))
    return np.array(sorted(out), dtype=np.int64).reshape(-1, 2)


# the 16 start phases (modulo 4 steps, i.e. modulo 8 pixels at step 2) in the order racing rounds add them: the phases
# of the stride-4 grid first, then pairs that differ in both axes, so every round spreads over the image and phases
PHASE_ORDER = ((0, 0), (2, 2), (0, 2), (2, 0), (1, 1), (3, 3), (1, 3), (3, 1),
               (0, 1), (2, 3), (1, 2), (3, 0), (0, 3), (2, 1), (3, 2), (1, 0))


def phase_rounds(image_shape: Sequence[int], patch: Union[int, Sequence[int]], step: int,
                 per_round: int = 2) -> list:
    """The windows of the stride-``step`` grid split into rounds of ``per_round`` start phases each (phase = window
    index modulo 4 per axis; ``PHASE_ORDER``). Every round's windows are spread over the whole image and the rounds
    together are the grid, so U_pp on the windows of the first k rounds estimates the full-grid U_pp with an error that
    shrinks as rounds are added and vanishes at the last. Returns a list of (N_k, 2) offset arrays."""
    hw = tuple(int(v) for v in tuple(image_shape)[-2:])
    ph, pw = _pair(patch, "patch size")
    if int(step) <= 0 or not 1 <= int(per_round) <= 16:
        raise InvalidParameterError(f"step must be positive and per_round in 1..16, got {step}, {per_round}")
    ys, xs = patch_offsets(hw[0], ph, int(step)), patch_offsets(hw[1], pw, int(step))
    by_phase = {p: [] for p in PHASE_ORDER}
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            by_phase[(i % 4, j % 4)].append((int(y), int(x)))
    rounds = []
    for k in range(0, len(PHASE_ORDER), int(per_round)):
        offs = [o for p in PHASE_ORDER[k:k + int(per_round)] for o in by_phase[p]]
        if offs:
            rounds.append(np.array(sorted(offs), dtype=np.int64).reshape(-1, 2))
    return rounds


def _as_tensor(image: ArrayLike) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(image)) if isinstance(image, np.ndarray) else image
    if t.ndim != 3:
        raise InvalidParameterError(f"expected an image (C, H, W) or (T, Y, X), got shape {tuple(t.shape)}")
    return t


def extract_patches(image: ArrayLike, offsets: ArrayLike, patch_shape: Sequence[int],
                    channels_last: bool = False) -> torch.Tensor:
    """Patches (B, C, ph, pw) of ``image`` (C, H, W) at ``offsets`` (B, 2) (y, x starts); one gather, one copy.
    ``channels_last``: laid out channels-last in memory (what the networks run fastest on, without a second copy)."""
    img = _as_tensor(image)
    ph, pw = _pair(patch_shape, "patch size")
    # (H-ph+1, W-pw+1, C, ph, pw) view; indexing its first two axes gathers (B, C, ph, pw) contiguously
    windows = img.permute(1, 2, 0).unfold(0, ph, 1).unfold(1, pw, 1)
    off = torch.as_tensor(np.asarray(offsets), dtype=torch.long).reshape(-1, 2)
    if off.numel() and (off.min() < 0 or off[:, 0].max() >= windows.shape[0] or off[:, 1].max() >= windows.shape[1]):
        raise InvalidParameterError("patch offsets fall outside the image")
    if channels_last:
        # from an (H, W, C) copy of the image, the gather of (B, ph, pw, C) reads and writes C innermost; its
        # (B, C, ph, pw) view is channels-last (gathering from the (C, H, W) image and reordering costs a transpose)
        hwc = img.permute(1, 2, 0).contiguous().unfold(0, ph, 1).unfold(1, pw, 1)
        return hwc.permute(0, 1, 3, 4, 2)[off[:, 0], off[:, 1]].contiguous().permute(0, 3, 1, 2)
    return windows[off[:, 0], off[:, 1]].contiguous()


def iter_patch_batches(image: ArrayLike, grid: PatchGrid, batch_size: int = 256
                       ) -> Iterator[Tuple[np.ndarray, torch.Tensor]]:
    """Yield (offsets (B, 2), patches (B, C, ph, pw)) over every window of ``grid``, ``batch_size`` at a time."""
    offs = grid.offsets
    for start in range(0, offs.shape[0], max(1, int(batch_size))):
        chunk = offs[start:start + batch_size]
        yield chunk, extract_patches(image, chunk, grid.patch_shape)


def _margins(margin: Union[int, Sequence[int]], patch_shape: Sequence[int]) -> Tuple[int, int]:
    lead, trail = (int(v) for v in np.broadcast_to(np.asarray(margin).reshape(-1), (2,)))
    if lead < 0 or trail < 0 or lead + trail >= min(patch_shape):
        raise InvalidParameterError(f"patch margin {margin} must be >= 0 and leave part of a "
                                    f"{patch_shape[0]}x{patch_shape[1]} patch")
    return lead, trail


def contribution_rects(offsets: ArrayLike, image_shape: Sequence[int], patch_shape: Sequence[int],
                       margin: Union[int, Sequence[int]] = 0) -> np.ndarray:
    """The part of each patch that contributes to the accumulated maps: (B, 4) rows (y0, y1, x0, x1) in patch pixels.

    ``margin`` = m or (lead, trail): a patch's outer ``lead`` rows/columns on its top/left side and ``trail`` on its
    bottom/right side are dropped (predictions near a patch edge see zero padding, not anatomy), EXCEPT on sides where
    the patch edge lies on the image border: there no other patch sees those pixels any better, so the rim is kept.
    With offsets that include 0 and ``size - patch`` and ``stride <= patch - lead - trail`` this covers every pixel at
    least once. (The public DAUGS release dropped 5 leading and 1 trailing rows/columns of every patch, so the image's
    outer rows had no value: NaN standard deviations and NaN U_pp for every model.)
    """
    ph, pw = _pair(patch_shape, "patch size")
    H, W = (int(v) for v in tuple(image_shape)[-2:])
    lead, trail = _margins(margin, (ph, pw))
    off = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    y0 = np.where(off[:, 0] == 0, 0, lead)
    y1 = np.where(off[:, 0] + ph == H, ph, ph - trail)
    x0 = np.where(off[:, 1] == 0, 0, lead)
    x1 = np.where(off[:, 1] + pw == W, pw, pw - trail)
    return np.stack([y0, y1, x0, x1], axis=1)


def contribution_mask(offsets: ArrayLike, image_shape: Sequence[int], patch_shape: Sequence[int],
                      margin: Union[int, Sequence[int]] = 0) -> np.ndarray:
    """:func:`contribution_rects` as a (B, ph, pw) boolean mask."""
    ph, pw = _pair(patch_shape, "patch size")
    r = contribution_rects(offsets, image_shape, patch_shape, margin)
    iy, ix = np.arange(ph), np.arange(pw)
    my = (iy[None] >= r[:, :1]) & (iy[None] < r[:, 1:2])
    mx = (ix[None] >= r[:, 2:3]) & (ix[None] < r[:, 3:4])
    return my[:, :, None] & mx[:, None, :]


class PatchAccumulator:
    """Per-pixel sum, sum of squares and count of patch values, for several maps at once.

    Values added are (M, B, ph, pw): M maps (pool members, or classes) x B patches. Only the contributing rectangle
    of each patch (see :func:`contribution_rects`) is added. Buffers are float64 so that ``E[x^2] - E[x]^2`` keeps
    small standard deviations. ``with_squares=False`` skips the squares when only the mean is wanted (segmentation).
    The loop runs over patches (at most ~1000) and adds whole (M, h, w) blocks: faster on CPU than ``F.fold`` or a
    flat ``index_add_`` of every pixel (measured: 1089 patches of 64x64 in ~50 ms against 160-240 ms).
    """

    def __init__(self, image_shape: Sequence[int], patch_shape: Sequence[int], n_maps: int = 1,
                 margin: Union[int, Sequence[int]] = 0, with_squares: bool = True) -> None:
        self.image_shape = tuple(int(v) for v in tuple(image_shape)[-2:])
        self.patch_shape = _pair(patch_shape, "patch size")
        _margins(margin, self.patch_shape)
        self.margin = margin
        self.n_maps = int(n_maps)
        H, W = self.image_shape
        self.sum = np.zeros((self.n_maps, H, W), dtype=np.float64)
        self.sumsq = np.zeros((self.n_maps, H, W), dtype=np.float64) if with_squares else None
        self.count = np.zeros((H, W), dtype=np.float64)

    def add(self, values: ArrayLike, offsets: ArrayLike) -> None:
        """Accumulate ``values`` (M, B, ph, pw) (or (B, ph, pw) when M == 1) of patches at ``offsets`` (B, 2)."""
        v = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
        if v.ndim == 3:
            v = v[None]
        off = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
        M, B = v.shape[:2]
        if M != self.n_maps or B != off.shape[0] or tuple(v.shape[2:]) != self.patch_shape:
            raise InvalidParameterError(f"patch values of shape {tuple(v.shape)} do not fit {self.n_maps} maps, "
                                        f"{off.shape[0]} offsets and patch {self.patch_shape}")
        H, W = self.image_shape
        ph, pw = self.patch_shape
        if off.size and (off.min() < 0 or off[:, 0].max() > H - ph or off[:, 1].max() > W - pw):
            raise InvalidParameterError("patch offsets fall outside the image")
        v = v.astype(np.float64)
        sq = v * v if self.sumsq is not None else None
        rects = contribution_rects(off, self.image_shape, self.patch_shape, self.margin)
        for b in range(B):
            oy, ox = int(off[b, 0]), int(off[b, 1])
            y0, y1, x0, x1 = (int(r) for r in rects[b])
            dst = (slice(None), slice(oy + y0, oy + y1), slice(ox + x0, ox + x1))
            self.sum[dst] += v[:, b, y0:y1, x0:x1]
            if sq is not None:
                self.sumsq[dst] += sq[:, b, y0:y1, x0:x1]
            self.count[oy + y0:oy + y1, ox + x0:ox + x1] += 1.0

    def counts(self) -> np.ndarray:
        return self.count.copy()

    def mean(self) -> np.ndarray:
        """(M, H, W) float32 mean over the contributing patches; every pixel must be covered."""
        self._check_covered()
        return (self.sum / self.count[None]).astype(np.float32)

    def std(self, ddof: int = 0) -> np.ndarray:
        """(M, H, W) float32 standard deviation over contributing patches (population, ddof=0, by default).

        A pixel with ``count <= ddof`` gets 0, never NaN (with ddof=0 a pixel seen by one patch has std 0).
        """
        if self.sumsq is None:
            raise InvalidParameterError("this accumulator was built without sums of squares")
        self._check_covered()
        n = self.count[None]
        mean = self.sum / n
        var = np.maximum(self.sumsq / n - mean * mean, 0.0)
        if ddof:
            var = np.where(n > ddof, var * n / np.maximum(n - ddof, 1.0), 0.0)
        return np.sqrt(var).astype(np.float32)

    def _check_covered(self) -> None:
        if bool((self.count <= 0).any()):
            n = int((self.count <= 0).sum())
            raise InvalidParameterError(f"{n} pixels are covered by no patch: the stride leaves gaps for this margin")


def accumulate(values: ArrayLike, offsets: ArrayLike, image_shape: Sequence[int],
               margin: Union[int, Sequence[int]] = 0) -> PatchAccumulator:
    """One-shot accumulation of all patch values (M, N, ph, pw) or (N, ph, pw) at ``offsets`` (N, 2)."""
    v = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    acc = PatchAccumulator(image_shape, v.shape[-2:], n_maps=1 if v.ndim == 3 else v.shape[0], margin=margin)
    acc.add(v, offsets)
    return acc


def check_coverage(grid: PatchGrid, margin: Union[int, Sequence[int]] = 0) -> Optional[int]:
    """Number of pixels not covered by any contributing patch region (0 means the rule defines every pixel)."""
    acc = PatchAccumulator(grid.image_shape, grid.patch_shape, margin=margin, with_squares=False)
    offs = grid.offsets
    acc.add(np.zeros((1, offs.shape[0], *grid.patch_shape), dtype=np.float32), offs)
    return int((acc.count <= 0).sum())
