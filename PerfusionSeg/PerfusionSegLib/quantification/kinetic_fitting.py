"""Shared numerics of the kinetic models: regular time grid, discrete convolution with the AIF, fractional delay,
and a batched Levenberg-Marquardt solver (every pixel fitted at once, no Python loop per pixel).

Convolution: tissue(t_i) = dt * sum_j R(t_j) aif(t_i - t_j), trapezoid rule (the j = 0 term weighs 1/2), written as
one matrix product with the lower-triangular Toeplitz matrix of the AIF, so N pixels cost one (N, T) x (T, T) product.
Delay: the AIF reaches the myocardium t0 seconds after the LV; the model curve is shifted by t0 with linear
interpolation, which equals convolving the linearly-interpolated delayed AIF and stays continuous in t0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import numpy as np
from scipy.linalg import toeplitz

from ..errors import InvalidParameterError

TISSUE_DENSITY_G_PER_ML = 1.05   # myocardium: ml/s per ml tissue -> ml/min/g multiplies by 60 / 1.05


def per_second_to_ml_min_g(flow_per_s, density: float = TISSUE_DENSITY_G_PER_ML):
    return np.asarray(flow_per_s) * 60.0 / density


def regular_grid(times: np.ndarray, dt: Optional[float] = None) -> Tuple[np.ndarray, float]:
    """A regular grid covering ``times`` (the median interval unless ``dt`` is given)."""
    times = np.asarray(times, dtype=np.float64)
    if times.ndim != 1 or times.size < 10 or np.any(np.diff(times) <= 0):
        raise InvalidParameterError("frame times must be at least 10 strictly increasing values")
    dt = float(np.median(np.diff(times))) if dt is None else float(dt)
    n = int(np.floor((times[-1] - times[0]) / dt + 1e-6)) + 1
    return times[0] + dt * np.arange(n), dt


def resample_rows(values: np.ndarray, times: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Linear interpolation of each row of (N, T) onto ``grid`` (identity when the grid equals the times)."""
    values = np.asarray(values, dtype=np.float64)
    if grid.size == times.size and np.allclose(grid, times):
        return values
    idx = np.clip(np.searchsorted(times, grid, side="right") - 1, 0, times.size - 2)
    w = np.clip((grid - times[idx]) / (times[idx + 1] - times[idx]), 0.0, 1.0)
    return values[..., idx] * (1 - w) + values[..., idx + 1] * w


def convolution_matrix(aif: np.ndarray, dt: float) -> np.ndarray:
    """(T, T) matrix M with (R @ M)[i] = dt * trapezoid sum_j R[j] aif[i - j]."""
    a = np.asarray(aif, dtype=np.float64)
    first_col = np.zeros_like(a)
    first_col[0] = a[0]                       # scipy takes the diagonal from the first column
    m = toeplitz(first_col, a).copy()         # m[j, i] = a[i - j] for i >= j, 0 below
    m[0, :] *= 0.5                            # trapezoid: the R(0) end point counts half
    return dt * m


def fine_convolution(aif: np.ndarray, dt: float, oversample: int = 1, aif_at=None, t0: float = 0.0):
    """(fine times (Tf,), convolution matrix (Tf, Tf)) on a grid ``oversample`` times finer than the frames.

    The AIF is sampled every dt but is smooth: it is interpolated with PCHIP (shape preserving, no overshoot).
    A sharp stress AIF rises in 2-3 frames; with linear interpolation (or none) the model's AIF differs enough from
    the true one to bias the fitted flow by a few percent (2CXM: +4%, measured), which PCHIP removes (+1%).
    ``aif_at``: a callable giving the AIF at absolute times (PCHIP over the AIF's own samples, when they were taken
    at other times than the tissue frames); the fine grid then starts at ``t0`` (the first tissue frame).
    """
    from scipy.interpolate import PchipInterpolator

    a = np.asarray(aif, dtype=np.float64)
    u = max(1, int(oversample))
    t = np.arange(a.size) * dt
    tf = np.arange((a.size - 1) * u + 1) * (dt / u)
    if aif_at is not None:
        af = np.asarray(aif_at(t0 + tf), dtype=np.float64)
    else:
        af = a if u == 1 else PchipInterpolator(t, a)(tf)
    return tf, convolution_matrix(af, dt / u)


