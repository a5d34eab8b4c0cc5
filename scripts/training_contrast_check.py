#!/usr/bin/env python
"""Contrast of the training slices against the real ml_perfusion_subset series, as the network sees both.

Both sides are 128x128 network inputs scaled with the robust max (training: ``generate_training_slice`` with the
presets mixed as in training; real: ``phantom_transfer_check.load_ml_perfusion``). From the label map (real: the
coarse labels), per slice: the mean time curve of the LV blood-pool *core* (more than 8 px from the pool's border),
of a *ring* 1-4 px inside the border, and of the myocardium. Printed as 10th / 50th / 90th percentiles:
- myo/core: peak of the myocardium curve over peak of the core curve (how bright the wall is next to the blood);
- ring/core: the same for the ring (the grey zone experts count as cavity);
- LV/myo enhancement: (peak - mean of the first two frames) of the core over that of the myocardium.
Used in the tenth session to calibrate ``generator.TRAIN_LV_PEAK_MMOL`` and ``TRAIN_MYO_GAIN`` (docs/phantom.md).
The daugs_dev slices are not read.

Usage: python scripts/training_contrast_check.py [--n 140] [--seed 555] [--lv-peak 2 10] [--myo-gain 1 1.6]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import phantom_transfer_check as ptc  # noqa: E402  (its training preset mix and its ml_perfusion loader)


def contrast_stats(series: np.ndarray, labels: np.ndarray, cavity: int = 1, myo: int = 2):
    """(ring/core, myo/core, LV/myo enhancement) of one (T, Y, X) series, or None when a region is too small."""
    cav = labels == cavity
    depth = ndimage.distance_transform_edt(cav)
    regions = (cav & (depth > 8), cav & (depth >= 1) & (depth <= 4), labels == myo)
    if min(int(m.sum()) for m in regions) < 10:
        return None
    core, ring, wall = (series[:, m].mean(axis=1) for m in regions)
    enh = lambda c: c.max() - c[:2].mean()
    return ring.max() / core.max(), wall.max() / core.max(), enh(core) / max(enh(wall), 1e-3)


def summary(name: str, rows) -> str:
    a = np.array([r for r in rows if r is not None])
    pct = lambda j: " / ".join(f"{v:.2f}" for v in np.percentile(a[:, j], [10, 50, 90]))
    return f"| {name} | {len(a)} | {pct(1)} | {pct(0)} | {pct(2)} |"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=140, help="training slices")
    ap.add_argument("--seed", type=int, default=555)
    ap.add_argument("--lv-peak", type=float, nargs=2, default=None, help="override TRAIN_LV_PEAK_MMOL")
    ap.add_argument("--myo-gain", type=float, nargs=2, default=None, help="override TRAIN_MYO_GAIN")
    args = ap.parse_args(argv)
    from PerfusionSegLib.phantom import generator as G
    if args.lv_peak:
        G.TRAIN_LV_PEAK_MMOL = tuple(args.lv_peak)
    if args.myo_gain:
        G.TRAIN_MYO_GAIN = tuple(args.myo_gain)
    rng = np.random.default_rng(args.seed)
    rows = [contrast_stats(*G.generate_training_slice(rng, ptc.PRESETS[i % len(ptc.PRESETS)])) for i in range(args.n)]
    print("| data | slices | myo/core | ring/core | LV/myo enhancement |\n|---|---|---|---|---|")
    print(summary(f"training slices (AIF peak {G.TRAIN_LV_PEAK_MMOL}, myo gain {G.TRAIN_MYO_GAIN})", rows))
    if not ptc.DATA.parent.joinpath("ml_perfusion_subset").is_dir():
        print("ml_perfusion_subset not found under ../shared/data: real row skipped")
        return
    print(summary("real ml_perfusion_subset (coarse labels)", [contrast_stats(c[1], c[2]) for c in ptc.load_ml_perfusion()]))


if __name__ == "__main__":
    main()
