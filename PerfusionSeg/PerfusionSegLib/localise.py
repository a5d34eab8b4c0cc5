"""Automatic LV localisation from the first pass itself (no user click).

During the first pass the contrast bolus lights up the RV blood pool first and the LV blood pool a few heartbeats
later. The rule used here:

1. Smooth lightly (space and time), put the frames on a regular time grid, and subtract a pre-contrast baseline
   (frames before the bolus reaches the brightest pixels).
2. Blood-pool candidates are pixels whose peak enhancement is high relative to the brightest enhancing structures
   of the slice (a fraction of the 99.5th percentile of peak enhancement).
3. Each candidate pixel gets an arrival time: the time its enhancement first reaches half of its own peak.
   Early-arriving candidates form the RV (and pulmonary artery), late ones the LV (and aorta, pulmonary veins).
   The split time is Otsu's threshold on the arrival times of the candidates.
4. Late components are scored for being large, round (solid, low eccentricity), strongly enhancing and beside the
   largest early component (the RV); the best is the LV. Its centre is the pixel deepest inside the component
   (distance-transform maximum) unless the centroid is itself well inside, so that the centre always lies in the
   blood pool even when papillary muscles make the region crescent-shaped.
5. Confidence grows with the separation in arrival time between RV and LV, the score margin over the runner-up,
   and the roundness of the chosen region; it is lower when no RV was found.
"""
from __future__ import annotations

from dataclasses import dataclass, asdict, field
from typing import Optional, Sequence, Union

import numpy as np
from scipy import ndimage
from scipy.interpolate import interp1d

from .errors import InvalidParameterError, InvalidSeriesError
from .series import SliceSeries

__all__ = ["LVLocation", "locate_lv"]

FIRST_PASS_S = 20.0     # the first pass ends this long after the brightest (RV) peak
CNR_MIN = 5.0           # peak enhancement over frame-to-frame noise below which a pixel is not trusted
MIN_LAG_S = 1.5         # ... and at least this long (or one frame)
RV_MIN_HALF_THICKNESS_MM = 4.5  # the RV blood pool is thicker than ~9 mm; thinner early bands are edges or ghosts
LV_CUTS = (0.5, 0.65, 0.8)  # fractions of the bright late enhancement tried for the LV blood pool
MAX_LAG_S = 20.0        # RV-to-LV arrival delay is a few heartbeats (pulmonary transit); longer is recirculation


@dataclass
class LVLocation:
    center_yx: tuple            # (row, column) in input pixels, floats
    confidence: float           # 0..1
    rv_center_yx: Optional[tuple]
    method: str
    lv_mask: Optional[np.ndarray] = None   # bool (Y, X): the blood-pool region that was found (for display / QC)
    maps: dict = field(default_factory=dict, repr=False)  # QC maps: arrival (s), peak enhancement, cnr, rv_mask

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("lv_mask")
        d.pop("maps")
        return d


def _as_array_and_times(series, times, spacing):
    if isinstance(series, SliceSeries):
        return series.data, series.times, series.spacing
    data = np.asarray(series, dtype=np.float32)
    if data.ndim != 3 or data.shape[0] < 5:
        raise InvalidSeriesError(f"locate_lv needs a (T, Y, X) series with at least 5 frames, got shape {data.shape}")
    if not np.all(np.isfinite(data)):
        raise InvalidSeriesError("series contains NaN or Inf values")
    if times is None:
        times = np.arange(data.shape[0], dtype=np.float64)   # one frame per heartbeat is the usual acquisition
    times = np.asarray(times, dtype=np.float64)
    if times.shape != (data.shape[0],) or np.any(np.diff(times) <= 0):
        raise InvalidParameterError("times must be strictly increasing with one value per frame")
    return data, times, spacing


def _regular_grid(data: np.ndarray, times: np.ndarray) -> tuple:
    """Linear resampling onto the median frame interval (irregular triggers would distort arrival times)."""
    dt = float(np.median(np.diff(times)))
    grid = np.arange(times[0], times[-1] + 1e-9, dt)
    if len(grid) == len(times) and np.allclose(grid, times, atol=0.05 * dt):
        return data, times
    return interp1d(times, data, axis=0, assume_sorted=True)(grid).astype(np.float32), grid


