#!/usr/bin/env python
"""How well the automatic LV localisation (``localise.locate_lv``) hits the labelled LV blood pool.

Real data in ../shared/data (skipped with a note when absent):
  daugs_dev (3 slices, label 3 = blood pool; 2x upsampled, ~0.9 mm: spacing passed as 0.9 mm),
  ml_perfusion_subset (every series whose _gt exists; stored (T, X, Y) -> (T, Y, X) for image and label alike;
  blood pool = label 2 on at least half of the labelled frames; 2.2857 mm from the file's zooms),
  qperf/aif_detection/exampleN (AIF images; mask 1 = LV; no spacing given, so none is passed),
  qperf perf_data*.mat Gd series (no labels: the centre must lie in the middle third of the heart crop).
Synthetic: ``--phantom N`` slices from ``phantom.generate_study`` over the presets (truth label 1 = LV blood pool);
``--by-study`` locates each study's three slices together (``localise.locate_lv_study`` with the pool's LV detector).

A hit is a centre inside the label; the distance is to the label's centroid (pixels and mm when the spacing is known).

    python scripts/evaluate_localisation.py [--phantom 200 [--seed S] [--by-study]] [--json out.json]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "PerfusionSeg"))
DATA = REPO.parent / "shared" / "data"

from PerfusionSegLib.localise import locate_lv  # noqa: E402


def _row(dataset, name, img, lv, spacing=None, times=None, loc=None, seconds=None):
    """One series: located here, or ``loc`` given (a study's answer; ``seconds``: its share of the study's time)."""
    t0 = time.perf_counter()
    try:
        if loc is None:
            loc = locate_lv(img, spacing=spacing, times=times)
    except Exception as exc:  # a refusal counts as a miss, with its reason
        return {"dataset": dataset, "series": name, "hit": False, "error": str(exc), "seconds": time.perf_counter() - t0}
    if loc is False:
        return {"dataset": dataset, "series": name, "hit": False, "error": "nothing found", "seconds": seconds}
    y, x = loc.center_yx
    iy, ix = int(round(y)), int(round(x))
    hit = bool(0 <= iy < lv.shape[0] and 0 <= ix < lv.shape[1] and lv[iy, ix])
    cy, cx = np.argwhere(lv).mean(axis=0)
    d_px = float(np.hypot(y - cy, x - cx))
    d_mm = float(np.hypot((y - cy) * spacing[0], (x - cx) * spacing[1])) if spacing is not None else None
    return {"dataset": dataset, "series": name, "hit": hit, "dist_px": d_px, "dist_mm": d_mm,
            "confidence": loc.confidence, "rv_found": loc.rv_center_yx is not None,
            "seconds": time.perf_counter() - t0 if seconds is None else seconds}


def real_rows():
    import nibabel as nib
    import scipy.io

    rows, notes = [], []
    d = DATA / "daugs_dev"
    if d.exists():
        for f in sorted(glob.glob(str(d / "Images" / "*.mat"))):
            img = np.moveaxis(scipy.io.loadmat(f)["final_img"], -1, 0).astype(np.float32)
            lab = scipy.io.loadmat(f.replace("Images", "Labels"))["final_mask"] == 3
            rows.append(_row("daugs_dev", Path(f).stem, img, lab, spacing=(0.9, 0.9)))
    else:
        notes.append(f"{d} absent")
    d = DATA / "ml_perfusion_subset"
    if d.exists():
        for g in sorted(glob.glob(str(d / "*_gt.nii.gz"))):
            img = np.asarray(nib.load(g.replace("_gt.nii.gz", ".nii.gz")).dataobj).astype(np.float32).transpose(0, 2, 1)
            gt = np.asarray(nib.load(g).dataobj).transpose(0, 2, 1)
            labelled = (gt > 0).any(axis=(1, 2))
            lv = (gt[labelled] == 2).mean(axis=0) >= 0.5
            rows.append(_row("ml_perfusion_subset", Path(g).name.replace("_gt.nii.gz", ""), img, lv,
                             spacing=(2.2857, 2.2857)))
    else:
        notes.append(f"{d} absent")
    d = DATA / "qperf" / "aif_detection"
    if d.exists():
        for e in sorted(glob.glob(str(d / "example*"))):
            img = np.moveaxis(np.load(os.path.join(e, "aif_scc.npy")), -1, 0).astype(np.float32)
            lv = np.load(os.path.join(e, "aif_masks_final.npy")) == 1
            rows.append(_row("qperf_aif_detection", Path(e).name, img, lv))
    else:
        notes.append(f"{d} absent")
    return rows, notes


def _real_cases():
    """(dataset, name, image (T,Y,X), lv mask, spacing or None) of every labelled real series."""
    import nibabel as nib
    import scipy.io

    d = DATA / "daugs_dev"
    for f in sorted(glob.glob(str(d / "Images" / "*.mat"))):
        img = np.moveaxis(scipy.io.loadmat(f)["final_img"], -1, 0).astype(np.float32)
        yield "daugs_dev", Path(f).stem, img, scipy.io.loadmat(f.replace("Images", "Labels"))["final_mask"] == 3, (0.9, 0.9)
    for g in sorted(glob.glob(str(DATA / "ml_perfusion_subset" / "*_gt.nii.gz"))):
        img = np.asarray(nib.load(g.replace("_gt.nii.gz", ".nii.gz")).dataobj).astype(np.float32).transpose(0, 2, 1)
        gt = np.asarray(nib.load(g).dataobj).transpose(0, 2, 1)
        lv = (gt[(gt > 0).any(axis=(1, 2))] == 2).mean(axis=0) >= 0.5
        yield "ml_perfusion_subset", Path(g).name.replace("_gt.nii.gz", ""), img, lv, (2.2857, 2.2857)
    for e in sorted(glob.glob(str(DATA / "qperf" / "aif_detection" / "example*"))):
        img = np.moveaxis(np.load(os.path.join(e, "aif_scc.npy")), -1, 0).astype(np.float32)
        yield "qperf_aif_detection", Path(e).name, img, np.load(os.path.join(e, "aif_masks_final.npy")) == 1, None


def robustness_rows():
    """The labelled real series altered: rotated, mirrored, irregular frame times, noise, 2x coarser pixels,
    every second frame, no spacing given. Hit = centre inside the (equally altered) label."""
    rng = np.random.default_rng(0)
    rows = []
    for dataset, name, img, lv, sp in _real_cases():
        t = img.shape[0]
        steps = rng.uniform(0.7, 1.4, t - 1)
        noisy = img + rng.normal(0, 0.03 * np.percentile(img, 99), img.shape).astype(np.float32)
        variants = {
            "rotated 90": (np.rot90(img, 1, axes=(1, 2)).copy(), np.rot90(lv).copy(), sp, None),
            "mirrored": (img[:, :, ::-1].copy(), lv[:, ::-1].copy(), sp, None),
            "irregular times": (img, lv, sp, np.concatenate([[0.0], np.cumsum(steps)])),
            "noise 3%": (noisy, lv, sp, None),
            "2x coarser": (img[:, ::2, ::2].copy(), lv[::2, ::2].copy(), tuple(2 * v for v in sp) if sp else None, None),
            "every 2nd frame": (img[::2].copy(), lv, sp, np.arange(0, t, 2, dtype=float)),
            "no spacing": (img, lv, None, None),
        }
        for vname, (v_img, v_lv, v_sp, v_t) in variants.items():
            r = _row(vname, f"{dataset}/{name}", v_img, v_lv, spacing=v_sp, times=v_t)
            rows.append(r)
    return rows


def qperf_gd_rows():
    import scipy.io

    rows = []
    for name in ("perf_data.mat", "perf_data_stress.mat"):
        f = DATA / "qperf" / name
        if not f.exists():
            continue
        img = np.moveaxis(scipy.io.loadmat(str(f))["data"], -1, 0).astype(np.float32)
        loc = locate_lv(img, times=np.arange(img.shape[0]) * 0.5)
        ny, nx = img.shape[1:]
        sane = ny / 3 < loc.center_yx[0] < 2 * ny / 3 and nx / 3 < loc.center_yx[1] < 2 * nx / 3
        rows.append({"series": name, "center_yx": [round(v, 1) for v in loc.center_yx], "matrix": [ny, nx],
                     "sane": bool(sane), "confidence": loc.confidence})
    return rows


def _study_locator():
    """locate_lv_study with the shipped pool's LV detector as its second opinion (without it when no pool)."""
    from PerfusionSegLib.localise import locate_lv_study

    try:
        sys.path.insert(0, str(REPO / "PerfusionDAUGS"))
        from PerfusionDAUGSLib.lv_detector import PoolLVDetector
        detector = PoolLVDetector()
    except Exception as exc:  # noqa: BLE001 - no pool: the study rule alone
        print(f"# note: no LV detector ({exc}); the study rule decides alone")
        detector = None
    return lambda study: locate_lv_study(study, detector=detector)


