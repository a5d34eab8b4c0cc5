"""A rough myocardial ring without a segmentation, for checks on [Gd] data that come without labels (QPerf examples).

Not a segmentation method: it finds the LV blood pool by enhancement and timing and takes an annulus around it.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..errors import InvalidSeriesError
from ..series import AIF, SliceSeries


def _largest(mask: np.ndarray) -> np.ndarray:
    lbl, n = ndimage.label(mask)
    if n == 0:
        return mask
    return lbl == (int(np.argmax(ndimage.sum(mask, lbl, range(1, n + 1)))) + 1)


def ring_from_gd(series: SliceSeries, aif: AIF, width_px: int = 7, inner_gap_px: int = 2) -> np.ndarray:
    """(Y, X) bool ring. LV blood pool: the largest component of pixels peaking above half the AIF peak no earlier
    than one frame before the AIF peak (earlier = RV), holes filled. Ring: pixels ``inner_gap_px``..``width_px``
    from it (the rim touching the blood is left out: partial volume) whose peak is 0.05-0.4 of the AIF peak."""
    data = series.data
    peak = data.max(axis=0)
    ttp = data.argmax(axis=0)
    if aif.curve.size != series.n_frames:
        a = np.interp(series.times, aif.times, aif.curve)
    else:
        a = aif.curve
    a_peak, a_ttp = float(np.max(a)), int(np.argmax(a))
    blood = (peak > 0.5 * a_peak) & (ttp >= a_ttp - 1)
    if not blood.any():
        raise InvalidSeriesError("no LV blood pool found (no pixel reaches half the AIF peak)")
    bp = ndimage.binary_fill_holes(_largest(blood))
    dist = ndimage.distance_transform_edt(~bp)
    return (dist >= inner_gap_px) & (dist <= width_px) & (peak > 0.05 * a_peak) & (peak < 0.4 * a_peak)


def ring_from_reference_map(reference: np.ndarray, width_px: int = 7, saturated: float = 5.9,
                            floor: float = 0.05) -> np.ndarray:
    """Ring from a reference flow map whose blood pool is saturated (Gadgetron rendering: >= 5.9 ml/min/g): the
    largest saturated component (holes filled) is the blood pool; the ring is the pixels within ``width_px`` of it
    whose reference value lies in (floor, saturated)."""
    ref = np.asarray(reference, dtype=np.float64)
    bp = ndimage.binary_fill_holes(_largest(ref >= saturated))
    dist = ndimage.distance_transform_edt(~bp)
    return (dist >= 1) & (dist <= width_px) & (ref > floor) & (ref < saturated)
