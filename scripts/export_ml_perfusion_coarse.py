#!/usr/bin/env python
"""Export ml_perfusion_subset series of chosen patients as coarse labelled cases (the folder `perfusion train` reads).

Their labels are near-circular outlines, so every case is exported with ``coarse=True``: training learns from the
cores of their blood pool and wall and from "not the LV" well outside them (PerfusionSegLib.weak_labels). The data
stay outside the repository: give an --out folder elsewhere.

Usage: python scripts/export_ml_perfusion_coarse.py --out DIR [--patients ID ...] [--data ../shared/data]
The twenty-third session's training patients (docs/training.md): 1132584 1292260 1313689 140915 1434856 1456541.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "PerfusionSeg"), str(REPO / "PerfusionDAUGS")]

CONDITIONS = {"adeno": "stress", "basal": "rest"}
LEVELS = {"bas": "basal", "mid": "mid"}


def series_files(folder: Path, patients=None):
    """(patient, condition, level, image path, label path) of every labelled series, optionally of some patients."""
    out = []
    for gt in sorted(folder.glob("*_reor_*_gt.nii.gz")):
        parts = gt.name.replace("_gt.nii.gz", "").split("_")     # base reor 1132584 adeno bas
        if len(parts) != 5 or parts[3] not in CONDITIONS or parts[4] not in LEVELS:
            continue
        if patients and parts[2] not in patients:
            continue
        out.append((parts[2], CONDITIONS[parts[3]], LEVELS[parts[4]], gt.with_name(gt.name.replace("_gt", "")), gt))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--patients", nargs="+", help="patient ids (default: all twelve)")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = ap.parse_args(argv)
    from PerfusionSegLib.errors import PerfusionError
    from PerfusionSegLib.labelling import export_labelled_case
    from PerfusionSegLib.readers import load_labels, load_series

    folder = args.data / "ml_perfusion_subset"
    if not folder.is_dir():
        print(f"error: {folder} does not exist", file=sys.stderr)
        return 2
    files = series_files(folder, set(args.patients) if args.patients else None)
    if not files:
        print(f"error: no labelled series of {args.patients or 'any patient'} in {folder}", file=sys.stderr)
        return 2
    try:
        for patient, condition, level, image, labels in files:
            series = load_series(image, dt=1.0, time_axis=0, level=level, condition=condition)
            ref, _ = load_labels(labels)
            case = export_labelled_case(series, ref, args.out, f"{patient}_{condition}_{level}", patient_id=patient,
                                        coarse=True, overwrite=True, extra={"source": image.name})
            print(case)
    except PerfusionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
