"""Simulated truth for the kinetic models: realistic AIFs and tissue curves computed on a fine time grid
(0.02 s, so the fitted models' 0.5 s discretisation is not the same as the truth's), then sampled like a scan."""
from __future__ import annotations

from typing import Optional

import numpy as np

FINE_DT = 0.02


def gamma_variate(t: np.ndarray, t_arrival: float, alpha: float, beta: float) -> np.ndarray:
    """Unit-peak gamma variate starting at t_arrival (peak at t_arrival + alpha * beta)."""
    s = np.clip((np.asarray(t, float) - t_arrival) / beta, 0, None)
    g = np.where(s > 0, s ** alpha * np.exp(-s), 0.0)
    return g / (alpha ** alpha * np.exp(-alpha))


def realistic_aif(t: np.ndarray, peak: float = 5.0, t_arrival: float = 8.0, alpha: float = 3.0, beta: float = 1.0,
                  recirculation: float = 0.25, plateau: float = 0.08) -> np.ndarray:
    """Blood [Gd] (mmol/L): first-pass gamma variate + a dispersed recirculation bump + a slow rising plateau."""
    t = np.asarray(t, float)
    first = gamma_variate(t, t_arrival, alpha, beta)
    ttp = alpha * beta
    second = recirculation * gamma_variate(t, t_arrival + 2.6 * ttp + 3.0, alpha + 1.0, 1.6 * beta)
    ramp = plateau * np.clip((t - t_arrival - ttp) / (4 * ttp), 0, 1)
    return peak * (first + second + ramp)


def fermi_ir(t: np.ndarray, flow: float, tau: float, k: float) -> np.ndarray:
    t = np.asarray(t, float)
    return flow * (1 + np.exp(-k * tau)) / (1 + np.exp(k * (t - tau)))


def two_compartment_ir(t: np.ndarray, fp: float, ps: float, vp: float, ve: float) -> np.ndarray:
    from .two_compartment import two_compartment_response
    return two_compartment_response(np.asarray(t, float), np.array([fp]), np.array([ps]), np.array([vp]),
                                    np.array([ve]))[0]


def simulate_curves(times: np.ndarray, irs: np.ndarray, delays: np.ndarray, aif_kwargs: Optional[dict] = None,
                    fine_dt: float = FINE_DT):
    """Tissue curves (N, T) sampled at ``times`` for impulse responses ``irs`` (N, Tf) given on the fine grid
    ``fine_dt * arange(Tf)``, each delayed by ``delays`` (N,) s; and the blood AIF sampled at ``times``."""
    times = np.asarray(times, float)
    fine = np.arange(0, times[-1] + fine_dt, fine_dt)
    aif_f = realistic_aif(fine, **(aif_kwargs or {}))
    n = irs.shape[0]
    out = np.empty((n, times.size))
    nf = fine.size
    spec = np.fft.rfft(aif_f, 2 * nf)
    conv = np.fft.irfft(np.fft.rfft(irs[:, :nf], 2 * nf, axis=1) * spec, 2 * nf, axis=1)[:, :nf] * fine_dt
    for i in range(n):   # n curves, each a single interpolation (simulation only, not the fitted path)
        out[i] = np.interp(times - delays[i], fine, conv[i], left=0.0)
    return out, realistic_aif(times, **(aif_kwargs or {})), fine
