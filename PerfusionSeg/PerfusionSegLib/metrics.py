"""Evaluation metrics with the definitions of the Xue (2020) and DAUGS (2024) papers.

Overlap (per structure, boolean masks P = prediction, R = reference):
  Dice = 2|P&R| / (|P|+|R|); Jaccard = |P&R| / |P|R|; FP = |P\\R| / |R| and FN = |R\\P| / |R| (area fractions of the
  reference); precision = |P&R| / |P|; recall = |P&R| / |R|. Undefined ratios (empty denominators) are NaN.
Borders (mm, endocardium = outline of the LV cavity, epicardium = outline of cavity + myocardium): border pixels are the
  mask pixels with a 4-neighbour outside; each border pixel's distance to the other border comes from
  scipy.ndimage.distance_transform_edt with sampling = pixel spacing. Mean boundary error = mean of all distances in
  both directions; Hausdorff = largest distance in either direction; HD95 = the larger of the two directed 95th
  percentiles.
Angles: RV insertion angle error = absolute circular difference in degrees (0..180), insertion points from
  ``aha.find_insertion_points`` on both maps, angles seen from the reference LV centroid.
Statistics (scipy.stats): Bland-Altman bias / SD / 95% limits; paired and unpaired t-tests; Fisher's exact test.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy import ndimage, stats

from .errors import InvalidLabelsError, InvalidParameterError

STRUCTURES = {"blood_pool": 1, "myocardium": 2, "rv": 3}


def _pair(pred, ref):
    p, r = np.asarray(pred, bool), np.asarray(ref, bool)
    if p.shape != r.shape:
        raise InvalidLabelsError(f"prediction {p.shape} and reference {r.shape} have different shapes")
    return p, r


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else float("nan")


def dice(pred, ref) -> float:
    p, r = _pair(pred, ref)
    return _ratio(2 * (p & r).sum(), p.sum() + r.sum())


def jaccard(pred, ref) -> float:
    p, r = _pair(pred, ref)
    return _ratio((p & r).sum(), (p | r).sum())


def false_positive_fraction(pred, ref) -> float:
    p, r = _pair(pred, ref)
    return _ratio((p & ~r).sum(), r.sum())


def false_negative_fraction(pred, ref) -> float:
    p, r = _pair(pred, ref)
    return _ratio((~p & r).sum(), r.sum())


def precision(pred, ref) -> float:
    p, r = _pair(pred, ref)
    return _ratio((p & r).sum(), p.sum())


def recall(pred, ref) -> float:
    p, r = _pair(pred, ref)
    return _ratio((p & r).sum(), r.sum())


def overlap_metrics(pred, ref) -> dict:
    return {"dice": dice(pred, ref), "jaccard": jaccard(pred, ref), "fp": false_positive_fraction(pred, ref),
            "fn": false_negative_fraction(pred, ref), "precision": precision(pred, ref), "recall": recall(pred, ref)}


def border(mask) -> np.ndarray:
    """Mask pixels with at least one 4-neighbour outside the mask (the image edge counts as outside)."""
    m = np.asarray(mask, bool)
    return m & ~ndimage.binary_erosion(m, structure=ndimage.generate_binary_structure(2, 1), border_value=0)


def _directed(from_border: np.ndarray, to_border: np.ndarray, spacing) -> np.ndarray:
    dist = ndimage.distance_transform_edt(~to_border, sampling=tuple(float(s) for s in spacing))
    return dist[from_border]


def boundary_distances(pred, ref, spacing=(1.0, 1.0)) -> dict:
    """Mean boundary error, Hausdorff and HD95 (mm) between the borders of two masks (NaN when either is empty)."""
    p, r = _pair(pred, ref)
    if not p.any() or not r.any():
        return {"mbe_mm": float("nan"), "hd_mm": float("nan"), "hd95_mm": float("nan")}
    bp, br = border(p), border(r)
    d_pr, d_rp = _directed(bp, br, spacing), _directed(br, bp, spacing)
    both = np.concatenate([d_pr, d_rp])
    return {"mbe_mm": float(both.mean()), "hd_mm": float(max(d_pr.max(), d_rp.max())),
            "hd95_mm": float(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95)))}


def hausdorff(pred, ref, spacing=(1.0, 1.0)) -> float:
    return boundary_distances(pred, ref, spacing)["hd_mm"]


def hausdorff95(pred, ref, spacing=(1.0, 1.0)) -> float:
    return boundary_distances(pred, ref, spacing)["hd95_mm"]


def mean_boundary_error(pred, ref, spacing=(1.0, 1.0)) -> float:
    return boundary_distances(pred, ref, spacing)["mbe_mm"]


def endo_mask(labels) -> np.ndarray:
    """LV cavity inside the endocardial border (blood pool, holes filled)."""
    return ndimage.binary_fill_holes(np.asarray(labels) == 1)


def epi_mask(labels) -> np.ndarray:
    """Everything inside the epicardial border (blood pool + myocardium, holes filled)."""
    lab = np.asarray(labels)
    return ndimage.binary_fill_holes((lab == 1) | (lab == 2))


def angle_error(pred_deg, ref_deg) -> np.ndarray | float:
    """Absolute circular difference of angles in degrees, in [0, 180]."""
    d = np.abs((np.asarray(pred_deg, float) - np.asarray(ref_deg, float) + 180.0) % 360.0 - 180.0)
    return float(d) if d.ndim == 0 else d


def point_angle(point_yx, centre_yx, spacing=(1.0, 1.0)) -> float:
    """Angle (degrees, 0..360) of a point around a centre, in physical units (atan2 of dy, dx in mm)."""
    dy = (float(point_yx[0]) - float(centre_yx[0])) * float(spacing[0])
    dx = (float(point_yx[1]) - float(centre_yx[1])) * float(spacing[1])
    return float(np.degrees(np.arctan2(dy, dx)) % 360.0)


def insertion_angle_error(pred_point_yx, ref_point_yx, centre_yx, spacing=(1.0, 1.0)) -> float:
    """RV insertion angle error (degrees) of a predicted point against a reference, both seen from one centre."""
    return angle_error(point_angle(pred_point_yx, centre_yx, spacing), point_angle(ref_point_yx, centre_yx, spacing))


def insertion_angle_errors(pred, ref, spacing=(1.0, 1.0), affine=None) -> dict:
    """Anterior and inferior RV insertion angle errors (degrees) of a predicted label map against the reference.

    Both maps' insertion points come from ``aha.find_insertion_points`` (the RV-myocardium contact) and are seen from
    the reference LV centroid. NaN when either map has no usable RV (its points would be priors, not measurements).
    """
    nan = {"anterior_deg": float("nan"), "inferior_deg": float("nan")}
    from .aha import find_insertion_points
    from .errors import PerfusionInputError
    try:
        ip_ref = find_insertion_points(np.asarray(ref), spacing=spacing, affine=affine)
        ip_pred = find_insertion_points(np.asarray(pred), spacing=spacing, affine=affine)
    except PerfusionInputError:
        return nan
    if ip_ref.source != "auto" or ip_pred.source != "auto":
        return nan
    centre = ip_ref.centroid_yx
    return {"anterior_deg": insertion_angle_error(ip_pred.anterior_yx, ip_ref.anterior_yx, centre, spacing),
            "inferior_deg": insertion_angle_error(ip_pred.inferior_yx, ip_ref.inferior_yx, centre, spacing)}


def bland_altman(a: Sequence[float], b: Sequence[float]) -> dict:
    """Bias = mean(a - b), SD of the differences (n - 1), 95% limits of agreement bias +/- 1.96 SD."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or a.ndim != 1 or a.size < 2:
        raise InvalidParameterError("Bland-Altman needs two paired 1-D samples of at least 2 values")
    d = a - b
    bias, sd = float(d.mean()), float(d.std(ddof=1))
    return {"n": int(d.size), "bias": bias, "sd": sd, "loa_low": bias - 1.96 * sd, "loa_high": bias + 1.96 * sd,
            "mean_of_pairs": ((a + b) / 2).tolist(), "differences": d.tolist()}


