"""Fermi-constrained deconvolution (Jerosch-Herold 1998) with a fitted delay, vectorised over pixels.

Tissue [Gd] = AIF (*) R, with the impulse response constrained to a Fermi function, delayed by t0:
    R(t) = F (1 + exp(-k tau)) / (1 + exp(k (t - t0 - tau)))   for t >= t0, 0 before,
normalised so that R(t0) = F: MBF is the impulse-response amplitude at its start. With the AIF as *blood* [Gd],
F is blood flow per ml of tissue (1/s); MBF (ml/min/g) = 60 F / rho, rho = 1.05 g/ml (myocardial density).
(A plasma AIF, blood / (1 - Hct), gives plasma flow (1 - Hct) F; we report blood flow.)

Fit: a look-up search over (tau, k, t0) with F solved in closed form per pixel gives the start, then batched
Levenberg-Marquardt refines (F, log tau, log k, t0). The fit uses the first pass (up to the end of the AIF first
pass, where recirculation starts), the customary window for the Fermi model, which cannot describe leakage and
recirculation well.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..errors import InvalidParameterError
from .aif import detect_foot_peak, validate_aif_curve
from .blas_threads import single_thread_blas
from .kinetic_fitting import (TISSUE_DENSITY_G_PER_ML, aif_interpolator, fine_convolution, levenberg_marquardt,
                              per_second_to_ml_min_g,
                              lut_search, pad_matrix, regular_grid,
                              shift_padded)

# parameter vector: F (1/s), log tau (s), log k (1/s), t0 (s)
LOWER = np.array([0.0, np.log(0.2), np.log(0.02), 0.0])
UPPER = np.array([0.25, np.log(40.0), np.log(10.0), 6.0])
# look-up grid: at high flow (short shoulder) a coarse grid started LM in a wrong basin (+50-77 % on noise-free
# phantom curves at MBF 4.8-5.4, measured); this grid removes that (<= 3.5 % up to 5.5 ml/min/g)
GRID_TAU = tuple(np.geomspace(0.8, 24.0, 11))
GRID_K = tuple(np.geomspace(0.1, 4.0, 7))
GRID_DELAY = tuple(np.arange(0.0, 4.01, 1.0 / 3.0))


@dataclass
class MBFResult:
    """Per-pixel (or per-region) kinetic fit. mbf in ml/min/g; ``params`` holds model parameters by name."""

    mbf: np.ndarray
    params: dict
    fitted: Optional[np.ndarray]
    rmse: np.ndarray
    converged: np.ndarray
    model: str
    density_g_per_ml: float = TISSUE_DENSITY_G_PER_ML
    info: dict = field(default_factory=dict)


def fermi_response(t: np.ndarray, flow, tau, k) -> np.ndarray:
    """Fermi impulse response (N, T) on times ``t`` >= 0 (no delay), R(0) = flow."""
    flow, tau, k = (np.asarray(v, dtype=np.float64).reshape(-1, 1) for v in (flow, tau, k))
    t = np.asarray(t, dtype=np.float64)[None, :]
    return flow * (1.0 + np.exp(-k * tau)) / (1.0 + np.exp(np.clip(k * (t - tau), -50, 50)))


def first_pass_end(aif: np.ndarray, foot: int, peak: int) -> int:
    """Index just past the AIF first pass: the first local minimum after the peak (recirculation starts there),
    searched between peak + (peak - foot) and peak + 4 (peak - foot) + 4; at least foot + 8 frames."""
    y = np.convolve(np.asarray(aif, float), np.ones(3) / 3, mode="same")
    rise = max(peak - foot, 2)
    lo, hi = peak + rise, min(len(y) - 1, peak + 4 * rise + 4)
    end = hi
    for i in range(lo, hi):
        if y[i] <= y[i - 1] and y[i] <= y[i + 1]:
            end = i
            break
    return int(min(len(y), max(end + 1, foot + 8)))


def _prepare(tissue, aif, times, mask, aif_times=None):
    """Curves and AIF on a regular grid over ``times``. With ``aif_times`` the AIF was sampled at its own times
    (e.g. the AIF image read earlier in each beat than the slice): it is interpolated (PCHIP) onto the grid, and the
    returned ``aif_at`` lets the models build their fine AIF from the original samples."""
    tissue = np.asarray(tissue, dtype=np.float64)
    shape2d = None
    if tissue.ndim == 3:
        t_, ny, nx = tissue.shape
        shape2d = (ny, nx)
        m = np.ones((ny, nx), bool) if mask is None else np.asarray(mask, bool)
        if m.shape != (ny, nx):
            raise InvalidParameterError(f"mask {m.shape} does not match the frames {(ny, nx)}")
        tissue = tissue[:, m].T
    elif tissue.ndim == 1:
        tissue = tissue[None]
        m = None
    elif tissue.ndim == 2:
        m = None
    else:
        raise InvalidParameterError(f"tissue curves must be (N, T) or (T, Y, X), got shape {tissue.shape}")
    times = np.asarray(times, dtype=np.float64).reshape(-1)
    if tissue.shape[1] != times.size:
        raise InvalidParameterError(f"tissue curves have {tissue.shape[1]} frames but {times.size} times are given")
    if not np.all(np.isfinite(tissue)):
        raise InvalidParameterError("tissue curves contain NaN or Inf")
    grid, dt = regular_grid(times)
    # irregular frames (ECG jitter, missed beats) stay where they are: the models run on the regular grid and are
    # read at the frames' positions on it (``pos``, in grid intervals; None when the frames are the grid)
    pos = None if (grid.size == times.size and np.allclose(grid, times)) else (times - grid[0]) / dt
    if aif_times is None and pos is None:
        aif = validate_aif_curve(aif, times.size)
        return tissue, aif, grid, dt, shape2d, m, None, pos
    if aif_times is None:      # irregular frames: the AIF samples sit at the same irregular times
        aif_times = times
    aif_times = np.asarray(aif_times, dtype=np.float64).reshape(-1)
    aif = validate_aif_curve(aif, aif_times.size)
    aif_at = aif_interpolator(aif_times, aif)
    return tissue, aif_at(grid), grid, dt, shape2d, m, aif_at, pos


def _to_map(values: np.ndarray, shape2d, m) -> np.ndarray:
    if shape2d is None:
        return values
    out = np.full(shape2d, np.nan, dtype=np.float32)
    out[m] = values
    return out


def fermi_mbf(*args, **kwargs) -> MBFResult:
    """Pixel-wise Fermi MBF (see :func:`_fermi_mbf` for the arguments); BLAS runs single-threaded meanwhile."""
    with single_thread_blas():
        return _fermi_mbf(*args, **kwargs)


def _fermi_mbf(tissue: np.ndarray, aif: np.ndarray, times: np.ndarray, mask: Optional[np.ndarray] = None, *,
              foot: Optional[int] = None, peak: Optional[int] = None, window: str = "first_pass",
              density: float = TISSUE_DENSITY_G_PER_ML, max_iter: int = 50, tol: float = 1e-6, oversample: int = 2, keep_fitted: bool = False,
              aif_times: Optional[np.ndarray] = None) -> MBFResult:
    """Pixel-wise Fermi MBF. tissue: (N, T) curves or a (T, Y, X) series with a (Y, X) mask; aif: (T,) blood [Gd]
    (baseline removed); times: (T,) s. With irregular times the model runs on a grid of the median interval and is
    read at the frame times. ``window``:
    "first_pass" (default) or "all". Maps come back (Y, X) with NaN outside the mask when a series was given.
    ``aif_times``: the AIF's own sample times when they differ from the tissue's (same clock)."""
    y, a, grid, dt, shape2d, m, aif_at, pos = _prepare(tissue, aif, times, mask, aif_times)
    if foot is None or peak is None:
        f_, p_ = detect_foot_peak(a, grid)
        foot = f_ if foot is None else foot
        peak = p_ if peak is None else peak
    nt = grid.size
    end = nt if window == "all" else first_pass_end(a, foot, peak)
    if window not in ("all", "first_pass"):
        raise InvalidParameterError(f"window must be 'first_pass' or 'all', got {window!r}")
    # the model is causal: frames after the window cannot change the fit, so they are not computed at all
    if pos is None:
        y = y[:, :end]
        nt = end
    else:
        keep = pos <= end - 1 + 1e-9
        y, pos = y[:, keep], pos[keep]
        nt = int(keep.sum())
    weights = np.ones(nt)
    # single precision for the curves (halves memory traffic; parameters and normal equations stay double)
    f32 = np.float32
    y = y.astype(f32)
    # model on a grid `oversample` times finer than the frames (PCHIP AIF), delayed there, read back at frame times
    u = max(1, int(oversample))
    tr, conv = fine_convolution(a[:end], dt, u, aif_at=aif_at, t0=float(grid[0]))
    dts = dt / u
    pad = int(np.ceil(UPPER[3] / dts)) + 2                 # zeros for the largest delay: no index clipping
    tr, conv = tr.astype(f32), pad_matrix(conv, pad).astype(f32)
    fine_pos = None if pos is None else pos * u

    def model(p):
        r = fermi_response(tr, p[:, 0], np.exp(p[:, 1]), np.exp(p[:, 2])).astype(f32)
        return shift_padded(r @ conv, p[:, 3] / dts, stride=u, pad=pad, positions=fine_pos)

    def model_and_jacobian(p):
        # unit-flow response G and its derivatives in log tau, log k; one stacked matrix product for all three
        tau, k = np.exp(p[:, 1:2]).astype(f32), np.exp(p[:, 2:3]).astype(f32)
        flow = p[:, 0:1].astype(f32)
        ekt = np.exp(-k * tau)
        e = np.exp(np.clip(k * (tr[None, :] - tau), -50, 50))
        with np.errstate(over="ignore"):
            e = np.minimum(e, f32(1e18))
        b = 1.0 + e
        amp = 1.0 + ekt
        g = amp / b
        dg_dtau = -k * ekt / b + amp * k * e / b ** 2
        dg_dk = -tau * ekt / b - amp * (tr[None, :] - tau) * e / b ** 2
        n = p.shape[0]
        stacked = np.concatenate([g, tau * dg_dtau, k * dg_dk]) @ conv          # (3N, T)
        out, dout = shift_padded(stacked, p[:, 3] / dts, stride=u, repeat=3, with_derivative=True, pad=pad,
                                 positions=fine_pos)
        shifted, dshift, ju, jv = out[:n], dout[:n], out[n:2 * n], out[2 * n:]
        jac = np.empty(shifted.shape + (4,), dtype=f32)
        jac[:, :, 0] = shifted
        jac[:, :, 1] = flow * ju
        jac[:, :, 2] = flow * jv
        jac[:, :, 3] = flow * dshift * f32(1.0 / dts)
        return flow * shifted, jac

    # look-up start: unit-flow curves for a small (tau, k, t0) grid; F by linear least squares per pixel
    combos = np.array(list(itertools.product(np.log(GRID_TAU), np.log(GRID_K), GRID_DELAY)))
    basis = model(np.column_stack([np.ones(len(combos)), combos]))      # (G, T)
    best, flow0 = lut_search(y, basis, amp_max=UPPER[0])          # (the window is all ones: y is cut to it)
    p0 = np.column_stack([flow0, combos[best]])
    fd = np.array([0.0, 1e-3, 1e-3, 0.01])
    res = levenberg_marquardt(model, y, p0, LOWER, UPPER, weights=weights, fd_steps=fd, linear_index=0,
                              max_iter=max_iter, tol=tol, model_and_jacobian=model_and_jacobian,
                              step_scale=np.array([0.002, 0.05, 0.05, 0.05]))
    p = res.params
    flow = p[:, 0]
    npts = max(int(weights.sum()), 1)
    rmse = np.sqrt(res.cost / npts)
    fitted = model(p) if keep_fitted else None
    params = {"flow_per_s": flow, "tau_s": np.exp(p[:, 1]), "k_per_s": np.exp(p[:, 2]), "delay_s": p[:, 3]}
    mbf = per_second_to_ml_min_g(flow, density)
    return MBFResult(
        mbf=_to_map(mbf, shape2d, m).astype(np.float32) if shape2d else mbf,
        params={k: _to_map(v, shape2d, m) for k, v in params.items()},
        fitted=fitted, rmse=_to_map(rmse, shape2d, m), converged=_to_map(res.converged, shape2d, m) if shape2d is None
        else _to_map(res.converged.astype(np.float32), shape2d, m),
        model="fermi", density_g_per_ml=density,
        info={"dt_s": dt, "fit_frames": int(end), "foot": int(foot), "peak": int(peak), "iterations": res.iterations,
              "median_iterations": float(np.median(res.iterations_used))})
