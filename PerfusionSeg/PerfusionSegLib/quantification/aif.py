"""Arterial input function: foot/peak detection, baseline, haematocrit, T2* correction, LV location in AIF images.

The AIF is the blood [Gd] in the LV cavity. In a dual-sequence acquisition it comes from a separate low-resolution,
short-saturation-time image series where the blood signal does not saturate; in a single-sequence study the only
source is the perfusion images' LV blood pool, whose signal saturates at the bolus peak (the AIF peak is then
underestimated and MBF overestimated: we warn).
"""
from __future__ import annotations

import warnings
from typing import Optional, Tuple

import numpy as np
from scipy import ndimage

from ..errors import InvalidParameterError
from ..series import AIF, SliceSeries

DEFAULT_HEMATOCRIT = 0.42


def _smooth(curve: np.ndarray, sigma_frames: float = 1.0) -> np.ndarray:
    return ndimage.gaussian_filter1d(np.asarray(curve, dtype=np.float64), sigma_frames, mode="nearest")


def detect_foot_peak(curve: np.ndarray, times: Optional[np.ndarray] = None, *, sigma_frames: float = 1.0,
                     min_baseline_frames: int = 2) -> Tuple[int, int]:
    """(foot, peak) 0-based frame indices of the first-pass bolus.

    Peak: maximum of the smoothed curve. Foot: walking back from the steepest point of the smoothed upslope, the last
    frame whose value is within the baseline noise (mean + 2 SD of the frames before the upslope started, at most 5%
    of the peak height above the baseline). ``foot`` is the last baseline sample (QPerf convention).
    """
    y = _smooth(curve, sigma_frames)
    n = y.size
    peak = int(np.argmax(y))
    if peak < min_baseline_frames:
        raise InvalidParameterError("the curve peaks in its first frames: no pre-contrast baseline, no bolus foot")
    slope = np.diff(y[: peak + 1])
    steepest = int(np.argmax(slope)) if slope.size else 0
    # baseline estimate: frames well before the steepest point
    pre = y[: max(min_baseline_frames, steepest - 2)]
    base, sd = float(np.median(pre)), float(np.std(np.asarray(curve, float)[: max(min_baseline_frames, steepest - 2)]))
    height = y[peak] - base
    level = base + min(max(2.0 * sd, 0.02 * height), 0.05 * height) if height > 0 else base
    foot = steepest
    while foot > 0 and y[foot] > level:
        foot -= 1
    return int(min(foot, n - 1)), peak


def subtract_baseline(curve: np.ndarray, foot: int) -> np.ndarray:
    """Curve minus the mean of frames 0..foot (foot included: it is the last baseline sample)."""
    curve = np.asarray(curve, dtype=np.float64)
    return curve - float(np.mean(curve[: max(1, foot + 1)]))


def blood_to_plasma(curve: np.ndarray, hematocrit: float = DEFAULT_HEMATOCRIT) -> np.ndarray:
    """Gd stays in plasma: C_plasma = C_blood / (1 - Hct)."""
    if not 0.0 <= hematocrit < 1.0:
        raise InvalidParameterError(f"haematocrit must be in [0, 1), got {hematocrit}")
    return np.asarray(curve, dtype=np.float64) / (1.0 - hematocrit)


def t2star_correct(echo1: np.ndarray, echo2: np.ndarray, te1_s: float, te2_s: float, *,
                   max_r2star: float = 500.0) -> np.ndarray:
    """Signal extrapolated to TE = 0 from two echoes: S0 = S1 exp(R2* TE1), R2* = ln(S1/S2) / (TE2 - TE1).

    At the bolus peak the blood T2* shortens and the first echo loses signal; R2* is clipped to [0, max_r2star] 1/s so
    that noise in the second echo cannot blow the correction up.
    """
    s1 = np.asarray(echo1, dtype=np.float64)
    s2 = np.asarray(echo2, dtype=np.float64)
    if s1.shape != s2.shape:
        raise InvalidParameterError(f"echo arrays differ in shape: {s1.shape} vs {s2.shape}")
    if not te2_s > te1_s > 0:
        raise InvalidParameterError("need 0 < TE1 < TE2 for T2* correction")
    tiny = 1e-9 * max(float(np.abs(s1).max()), 1e-12)
    r2s = np.log(np.maximum(s1, tiny) / np.maximum(s2, tiny)) / (te2_s - te1_s)
    r2s = np.clip(r2s, 0.0, max_r2star)
    return s1 * np.exp(r2s * te1_s)