def aif_interpolator(aif_times: np.ndarray, aif: np.ndarray):
    """PCHIP through the AIF samples at their own times, held constant outside them."""
    from scipy.interpolate import PchipInterpolator

    ta = np.asarray(aif_times, dtype=np.float64)
    f = PchipInterpolator(ta, np.asarray(aif, dtype=np.float64), extrapolate=False)
    return lambda t: f(np.clip(np.asarray(t, dtype=np.float64), ta[0], ta[-1]))


def pad_matrix(conv: np.ndarray, pad: int = 1) -> np.ndarray:
    """The convolution matrix with ``pad`` leading zero columns: R @ pad_matrix(M, pad) is a zero-padded curve,
    ready for :func:`shift_padded` without copying. A pad longer than the largest delay (in samples) + 1 lets the
    shift index without clipping."""
    return np.concatenate([np.zeros((conv.shape[0], pad), dtype=conv.dtype), conv], axis=1)


def shift_padded(padded: np.ndarray, delay_samples: np.ndarray, stride: int = 1, repeat: int = 1,
                 with_derivative: bool = False, pad: int = 1, positions: Optional[np.ndarray] = None):
    """Delay rows of a zero-padded array (``pad`` leading zero columns, then the curve) by ``delay_samples``
    (linear interpolation; before the start the curve is 0) and read every ``stride``-th sample.

    ``repeat``: the array stacks ``repeat`` blocks of N rows sharing the N delays. With ``with_derivative``, also
    returns d(out)/d(delay) per sample. ``positions``: read the curve at these (fractional) sample positions instead
    of every ``stride``-th sample (frames at irregular times, e.g. ECG-triggered with a missed beat).
    """
    rows, tp = padded.shape
    t = tp - pad
    if positions is not None:
        d = np.tile(np.asarray(delay_samples, dtype=np.float64).reshape(-1), repeat)
        q = np.clip(np.asarray(positions, dtype=np.float64)[None, :] - d[:, None], -1.0, t - 1.0)
        lo = np.minimum(np.floor(q).astype(np.int64), t - 2)          # curve index, -1 = the zero before the start
        w = (q - lo).astype(padded.dtype)
        flat = (tp * np.arange(rows) + pad)[:, None] + lo
        vals = padded.ravel()
        a, b = vals[flat], vals[flat + 1]
        out = a + w * (b - a)
        return (out, a - b) if with_derivative else out
    d = np.clip(np.asarray(delay_samples, dtype=np.float64).reshape(-1), 0.0, t - 1.0)
    m = np.floor(d).astype(np.int64)
    f = np.tile((d - m)[:, None], (repeat, 1)).astype(padded.dtype)
    n_out = (t - 1) // stride + 1
    row0 = (tp * np.arange(rows) + pad - np.tile(m, repeat))[:, None]           # flat index of curve[n, -m]
    vals = padded.ravel()
    if pad >= int(m.max(initial=0)) + 2:     # enough zeros on the left: plain indexing, no clipping
        flat = row0 + stride * np.arange(n_out)[None, :]
        a, b = vals[flat], vals[flat - 1]
    else:
        src = stride * np.arange(n_out)[None, :] - np.tile(m, repeat)[:, None]   # tap a index in the curve
        base = (tp * np.arange(rows) + pad - 1)[:, None]
        a = vals[np.maximum(src, -1) + 1 + base]
        b = vals[np.maximum(src - 1, -1) + 1 + base]
    out = a + f * (b - a)
    return (out, b - a) if with_derivative else out


def shift_rows(curves: np.ndarray, delay_samples: np.ndarray, stride: int = 1) -> np.ndarray:
    """out[n, i] = curves[n, stride * i - d_n] by linear interpolation (samples before the start are 0: pre-bolus).

    ``stride`` > 1 reads a finely sampled curve back at the frame times."""
    padded = np.concatenate([np.zeros((curves.shape[0], 1), dtype=curves.dtype), curves], axis=1)
    return shift_padded(padded, delay_samples, stride)


