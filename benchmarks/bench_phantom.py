#!/usr/bin/env python
"""Phantom generation speed: synthetic slices per second (60 frames, default preset), and the training fast path.

Prints a table with the machine, the load average (the CPU is shared), and a baseline measured in the same process:
the same slices without noise and motion (what the rest of the pipeline costs).

Usage: python benchmarks/bench_phantom.py [--repeats 5]
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


def rate(fn, n_slices_per_call: int, repeats: int) -> float:
    fn()  # warm-up (imports, FFT plans)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n_slices_per_call / best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    from PerfusionSegLib.phantom import DEFAULT_PRESET, generate_study, generate_training_slice

    seeds = iter(range(10 ** 6))
    rows = [
        ("study, 3 slices x 60 frames, default preset (with AIF images)",
         rate(lambda: generate_study(DEFAULT_PRESET, seed=next(seeds)), 3, args.repeats)),
        ("study, 3 slices x 60 frames, default preset, no AIF images",
         rate(lambda: generate_study(DEFAULT_PRESET, seed=next(seeds), aif_images=False), 3, args.repeats)),
        ("baseline: same without noise/motion/AIF images",
         rate(lambda: generate_study(DEFAULT_PRESET, seed=next(seeds), aif_images=False, noise=False, motion_mm=0.0), 3, args.repeats)),
    ]
    rng = np.random.default_rng(0)
    rows.append(("training slice 30x128x128 (randomised)", rate(lambda: generate_training_slice(rng, "randomised"), 1, args.repeats * 4)))
    rows.append(("training slice 30x128x128 (siemens-bssfp-3t)", rate(lambda: generate_training_slice(rng, "siemens-bssfp-3t"), 1, args.repeats * 4)))
    print(f"machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} python={platform.python_version()} "
          f"numpy={np.__version__}; load average {os.getloadavg()[0]:.1f} (shared CPU: figures vary with load)")
    print(f"{'case':66s} {'slices/s':>9s} {'ratio vs baseline':>18s}")
    base = rows[2][1]
    for name, r in rows:
        print(f"{name:66s} {r:9.2f} {r / base:18.2f}")
    print("target: >= 10 slices/s (60 frames, default preset)")


if __name__ == "__main__":
    main()
