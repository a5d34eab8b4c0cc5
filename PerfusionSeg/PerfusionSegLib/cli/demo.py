"""`perfusion demo`: the whole product on a built-in example, with nothing to download.

It generates a stress and a rest phantom study (3 short-axis slices each, signal units, PD frames, AIF), writes them as
input files, then runs what a user would: segmentation (the shipped DAUGS pool or ResUNet when installed; otherwise the
phantom's true contours, and it says so), RV insertion points and AHA sectors, signal -> [Gd], pixel-wise Fermi MBF,
the 16-segment statistics with perfusion reserve, and the report (bullseye, table, slice pictures, HTML, JSON, CSV).
Because the phantom's truth is known, it ends by printing how far the results are from it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run the whole analysis on a generated example study",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("perfusion-demo"), help="output folder (default ./perfusion-demo)")
    p.add_argument("--preset", default="siemens-flash-3t", help="phantom preset (see `perfusion phantom --help`)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--method", choices=("auto", "daugs", "resunet", "truth"), default="auto",
                   help="segmentation: auto = the shipped DAUGS pool, else the ResUNet, else the true contours")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--models-dir", type=Path, help="folder with model cards / pools (default: the shipped models)")
    p.set_defaults(func=run)


def _choose_method(method: str, models_dir) -> tuple:
    """(method, note): 'auto' takes what is installed (the DAUGS pool first), and says so when nothing is."""
    from ..analysis import AnalysisOptions, resolve_daugs_pool, resolve_method
    from ..errors import UnreadableFileError
    from ..networks.registry import default_models_dir

    folder = Path(models_dir) if models_dir else default_models_dir()
    if method == "auto":
        options = AnalysisOptions(method="auto", models_dirs=(str(folder),))
        try:
            method = resolve_method(options)
        except UnreadableFileError:
            return "truth", (f"segmentation: no trained model is installed in {folder}; the demo uses the phantom's "
                             f"true contours (train one with `perfusion train`)")
        where = resolve_daugs_pool(options) if method == "daugs" else folder
        return method, f"segmentation: {'DAUGS pool' if method == 'daugs' else 'ResUNet'} in {where}"
    return method, f"segmentation: {method}" + ("" if method == "truth" else f" from {folder}")


def _segment_medians(values, sectors) -> dict:
    import numpy as np

    return {int(s): float(np.nanmedian(values[sectors == s])) for s in range(1, 17)
            if (sectors == s).any() and np.isfinite(values[sectors == s]).any()}


def run(args) -> int:
    import numpy as np
    from tqdm import tqdm

    from ..analysis import AnalysisOptions, analyse_studies, condition_statistics
    from ..background import SyncContext
    from ..metrics import dice
    from ..phantom import generate_study, write_phantom
    from ..report import write_report
    from ..writers import write_labels, write_map

    t_start = time.time()
    out = args.out
    method, note = _choose_method(args.method, args.models_dir)
    print(note)
    phantoms = {c: generate_study(preset=args.preset, seed=args.seed, condition=c) for c in ("stress", "rest")}
    for c, ps in phantoms.items():
        write_phantom(ps, out / "inputs" / c)
    studies = {c: ps.study for c, ps in phantoms.items()}
    truth = {(c, t.level or s.level): t for c, ps in phantoms.items() for s, t in zip(ps.study.slices, ps.truth)}
    override = {key: t.labels for key, t in truth.items()} if method == "truth" else None

    bar = tqdm(total=100, desc="analysis", unit="%", file=sys.stderr, leave=False)

    def progress(fraction, text):
        bar.n = int(100 * fraction)
        bar.set_postfix_str(text)
        bar.refresh()

    options = AnalysisOptions(method=("resunet" if method == "truth" else method), device=args.device,
                              models_dirs=(str(args.models_dir),) if args.models_dir else (),
                              output_dir=str(out / "report"))
    result = analyse_studies(SyncContext(progress), studies, options, labels_override=override)
    bar.close()
    for msg in result.messages:
        print(f"note: {msg}")

    # per-slice outputs on the input grid
    by_condition = {"stress": [], "rest": []}
    rows = []
    for item in result.slices:
        series = next(s for s in studies[item.condition].slices if s.level == item.level)
        stem = f"{item.condition}_{item.level}"
        write_labels(item.labels, out / "results" / f"{stem}_labels.nii.gz", series.spacing, series.affine)
        if item.mbf is not None:
            write_map(item.mbf, out / "results" / f"{stem}_mbf.nii.gz", series.spacing, series.affine)
        if item.umap is not None:
            write_map(item.umap, out / "results" / f"{stem}_umap.nii.gz", series.spacing, series.affine)
        t = truth[(item.condition, item.level)]
        row = {"slice": stem, "dice_myocardium": dice(item.labels == 2, t.labels == 2),
               "dice_blood_pool": dice(item.labels == 1, t.labels == 1)}
        if item.mbf is not None and item.sectors is not None:
            ours, true = _segment_medians(item.mbf, item.sectors), _segment_medians(t.mbf, t.aha_segments)
            common = sorted(set(ours) & set(true))
            rel = [abs(ours[s] - true[s]) / true[s] for s in common if true[s] > 0]
            row.update(mbf_median_abs_rel_error_per_segment=float(np.median(rel)) if rel else None,
                       mbf_median=float(np.nanmedian(item.mbf)), mbf_true_median=float(np.nanmedian(t.mbf)))
        rows.append(row)
        if item.mbf is not None and item.sectors is not None:
            peak = int(np.argmax(series.data.reshape(series.n_frames, -1).mean(axis=1)))
            by_condition[item.condition].append({"level": item.level, "image": series.data[peak], "labels": item.labels,
                                                 "sector_map": item.sectors, "map": item.mbf,
                                                 "insertion": item.insertion})
    stats = condition_statistics(result.slices)
    paths = {}
    if stats:
        paths = write_report(out / "report", by_condition["stress"] or by_condition["rest"], stats.get("stress"),
                             stats.get("rest") if by_condition["stress"] else None,
                             rest_slices=by_condition["rest"] if by_condition["stress"] else None,
                             title=f"CardiacPerfusion demo (phantom {args.preset}, seed {args.seed})",
                             metadata={"segmentation": note, "phantom_preset": args.preset, "seed": args.seed})
    summary = {"segmentation": method, "note": note, "slices": rows, "report": {k: str(v) for k, v in paths.items()},
               "seconds": round(time.time() - t_start, 1)}
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=1))

    print(f"\n{'slice':<14} {'Dice myo':>9} {'Dice blood':>11} {'MBF median':>11} {'true MBF':>9} {'segment error':>14}")
    for r in rows:
        err = r.get("mbf_median_abs_rel_error_per_segment")
        print(f"{r['slice']:<14} {r['dice_myocardium']:>9.3f} {r['dice_blood_pool']:>11.3f} "
              f"{r.get('mbf_median', float('nan')):>11.2f} {r.get('mbf_true_median', float('nan')):>9.2f} "
              f"{'-' if err is None else f'{100 * err:.1f}%':>14}")
    print("(segment error: median over segments of |our segment median MBF - true| / true)")
    if paths:
        print(f"\nreport: {paths.get('html', next(iter(paths.values())))}")
    print(f"done in {summary['seconds']} s; results in {out}")
    return 0
