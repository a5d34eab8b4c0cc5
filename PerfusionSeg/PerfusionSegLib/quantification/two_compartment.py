"""Two-compartment exchange model (2CXM; Brix / Sourbron & Buckley 2011), vectorised over pixels.

Plasma (volume fraction vp) is fed by plasma flow Fp and exchanges with the interstitium (ve, "Visf") through PS:
    vp dCp/dt = Fp (Ca - Cp) - PS (Cp - Ce),   ve dCe/dt = PS (Cp - Ce),   Ct = vp Cp + ve Ce,
with Ca the *plasma* AIF = blood AIF / (1 - Hct). The impulse response is bi-exponential,
    R(t) = w1 exp(l1 t) + w2 exp(l2 t),  R(0) = Fp,  R'(0) = -Fp^2 / vp,
l1,2 the eigenvalues of the 2x2 system. Reported: MBF = Fp / (1 - Hct) (blood flow), PS, both in ml/min/g
(x 60 / rho, rho = 1.05 g/ml); Vp and Visf in ml/g (volume fractions / rho); delay t0 in s.

Fit: scaling (Fp, PS, vp, ve) by a common factor scales R without changing its shape, so a look-up table of shapes
(Fp/vp, PS/vp, ve/vp, delay) with the amplitude solved in closed form per pixel gives the start; batched
Levenberg-Marquardt then refines all five parameters on the whole curve (the model describes recirculation and
leakage, so no first-pass window is needed).
"""
from __future__ import annotations

import itertools
from typing import Optional

import numpy as np

from ..errors import InvalidParameterError
from .aif import DEFAULT_HEMATOCRIT
from .blas_threads import single_thread_blas
from .fermi import MBFResult, _prepare, _to_map
from .kinetic_fitting import (TISSUE_DENSITY_G_PER_ML, fine_convolution, levenberg_marquardt, lut_search_top,
                              pad_matrix, per_second_to_ml_min_g, shift_padded)

# parameter vector: Fp (1/s), PS (1/s), vp, ve, t0 (s)
LOWER = np.array([1e-4, 1e-5, 0.01, 0.02, 0.0])
UPPER = np.array([0.3, 0.2, 0.4, 0.6, 6.0])
VP_REF = 0.1
TV_MAX = 40.0                                      # s, vp / Fp
GRID_FP = tuple(np.geomspace(0.02, 1.2, 12))      # Fp with vp = 0.1 (shape only; amplitude is free)
GRID_PS = tuple(np.geomspace(0.005, 0.6, 7))
GRID_VE = (0.15, 0.3, 0.6, 1.2, 2.4)
GRID_DELAY = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
N_STARTS = 3                                       # LM starts per pixel


def two_compartment_response(t: np.ndarray, fp, ps, vp, ve) -> np.ndarray:
    """2CXM impulse response (N, T) for times t >= 0 (no delay)."""
    fp, ps, vp, ve = (np.asarray(v, dtype=np.float64).reshape(-1, 1) for v in (fp, ps, vp, ve))
    tr = -(fp + ps) / vp - ps / ve
    det = fp * ps / (vp * ve)
    disc = np.sqrt(np.maximum(tr * tr / 4 - det, 0.0))
    l1, l2 = tr / 2 + disc, tr / 2 - disc
    gap = np.where(np.abs(l1 - l2) > 1e-12, l1 - l2, 1e-12)
    w1 = (-fp * fp / vp - fp * l2) / gap
    w2 = fp - w1
    t = np.asarray(t, dtype=np.float64)[None, :]
    return w1 * np.exp(l1 * t) + w2 * np.exp(l2 * t)


def two_compartment_mbf(tissue: np.ndarray, aif: np.ndarray, times: np.ndarray, mask: Optional[np.ndarray] = None, *,
                        hematocrit: float = DEFAULT_HEMATOCRIT, density: float = TISSUE_DENSITY_G_PER_ML,
                        max_iter: int = 30, keep_fitted: bool = False, oversample: int = 4,
                        min_vascular_transit_s: Optional[float] = None,
                        aif_times: Optional[np.ndarray] = None) -> MBFResult:
    """Pixel-wise 2CXM fit. tissue (N, T) or (T, Y, X) + mask; aif: (T,) *blood* [Gd], baseline removed.
    Returns MBFResult with mbf and params {mbf, ps, vp, visf (ml/g), delay_s, fp_per_s, ...}."""
    with single_thread_blas():
        return _two_compartment_mbf(tissue, aif, times, mask, hematocrit=hematocrit, density=density,
                                    max_iter=max_iter, keep_fitted=keep_fitted, oversample=oversample,
                                    min_vascular_transit_s=min_vascular_transit_s, aif_times=aif_times)


