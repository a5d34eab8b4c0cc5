"""Automatic LV localisation from the first pass itself (no user click).

During the first pass the contrast bolus lights up the RV blood pool first and the LV blood pool a few heartbeats
later. The rule used here:

1. Put the frames on a regular time grid (real, possibly irregular times), smooth lightly (~1.5 mm, one frame) and
   subtract a pre-contrast baseline (frames before the bolus reaches the brightest pixels). Peak enhancement is
   taken within the first pass (up to 20 s after the brightest peak), so recirculation does not count.
2. Per pixel: an arrival time (when enhancement first reaches half of its own peak) and a contrast-to-noise ratio
   (peak over the robust spread of the curve around a smoothed copy). Pixels that flicker or oscillate with
   breathing motion or ghosting (body edges) have a low ratio and are not trusted.
3. Blood-pool candidates: trusted pixels above a fraction of the slice's brightest enhancement (99.5th percentile),
   tried at several fractions. RV candidates: the earliest-arriving part of each candidate region, thick (> ~6 mm)
   if possible (thin early bands are body edges or ghosts, or a thin apical RV: kept at half weight), weighed by
   enhancement mass times contrast-to-noise.
4. For each RV candidate, LV candidates: trusted pixels within 60 mm that arrive 1.5-20 s after it, cut at several
   fractions of their own brightness (the LV can enhance much less than the RV in signal images). Components are
   scored for size, roundness, fill, solidity (a ring of myocardium around a pool is no pool; a region wrapped around
   the RV candidate is rejected), brightness against the local and the slice's brightest enhancement (organs such as
   the liver enhance late but weakly) and a gap to the RV no wider than a septum. The best RV/LV pair wins; the pair
   score also weighs the RV candidate's mass, and an RV candidate that lights up a lag step after another one
   (it is then the LV or the aorta) counts a tenth.
5. Shape check when the timing is close: if the chosen LV lights up less than three frames after the chosen RV,
   both are rated for LV-likeness (roundness x fill x solidity x the fraction of a 2-8 mm band around them that
   enhances like myocardium rather than staying dark like lung, fat or air). When the "RV" looks 1.5x more like an LV
   than the "LV" does, the two are swapped: the phantom's randomised preset (rest) has cases where the LV lights up
   with or even before the RV, and a thin crescent RV is then taken for the later pool. The same check runs when
   the "LV" touches the "RV" (closer than a septum, WALL_GAP_MM): in apical slices (small cavity, thick wall, thin
   RV) the LV pool was taken for the RV and its own later-enhancing wall for the LV; the pool then becomes the LV
   and the RV is left unknown (lower confidence).
6. The centre is the centroid of the chosen region when it is well inside it, else the point deepest inside
   (distance-transform maximum), so it lies in the blood pool even for crescent-shaped regions. When the region's
   arrival times spread by more than a frame (myocardium joined to the pool: it is fed through the coronaries and
   lights up later), its latest and dimmest pixels are dropped first.
7. Confidence grows with the RV-LV separation in arrival time (relative to the spread inside each), the score
   margin over the best distinct rival and the roundness of the LV; it is lower when no RV was found.

Without spacing (plain arrays) sizes in mm are unknown: a few fields of view are tried and the most confident answer
is kept. Without times one frame per second is assumed (one frame per heartbeat is the usual acquisition).
Measured on all labelled real series and on phantom slices: docs/preprocessing.md, scripts/evaluate_localisation.py.
"""
from __future__ import annotations

from dataclasses import dataclass, asdict, field
from typing import Optional, Sequence, Union

import numpy as np
from scipy import ndimage
from scipy.interpolate import interp1d

from .errors import InvalidParameterError, InvalidSeriesError
from .series import SliceSeries

__all__ = ["LVLocation", "locate_lv", "locate_lv_study"]

