"""Myocardial blood flow maps and region-wise flow from a [Gd] series and an AIF.

Units: MBF and PS in ml/min/g with a myocardial density of 1.05 g/ml; volumes in ml/g; delays in s.
Both the tissue curves and the AIF have their pre-contrast baseline removed (mean of the frames up to the AIF foot).
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from ..errors import InvalidLabelsError, InvalidParameterError
from ..series import AIF, SliceSeries
from .aif import detect_foot_peak, subtract_baseline, validate_aif_curve
from .kinetic_fitting import aif_interpolator
from .denoise import svd_denoise
from .fermi import MBFResult, fermi_mbf
from .two_compartment import two_compartment_mbf, two_compartment_mbf_constrained

MODELS = ("fermi", "2cxm")
CHUNK = 8192   # pixels per 2CXM fit call
# map names written per model (besides "mbf"): parameter key in MBFResult.params -> output map name
MAP_KEYS = {
    "fermi": {"delay_s": "delay", "tau_s": "fermi_tau", "k_per_s": "fermi_k"},
    "2cxm": {"ps": "ps", "vp": "vp", "visf": "visf", "delay_s": "delay"},
}


def aif_on_series_times(aif: AIF, series: SliceSeries) -> tuple:
    """(blood AIF on the series' frame times with its baseline removed, foot, peak, own) — or a clear error.
    ``own``: None, or (AIF times, AIF samples minus the same baseline) when the AIF was sampled at other times
    than the series (the fitters then build their fine AIF from these samples)."""
    if aif.units not in ("mmol/L",) and series.units == "mmol/L":
        raise InvalidParameterError(f"AIF is in {aif.units!r} but the series is in mmol/L: convert the AIF to [Gd] first")
    curve = validate_aif_curve(aif.curve, what="AIF")
    t_aif, t_ser = aif.times, series.times
    same_length = aif.curve.size == series.n_frames
    # a series timed from its own first frame (t = 0: readers, files with a frame interval) carries no offset to the
    # AIF: then only the spacing can agree. Otherwise the times are absolute (e.g. the phantom: AIF image first in the
    # beat, each slice later) and the AIF is evaluated at the slice's times.
    relative = same_length and t_ser[0] == 0.0 and np.allclose(t_aif - t_aif[0], t_ser - t_ser[0], atol=1e-3)
    if (same_length and np.allclose(t_aif, t_ser, atol=1e-3)) or relative:
        on_series = curve
    else:
        # slices are read a fraction of a beat after the AIF (the last slice of a fast heart rate up to ~1.3 beats
        # later): allow 1.5 frames, the AIF is held at its last sample beyond its end
        tol = 1.5 * series.median_interval
        if t_aif[0] > t_ser[0] + tol or t_aif[-1] < t_ser[-1] - tol:
            raise InvalidParameterError(
                f"AIF covers {t_aif[0]:.1f}-{t_aif[-1]:.1f} s ({aif.curve.size} samples) but the series spans "
                f"{t_ser[0]:.1f}-{t_ser[-1]:.1f} s ({series.n_frames} frames): wrong length or timing")
        # each slice is read a fraction of a beat after the AIF image: evaluate the AIF at the slice's own frame
        # times (shape-preserving PCHIP between the samples; ignoring the offset biases the flow at high flow,
        # see docs/quantification.md)
        on_series = aif_interpolator(t_aif, curve)(t_ser)
        # the AIF's foot and baseline belong to its own samples (its foot index on the slice's later frames may
        # already hold contrast: a baseline taken there lowers the whole AIF, -20 to -28 % 2CXM flow, measured); the
        # tissue baseline ends at the last frame read before the AIF foot time
        a_foot = int(aif.foot) if aif.foot is not None else detect_foot_peak(curve, t_aif)[0]
        baseline = float(np.mean(curve[: max(1, a_foot + 1)]))
        foot = max(0, int(np.searchsorted(t_ser, t_aif[a_foot], side="right")) - 1)
        peak = int(np.argmax(on_series))
        return on_series - baseline, foot, peak, (np.asarray(t_aif, float), curve - baseline)
    foot, peak = detect_foot_peak(on_series, t_ser)
    if aif.foot is not None and aif.curve.size == series.n_frames:
        foot = int(aif.foot)
    if aif.peak is not None and aif.curve.size == series.n_frames:
        peak = int(aif.peak)
    return subtract_baseline(on_series, foot), foot, peak, None


def _tissue_curves(series: SliceSeries, foot: int) -> np.ndarray:
    data = series.data.astype(np.float64)
    return data - data[: max(1, foot + 1)].mean(axis=0, keepdims=True)


def _check_series(series: SliceSeries) -> None:
    if not isinstance(series, SliceSeries):
        raise InvalidParameterError("MBF needs a SliceSeries of [Gd] (mmol/L)")
    if series.units != "mmol/L":
        raise InvalidParameterError(
            f"the series is in {series.units!r}, not mmol/L: convert it with quantification.signal_to_gd first")


def _concatenate(parts) -> MBFResult:
    """One result from the fits of consecutive pixel chunks."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    return MBFResult(mbf=np.concatenate([r.mbf for r in parts]),
                     params={k: np.concatenate([r.params[k] for r in parts]) for k in first.params},
                     fitted=None, rmse=np.concatenate([r.rmse for r in parts]),
                     converged=np.concatenate([r.converged for r in parts]), model=first.model,
                     density_g_per_ml=first.density_g_per_ml, info=first.info)