def _otsu(values: np.ndarray, bins: int = 64) -> float:
    hist, edges = np.histogram(values, bins=bins)
    centers = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centers[int(np.argmax(between[:-1]))]) if len(between) > 1 else float(centers[0])


def _region_shape(mask: np.ndarray) -> tuple:
    """(roundness 0..1 from the inertia ellipse axes, solidity-like fill ratio of the bounding ellipse)."""
    yy, xx = np.nonzero(mask)
    if len(yy) < 3:
        return 0.0, 0.0
    cov = np.cov(np.vstack([yy, xx]).astype(float)) + np.eye(2) / 12.0
    ev = np.sort(np.linalg.eigvalsh(cov))
    roundness = float(np.sqrt(ev[0] / ev[1]))
    ellipse_area = 4.0 * np.pi * np.sqrt(ev[0] * ev[1])  # area of the ellipse with the same second moments
    fill = float(min(1.0, len(yy) / max(ellipse_area, 1e-6)))
    return roundness, fill


def _interior_point(mask: np.ndarray) -> tuple:
    dist = ndimage.distance_transform_edt(mask)
    cy, cx = ndimage.center_of_mass(mask)
    iy, ix = int(round(cy)), int(round(cx))
    inside = 0 <= iy < mask.shape[0] and 0 <= ix < mask.shape[1] and dist[iy, ix] >= 0.6 * dist.max()
    if inside:
        return float(cy), float(cx)
    iy, ix = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return float(iy), float(ix)


def locate_lv(series: Union[SliceSeries, np.ndarray], spacing: Optional[Sequence[float]] = None,
              times: Optional[Sequence[float]] = None) -> LVLocation:
    """Find the LV blood pool centre of a first-pass series (SliceSeries or (T, Y, X) array).

    ``spacing`` (dy, dx) mm and ``times`` (s) are used for arrays; without times one frame per second is assumed,
    without spacing the size limits are relative to the field of view.
    """
    data, times, spacing = _as_array_and_times(series, times, spacing)
    data, times = _regular_grid(np.asarray(data, dtype=np.float32), np.asarray(times, dtype=np.float64))
    t, ny, nx = data.shape
    px_mm = float(np.mean(spacing)) if spacing is not None else None

    # light smoothing: about 1.5 mm in space (1 px without spacing), one frame in time
    sig_px = 1.5 / px_mm if px_mm else 1.0
    sm = ndimage.gaussian_filter(data, sigma=(0.0, sig_px, sig_px), mode="nearest")
    # per-pixel noise: robust spread of the curve around a smooth version of itself (the bolus is only a few frames
    # of the series, so the median ignores it). It flags pixels that flicker or oscillate with breathing motion or
    # ghosting at tissue edges, whose "peaks" are not contrast enhancement.
    noise = 1.4826 * np.median(np.abs(sm - ndimage.gaussian_filter1d(sm, sigma=3.0, axis=0, mode="nearest")), axis=0)
    sm = ndimage.gaussian_filter1d(sm, sigma=1.0, axis=0, mode="nearest")

    # baseline: frames before the bolus reaches the brightest pixels
    rise = sm - sm[:2].mean(axis=0)
    top = np.percentile(rise.reshape(t, -1), 99.0, axis=1)
    peak_frame = int(np.argmax(top))
    foot = np.nonzero(top[: peak_frame + 1] < 0.15 * top[peak_frame])[0]
    n_base = int(foot[-1]) + 1 if len(foot) else 1
    n_base = max(1, min(n_base, t - 3))
    base = np.median(sm[:n_base], axis=0)
    enh = sm - base

    # first-pass window: from the baseline to well after the LV peak (recirculation is not wanted)
    dt = float(times[1] - times[0])
    t_end = min(t, peak_frame + int(np.ceil(FIRST_PASS_S / dt)) + 1)
    enh_fp = enh[:t_end]
    peak = enh_fp.max(axis=0)
    ref = float(np.percentile(peak, 99.5))
    if ref <= 0:
        raise InvalidSeriesError("no enhancement found: is this a first-pass perfusion series?")

    # arrival time: first frame (interpolated) where enhancement reaches half of its own peak
    half = 0.5 * peak
    above = enh_fp >= half[None]
    first = np.argmax(above, axis=0)
    prev = np.clip(first - 1, 0, None)
    e0 = np.take_along_axis(enh_fp, prev[None], 0)[0]
    e1 = np.take_along_axis(enh_fp, first[None], 0)[0]
    frac = np.where(first > 0, (half - e0) / np.maximum(e1 - e0, 1e-6), 0.0)
    arrival = times[prev] + np.clip(frac, 0, 1) * dt * (first > 0)

    cnr = peak / (noise + 1e-3 * ref)
    reliable = cnr >= CNR_MIN

    # without spacing, sizes in mm are unknown: try a whole-chest field of view (350 mm diagonal) and crops around
    # the heart (half and a quarter of that), and keep the most confident answer
    diag = float(np.hypot(ny, nx))
    scales = (px_mm,) if px_mm else tuple(fov / diag for fov in (350.0, 175.0, 90.0))
    best = None
    for mm in scales:
        min_area_px = max(4.0, 60.0 / mm ** 2)                    # ~9 mm diameter
        for level in (0.45, 0.35, 0.55, 0.25):
            result = _search(level, peak, arrival, reliable, cnr, ref, min_area_px, mm, dt)
            if result is not None and (best is None or result["confidence"] > best["confidence"]):
                best = result
            if result is not None and result["confidence"] >= 0.6:
                break
    if best is None:
        raise InvalidSeriesError("could not find a blood pool that enhances during the first pass")
    lv_mask, rv_mask = best["lv_mask"], best["rv_mask"]
    center = _interior_point(lv_mask)
    rv_center = _interior_point(rv_mask) if rv_mask is not None else None
    method = ("first-pass arrival timing (RV early, LV late)" if rv_mask is not None
              else "first-pass enhancement (no RV found)")
    return LVLocation(center_yx=center, confidence=round(float(best["confidence"]), 3), rv_center_yx=rv_center,
                      method=method, lv_mask=lv_mask,
                      maps={"arrival": arrival, "peak": peak, "cnr": cnr, "rv_mask": rv_mask,
                            "candidates": best["candidates"], "level": best["level"]})