def shift_rows_with_derivative(curves: np.ndarray, delay_samples: np.ndarray, stride: int = 1):
    """shift_rows and its derivative with respect to the delay (per fine sample)."""
    padded = np.concatenate([np.zeros((curves.shape[0], 1), dtype=curves.dtype), curves], axis=1)
    return shift_padded(padded, delay_samples, stride, with_derivative=True)


def lut_search(y: np.ndarray, basis: np.ndarray, *, amp_max: Optional[float] = None, chunk: int = 4096):
    """Best look-up curve per row of y (N, T) among ``basis`` (G, T) with a free non-negative amplitude (closed form):
    returns (index (N,), amplitude (N,)). Works in chunks of pixels so that the (N, G) score table stays small."""
    den = np.maximum((basis.astype(np.float64) ** 2).sum(axis=1), 1e-30)
    best = np.empty(y.shape[0], dtype=np.int64)
    amp = np.empty(y.shape[0])
    for start in range(0, y.shape[0], chunk):
        yc = y[start:start + chunk]
        num = (yc @ basis.T).astype(np.float64)                      # (n, G) y . b
        c = np.clip(num / den, 0.0, amp_max)
        score = -2.0 * c * num + c * c * den                         # sse minus the constant |y|^2
        k = np.argmin(score, axis=1)
        best[start:start + chunk] = k
        amp[start:start + chunk] = c[np.arange(k.size), k]
    return best, amp


def lut_search_top(y: np.ndarray, basis: np.ndarray, k: int, *, chunk: int = 2048):
    """The ``k`` best look-up curves per row (as :func:`lut_search`): returns (index (N, k), amplitude (N, k)),
    best first. Starting a local fit from several of them avoids a wrong basin that the single best start can lie in."""
    den = np.maximum((basis.astype(np.float64) ** 2).sum(axis=1), 1e-30)
    k = int(min(k, basis.shape[0]))
    best = np.empty((y.shape[0], k), dtype=np.int64)
    amp = np.empty((y.shape[0], k))
    for start in range(0, y.shape[0], chunk):
        yc = y[start:start + chunk]
        num = (yc @ basis.T).astype(np.float64)
        c = np.clip(num / den, 0.0, None)
        score = -2.0 * c * num + c * c * den
        top = np.argpartition(score, k - 1, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(score, top, axis=1), axis=1)
        top = np.take_along_axis(top, order, axis=1)
        best[start:start + chunk] = top
        amp[start:start + chunk] = np.take_along_axis(c, top, axis=1)
    return best, amp


@dataclass
class LMResult:
    params: np.ndarray        # (N, P)
    cost: np.ndarray          # (N,) weighted sum of squared residuals
    iterations: int
    converged: np.ndarray     # (N,) bool
    iterations_used: Optional[np.ndarray] = None   # (N,) iterations each pixel ran


