#!/usr/bin/env python
"""Timing of preprocessing and LV localisation on a DICOM-sized series (T=60, 192x256, 1.64 mm, ~0.9 s frames).

Baseline in the same process: scipy.ndimage.zoom of every frame to 1 mm followed by a numpy crop (what a naive
pipeline does: resample the whole image, then crop), against prepare_for_network's single composed map.

    python benchmarks/bench_preprocess.py [--repeat 3]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "PerfusionSeg"))

from PerfusionSegLib.localise import locate_lv  # noqa: E402
from PerfusionSegLib.preprocess import prepare_for_network, resample_time_linear  # noqa: E402
from PerfusionSegLib.series import SliceSeries  # noqa: E402


def _series(seed=0):
    rng = np.random.default_rng(seed)
    T, ny, nx, sp = 60, 192, 256, 1.64
    t = np.cumsum(rng.uniform(0.8, 1.0, T))
    yy, xx = np.indices((ny, nx))
    lv = np.hypot(yy - 100, xx - 140) * sp < 22
    rv = (np.hypot(yy - 95, xx - 105) * sp < 20) & ~lv
    f = lambda a, w: np.clip(t - a, 0, None) ** 2 * np.exp(-np.clip(t - a, 0, None) / w)  # noqa: E731
    data = 50 + 400 * f(8, 1.5)[:, None, None] / f(8, 1.5).max() * rv + 300 * f(13, 2)[:, None, None] / f(13, 2).max() * lv
    data = data + 5 * rng.standard_normal(data.shape)
    return SliceSeries(data=data.astype(np.float32), times=t, spacing=(sp, sp))


def _time(fn, repeat):
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    from scipy import ndimage

    s = _series()
    centre = (100.0, 140.0)

    def naive():
        r = resample_time_linear(s, 0.5).data[:48]
        z = ndimage.zoom(r, (1, s.spacing[0], s.spacing[1]), order=1)
        cy, cx = int(centre[0] * s.spacing[0]), int(centre[1] * s.spacing[1])
        return z[:, cy - 88: cy + 88, cx - 88: cx + 88]

    rows = [
        ("baseline: time-resample + ndimage.zoom + crop", naive),
        ("prepare_for_network Xue (1 mm, 176, 48, linear)", lambda: prepare_for_network(s, center_yx=centre)),
        ("prepare_for_network DAUGS (2x, 128, 30, pchip)", lambda: prepare_for_network(
            s, spacing_mm=None, scale=2.0, size=128, n_frames=30, temporal="pchip", center_yx=centre)),
        ("locate_lv", lambda: locate_lv(s)),
        ("prepare_for_network Xue with automatic centre", lambda: prepare_for_network(s)),
    ]
    try:        # the study localisation's second opinion (asked only when a study's slices disagree)
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "PerfusionDAUGS"))
        from PerfusionDAUGSLib.lv_detector import PoolLVDetector
        detector = PoolLVDetector()
        rows.append((f"PoolLVDetector ({detector.member}, whole field, stride 32, fp32)", lambda: detector(s)))
    except Exception as exc:  # noqa: BLE001 - no pool installed: the table goes without this row
        print(f"# PoolLVDetector not timed: {exc}")
    print(f"# {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, python "
          f"{platform.python_version()}, numpy {np.__version__}; series {s.data.shape} float32, best of {args.repeat}")
    base = None
    print(f"{'step':52s} {'seconds':>8s} {'vs baseline':>12s}")
    for name, fn in rows:
        sec = _time(fn, args.repeat)
        base = sec if base is None else base
        print(f"{name:52s} {sec:8.3f} {sec / base:11.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
