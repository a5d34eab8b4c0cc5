"""Post-processing of network outputs into clean label maps (project codes 0-3).

- :func:`largest_component`, :func:`fill_holes`: the usual clean-up (scipy.ndimage).
- :func:`adaptive_threshold`: Xue's public-code rule. Per class, threshold the probability at a fraction of the
  class's maximum probability, starting at 0.5 and raising it until a single connected blob remains; if no fraction
  leaves one blob, keep the largest blob at the starting fraction.
- :func:`assemble_labels`: probabilities (C, Y, X) -> labels (Y, X): argmax, per-class adaptive threshold and largest
  blob, blood pool hole-filled (papillary muscles belong to the pool, CONVENTIONS), and, where the myocardium closes
  into a ring, its interior given to the blood pool and pool outside the ring removed, so that the myocardium surrounds
  the pool.
- :func:`clean_labels`: the same clean-up for a finished label map (DAUGS labels come from thresholded mean
  probabilities, with no post-processing of their own): stray blood-pool and RV islands go, myocardial islands far
  smaller than the main ring go, enclosed gaps in the heart are closed.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import ndimage

from .errors import InvalidParameterError

BACKGROUND, BLOOD_POOL, MYOCARDIUM, RV = 0, 1, 2, 3

MAX_GAP_FRACTION = 0.05   # clean_labels: enclosed background up to this fraction of the myocardium is wall, not cavity

_STRUCTURE = {4: ndimage.generate_binary_structure(2, 1), 8: ndimage.generate_binary_structure(2, 2)}


def _structure(connectivity: int) -> np.ndarray:
    if connectivity not in _STRUCTURE:
        raise InvalidParameterError(f"connectivity must be 4 or 8, got {connectivity}")
    return _STRUCTURE[connectivity]


def count_components(mask: np.ndarray, connectivity: int = 8) -> int:
    return int(ndimage.label(np.asarray(mask, bool), structure=_structure(connectivity))[1])


def largest_component(mask: np.ndarray, connectivity: int = 8, weights: Optional[np.ndarray] = None) -> np.ndarray:
    """The largest connected blob of a boolean mask (by pixel count, or by summed ``weights`` when given)."""
    mask = np.asarray(mask, bool)
    lab, n = ndimage.label(mask, structure=_structure(connectivity))
    if n <= 1:
        return mask.copy()
    w = np.ones(mask.shape) if weights is None else np.asarray(weights, float)
    sizes = ndimage.sum_labels(w, lab, index=np.arange(1, n + 1))
    return lab == (int(np.argmax(sizes)) + 1)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill regions not connected to the image border (4-connected background, so a closed 8-connected ring counts)."""
    return ndimage.binary_fill_holes(np.asarray(mask, bool))


def adaptive_threshold(prob: np.ndarray, *, start: float = 0.5, step: float = 0.05, stop: float = 0.95,
                       allowed: Optional[np.ndarray] = None, connectivity: int = 8, min_keep: float = 0.5) -> np.ndarray:
    """Xue's adaptive threshold for one class probability map (Y, X) -> boolean mask with one blob (or empty).

    ``allowed`` restricts the candidate pixels (e.g. where this class wins the argmax). The single blob found by
    raising the threshold is accepted only if it keeps ``min_keep`` of the largest blob at the start threshold;
    otherwise (or when no threshold leaves one blob) the largest blob at the start threshold is returned.
    """
    prob = np.asarray(prob, float)
    if not 0 < start <= stop < 1:
        raise InvalidParameterError("adaptive threshold needs 0 < start <= stop < 1")
    pmax = float(np.nanmax(prob)) if prob.size else 0.0
    if not np.isfinite(pmax) or pmax <= 0:
        return np.zeros(prob.shape, bool)
    allowed = np.ones(prob.shape, bool) if allowed is None else np.asarray(allowed, bool)
    first = (prob >= start * pmax) & allowed
    biggest = largest_component(first, connectivity, weights=prob)
    for frac in np.arange(start, stop + 1e-9, step):
        mask = (prob >= frac * pmax) & allowed
        n = count_components(mask, connectivity)
        if n == 1:
            # guard (not in the public code): a lone surviving blob must overlap the main structure, not be a
            # small confident island that outlived it
            if (mask & biggest).sum() >= min_keep * biggest.sum():
                return mask
            break
        if n == 0:
            break
    return biggest