def _fit(model: str, curves: np.ndarray, aif_curve: np.ndarray, times: np.ndarray, foot: int, peak: int,
         hematocrit: float, own=None, **kwargs) -> MBFResult:
    if own is not None:   # fit with the AIF's own samples and times
        kwargs["aif_times"] = own[0]
        aif_curve = own[1]
    if model == "fermi":
        return fermi_mbf(curves, aif_curve, times, foot=foot, peak=peak, **kwargs)
    if model == "2cxm":
        # pixels are independent: fit in chunks so the fine-grid model arrays stay a few hundred MB at most
        parts = [two_compartment_mbf(curves[i:i + CHUNK], aif_curve, times, hematocrit=hematocrit, **kwargs)
                 for i in range(0, curves.shape[0], CHUNK)]
        return _concatenate(parts)
    raise InvalidParameterError(f"model must be one of {MODELS}, got {model!r}")


def _constrained_2cxm(curves: np.ndarray, region_index: np.ndarray, aif_curve: np.ndarray, times: np.ndarray,
                      foot: int, peak: int, hematocrit: float, own, **kwargs) -> MBFResult:
    """Two-level 2CXM: all five parameters on each region's mean curve; vp, ve and the delay shared as their medians
    over the regions (a small region's fit is noisy); then Fp and PS on every curve with those fixed
    (:func:`two_compartment_mbf_constrained`)."""
    ids = np.unique(region_index)
    means = np.stack([curves[region_index == i].mean(axis=0) for i in ids])
    region_kw = dict(kwargs)
    region_kw.setdefault("max_iter", 100)      # few low-noise curves: let LM converge fully
    reg = _fit("2cxm", means, aif_curve, times, foot, peak, hematocrit, own, **region_kw)
    row = np.searchsorted(ids, region_index)
    for k in ("vp_fraction", "ve_fraction", "delay_s"):
        reg.params[k] = np.full(ids.size, np.median(reg.params[k]))
    extra = {"aif_times": own[0]} if own is not None else {}
    a = own[1] if own is not None else aif_curve
    kw = {k: v for k, v in kwargs.items() if k in ("max_iter", "oversample", "keep_fitted", "density")}
    parts = [two_compartment_mbf_constrained(curves[i:i + CHUNK], a, times, row[i:i + CHUNK],
                                             reg.params["vp_fraction"], reg.params["ve_fraction"],
                                             reg.params["delay_s"], hematocrit=hematocrit, **extra, **kw)
             for i in range(0, curves.shape[0], CHUNK)]
    return _concatenate(parts)