def _two_compartment_mbf(tissue, aif, times, mask, *, hematocrit, density, max_iter, keep_fitted, oversample,
                         min_vascular_transit_s, aif_times=None):
    if not 0.0 <= hematocrit < 1.0:
        raise InvalidParameterError(f"haematocrit must be in [0, 1), got {hematocrit}")
    y, a, grid, dt, shape2d, m, aif_at, pos = _prepare(tissue, aif, times, mask, aif_times)
    plasma = a / (1.0 - hematocrit)
    nt = y.shape[1]
    # the bi-exponential falls fast (vascular transit 1-3 s): the model runs on a grid `oversample` times finer than
    # the frames (PCHIP AIF), is delayed there, and is read back at the frame times
    u = max(1, int(oversample))
    plasma_at = None if aif_at is None else (lambda t: aif_at(t) / (1.0 - hematocrit))
    tr, conv = fine_convolution(plasma, dt, u, aif_at=plasma_at, t0=float(grid[0]))
    conv = pad_matrix(conv)
    fine_pos = None if pos is None else pos * u
    scale = np.maximum(np.abs(y).max(axis=1, keepdims=True), 1e-6)   # fit in normalised units: better conditioning
    yn = y / scale

    def model_raw(p):
        r = two_compartment_response(tr, p[:, 0], p[:, 1], p[:, 2], p[:, 3])
        return shift_padded(r @ conv, p[:, 4] / (dt / u), stride=u, positions=fine_pos)

    # look-up start: shapes with vp = VP_REF; a common factor c scales (Fp, PS, vp, ve) and the curve
    combos = np.array(list(itertools.product(GRID_FP, GRID_PS, GRID_VE, GRID_DELAY)))
    shape_params = np.column_stack([combos[:, 0] * VP_REF, combos[:, 1] * VP_REF, np.full(len(combos), VP_REF),
                                    combos[:, 2] * VP_REF, combos[:, 3]])
    basis = model_raw(shape_params)                          # (G, T)
    # several starts per pixel (the N_STARTS best look-up shapes), each refined by LM, the lowest cost kept: from
    # the single best start LM ended in a wrong basin on some noise-free high-flow phantom curves (-40 %, measured)
    n_starts = max(1, int(N_STARTS))
    best, amp = lut_search_top(y, basis, n_starts)
    n_pix = y.shape[0]
    p0 = shape_params[best.ravel()].copy()                   # (N * S, 5), pixel-major
    p0[:, :4] *= np.maximum(amp.ravel(), 1e-6)[:, None]
    p0 = np.clip(p0, LOWER, UPPER)
    yn = np.repeat(yn, n_starts, axis=0)
    scale = np.repeat(scale, n_starts, axis=0)

    # refine in (Fp, PS, Tv = vp / Fp, ve, t0): a lower bound on the vascular transit time Tv (one frame interval
    # by default) stops noise from driving Fp up while vp shrinks (a spike shorter than a frame fixes only vp)
    tv_min = dt if min_vascular_transit_s is None else float(min_vascular_transit_s)
    q0 = p0.copy()
    q0[:, 2] = np.clip(p0[:, 2] / p0[:, 0], tv_min, TV_MAX)

    def model_q(q):
        p = q.copy()
        p[:, 2] = q[:, 0] * q[:, 2]
        return model_raw(p)

    fd = np.array([1e-4, 1e-4, 1e-3, 1e-4, 0.01])
    lower_q = np.array([LOWER[0], LOWER[1], tv_min, LOWER[3], LOWER[4]])
    upper_q = np.array([UPPER[0], UPPER[1], TV_MAX, UPPER[3], UPPER[4]])
    res = _lm_scaled(model_q, yn, scale, q0, fd, max_iter, lower_q, upper_q)
    if n_starts > 1:   # keep each pixel's best start
        pick = np.argmin(res.cost.reshape(n_pix, n_starts), axis=1) + n_starts * np.arange(n_pix)
        res.params, res.cost, res.converged = res.params[pick], res.cost[pick], res.converged[pick]
        res.iterations_used = res.iterations_used[pick]
        scale = scale[pick]
    p = res.params.copy()
    p[:, 2] = res.params[:, 0] * res.params[:, 2]
    fitted = model_raw(p) if keep_fitted else None
    rmse = np.sqrt(res.cost / nt) * scale[:, 0]
    fb = p[:, 0] / (1.0 - hematocrit)
    params = {"fp_per_s": p[:, 0], "ps_per_s": p[:, 1], "vp_fraction": p[:, 2], "ve_fraction": p[:, 3],
              "delay_s": p[:, 4], "ps": per_second_to_ml_min_g(p[:, 1], density), "vp": p[:, 2] / density,
              "visf": p[:, 3] / density}
    mbf = per_second_to_ml_min_g(fb, density)
    return MBFResult(
        mbf=_to_map(mbf, shape2d, m).astype(np.float32) if shape2d else mbf,
        params={k: _to_map(v, shape2d, m) for k, v in params.items()},
        fitted=fitted, rmse=_to_map(rmse, shape2d, m),
        converged=res.converged if shape2d is None else _to_map(res.converged.astype(np.float32), shape2d, m),
        model="2cxm", density_g_per_ml=density,
        info={"dt_s": dt, "fit_frames": nt, "hematocrit": hematocrit, "iterations": res.iterations,
              "median_iterations": float(np.median(res.iterations_used))})