def phantom_rows(n: int, seed: int = 0, by_study: bool = False):
    """``by_study``: each study's slices located together (``locate_lv_study`` with the pool's detector), as the
    analysis, the demo and ``run_daugs`` of a study do; else each slice on its own (``locate_lv``)."""
    from PerfusionSegLib.phantom import generate_study
    from PerfusionSegLib.phantom.presets import PRESET_NAMES

    rows, k = [], 0
    presets = list(PRESET_NAMES)
    locate_study = _study_locator() if by_study else None
    while len(rows) < n:
        preset = presets[k % len(presets)]
        condition = "stress" if (k // len(presets)) % 2 == 0 else "rest"
        ps = generate_study(preset=preset, seed=seed + k, condition=condition, n_slices=3)
        locs, share = [None] * 3, None
        if by_study:
            t0 = time.perf_counter()
            locs = [False if loc is None else loc for loc in locate_study(ps.study)]
            share = (time.perf_counter() - t0) / len(locs)
        for i, (s, truth) in enumerate(zip(ps.study.slices, ps.truth)):
            if len(rows) >= n:
                break
            rows.append(_row(f"phantom:{preset}", f"seed{seed + k}-{condition}-{s.level or i}", s,
                             truth.labels == 1, spacing=s.spacing, loc=locs[i], seconds=share))
        k += 1
    return rows


def _summary(rows):
    out = {}
    for r in rows:
        key = r["dataset"].split(":")[0] if r["dataset"].startswith("phantom") else r["dataset"]
        out.setdefault(key, []).append(r)
    table = []
    for key, rs in out.items():
        d_px = [r["dist_px"] for r in rs if "dist_px" in r]
        d_mm = [r["dist_mm"] for r in rs if r.get("dist_mm") is not None]
        table.append({"dataset": key, "n": len(rs), "hits": sum(r["hit"] for r in rs),
                      "hit_rate": sum(r["hit"] for r in rs) / len(rs),
                      "median_dist_px": float(np.median(d_px)) if d_px else None,
                      "max_dist_px": float(np.max(d_px)) if d_px else None,
                      "median_dist_mm": float(np.median(d_mm)) if d_mm else None,
                      "max_dist_mm": float(np.max(d_mm)) if d_mm else None,
                      "median_confidence": float(np.median([r.get("confidence", 0.0) for r in rs]))})
    return table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phantom", type=int, default=0, metavar="N", help="also N synthetic phantom slices (e.g. 200)")
    ap.add_argument("--seed", type=int, default=1000, help="first phantom seed (default 1000)")
    ap.add_argument("--by-study", action="store_true",
                    help="locate each phantom study's slices together (locate_lv_study with the pool's LV detector)")
    ap.add_argument("--json", metavar="PATH", help="write every row and the summary as JSON")
    ap.add_argument("--robustness", action="store_true",
                    help="only the robustness variants of the labelled real series (rotated, mirrored, ...)")
    ap.add_argument("--quiet", action="store_true", help="summary only")
    args = ap.parse_args(argv)

    print(f"# machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}, numpy {np.__version__}")
    if args.robustness:
        summary = _summary(robustness_rows())
        for s in summary:
            print(f"{s['dataset']:18s} {s['hits']:3d}/{s['n']:3d} hits, median distance {s['median_dist_px']:.1f} px")
        return 0
    rows, notes = real_rows()
    if args.phantom:
        try:
            rows += phantom_rows(args.phantom, args.seed, by_study=args.by_study)
        except ImportError as exc:
            notes.append(f"phantom not available: {exc}")
    for n in notes:
        print(f"# note: {n}")
    if not args.quiet:
        print(f"{'dataset':22s} {'series':34s} {'hit':4s} {'d_px':>6s} {'d_mm':>6s} {'conf':>5s} {'RV':>3s} {'s':>5s}")
        for r in rows:
            if "error" in r:
                print(f"{r['dataset']:22s} {r['series'][:34]:34s} MISS  error: {r['error']}")
                continue
            dmm = f"{r['dist_mm']:6.1f}" if r["dist_mm"] is not None else f"{'-':>6s}"
            print(f"{r['dataset']:22s} {r['series'][:34]:34s} {'yes' if r['hit'] else 'NO':4s} {r['dist_px']:6.1f} "
                  f"{dmm} {r['confidence']:5.2f} {'y' if r['rv_found'] else 'n':>3s} {r['seconds']:5.2f}")
    summary = _summary(rows)
    print()
    print(f"{'dataset':22s} {'n':>4s} {'hits':>5s} {'rate':>7s} {'med px':>7s} {'max px':>7s} {'med mm':>7s} "
          f"{'max mm':>7s} {'med conf':>8s}")
    for s in summary:
        f = lambda v: f"{v:7.1f}" if v is not None else f"{'-':>7s}"  # noqa: E731
        print(f"{s['dataset']:22s} {s['n']:4d} {s['hits']:5d} {100 * s['hit_rate']:6.1f}% {f(s['median_dist_px'])} "
              f"{f(s['max_dist_px'])} {f(s['median_dist_mm'])} {f(s['max_dist_mm'])} {s['median_confidence']:8.2f}")
    gd = qperf_gd_rows()
    for g in gd:
        print(f"qperf Gd {g['series']}: centre {g['center_yx']} in matrix {g['matrix']}, "
              f"{'sane (middle third)' if g['sane'] else 'NOT in the middle third'}, confidence {g['confidence']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "summary": summary, "qperf_gd": gd, "notes": notes},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