def paired_ttest(a, b) -> dict:
    res = stats.ttest_rel(np.asarray(a, float), np.asarray(b, float))
    return {"t": float(res.statistic), "p": float(res.pvalue), "n": int(np.asarray(a).size)}


def unpaired_ttest(a, b, equal_var: bool = True) -> dict:
    """Student's (equal_var=True) or Welch's two-sample t-test."""
    res = stats.ttest_ind(np.asarray(a, float), np.asarray(b, float), equal_var=equal_var)
    return {"t": float(res.statistic), "p": float(res.pvalue), "n_a": int(np.asarray(a).size), "n_b": int(np.asarray(b).size)}


def fisher_exact(table, alternative: str = "two-sided") -> dict:
    """Fisher's exact test on a 2x2 count table, e.g. [[failed_A, ok_A], [failed_B, ok_B]]."""
    t = np.asarray(table)
    if t.shape != (2, 2) or np.any(t < 0):
        raise InvalidParameterError(f"Fisher's exact test needs a 2x2 table of counts, got {t.tolist()}")
    res = stats.fisher_exact(t, alternative=alternative)
    return {"odds_ratio": float(res.statistic), "p": float(res.pvalue)}


def evaluate_pair(pred, ref, spacing=(1.0, 1.0), structures: Optional[dict] = None, insertion: bool = True,
                  affine=None) -> dict:
    """All per-structure metrics of one predicted label map against a reference (project codes).

    Returns {structure: {dice, jaccard, fp, fn, precision, recall, mbe_mm, hd_mm, hd95_mm}} for blood_pool,
    myocardium and rv (structures absent from both maps get NaN), {"endo": {...}, "epi": {...}} border distances and,
    with ``insertion``, {"rv_insertion": {"anterior_deg", "inferior_deg"}} angle errors (NaN without RVs).
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape or pred.ndim != 2:
        raise InvalidLabelsError(f"prediction {pred.shape} and reference {ref.shape} must be 2-D maps of one shape")
    out = {}
    for name, code in (structures or STRUCTURES).items():
        p, r = pred == code, ref == code
        out[name] = {**overlap_metrics(p, r), **boundary_distances(p, r, spacing)}
    out["endo"] = boundary_distances(endo_mask(pred), endo_mask(ref), spacing)
    out["epi"] = boundary_distances(epi_mask(pred), epi_mask(ref), spacing)
    if insertion:
        out["rv_insertion"] = insertion_angle_errors(pred, ref, spacing, affine)
    return out


def flatten(result: dict) -> dict:
    """{structure: {metric: v}} -> {'structure_metric': v} (for tables and CSV)."""
    return {f"{k}_{m}": v for k, d in result.items() for m, v in d.items()}


__all__ = ["dice", "jaccard", "false_positive_fraction", "false_negative_fraction", "precision", "recall",
           "overlap_metrics", "boundary_distances", "hausdorff", "hausdorff95", "mean_boundary_error", "border",
           "endo_mask", "epi_mask", "angle_error", "point_angle", "insertion_angle_error", "insertion_angle_errors",
           "bland_altman",
           "paired_ttest", "unpaired_ttest", "fisher_exact", "evaluate_pair", "flatten", "STRUCTURES"]