def _lm_scaled(model_raw, yn, scale, p0, fd, max_iter, lower, upper, step_scale=None):
    """LM where pixel n's model is model_raw / scale[n]: the scale is passed along with the parameters as an
    extra, fixed column so the solver's active-subset bookkeeping keeps them together."""
    pz = np.column_stack([p0, scale[:, 0]])
    lower = np.append(lower, 0.0)
    upper = np.append(upper, np.inf)

    def model(q):
        return model_raw(q[:, :5]) / q[:, 5:6]

    if step_scale is None:
        step_scale = np.array([1e-3, 1e-3, 0.05, 0.005, 0.05, 1.0])
    res = levenberg_marquardt(model, yn, pz, lower, upper, fd_steps=np.append(fd, 0.0), max_iter=max_iter,
                              step_scale=step_scale, fixed=[5])
    res.params = res.params[:, :5]
    return res


# constrained fit: start grid over Fp (1/s) and the extraction fraction E (PS = -Fp ln(1 - E))
GRID_FP_CONSTRAINED = tuple(np.geomspace(0.003, 0.3, 24))
GRID_E_CONSTRAINED = (0.1, 0.25, 0.4, 0.55, 0.7, 0.85)


def two_compartment_mbf_constrained(tissue: np.ndarray, aif: np.ndarray, times: np.ndarray, region_index: np.ndarray,
                                    region_vp: np.ndarray, region_ve: np.ndarray, region_delay_s: np.ndarray, *,
                                    hematocrit: float = DEFAULT_HEMATOCRIT,
                                    density: float = TISSUE_DENSITY_G_PER_ML, max_iter: int = 30,
                                    oversample: int = 4, keep_fitted: bool = False,
                                    aif_times: Optional[np.ndarray] = None) -> MBFResult:
    """2CXM with vp, ve and the delay fixed per region (fractions and s, e.g. from the fit of each region's mean
    curve): only Fp and PS are fitted per curve. tissue (N, T); region_index (N,) picks each curve's row of the
    region arrays (R,).

    Why: on a single noisy pixel curve the five 2CXM parameters trade off (a short vascular spike against a higher
    flow), which made the free pixel fit 4x less precise than the region fit of the same data; vp and ve vary far
    less between neighbouring pixels than flow does, and the low-noise region curve determines them well.
    """
    with single_thread_blas():
        return _two_compartment_constrained(tissue, aif, times, region_index, region_vp, region_ve, region_delay_s,
                                            hematocrit, density, max_iter, oversample, keep_fitted, aif_times)