def validate_aif_curve(curve: np.ndarray, n_frames: Optional[int] = None, *, what: str = "AIF") -> np.ndarray:
    """Reject unusable AIFs with a clear message: wrong length, NaN/Inf, flat, no bolus."""
    c = np.asarray(curve, dtype=np.float64).reshape(-1)
    if n_frames is not None and c.size != n_frames:
        raise InvalidParameterError(f"{what} has {c.size} samples but the series has {n_frames} frames")
    if c.size < 10:
        raise InvalidParameterError(f"{what} has only {c.size} samples")
    if not np.all(np.isfinite(c)):
        raise InvalidParameterError(f"{what} contains NaN or Inf values")
    span = float(c.max() - c.min())
    if span <= 0 or span < 1e-6 * max(abs(float(c.max())), 1e-30):
        raise InvalidParameterError(f"{what} is flat: no contrast bolus")
    y = _smooth(c)
    peak = int(np.argmax(y))
    base = float(np.median(y[: max(2, min(5, peak))]))
    noise = float(np.median(np.abs(np.diff(c)))) * 1.4826 / np.sqrt(2) + 1e-30
    if peak < 2 or peak >= c.size - 2 or (y[peak] - base) < 5.0 * noise:
        raise InvalidParameterError(
            f"{what} shows no bolus (a clear rise above a pre-contrast baseline, then a fall, is needed)")
    return c


def make_aif(curve: np.ndarray, times: np.ndarray, *, hematocrit: float = DEFAULT_HEMATOCRIT,
             foot: Optional[int] = None, peak: Optional[int] = None, subtract: bool = True,
             units: str = "mmol/L", image_series: Optional[SliceSeries] = None) -> AIF:
    """An AIF (blood [Gd]) from a curve: validated, foot/peak detected unless given, baseline removed."""
    c = validate_aif_curve(curve)
    f, p = detect_foot_peak(c, times)
    foot = f if foot is None else int(foot)
    peak = p if peak is None else int(peak)
    if subtract:
        c = subtract_baseline(c, foot)
    return AIF(curve=c, times=np.asarray(times, float), units=units, hematocrit=hematocrit, image_series=image_series,
               foot=foot, peak=peak)


# --- LV blood pool in AIF images ---------------------------------------------------------------------------------
def locate_lv_in_aif_images(images: np.ndarray, *, n_baseline: int = 5, core_fraction: float = 0.6,
                            min_correlation: float = 0.9, first_pass_frames: int = 25) -> np.ndarray:
    """LV blood-pool mask (Y, X) bool in a low-resolution AIF image series (T, Y, X).

    The bolus reaches the RV several heartbeats before the LV. Among strongly enhancing pixels (peak enhancement
    above 35% of the 99.5th percentile, peaking within ``first_pass_frames`` of the earliest ones: later peaks are
    organs or recirculation), the times to peak split into two groups (2-means): early = RV, late = LV.
    The late group's connected component with most enhancement is the LV; the final mask keeps the pixels whose curve
    correlates (r > 0.9) with that component's mean curve and whose peak enhancement exceeds ``core_fraction`` of the
    component's 75th-percentile peak (the well-mixed core, free of partial volume with myocardium).
    The two thresholds were set on the three QPerf AIF examples (no held-out data).
    """
    img = np.asarray(images, dtype=np.float64)
    if img.ndim != 3 or img.shape[0] < 10:
        raise InvalidParameterError(f"AIF images must be (T, Y, X) with at least 10 frames, got {img.shape}")
    base = np.median(img[: max(1, n_baseline)], axis=0)
    enh = ndimage.gaussian_filter1d(img - base, 1.0, axis=0)
    peak = enh.max(axis=0)
    ttp = enh.argmax(axis=0).astype(np.float64)
    cand = peak > 0.35 * np.percentile(peak, 99.5)
    # first pass only: organs and recirculation peak late; keep pixels peaking within `first_pass_frames` of the
    # earliest strongly enhancing pixels (the RV)
    if cand.sum() >= 4:
        t_first = np.percentile(ttp[cand], 5)
        cand &= ttp <= t_first + first_pass_frames
        # isolated noisy pixels are not a blood pool: drop components smaller than 3 pixels
        lbl, n = ndimage.label(cand)
        if n:
            sizes = ndimage.sum(cand, lbl, range(1, n + 1))
            cand &= np.isin(lbl, 1 + np.flatnonzero(sizes >= 3))
    if cand.sum() < 4:
        raise InvalidParameterError("no enhancing blood pool found in the AIF images")
    t = ttp[cand]
    c1, c2 = np.percentile(t, 10), np.percentile(t, 90)
    for _ in range(50):
        late_sel = np.abs(t - c1) > np.abs(t - c2)
        if late_sel.all() or not late_sel.any():
            break
        n1, n2 = t[~late_sel].mean(), t[late_sel].mean()
        if n1 == c1 and n2 == c2:
            break
        c1, c2 = n1, n2
    late = np.zeros_like(cand)
    late[cand] = np.abs(ttp[cand] - c1) > np.abs(ttp[cand] - c2)
    if not late.any():  # one arrival time only (e.g. no RV in view): take all candidates
        late = cand
    lbl, n = ndimage.label(late)
    comp = lbl == (int(np.argmax(ndimage.sum(peak, lbl, range(1, n + 1)))) + 1)
    ref = enh[:, comp].mean(axis=1)
    z = enh - enh.mean(axis=0)
    r = ref - ref.mean()
    corr = np.einsum("tyx,t->yx", z, r) / np.sqrt((z ** 2).sum(axis=0) * (r ** 2).sum() + 1e-12)
    top = np.percentile(peak[comp], 75)
    mask = (corr > min_correlation) & (peak > core_fraction * top)
    lbl, n = ndimage.label(mask)
    if n == 0:
        return comp
    keep = int(np.argmax(ndimage.sum(comp, lbl, range(1, n + 1)))) + 1
    return ndimage.binary_fill_holes(lbl == keep)