def _components(mask: np.ndarray, min_area: float):
    lab, n = ndimage.label(mask)
    if n == 0:
        return lab, []
    areas = ndimage.sum_labels(mask, lab, index=np.arange(1, n + 1))
    return lab, [i + 1 for i in range(n) if areas[i] >= min_area]


def _disk(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius ** 2


def _rv_candidates(cand, peak, arrival, cnr, min_area, mm, dt, keep=4):
    """Possible RV blood pools, strongest first: the earliest-arriving part of each thick candidate region.

    RV and LV often touch in the candidate mask (thin septum, partial volume), so each region is cut to the pixels
    arriving within one lag step of its own earliest pixels. Thin structures (a body edge moving with breathing,
    ghosting bands) are removed by an opening with a disk. The weight is the enhancement mass times the median
    contrast-to-noise, so flickering regions weigh little. Several are returned: the pairing with an LV decides.
    """
    disk = _disk(max(1, int(round(RV_MIN_HALF_THICKNESS_MM / mm))))
    regions, ids = _components(cand, min_area)
    step = max(dt, MIN_LAG_S)
    out = []
    for i in ids:
        region = regions == i
        t0 = float(np.percentile(arrival[region], 10.0))
        early = region & (arrival <= t0 + step)
        thick = ndimage.binary_opening(early, structure=disk)
        if thick.sum() < min_area:
            continue
        lab, _ = ndimage.label(early)
        core_labels = np.unique(lab[thick])
        sizes = ndimage.sum_labels(thick, lab, index=core_labels)
        mask = lab == core_labels[int(np.argmax(sizes))]   # the thickest early piece, with its shaved rim
        weight = float(peak[mask].sum()) * float(np.median(cnr[mask]))
        out.append((weight, mask))
    out.sort(key=lambda x: -x[0])
    return out[:keep]


def _lv_beside(rv_mask, peak, arrival, reliable, ref, min_area, mm, dt):
    """Score late, round, bright components beside a given RV; returns the sorted list (score, mask, roundness)."""
    rv_time = float(np.median(arrival[rv_mask]))
    dist_rv = ndimage.distance_transform_edt(~rv_mask) * mm
    # the LV is judged against its own brightness: with a strong RV peak (saturation, dual bolus) the LV
    # can enhance less than half as much as the RV
    pool = (reliable & ~rv_mask & (dist_rv <= 60.0) & (arrival > rv_time + max(dt, MIN_LAG_S))
            & (arrival <= rv_time + MAX_LAG_S) & (peak > 0.2 * ref))
    if pool.sum() < min_area:
        return []
    late_ref = float(np.percentile(peak[pool], 95.0))
    # several cuts: the blood pool is the bright core, myocardium joins it at low cuts and lowers its score
    scores = []
    for frac in LV_CUTS:
        late = pool & (peak > frac * late_ref)
        late = ndimage.binary_opening(late) if late.sum() > 50 else late
        scores += _score_lv(late, peak, late_ref, min_area, dist_rv)
    scores.sort(key=lambda x: -x[0])
    return scores


def _score_lv(late, peak, ref, min_area, dist_rv):
    llab, lids = _components(late, min_area)
    scores = []
    for i in lids:
        m = llab == i
        roundness, fill = _region_shape(m)
        strength = float(peak[m].mean() / ref)
        filled = ndimage.binary_fill_holes(m)
        solid = float(m.sum()) / float(filled.sum())   # a ring (myocardium around a pool) is not a blood pool
        s = np.sqrt(m.sum()) * (0.3 + roundness) * (0.3 + fill) * strength ** 2 * solid ** 2
        if dist_rv is not None:
            gap_mm = float(dist_rv[m].min())
            s /= 1.0 + (max(0.0, gap_mm - 12.0) / 6.0) ** 2  # beside the RV: a septum is ~10 mm
        scores.append((s, m, roundness))
    scores.sort(key=lambda x: -x[0])
    return scores


def _search(level, peak, arrival, reliable, cnr, ref, min_area, mm, dt):
    """RV then LV at one enhancement threshold (fraction of the brightest enhancement)."""
    cand = (peak > level * ref) & reliable
    cand = ndimage.binary_opening(cand) if cand.sum() > 50 else cand
    if cand.sum() < 2 * min_area:
        return None
    best = None
    rvs = _rv_candidates(cand, peak, arrival, cnr, min_area, mm, dt)
    first_arrival = min((float(np.median(arrival[m])) for _, m in rvs), default=0.0)
    for rv_weight, rv_mask in rvs:
        lvs = _lv_beside(rv_mask, peak, arrival, reliable, ref, min_area, mm, dt)
        if not lvs:
            continue
        # the RV is the first strong pool to light up: a candidate arriving a lag step after another is likely the LV
        late_rv = float(np.median(arrival[rv_mask])) - first_arrival > max(dt, MIN_LAG_S)
        pair_score = lvs[0][0] * (rv_weight / rvs[0][0]) ** 0.25 * (0.25 if late_rv else 1.0)
        if best is None or pair_score > best[0]:
            best = (pair_score, rv_mask, lvs)
    if best is not None:
        _, rv_mask, lvs = best
    else:  # no RV / LV pair: the roundest bright late region, with lower confidence
        rv_mask = None
        lvs = _score_lv(cand & (arrival > _otsu(arrival[cand])), peak, ref, min_area, None)
        if not lvs:
            return None
    s0, lv_mask, roundness = lvs[0]
    rivals = [sc for sc, m, _ in lvs[1:] if not (m & lv_mask).any()]   # the same pool at another cut is no rival
    margin = 1.0 - (rivals[0] / s0 if rivals else 0.0)
    if rv_mask is not None:
        lag = float(np.median(arrival[lv_mask]) - np.median(arrival[rv_mask]))
        spread = float(np.std(arrival[lv_mask]) + np.std(arrival[rv_mask])) + 1e-3
        separation = float(np.clip(lag / (2.0 * spread), 0.0, 1.0))
    else:
        separation = 0.0
    confidence = (0.4 * separation + 0.35 * margin + 0.25 * roundness) * (1.0 if rv_mask is not None else 0.6)
    return {"confidence": float(np.clip(confidence, 0, 1)), "lv_mask": lv_mask, "rv_mask": rv_mask,
            "candidates": cand, "level": level}
