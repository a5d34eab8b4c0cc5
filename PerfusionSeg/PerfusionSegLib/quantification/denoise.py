"""Temporal denoising of myocardial [Gd] curves by a low-rank (SVD / Karhunen-Loeve) projection.

The curves of one slice's myocardium are smooth functions of a few kinetic parameters, so they lie close to a
low-dimensional subspace of R^T; white noise spreads evenly over all T dimensions. Keeping the components whose
singular values stand above the noise (the Gavish-Donoho optimal hard threshold, which estimates the noise level from
the median singular value) removes most of the noise and no spatial resolution: every pixel keeps its own curve, only
the temporal basis is shared. The same idea (KLT filtering) precedes pixel-wise flow mapping in the Gadgetron
perfusion pipeline (Kellman et al., JCMR 2017).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

MIN_CURVES_PER_FRAME = 2    # below N = 2 T the noise singular values are too few to estimate the noise level


def _omega(beta: float) -> float:
    """Gavish & Donoho (IEEE Trans Inf Theory 2014), unknown noise: threshold = omega(beta) * median singular value."""
    return 0.56 * beta ** 3 - 0.95 * beta ** 2 + 1.82 * beta + 1.43


def svd_denoise(curves: np.ndarray) -> Tuple[np.ndarray, int]:
    """(N, T) curves -> (denoised curves, rank kept). The mean curve is kept exactly; the deviations from it are
    projected on the components above the optimal hard threshold. Fewer than 2 T curves: returned unchanged
    (rank -1)."""
    y = np.asarray(curves, dtype=np.float64)
    n, t = y.shape
    if n < MIN_CURVES_PER_FRAME * t:
        return y.copy(), -1
    mean = y.mean(axis=0, keepdims=True)
    u, s, vt = np.linalg.svd(y - mean, full_matrices=False)
    tau = _omega(t / n) * np.median(s)
    rank = int((s > tau).sum())
    return mean + (u[:, :rank] * s[:rank]) @ vt[:rank], rank