def levenberg_marquardt(model: Callable[[np.ndarray], np.ndarray], y: np.ndarray, p0: np.ndarray,
                        lower: np.ndarray, upper: np.ndarray, *, weights: Optional[np.ndarray] = None,
                        fd_steps: Optional[np.ndarray] = None, linear_index: Optional[int] = None,
                        max_iter: int = 40, tol: float = 1e-7, lam0: float = 1e-2,
                        model_and_jacobian: Optional[Callable] = None, xtol: float = 1e-4,
                        step_scale: Optional[np.ndarray] = None, fixed=()) -> LMResult:
    """Batched, box-constrained (projected) Levenberg-Marquardt with forward-difference Jacobians.

    model(p (N, P)) -> (N, T). Each pixel keeps its own damping; a step is accepted per pixel when its cost falls.
    ``linear_index``: a parameter the model is proportional to (its Jacobian column is model / p, no extra call).
    ``model_and_jacobian(p) -> (f (N, T), J (N, T, P))``: analytic Jacobian, used instead of finite differences.
    A pixel stops when an accepted step lowers its cost by less than ``tol`` (relative), or when a rejected step is
    already smaller than ``xtol`` in units of ``step_scale`` (per parameter; default 1).
    ``fixed``: indices of parameters carried along unchanged (per-pixel constants the model needs).
    """
    y = np.asarray(y)
    y = y if y.dtype in (np.float32, np.float64) else y.astype(np.float64)
    p = np.clip(np.asarray(p0, dtype=np.float64).copy(), lower, upper)
    n, npar = p.shape
    w = np.ones(y.shape[1], dtype=y.dtype) if weights is None else np.asarray(weights, dtype=y.dtype)
    h = np.full(npar, 1e-4) if fd_steps is None else np.asarray(fd_steps, dtype=np.float64)
    step_scale = np.ones(npar) if step_scale is None else np.asarray(step_scale, dtype=np.float64)
    lam = np.full(n, lam0)
    f = model(p)
    cost = ((y - f) ** 2 * w).sum(axis=1, dtype=np.float64)
    active = np.ones(n, dtype=bool)
    free = np.array([k for k in range(npar) if k not in set(fixed)])
    eye = np.eye(free.size)
    it = 0
    iterations_used = np.zeros(n, dtype=np.int32)
    for it in range(1, max_iter + 1):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        iterations_used[idx] += 1
        pa, fa = p[idx], f[idx]
        if model_and_jacobian is not None:
            fa, jac = model_and_jacobian(pa)
            jac = jac[:, :, free]
        else:
            jac = _fd_jacobian(model, pa, fa, h, upper, linear_index, free)
        r = (y[idx] - fa) * w
        jw = jac * w[None, :, None]
        jtj = np.matmul(jw.transpose(0, 2, 1), jac).astype(np.float64)
        jtr = np.matmul(jac.transpose(0, 2, 1), r[:, :, None])[:, :, 0].astype(np.float64)
        diag = np.einsum("npp->np", jtj)
        a = jtj + (lam[idx][:, None] * np.maximum(diag, 1e-12))[:, :, None] * eye
        try:
            dp = np.linalg.solve(a, jtr[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:
            dp = np.stack([np.linalg.lstsq(ai, bi, rcond=None)[0] for ai, bi in zip(a, jtr)])
        pn = pa.copy()
        pn[:, free] += dp
        pn = np.clip(pn, lower, upper)
        fn = model(pn)
        cn = ((y[idx] - fn) ** 2 * w).sum(axis=1, dtype=np.float64)
        better = cn < cost[idx]
        gain = (cost[idx] - cn) / np.maximum(cost[idx], 1e-30)
        bi = idx[better]
        p[bi], f[bi], cost[bi] = pn[better], fn[better], cn[better]
        lam[idx] = np.where(better, lam[idx] / 3.0, lam[idx] * 4.0)
        tiny_step = np.max(np.abs(pn - pa)[:, free] / step_scale[free], axis=1) < xtol
        done = (better & (gain < tol)) | (~better & tiny_step) | (lam[idx] > 1e8) | (cost[idx] <= 1e-24)
        active[idx[done]] = False
    return LMResult(p, cost, it, ~active, iterations_used)


def _fd_jacobian(model, pa, fa, h, upper, linear_index, free):
    jac = np.empty(fa.shape + (free.size,), dtype=fa.dtype)
    for col, k in enumerate(free):
        if k == linear_index:
            scale = np.where(pa[:, k] > 1e-12, pa[:, k], 1.0)
            jac[:, :, col] = np.where(pa[:, k:k + 1] > 1e-12, fa / scale[:, None], 0.0)
            if np.any(pa[:, k] <= 1e-12):
                q = pa.copy()
                q[:, k] = 1.0
                small = pa[:, k] <= 1e-12
                jac[small, :, col] = model(q[small])
            continue
        q = pa.copy()
        step = np.where(q[:, k] + h[k] <= upper[k], h[k], -h[k])
        q[:, k] += step
        jac[:, :, col] = (model(q) - fa) / step[:, None]
    return jac