FIRST_PASS_S = 20.0     # the first pass ends this long after the brightest (RV) peak
CNR_MIN = 5.0           # peak enhancement over the curve's own noise below which a pixel is not trusted
MIN_LAG_S = 1.5         # the LV arrives at least this long (or one frame) after the RV
RV_MIN_HALF_THICKNESS_MM = 3.0  # RV blood pool thicker than ~6 mm; thinner early bands are edges, ghosts or thin RVs
WEAK_POOL_FRACTION = 0.3   # of the brightest enhancement: a blood pool enhancing less than this is suspect
RV_WEIGHT_POWER = 0.5   # how much the RV candidate's mass counts in an RV/LV pair
LATE_RV_FACTOR = 0.1    # an "RV" lighting up a lag step after another candidate is probably the LV or the aorta
NO_RV_FACTOR = 0.5      # scores of LVs found without any RV candidate
THIN_RV_FACTOR = 0.5    # weight of an early region thinner than the RV thickness filter
LV_CUTS = (0.5, 0.65, 0.8)  # fractions of the bright late enhancement tried for the LV blood pool
AMBIGUOUS_LAG_FRAMES = 3.0  # RV-to-LV delay (frames) below which the pair is also checked by shape
SWAP_RATIO = 1.5        # the "RV" must look this much more like an LV than the "LV" for the two to be swapped
RING_MM = (2.0, 8.0)    # band around a pool candidate where the LV's myocardium is looked for
WALL_GAP_MM = 3.0       # an RV and an LV pool are at least a septum apart; closer, the "LV" is a pool's own wall
MAX_LAG_S = 20.0        # RV-to-LV arrival delay is a few heartbeats (pulmonary transit); longer is recirculation
RV_CANDIDATES = 8       # strongest early regions paired with LVs: a thin apical RV can rank below the aorta, gut, liver
PRIOR_SIGMA_MM = 15.0   # spread of the LV position expected from a study's other slices (in-plane)
STUDY_AGREE_MM = 20.0   # in-plane distance within which two slices' LV centres agree (same LV cavity)


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


def _blood_core(mask: np.ndarray, peak: np.ndarray, arrival: np.ndarray, dt: float) -> np.ndarray:
    """The part of a found region that is blood rather than myocardium joined to it: myocardium is fed through the
    coronaries, so it enhances after the LV blood and (usually) less. Only when the region's arrival times really
    spread (more than a frame between quartiles) are its latest and dimmest pixels dropped."""
    q1, q3 = np.percentile(arrival[mask], [25.0, 75.0])
    if q3 - q1 <= max(dt, 1.0):
        return mask
    core = mask & (arrival <= np.percentile(arrival[mask], 70.0)) & (peak >= np.percentile(peak[mask], 25.0))
    lab, n = ndimage.label(core)
    if n == 0:
        return mask
    sizes = ndimage.sum_labels(core, lab, index=np.arange(1, n + 1))
    biggest = lab == int(np.argmax(sizes)) + 1
    return biggest if biggest.sum() >= 0.2 * mask.sum() else mask


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
              times: Optional[Sequence[float]] = None, prior_yx: Optional[Sequence[float]] = None,
              prior_sigma_mm: float = PRIOR_SIGMA_MM) -> LVLocation:
    """Find the LV blood pool centre of a first-pass series (SliceSeries or (T, Y, X) array).

    ``spacing`` (dy, dx) mm and ``times`` (s) are used for arrays; without times one frame per second is assumed,
    without spacing the size limits are relative to the field of view.
    ``prior_yx``: where the LV is expected (input pixels; e.g. from the study's other slices, see
    :func:`locate_lv_study`): each LV candidate's score is weighed by a Gaussian of its distance to it
    (``prior_sigma_mm``).
    """
    if prior_yx is not None:
        prior_yx = tuple(float(v) for v in prior_yx)
        if len(prior_yx) != 2 or not all(np.isfinite(prior_yx)) or not float(prior_sigma_mm) > 0:
            raise InvalidParameterError(f"prior_yx must be a finite (row, column) and prior_sigma_mm > 0, got "
                                        f"{prior_yx!r}, {prior_sigma_mm!r}")
        prior_sigma_mm = float(prior_sigma_mm)
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
        prior = None
        if prior_yx is not None:
            yy, xx = np.indices((ny, nx), dtype=np.float64)
            prior = np.exp(-0.5 * (np.hypot(yy - prior_yx[0], xx - prior_yx[1]) * mm / prior_sigma_mm) ** 2)
        min_area_px = _min_area_px(mm)
        for level in (0.45, 0.35, 0.55, 0.25):
            result = _search(level, peak, arrival, reliable, cnr, ref, min_area_px, mm, dt, prior)
            if result is not None and (best is None or result["score"] > best["score"]):
                best = result
            if result is not None and result["confidence"] >= 0.6:
                break
    center = None if best is None else _interior_point(_blood_core(best["lv_mask"], peak, arrival, dt))
    if prior_yx is not None and (center is None or float(np.hypot(center[0] - prior_yx[0], center[1] - prior_yx[1]))
                                 * (px_mm or 1.0) > 2.0 * prior_sigma_mm):
        # no candidate near where the study's other slices put the LV: take the bright pool found there
        pool = _pool_at(prior_yx, peak, reliable, px_mm or 1.0, prior_sigma_mm)
        if pool is not None:
            best = {"confidence": 0.3, "lv_mask": pool, "rv_mask": None, "candidates": pool, "level": None,
                    "score": 0.0, "method": "the enhancing pool at the expected (prior) position"}
            center = _interior_point(_blood_core(pool, peak, arrival, dt))
    if best is None:
        raise InvalidSeriesError("could not find a blood pool that enhances during the first pass")
    lv_mask, rv_mask = best["lv_mask"], best["rv_mask"]
    rv_center = _interior_point(rv_mask) if rv_mask is not None else None
    method = best.get("method") or ("first-pass arrival timing (RV early, LV late)" if rv_mask is not None
                                    else "first-pass enhancement (no RV found)")
    return LVLocation(center_yx=center, confidence=round(float(best["confidence"]), 3), rv_center_yx=rv_center,
                      method=method, lv_mask=lv_mask,
                      maps={"arrival": arrival, "peak": peak, "cnr": cnr, "rv_mask": rv_mask,
                            "candidates": best["candidates"], "level": best["level"]})