def extract_aif(source, *, lv_mask: Optional[np.ndarray] = None, hematocrit: float = DEFAULT_HEMATOCRIT,
                to_gd: bool = True, sequence: Optional[str] = None, field_strength: Optional[float] = None,
                echo2: Optional[SliceSeries] = None, te_s: Optional[Tuple[float, float]] = None,
                params=None, **lut_kwargs) -> AIF:
    """AIF from an image series.

    source: the dual-sequence AIF image series (SliceSeries, signal or mmol/L) -> LV located automatically unless
    ``lv_mask`` is given; or a perfusion SliceSeries with ``lv_mask`` (the segmented LV blood pool) -> fallback AIF,
    with a warning that the blood signal saturates. A signal series is converted to [Gd] with the blood look-up table
    (``to_gd``; ``params`` / ``lut_kwargs`` as in :func:`signal_to_gd`, e.g. the AIF sequence's short saturation
    time); ``echo2`` + ``te_s`` apply a T2* correction of the first echo before conversion.
    """
    from .gd_conversion import signal_to_gd

    if not isinstance(source, SliceSeries):
        raise InvalidParameterError("extract_aif needs a SliceSeries (AIF image series or perfusion series with an LV mask)")
    is_aif_series = lv_mask is None or source.metadata.get("role") == "aif"
    if lv_mask is None:
        lv_mask = locate_lv_in_aif_images(source.data)
    else:
        lv_mask = np.asarray(lv_mask, bool)
        if lv_mask.shape != source.shape or not lv_mask.any():
            raise InvalidParameterError(f"LV mask {lv_mask.shape} must match the series frames {source.shape} and be non-empty")
        if not is_aif_series:
            warnings.warn("AIF taken from the perfusion images' LV blood pool: its signal saturates at the bolus peak, so the "
                          "AIF peak is underestimated and MBF overestimated; use a dual-sequence AIF when available",
                          stacklevel=2)
    series = source
    if echo2 is not None:
        if te_s is None:
            raise InvalidParameterError("T2* correction needs the two echo times (te_s)")
        series = series.replace(data=t2star_correct(series.data, echo2.data, te_s[0], te_s[1]).astype(np.float32))
    if series.units == "signal" and to_gd:
        series = signal_to_gd(series, sequence=sequence, field_strength=field_strength, tissue="blood", params=params,
                              **lut_kwargs)
    curve = series.data[:, lv_mask].mean(axis=1)
    aif = make_aif(curve, series.times, hematocrit=hematocrit, units=series.units,
                   image_series=source if is_aif_series else None)
    return aif
