"""Quality-control flags for one segmented slice.

Flags (DAUGS failure criteria plus practical checks):
- ``blood_pool_in_myocardium``: the myocardium covers the centre of the LV cavity (a disc instead of a ring).
- ``noncontiguous_myocardium``: in at least one AHA segment (or, without insertion points, one of six 60-degree
  sectors around the blood-pool centroid) the myocardium is split into several pieces, is absent, or has a gap in
  the ring at its edge.
- ``high_uncertainty``: U_pp = sum(U-map^2) / myocardial pixel count above a threshold (when a U-map is given).
- ``missing_<structure>`` / ``small_<structure>``: an empty or implausibly small blood pool, myocardium (or RV when
  ``require_rv``).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import ndimage

from .errors import InvalidLabelsError
from .postprocess import BLOOD_POOL, MYOCARDIUM, RV, count_components, fill_holes

# smallest plausible areas in mm^2 (an apical LV cavity at end-systole is rarely below ~1 cm^2)
MIN_AREA_MM2 = {"blood_pool": 60.0, "myocardium": 150.0, "rv": 60.0}
_CODES = {"blood_pool": BLOOD_POOL, "myocardium": MYOCARDIUM, "rv": RV}


def _centre(labels: np.ndarray) -> Optional[np.ndarray]:
    pool = labels == BLOOD_POOL
    ref = pool if pool.any() else fill_holes(labels == MYOCARDIUM)
    if not ref.any():
        return None
    return np.array(ndimage.center_of_mass(ref))


def blood_pool_inclusion(labels: np.ndarray, spacing=(1.0, 1.0), covered_fraction: float = 0.5) -> bool:
    """True when the myocardium covers more than ``covered_fraction`` of a disc at the LV centre.

    The disc has half the cavity's equivalent radius, estimated from the filled LV outline (myocardium + cavity):
    a healthy ring leaves that disc free, a myocardium segmentation that swallowed the cavity does not.
    """
    myo = labels == MYOCARDIUM
    if not myo.any():
        return False
    centre = _centre(labels)
    outline = fill_holes(myo | (labels == BLOOD_POOL))
    dy, dx = float(spacing[0]), float(spacing[1])
    r_outer = np.sqrt(outline.sum() * dy * dx / np.pi)
    r_disc = 0.5 * 0.6 * r_outer        # the cavity radius is about 0.6 of the epicardial radius
    yy, xx = np.indices(labels.shape)
    disc = ((yy - centre[0]) * dy) ** 2 + ((xx - centre[1]) * dx) ** 2 <= r_disc ** 2
    if disc.sum() == 0:
        disc[int(round(centre[0])), int(round(centre[1]))] = True
    return bool(myo[disc].mean() > covered_fraction)


def sector_map_60(labels: np.ndarray) -> np.ndarray:
    """Six 60-degree sectors (1-6) of the myocardium around the blood-pool centroid (0 elsewhere)."""
    myo = labels == MYOCARDIUM
    out = np.zeros(labels.shape, np.uint8)
    centre = _centre(labels)
    if centre is None or not myo.any():
        return out
    yy, xx = np.nonzero(myo)
    ang = np.degrees(np.arctan2(yy - centre[0], xx - centre[1])) % 360.0
    out[yy, xx] = (ang // 60.0).astype(np.uint8) % 6 + 1
    return out


def _aha_sectors(labels: np.ndarray, level: Optional[str], spacing=(1.0, 1.0), affine=None):
    """AHA segment map from PerfusionSegLib.aha when that module and insertion points are available, else None."""
    try:
        from . import aha
        insertion = aha.find_insertion_points(labels, spacing=spacing, affine=affine)
        return aha.aha_sector_map(labels, level or "mid", insertion), "aha"
    except Exception:  # module absent, no RV to place insertion points, ...: fall back to plain sectors
        return None, None


def angular_gaps(labels: np.ndarray, spacing=(1.0, 1.0)) -> np.ndarray:
    """Centres (degrees, 1-degree bins) of the directions from the LV centre that no myocardium pixel covers.

    Each myocardium pixel covers the angle its width subtends at its distance from the centre, so a ring without a
    break covers all 360 degrees whatever its size, and a cut through the wall shows as uncovered bins.
    """
    myo = labels == MYOCARDIUM
    centre = _centre(labels)
    if centre is None or not myo.any():
        return np.zeros(0)
    yy, xx = np.nonzero(myo)
    py, px = (yy - centre[0]) * spacing[0], (xx - centre[1]) * spacing[1]
    ang = np.degrees(np.arctan2(py, px)) % 360.0
    # half the pixel diagonal: 8-connected diagonal steps of a thin ring leave no false gap
    half = np.degrees(0.5 * np.hypot(spacing[0], spacing[1]) / np.maximum(np.hypot(py, px), 1e-6))
    bins = np.arange(360) + 0.5
    diff = np.abs((bins[None, :] - ang[:, None] + 180.0) % 360.0 - 180.0)
    covered = (diff <= half[:, None] + 0.5).any(axis=0)
    return bins[~covered]


def noncontiguous_sectors(labels: np.ndarray, level: Optional[str] = None, use_aha: bool = True,
                          spacing=(1.0, 1.0), affine=None) -> tuple:
    """(sorted sector/segment numbers where the myocardium is split or interrupted, 'aha' | 'sectors60').

    A segment fails when its myocardium forms more than one 8-connected piece or is absent, or when the ring has an
    angular gap (a 10-degree bin around the LV centre without myocardium) inside or at the edge of the segment.
    """
    sectors, method = (_aha_sectors(labels, level, spacing, affine) if use_aha else (None, None))
    if sectors is None:
        sectors, method = sector_map_60(labels), "sectors60"
        expected = list(range(1, 7))
    else:
        expected = sorted(int(s) for s in np.unique(sectors) if s > 0)
        if level in ("basal", "mid", "apical"):
            expected = {"basal": list(range(1, 7)), "mid": list(range(7, 13)), "apical": list(range(13, 17))}[level]
    myo = labels == MYOCARDIUM
    if not myo.any():
        return [], method
    bad = {s for s in expected if count_components(sectors == s, connectivity=8) != 1}
    gaps = angular_gaps(labels, spacing)
    if gaps.size:
        # the segments on both sides of each gap: those of the myocardium pixels angularly nearest to it
        centre = _centre(labels)
        yy, xx = np.nonzero(myo)
        ang = np.degrees(np.arctan2((yy - centre[0]) * spacing[0], (xx - centre[1]) * spacing[1])) % 360.0
        seg = sectors[yy, xx]
        for g in gaps:
            diff = (ang - g + 180.0) % 360.0 - 180.0
            for side in (diff > 0, diff < 0):
                if side.any():
                    bad.add(int(seg[side][np.argmin(np.abs(diff[side]))]))
    bad.discard(0)
    return sorted(bad), method


def u_pp(umap: np.ndarray, labels: np.ndarray) -> float:
    """DAUGS per-pixel uncertainty: sum(U-map^2) / number of myocardial pixels (inf when there are none)."""
    n = int((labels == MYOCARDIUM).sum())
    total = float(np.nansum(np.square(np.asarray(umap, np.float64))))
    return total / n if n else float("inf")


def slice_qc(labels: np.ndarray, spacing=(1.0, 1.0), *, level: Optional[str] = None, umap: Optional[np.ndarray] = None,
             uncertainty_threshold: Optional[float] = None, require_rv: bool = False, use_aha: bool = True,
             affine=None) -> dict:
    """QC of one slice: {'ok': bool, 'flags': [...], plus the measurements behind each flag}."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise InvalidLabelsError(f"QC needs a 2-D label map, got shape {labels.shape}")
    px_area = float(spacing[0]) * float(spacing[1])
    flags, areas = [], {}
    for name, code in _CODES.items():
        area = float((labels == code).sum()) * px_area
        areas[name] = round(area, 2)
        if name == "rv" and not require_rv:
            continue
        if area == 0:
            flags.append(f"missing_{name}")
        elif area < MIN_AREA_MM2[name]:
            flags.append(f"small_{name}")
    inclusion = blood_pool_inclusion(labels, spacing)
    if inclusion:
        flags.append("blood_pool_in_myocardium")
    bad, method = noncontiguous_sectors(labels, level, use_aha, spacing, affine)
    if bad:
        flags.append("noncontiguous_myocardium")
    out = {"areas_mm2": areas, "blood_pool_in_myocardium": inclusion, "noncontiguous_segments": bad,
           "segment_method": method}
    if umap is not None:
        umap = np.asarray(umap)
        if umap.shape != labels.shape:
            raise InvalidLabelsError(f"U-map shape {umap.shape} differs from the labels {labels.shape}")
        out["u_pp"] = u_pp(umap, labels)
        if uncertainty_threshold is not None and out["u_pp"] > float(uncertainty_threshold):
            flags.append("high_uncertainty")
    out["flags"] = flags
    out["ok"] = not flags
    return out


__all__ = ["slice_qc", "blood_pool_inclusion", "noncontiguous_sectors", "sector_map_60", "u_pp", "MIN_AREA_MM2"]