def _min_area_px(mm: float) -> float:
    """Smallest blood pool considered, in pixels of ``mm``: about 9 mm across."""
    return max(4.0, 60.0 / mm ** 2)


def _components(mask: np.ndarray, min_area: float):
    lab, n = ndimage.label(mask)
    if n == 0:
        return lab, []
    areas = ndimage.sum_labels(mask, lab, index=np.arange(1, n + 1))
    return lab, [i + 1 for i in range(n) if areas[i] >= min_area]


def _disk(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius ** 2


def _rv_candidates(cand, peak, arrival, cnr, min_area, mm, dt, keep=RV_CANDIDATES):
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
        lab, _ = ndimage.label(early)
        if thick.sum() >= min_area:
            core_labels = np.unique(lab[thick])
            sizes = ndimage.sum_labels(thick, lab, index=core_labels)
            mask = lab == core_labels[int(np.argmax(sizes))]   # the thickest early piece, with its shaved rim
            thin = 1.0
        else:   # a thin early region (apical RV crescent, or an edge/ghost band): kept, but weighing less
            sizes = ndimage.sum_labels(early, lab, index=np.arange(1, lab.max() + 1))
            if sizes.max() < min_area:
                continue
            mask = lab == int(np.argmax(sizes)) + 1
            thin = THIN_RV_FACTOR
        weight = thin * float(peak[mask].sum()) * float(np.median(cnr[mask]))
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
    late_ref = float(np.percentile(peak[pool], 99.0))
    # several cuts: the blood pool is the bright core, myocardium joins it at low cuts and lowers its score
    scores = []
    for frac in LV_CUTS:
        late = pool & (peak > frac * late_ref)
        late = ndimage.binary_opening(late) if late.sum() > 50 else late
        scores += _score_lv(late, peak, late_ref, ref, min_area, dist_rv, rv_mask)
    scores.sort(key=lambda x: -x[0])
    return scores


def _lv_likeness(mask, peak, cnr, mm, other):
    roundness, fill = _region_shape(mask)
    solid = float(mask.sum()) / float(ndimage.binary_fill_holes(mask).sum())
    return roundness * fill * solid * (0.1 + _ring_fraction(mask, peak, cnr, mm, other))


def _ring_fraction(m, peak, cnr, mm, exclude=None):
    """Fraction of the band 2-8 mm around a pool that looks like myocardium: it enhances (reliably, less than the
    pool) rather than staying dark. The LV blood pool is wrapped in myocardium; the RV's free wall is thin, so most
    of the band around the RV is lung, fat or chest wall, which do not enhance. Pixels as bright as the pool count
    neither way."""
    r_out = int(np.ceil(RING_MM[1] / mm)) + 1
    ys, xs = np.nonzero(m)
    y0, y1 = max(0, ys.min() - r_out), min(m.shape[0], ys.max() + r_out + 1)
    x0, x1 = max(0, xs.min() - r_out), min(m.shape[1], xs.max() + r_out + 1)
    sub = m[y0:y1, x0:x1]
    d = ndimage.distance_transform_edt(~sub) * mm
    band = (d > RING_MM[0]) & (d <= RING_MM[1])
    if exclude is not None:
        band &= ~exclude[y0:y1, x0:x1]
    p, c = peak[y0:y1, x0:x1][band], cnr[y0:y1, x0:x1][band]
    pool_level = float(np.median(peak[m]))
    bright = p > 0.6 * pool_level
    myo = ~bright & (p > 0.04 * pool_level) & (c >= 3.0)
    n = int((~bright).sum())
    return float(myo.sum()) / n if n else 0.0


def _score_lv(late, peak, local_ref, ref, min_area, dist_rv, rv_mask=None):
    """Score components as LV blood pool: size, roundness, fill, solidity, brightness, adjacency to the RV."""
    llab, lids = _components(late, min_area)
    scores = []
    for i in lids:
        m = llab == i
        filled = ndimage.binary_fill_holes(m)
        if rv_mask is not None:
            cy, cx = (int(round(v)) for v in ndimage.center_of_mass(m))
            if (filled & rv_mask).any() or rv_mask[cy, cx]:
                continue    # a region wrapped around the "RV" is myocardium around a pool, never the LV itself
        roundness, fill = _region_shape(m)
        solid = float(m.sum()) / float(filled.sum())   # a ring (myocardium around a pool) is not a blood pool
        strength = float(peak[m].mean() / local_ref)
        # organs (liver, spleen) enhance late and can be large, but far less than blood: weigh the enhancement
        # against the slice's brightest pools too (the LV of signal images reaches >~40% of the RV)
        absolute = min(1.0, float(peak[m].mean() / ref) / WEAK_POOL_FRACTION)
        s = np.sqrt(m.sum()) * (0.3 + roundness) * (0.3 + fill) * strength ** 2 * solid ** 2 * absolute ** 2
        if dist_rv is not None:
            gap_mm = float(dist_rv[m].min())
            s /= 1.0 + (max(0.0, gap_mm - 12.0) / 6.0) ** 2  # beside the RV: a septum is ~10 mm
        scores.append((s, m, roundness))
    scores.sort(key=lambda x: -x[0])
    return scores


def _pool_at(prior_yx, peak, reliable, mm, sigma_mm):
    """The enhancing pool at an expected LV position: the trusted component holding the prior point (or the nearest
    one within ``sigma_mm``) at the highest of a few cuts of the local peak enhancement where it is at least ~9 mm
    across. None when there is none."""
    ny, nx = peak.shape
    py, px = int(round(prior_yx[0])), int(round(prior_yx[1]))
    if not (0 <= py < ny and 0 <= px < nx):
        return None
    yy, xx = np.indices(peak.shape)
    near = np.hypot(yy - py, xx - px) * mm <= 2.0 * sigma_mm
    local = float(np.percentile(peak[near & reliable], 99.0)) if (near & reliable).any() else 0.0
    if local <= 0:
        return None
    min_area = _min_area_px(mm)
    for frac in (0.8, 0.65, 0.5):
        lab, n = ndimage.label(reliable & (peak > frac * local))
        if n == 0:
            continue
        dist, (iy, ix) = ndimage.distance_transform_edt(lab == 0, return_indices=True)
        if dist[py, px] * mm > sigma_mm:
            continue
        comp = lab == lab[iy[py, px], ix[py, px]]
        if comp.sum() >= min_area:
            return comp
    return None


def _weigh_by_prior(scores, prior):
    """LV candidates weighed by the prior at their centroid (a study's other slices say where the LV is)."""
    if prior is None or not scores:
        return scores
    out = []
    for sc, m, rnd in scores:
        cy, cx = (int(round(v)) for v in ndimage.center_of_mass(m))
        out.append((sc * float(prior[cy, cx]), m, rnd))
    out.sort(key=lambda x: -x[0])
    return out


def _search(level, peak, arrival, reliable, cnr, ref, min_area, mm, dt, prior=None):
    """RV then LV at one enhancement threshold (fraction of the brightest enhancement)."""
    cand = (peak > level * ref) & reliable
    cand = ndimage.binary_opening(cand) if cand.sum() > 50 else cand
    if cand.sum() < 2 * min_area:
        return None
    best = None
    rvs = _rv_candidates(cand, peak, arrival, cnr, min_area, mm, dt)
    first_arrival = min((float(np.median(arrival[m])) for _, m in rvs), default=0.0)
    for rv_weight, rv_mask in rvs:
        lvs = _weigh_by_prior(_lv_beside(rv_mask, peak, arrival, reliable, ref, min_area, mm, dt), prior)
        if not lvs:
            continue
        # the RV is the first strong pool to light up: a candidate arriving a lag step after another is likely the
        # LV (or the aorta) itself
        late_rv = float(np.median(arrival[rv_mask])) - first_arrival > max(dt, MIN_LAG_S)
        pair_score = lvs[0][0] * (rv_weight / rvs[0][0]) ** RV_WEIGHT_POWER * (LATE_RV_FACTOR if late_rv else 1.0)
        if best is None or pair_score > best[0]:
            best = (pair_score, rv_mask, lvs)
    if best is not None:
        score, rv_mask, lvs = best
    else:  # no RV / LV pair: the roundest bright late region, with lower confidence
        rv_mask = None
        lvs = _weigh_by_prior(_score_lv(cand & (arrival > _otsu(arrival[cand])), peak, ref, ref, min_area, None),
                              prior)
        if not lvs:
            return None
        score = NO_RV_FACTOR * lvs[0][0]
    s0, lv_mask, roundness = lvs[0]
    if rv_mask is not None:
        # LV and RV lighting up within about a frame of each other: timing cannot tell them apart, shape can (the LV
        # is a round pool wrapped in myocardium, the RV a crescent against the chest wall or the lung)
        lag = float(np.median(arrival[lv_mask]) - np.median(arrival[rv_mask]))
        # an "LV" touching its "RV" has no septum between them: it is the later-enhancing wall of that pool (apical
        # slices: a small cavity, thick myocardium, a thin RV), so the same shape test decides
        close = lag < AMBIGUOUS_LAG_FRAMES * dt
        touching = float(ndimage.distance_transform_edt(~rv_mask)[lv_mask].min()) * mm < WALL_GAP_MM
        if close or touching:
            like_lv = _lv_likeness(lv_mask, peak, cnr, mm, rv_mask)
            like_rv = _lv_likeness(rv_mask, peak, cnr, mm, lv_mask)
            if like_rv > SWAP_RATIO * like_lv:
                # timing close: the two pools swap roles; only touching: the "LV" was wall, the true RV is unknown
                lv_mask, rv_mask = rv_mask, (lv_mask if close else None)
                roundness = _region_shape(lv_mask)[0]
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
            "candidates": cand, "level": level, "score": float(score)}


