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


def rate(fn, n_slices_per_call: int, repeats: int) -> tuple:
    """(slices per wall-clock second, best of repeats; slices per CPU second of this process, mean)."""
    fn()  # warm-up (imports, FFT plans)
    best = float("inf")
    cpu = 0.0
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        best = min(best, time.perf_counter() - t)
        cpu += time.process_time() - c
    return n_slices_per_call / best, n_slices_per_call * repeats / cpu


def _study(seed):
    from PerfusionSegLib.phantom import DEFAULT_PRESET, generate_study
    generate_study(DEFAULT_PRESET, seed=seed)
    return 3


def pool_rate(n_studies: int) -> float:
    """Two worker processes (one per core), 3-slice studies: slices per wall-clock second."""
    import multiprocessing as mp
    with mp.get_context("fork").Pool(2) as pool:
        pool.map(_study, range(2))   # warm-up
        t = time.perf_counter()
        n = sum(pool.map(_study, range(100, 100 + n_studies)))
        return n / (time.perf_counter() - t)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--pool-studies", type=int, default=8, help="studies for the two-process measurement")
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
    load = os.getloadavg()[0]
    print(f"machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} python={platform.python_version()} "
          f"numpy={np.__version__}; load average {load:.1f} (shared CPU: wall-clock figures fall with load, CPU-second "
          f"figures much less)")
    print(f"{'case (one process)':66s} {'slices/s wall':>13s} {'slices/CPU-s':>13s} {'ratio vs baseline':>18s}")
    base = rows[2][1][1]
    for name, (wall, per_cpu) in rows:
        print(f"{name:66s} {wall:13.2f} {per_cpu:13.2f} {per_cpu / base:18.2f}")
    two = pool_rate(args.pool_studies)
    print(f"{'2 processes (one per core), 3-slice studies, default preset':66s} {two:13.2f}")
    print(f"2-core capacity from CPU time (2 x slices/CPU-s, default preset with AIF images): {2 * rows[0][1][1]:.1f} slices/s; "
          f"target >= 10 slices/s (60 frames, default preset)")


if __name__ == "__main__":
    main()