def assemble_labels(probabilities: np.ndarray, *, adaptive: bool = True, enforce_ring: bool = True,
                    min_ring_fraction: float = 0.5) -> np.ndarray:
    """Clean uint8 labels (Y, X) from class probabilities (C, Y, X) ordered as the project codes (C = 3 or 4).

    ``min_ring_fraction``: the ring rule applies only when at least this fraction of the blood pool already lies
    inside the myocardium's filled outline (otherwise the myocardium is too broken for the rule to be sensible).
    """
    p = np.nan_to_num(np.asarray(probabilities, np.float32), nan=0.0)
    if p.ndim != 3 or p.shape[0] < 3:
        raise InvalidParameterError(f"probabilities must be (C>=3, Y, X), got shape {p.shape}")
    winner = p.argmax(axis=0)
    masks = {}
    for c in range(1, p.shape[0]):
        allowed = winner == c
        if not allowed.any():
            masks[c] = np.zeros(winner.shape, bool)
        elif adaptive:
            masks[c] = adaptive_threshold(p[c], allowed=allowed)
        else:
            masks[c] = largest_component(allowed, weights=p[c])
    pool, myo = masks[BLOOD_POOL], masks[MYOCARDIUM]
    pool = fill_holes(pool)      # papillary muscles and trabeculae inside the cavity belong to the pool
    myo &= ~pool
    if enforce_ring and myo.any():
        outline = fill_holes(myo)
        cavity = outline & ~myo
        if cavity.any() and (not pool.any() or (pool & outline).sum() >= min_ring_fraction * pool.sum()):
            pool = cavity                     # the ring's interior is the cavity, pool outside the ring goes
            pool = largest_component(pool, connectivity=4) if pool.any() else pool
            myo = largest_component(myo & ~pool)
    labels = np.zeros(winner.shape, np.uint8)
    if p.shape[0] > RV:
        rv = fill_holes(masks[RV]) & ~(pool | myo)
        labels[largest_component(rv) if rv.any() else rv] = RV
    labels[myo] = MYOCARDIUM
    labels[pool] = BLOOD_POOL
    return labels


def clean_labels(labels: np.ndarray, *, min_piece_fraction: float = 0.2) -> np.ndarray:
    """Clean uint8 labels (Y, X) in project codes: one blood pool (holes filled), one RV, and only the myocardial
    pieces of at least ``min_piece_fraction`` of the largest one.

    Substantial pieces of a broken ring are kept (deleting them would hide the break and lose true myocardium; the
    QC flags the break); small islands (a few pixels of noise, a bright vessel) go. Background enclosed by the heart
    in small pieces (between pool and myocardium, or inside the wall: up to ``MAX_GAP_FRACTION`` of the myocardium)
    becomes myocardium. Removed pixels become background.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise InvalidParameterError(f"labels must be 2D (Y, X), got shape {labels.shape}")
    if not 0.0 <= min_piece_fraction <= 1.0:
        raise InvalidParameterError(f"min_piece_fraction must be in [0, 1], got {min_piece_fraction}")
    pool = labels == BLOOD_POOL
    pool = fill_holes(largest_component(pool)) if pool.any() else pool
    myo = (labels == MYOCARDIUM) & ~pool
    if myo.any():
        lab, n = ndimage.label(myo, structure=_structure(8))
        sizes = ndimage.sum_labels(myo, lab, index=np.arange(1, n + 1))
        keep = np.nonzero(sizes >= min_piece_fraction * sizes.max())[0] + 1
        myo = np.isin(lab, keep)
        # small enclosed gaps inside the heart are wall; a large enclosed area (a cavity the pool label missed) is not
        gaps, n_gaps = ndimage.label(fill_holes(myo | pool) & ~(myo | pool))
        if n_gaps:
            gap_sizes = ndimage.sum_labels(gaps > 0, gaps, index=np.arange(1, n_gaps + 1))
            small = np.nonzero(gap_sizes <= max(4.0, MAX_GAP_FRACTION * myo.sum()))[0] + 1
            myo |= np.isin(gaps, small)
    rv = (labels == RV) & ~(pool | myo)
    rv = fill_holes(largest_component(rv)) & ~(pool | myo) if rv.any() else rv
    out = np.zeros(labels.shape, np.uint8)
    out[rv] = RV
    out[myo] = MYOCARDIUM
    out[pool] = BLOOD_POOL
    return out


__all__ = ["largest_component", "fill_holes", "adaptive_threshold", "assemble_labels", "clean_labels",
           "count_components",
           "BACKGROUND", "BLOOD_POOL", "MYOCARDIUM", "RV"]
