"""Partial training labels from coarse ones: what a rough LV outline says for certain, and nothing more.

Some real data sets come with approximate labels only (ml_perfusion_subset: near-circular blood pool and myocardium
drawn around peak enhancement). Trained on as they are, such labels teach their circles. Their cores are right,
though, and so is "this is not the LV" well outside them. ``weak_labels_from_coarse`` keeps exactly that:
- the blood pool and the myocardium eroded by ``erode_px`` (their uncertain borders dropped);
- ``NOT_LV`` (background or RV: where coarse labels draw no RV, the two cannot be told apart) beyond the labelled LV
  dilated by ``not_lv_margin_px``; where they do draw an RV, its core (eroded likewise) stays RV there;
- ``UNKNOWN`` everywhere else.
The loss (``networks.losses``) learns from the first two and ignores the third. A labelled case exported with
``coarse=True`` (``labelling.export_labelled_case``) is turned into such labels when training reads it.

This module has no torch: the labelling code and the Slicer module use it too.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .errors import InvalidLabelsError, InvalidParameterError

LV_BLOOD, LV_MYO, RV_BLOOD = 1, 2, 3
UNKNOWN = 255          # partial label: nothing known at this pixel
NOT_LV = 254           # partial label: background or RV blood pool
NOT_LV_CLASSES = (0, 3)


def weak_labels_from_coarse(labels: np.ndarray, *, erode_px: int = 1, not_lv_margin_px: int = 2) -> np.ndarray:
    """(Y, X) project codes (1 LV blood pool, 2 LV myocardium, 3 RV blood pool, optional) -> (Y, X) uint8 partial
    labels.

    Raises InvalidLabelsError when the labels hold no blood pool or no myocardium, or when eroding leaves none of
    either (an outline too thin for ``erode_px``)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise InvalidLabelsError(f"coarse labels must be one (Y, X) map, got shape {labels.shape}")
    if erode_px < 0 or not_lv_margin_px < 0 or int(erode_px) != erode_px or int(not_lv_margin_px) != not_lv_margin_px:
        raise InvalidParameterError("erode_px and not_lv_margin_px must be whole numbers >= 0")
    bp, myo = labels == LV_BLOOD, labels == LV_MYO
    if not bp.any() or not myo.any():
        raise InvalidLabelsError("coarse labels need both an LV blood pool (1) and a myocardium (2)")
    cross = ndimage.generate_binary_structure(2, 1)

    def core(mask):     # scipy's iterations=0 means "until nothing changes": no erosion must skip the call
        return ndimage.binary_erosion(mask, cross, iterations=int(erode_px)) if erode_px else mask

    bp_core, myo_core = core(bp), core(myo)
    if not bp_core.any() or not myo_core.any():
        raise InvalidLabelsError(f"eroding the coarse labels by {erode_px} px leaves no blood pool or no myocardium")
    lv = ndimage.binary_fill_holes(bp | myo)
    near_lv = ndimage.binary_dilation(lv, cross, iterations=int(not_lv_margin_px)) if not_lv_margin_px else lv
    out = np.full(labels.shape, UNKNOWN, np.uint8)
    out[~near_lv] = NOT_LV
    rv = labels == RV_BLOOD
    if rv.any():        # an RV outline: its core is RV (away from the LV's uncertain rim), its rim stays "not LV"
        out[core(rv) & ~near_lv] = RV_BLOOD
    out[bp_core] = LV_BLOOD
    out[myo_core] = LV_MYO
    return out


__all__ = ["weak_labels_from_coarse", "UNKNOWN", "NOT_LV", "NOT_LV_CLASSES"]