# --------------------------------------------------------------------------------------------------------------------
# a study: the slices of one LV, so their centres should agree in-plane
# --------------------------------------------------------------------------------------------------------------------
def _plane_mapping(series: SliceSeries):
    """(pixel (y, x) -> patient mm, patient mm -> pixel (y, x) projected onto the slice plane), or None without an
    affine."""
    a = None if series.affine is None else np.asarray(series.affine, dtype=np.float64)
    if a is None or a.shape != (4, 4) or not np.all(np.isfinite(a)):
        return None
    axes = a[:3, :2]                                   # columns: mm per column step (x), mm per row step (y)
    if np.linalg.matrix_rank(axes) < 2:
        return None

    def to_patient(yx):
        return a[:3, 3] + axes @ np.array([yx[1], yx[0]], dtype=np.float64)

    def to_pixel(p):
        xy = np.linalg.lstsq(axes, np.asarray(p, dtype=np.float64) - a[:3, 3], rcond=None)[0]
        return float(xy[1]), float(xy[0])
    return to_patient, to_pixel


def locate_lv_study(slices: Sequence[SliceSeries], agree_mm: float = STUDY_AGREE_MM,
                    prior_sigma_mm: float = PRIOR_SIGMA_MM, detector=None) -> list:
    """LV locations of the slices of one study (a :class:`~PerfusionSegLib.series.Study` or a list of SliceSeries);
    ``None`` for a slice where :func:`locate_lv` finds nothing.

    Each slice is first located on its own. The slices cut the same LV, so their centres lie within a few
    millimetres of each other in-plane. With three or more slices, a slice whose centre is more than ``agree_mm``
    from the centre the others agree on (each of them within ``agree_mm`` of their mean), and whose own confidence
    is below theirs, is located again with that centre as a prior (:func:`locate_lv` ``prior_yx``); the new answer
    is kept when it lands within ``agree_mm`` of the prior, else the first one stays. Needs each slice's affine
    (patient geometry); without it every slice keeps its own answer.

    ``detector``: an optional second opinion, ``detector(series) -> ((y, x), score) or None`` (e.g.
    ``PerfusionDAUGSLib.lv_detector.PoolLVDetector``), asked only when the slices still disagree after that step;
    see :func:`_second_opinion`.
    """
    seq = list(getattr(slices, "slices", slices))
    if not all(isinstance(s, SliceSeries) for s in seq):
        raise InvalidParameterError("locate_lv_study needs SliceSeries (or a Study)")
    locs = []
    for s in seq:
        try:
            locs.append(locate_lv(s))
        except InvalidSeriesError:
            locs.append(None)
    maps = [_plane_mapping(s) for s in seq]
    found = [i for i, loc in enumerate(locs) if loc is not None]
    if len(found) < 3 or any(maps[i] is None for i in found):
        return locs
    first = list(locs)
    for i in found:
        s = seq[i]
        to_pixel = maps[i][1]
        mm = float(np.mean(s.spacing))
        others = [j for j in found if j != i]
        pts = np.array([to_pixel(maps[j][0](first[j].center_yx)) for j in others])   # in slice i's pixels
        mean = pts.mean(axis=0)
        if not _agree(pts * mm, agree_mm):
            continue                                   # the others do not agree among themselves
        if float(np.hypot(*(np.asarray(first[i].center_yx) - mean))) * mm <= agree_mm:
            continue                                   # this slice agrees with them
        if first[i].confidence >= min(first[j].confidence for j in others):
            continue                                   # it is surer of itself than they are
        again = locate_lv(s, prior_yx=tuple(mean), prior_sigma_mm=prior_sigma_mm)
        if float(np.hypot(*(np.asarray(again.center_yx) - mean))) * mm <= agree_mm:
            again.method += "; re-located with the study's other slices as a prior"
            locs[i] = again
    if detector is not None:
        _second_opinion(seq, locs, maps, found, detector, agree_mm)
    return locs


