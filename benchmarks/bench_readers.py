"""Benchmark: how long the readers take, against the plain library call that only decodes the pixels.

Rows: the real Siemens DICOM folders (pydicom headers + pixels + timing + PD check) against a bare loop of
``pydicom.dcmread(...).pixel_array``; every ml_perfusion NIfTI (``--dt 1``) against ``nibabel`` ``get_fdata``;
a NIfTI and a Slicer .seq.nrrd written by writers.py (48 frames of 176x176) against nibabel / pynrrd alone.
Real data rows are skipped when ../shared/data is absent.

    python benchmarks/bench_readers.py [--repeat 3]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    import nibabel as nib
    import nrrd
    import pydicom

    from PerfusionSegLib import readers
    from PerfusionSegLib.series import SliceSeries
    from PerfusionSegLib.writers import write_series

    rows = []
    for cond in ("rest", "stress"):
        folder = DATA / "dicom_siemens_single_slice" / cond
        if folder.is_dir():
            files = sorted(folder.iterdir())
            ours = best_of(lambda: readers.load_series(folder), args.repeat)
            base = best_of(lambda: [pydicom.dcmread(str(f)).pixel_array for f in files], args.repeat)
            rows.append((f"DICOM {cond} ({len(files)} files)", ours, base, "pydicom dcmread+pixel_array"))
    ml = sorted(p for p in (DATA / "ml_perfusion_subset").glob("*.nii.gz") if not p.name.endswith("_gt.nii.gz")) \
        if (DATA / "ml_perfusion_subset").is_dir() else []
    if ml:
        ours = best_of(lambda: [readers.load_series(p, dt=1.0) for p in ml], 1)
        base = best_of(lambda: [nib.load(str(p)).get_fdata(dtype=np.float32) for p in ml], 1)
        rows.append((f"ml_perfusion NIfTI x{len(ml)}", ours, base, "nibabel get_fdata"))
    rng = np.random.default_rng(0)
    s = SliceSeries(data=rng.normal(100, 10, (48, 176, 176)).astype(np.float32), times=np.arange(48) * 0.5,
                    spacing=(1.0, 1.0))
    with tempfile.TemporaryDirectory() as tmp:
        for name, base_fn, base_name in (
                ("s.nii.gz", lambda p: nib.load(str(p)).get_fdata(dtype=np.float32), "nibabel get_fdata"),
                ("s.seq.nrrd", lambda p: nrrd.read(str(p), index_order="F")[0], "pynrrd read")):
            path = write_series(s, Path(tmp) / name)
            ours = best_of(lambda: readers.load_series(path), args.repeat)
            base = best_of(lambda: base_fn(path), args.repeat)
            rows.append((f"written {name} 48x176x176", ours, base, base_name))

    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, "
          f"Python {sys.version.split()[0]}, best of {args.repeat}")
    print(f"{'input':34s} {'readers s':>10s} {'baseline s':>11s} {'ratio':>6s}  baseline")
    for name, ours, base, base_name in rows:
        print(f"{name:34s} {ours:10.3f} {base:11.3f} {ours / base:6.2f}  {base_name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
