"""A second opinion on where the LV is: one pool member run over the whole field of view.

Why: the timing rule of ``localise.locate_lv`` (the RV lights up first, the LV beside it later) fails on some series
whose contrast or timing is unusual, and then the slices of one study disagree. A pool member has learnt what an LV
blood pool with its myocardial ring looks like, wherever it sits in a patch, so it can say which of the disagreeing
answers is right. ``localise.locate_lv_study(..., detector=PoolLVDetector(pool))`` asks it only in that case.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
from scipy import ndimage

from .daugs import prepare_daugs_input
from .patching import PatchAccumulator, extract_patches, make_grid

LV, MYOCARDIUM = 1, 2
MIN_AREA_PX = 20          # network pixels: smaller blood-pool blobs are noise
RING_PX = 6               # network pixels (about 3 input pixels) of the ring searched for myocardium
MAX_FIELD = 1024          # prepare_for_network's largest field


class PoolLVDetector:
    """``detector(series) -> ((y, x) input pixels, score) or None``. ``pool``: a loaded pool (its members are
    used as they are), or a pool folder or name (only the member needed is loaded, on ``device``).

    The member (by default the pool's established one) segments the whole field of view, prepared as for DAUGS
    (the field widened to hold the whole image), with windows at ``stride``. The answer is the blood-pool blob
    (label 1) with the highest mean blood-pool probability times the mean myocardium probability in the ring
    around it; the point returned is the blob's deepest interior point. ``score`` is that product (0..1).
    """

    def __init__(self, pool=None, member: Optional[str] = None, *, stride: int = 32, bf16: bool = False,
                 batch_size: int = 64, device: str = "auto"):
        from .daugs import _input_overrides
        from .pool import load_pool
        from .selection import _Predictor, members_of

        if pool is None or isinstance(pool, (str, bytes)) or hasattr(pool, "__fspath__"):
            where = pool or "daugs_pool"          # load only the one member needed (the index names the established)
            pool_obj = load_pool(where, device=device, members=[member] if member else [])
            if not member:
                pool_obj = load_pool(where, device=device, members=[pool_obj.established])
        else:
            pool_obj = pool
        names, members, established = members_of(pool_obj)
        if not names:
            raise ValueError("the pool has no member to detect the LV with")
        name = member or (established if established in names else names[0])
        if name not in names:
            raise KeyError(f"no member {name!r} in the pool")
        self.member = name
        self._predict = _Predictor(members[names.index(name)], bf16=bf16)
        self._overrides = _input_overrides(pool_obj)
        self.patch = int(self._overrides.pop("patch", 64))
        self.stride = int(stride)
        self.batch_size = int(batch_size)

    def probabilities(self, series) -> Tuple[np.ndarray, object]:
        """(class probabilities (4, S, S) on the widened network grid, its NetworkGeometry)."""
        ny, nx = series.shape[-2:]
        scale = float(self._overrides.get("scale") or 2.0)
        size = int(np.ceil(scale * max(ny, nx) / self.patch) * self.patch)
        size = min(max(size, self.patch), MAX_FIELD)
        x, geometry = prepare_daugs_input(series, center_yx=((ny - 1) / 2.0, (nx - 1) / 2.0),
                                          **{**self._overrides, "size": size})
        image = torch.from_numpy(np.ascontiguousarray(x))
        offsets = make_grid((size, size), self.patch, self.stride).offsets
        acc = PatchAccumulator((size, size), self.patch, n_maps=4, with_squares=False)
        for b in range(0, len(offsets), self.batch_size):
            batch = offsets[b:b + self.batch_size]
            patches = extract_patches(image, batch, (self.patch, self.patch), channels_last=True)
            probs = self._predict(patches.contiguous(memory_format=torch.channels_last))
            acc.add(probs[:, :4].transpose(0, 1), batch)
        return acc.mean(), geometry

    def __call__(self, series) -> Optional[Tuple[Tuple[float, float], float]]:
        probs, geometry = self.probabilities(series)
        blobs, n = ndimage.label(probs.argmax(axis=0) == LV)
        best, best_score = None, -1.0
        for k in range(1, n + 1):
            blob = blobs == k
            if blob.sum() < MIN_AREA_PX:
                continue
            ring = ndimage.binary_dilation(blob, iterations=RING_PX) & ~blob
            score = float(probs[LV][blob].mean() * probs[MYOCARDIUM][ring].mean())
            if score > best_score:
                best, best_score = blob, score
        if best is None:
            return None
        depth = ndimage.distance_transform_edt(best)
        i, j = np.unravel_index(int(np.argmax(depth)), depth.shape)
        y, x = geometry.network_to_input_yx((float(i), float(j)))
        return (float(y), float(x)), best_score