def _agree(points: np.ndarray, agree_mm: float) -> bool:
    """Whether in-plane points (N, 2) in mm all lie within ``agree_mm`` of their mean."""
    return bool(np.all(np.hypot(*(points - points.mean(axis=0)).T) <= agree_mm))


def _second_opinion(seq, locs, maps, found, detector, agree_mm) -> None:
    """When the slices' centres still disagree, ask ``detector`` for every slice. Its answers are taken only when
    they agree among themselves *and* with the timing rule on at least one slice (the anchor: two methods that
    fail differently seldom agree on a wrong structure); then every slice whose centre is more than ``agree_mm``
    from the detector's gets the detector's. Otherwise nothing changes. In place on ``locs``."""
    if len(found) != len(seq):
        return
    ref = seq[0]
    mm = float(np.mean(ref.spacing))
    to_ref = maps[0][1]

    def in_plane(i, yx):                                # slice i's pixel -> mm in the first slice's plane
        return np.asarray(to_ref(maps[i][0](yx)), dtype=np.float64) * mm

    ours = np.array([in_plane(i, locs[i].center_yx) for i in found])
    if _agree(ours, agree_mm):
        return
    answers = [detector(s) for s in seq]
    if any(a is None for a in answers):
        return
    theirs = np.array([in_plane(i, answers[i][0]) for i in found])
    apart = np.hypot(*(ours - theirs).T)
    if not _agree(theirs, agree_mm) or not np.any(apart <= agree_mm):
        return
    for i in found:
        if apart[i] > agree_mm:
            (y, x), score = answers[i]
            locs[i] = LVLocation(center_yx=(float(y), float(x)), confidence=float(np.clip(score, 0.0, 1.0)),
                                 rv_center_yx=None,
                                 method=f"{locs[i].method}; replaced by the LV detector (the study's slices "
                                        f"disagreed; the detector agrees across slices and with this rule on "
                                        f"{int(np.sum(apart <= agree_mm))} of them; score {score:.2f})")