def _two_compartment_constrained(tissue, aif, times, region_index, region_vp, region_ve, region_delay_s, hematocrit,
                                 density, max_iter, oversample, keep_fitted, aif_times):
    if not 0.0 <= hematocrit < 1.0:
        raise InvalidParameterError(f"haematocrit must be in [0, 1), got {hematocrit}")
    y, a, grid, dt, _, _, aif_at, pos = _prepare(np.asarray(tissue, dtype=np.float64), aif, times, None, aif_times)
    idx = np.asarray(region_index, dtype=np.int64).reshape(-1)
    fixed = np.column_stack([np.asarray(v, dtype=np.float64).reshape(-1)
                             for v in (region_vp, region_ve, region_delay_s)])
    if idx.size != y.shape[0] or idx.min(initial=0) < 0 or idx.max(initial=0) >= fixed.shape[0]:
        raise InvalidParameterError("region_index must give a valid region for every curve")
    if not np.all(np.isfinite(fixed)):
        raise InvalidParameterError("region vp, ve and delay must be finite")
    fixed = np.clip(fixed, LOWER[2:], UPPER[2:])
    plasma = a / (1.0 - hematocrit)
    u = max(1, int(oversample))
    plasma_at = None if aif_at is None else (lambda t: aif_at(t) / (1.0 - hematocrit))
    tr, conv = fine_convolution(plasma, dt, u, aif_at=plasma_at, t0=float(grid[0]))
    conv = pad_matrix(conv)
    fine_pos = None if pos is None else pos * u

    def model_raw(p):
        r = two_compartment_response(tr, p[:, 0], p[:, 1], p[:, 2], p[:, 3])
        return shift_padded(r @ conv, p[:, 4] / (dt / u), stride=u, positions=fine_pos)

    # start: per region, the (Fp, E) grid curve nearest to each of its curves (no free amplitude: vp, ve are fixed)
    fp_g, e_g = (g.ravel() for g in np.meshgrid(GRID_FP_CONSTRAINED, GRID_E_CONSTRAINED, indexing="ij"))
    p0 = np.empty((y.shape[0], 5))
    for r in np.unique(idx):
        rows = np.flatnonzero(idx == r)
        cand = np.column_stack([fp_g, -fp_g * np.log(1.0 - e_g), np.tile(fixed[r], (fp_g.size, 1))])
        cand = np.clip(cand, LOWER, UPPER)
        basis = model_raw(cand)                                           # (G, T)
        sse = (basis ** 2).sum(axis=1)[None, :] - 2.0 * y[rows] @ basis.T
        p0[rows] = cand[np.argmin(sse, axis=1)]
    scale = np.maximum(np.abs(y).max(axis=1, keepdims=True), 1e-6)
    # LM on (Fp, PS); vp, ve, delay and the pixel's scale ride along as fixed columns
    res = levenberg_marquardt(lambda q: model_raw(q[:, :5]) / q[:, 5:6], y / scale, np.column_stack([p0, scale[:, 0]]),
                              np.append(LOWER, 0.0), np.append(UPPER, np.inf),
                              fd_steps=np.array([1e-4, 1e-4, 0, 0, 0, 0]), max_iter=max_iter,
                              step_scale=np.array([1e-3, 1e-3, 1, 1, 1, 1]), fixed=[2, 3, 4, 5])
    p = res.params[:, :5]
    fitted = model_raw(p) if keep_fitted else None
    rmse = np.sqrt(res.cost / y.shape[1]) * scale[:, 0]
    params = {"fp_per_s": p[:, 0], "ps_per_s": p[:, 1], "vp_fraction": p[:, 2], "ve_fraction": p[:, 3],
              "delay_s": p[:, 4], "ps": per_second_to_ml_min_g(p[:, 1], density), "vp": p[:, 2] / density,
              "visf": p[:, 3] / density}
    return MBFResult(mbf=per_second_to_ml_min_g(p[:, 0] / (1.0 - hematocrit), density), params=params, fitted=fitted,
                     rmse=rmse, converged=res.converged, model="2cxm", density_g_per_ml=density,
                     info={"dt_s": dt, "fit_frames": y.shape[1], "hematocrit": hematocrit, "constrained": True,
                           "iterations": res.iterations, "median_iterations": float(np.median(res.iterations_used))})