def compute_mbf_map(series_gd: SliceSeries, aif: AIF, mask: np.ndarray, model: str = "fermi",
                    regions: Optional[np.ndarray] = None, constrained: bool = True, denoise: bool = True,
                    **kwargs) -> Dict[str, np.ndarray]:
    """Pixel-wise fit inside ``mask`` (Y, X) bool. Returns maps (Y, X) float32, NaN outside the mask:
    "mbf" (ml/min/g) and the model's other parameters (fermi: delay, fermi_tau, fermi_k; 2cxm: ps, vp, visf,
    delay), plus "rmse" (fit residual, mmol/L).

    2CXM with ``constrained`` (default): vp, ve (visf) and the delay come from the fits of the mean curves of the
    regions of ``regions`` (Y, X) int, e.g. the AHA segments (mask pixels outside every region form one more region;
    no ``regions``: the whole mask), shared as their medians; only MBF and PS are fitted per pixel.
    ``constrained=False``: all five per pixel.
    ``denoise`` (default): the mask's curves are first projected on their significant temporal components
    (:func:`denoise.svd_denoise`; masks of fewer than 2 x frames pixels are fitted as they are)."""
    _check_series(series_gd)
    if model not in MODELS:
        raise InvalidParameterError(f"model must be one of {MODELS}, got {model!r}")
    mask = np.asarray(mask)
    if mask.shape != series_gd.shape:
        raise InvalidLabelsError(f"mask {mask.shape} does not match the series frames {series_gd.shape}")
    mask = mask.astype(bool)
    if not mask.any():
        raise InvalidLabelsError("the mask selects no pixel")
    aif_curve, foot, peak, own = aif_on_series_times(aif, series_gd)
    curves = _tissue_curves(series_gd, foot)[:, mask].T
    if denoise:    # low-rank temporal projection (denoise.py): no spatial blur; skipped below 2 T pixels
        curves, _ = svd_denoise(curves)
    if model == "2cxm" and constrained:
        if regions is None:
            region_index = np.zeros(curves.shape[0], dtype=np.int64)
        else:
            regions = np.asarray(regions)
            if regions.shape != series_gd.shape:
                raise InvalidLabelsError(
                    f"region map {regions.shape} does not match the series frames {series_gd.shape}")
            region_index = regions[mask].astype(np.int64)     # 0 (no region) becomes a region of its own
        res = _constrained_2cxm(curves, region_index, aif_curve, series_gd.times, foot, peak, aif.hematocrit, own,
                                **kwargs)
    else:
        res = _fit(model, curves, aif_curve, series_gd.times, foot, peak, aif.hematocrit, own, **kwargs)
    maps = {}

    def put(values):
        out = np.full(series_gd.shape, np.nan, dtype=np.float32)
        out[mask] = np.asarray(values, dtype=np.float32)
        return out

    maps["mbf"] = put(res.mbf)
    for key, name in MAP_KEYS[model].items():
        maps[name] = put(res.params[key])
    maps["rmse"] = put(res.rmse)
    return maps


def fit_regions(series_gd: SliceSeries, aif: AIF, region_map: np.ndarray, model: str = "fermi",
                constrained: bool = True, **kwargs) -> Dict[int, dict]:
    """Fit the mean [Gd] curve of each region (e.g. AHA segment numbers; 0 = background, ignored).

    2CXM with ``constrained`` (default): all five parameters per region, then vp, ve and the delay shared as their
    medians over the regions and MBF and PS fitted again per region (a small segment's curve is noisy;
    ``constrained=False`` keeps the free per-region fit).

    Returns {region id: {"mbf": ml/min/g, <other parameters>, "n_pixels": int, "curve": mean curve (T,)}}."""
    _check_series(series_gd)
    regions = np.asarray(region_map)
    if regions.shape != series_gd.shape:
        raise InvalidLabelsError(f"region map {regions.shape} does not match the series frames {series_gd.shape}")
    ids = [int(i) for i in np.unique(regions) if i != 0]
    if not ids:
        raise InvalidLabelsError("the region map holds no region (all zero)")
    aif_curve, foot, peak, own = aif_on_series_times(aif, series_gd)
    tissue = _tissue_curves(series_gd, foot)
    curves = np.stack([tissue[:, regions == i].mean(axis=1) for i in ids])
    if model == "2cxm":   # few, low-noise curves: let LM converge fully (30 iterations stop short at high flow)
        kwargs.setdefault("max_iter", 100)
    if model == "2cxm" and constrained:
        # each region is its own group of one curve: free fits, shared medians, then MBF and PS per region (the mean
        # curve of all regions would mix flows into a curve 2CXM cannot fit)
        res = _constrained_2cxm(curves, np.arange(len(ids)), aif_curve, series_gd.times, foot, peak, aif.hematocrit,
                                own, **kwargs)
    else:
        res = _fit(model, curves, aif_curve, series_gd.times, foot, peak, aif.hematocrit, own, **kwargs)
    out = {}
    for j, i in enumerate(ids):
        entry = {"mbf": float(res.mbf[j]), "n_pixels": int((regions == i).sum()), "curve": curves[j],
                 "rmse": float(res.rmse[j])}
        for key, name in MAP_KEYS[model].items():
            entry[name] = float(res.params[key][j])
        out[i] = entry
    return out
