#!/usr/bin/env python
"""Segment the labelled real series in ../shared/data with a trained model or DAUGS pool and compare with the labels.

- daugs_dev (3 expert-labelled slices, external site): myocardium and blood-pool Dice of the ResUNet, of the
  DAUGS-selected member and of the established member (best validation Dice), with QC flags.
- ml_perfusion_subset (coarse, near-circular labels): Dice against the coarse labels, failures (crash, empty
  myocardium, QC flags).
These cases are a test: never select models or stop training on them.

Usage: python scripts/evaluate_on_real_data.py [--pool DIR] [--model CARD] [--daugs-spacing 0.9] [--out results.json]
       [--ml-limit N]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def _cases(ml_limit):
    """(dataset, name, image path, label path, reader kwargs) of every labelled real series."""
    out = []
    for level in ("Basal", "Mid", "Apical"):
        out.append(("daugs_dev", level, DATA / "daugs_dev" / "Images" / f"Fig6-exD1-{level}.mat",
                    DATA / "daugs_dev" / "Labels" / f"Fig6-exD1-{level}.mat", {"dt": 1.0}))
    ml = sorted((DATA / "ml_perfusion_subset").glob("*_gt.nii.gz"))
    for gt in ml[: ml_limit if ml_limit is not None else len(ml)]:
        img = gt.with_name(gt.name.replace("_gt.nii.gz", ".nii.gz"))
        if img.exists():
            out.append(("ml_perfusion", img.name.replace(".nii.gz", ""), img, gt, {"dt": 1.0, "time_axis": 0}))
    return out


def load_models(pool_path=None, card_path=None):
    """(DAUGS pool or None, ResUNet LoadedModel or None), on the CPU, sha256 checked."""
    pool = model = None
    if pool_path:
        from PerfusionDAUGSLib.pool import load_pool
        pool = load_pool(pool_path, device="cpu")
    if card_path:
        from PerfusionSegLib.networks.registry import load_model
        model = load_model(card_path, device="cpu")
    return pool, model


def picture(shown, path: Path, what: str) -> None:
    """Each case at the frame 4 after its LV peak, cropped on the labelled heart: reference myocardium cyan, predicted
    myocardium magenta, predicted blood pool red, predicted RV yellow."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(shown)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (dataset, name, data, ref, labels, score) in zip(axes.ravel(), shown):
        heart = np.argwhere(ref > 0)
        (y0, x0), (y1, x1) = heart.min(0), heart.max(0)
        pad = max(8, (y1 - y0) // 2)
        ys = slice(max(0, y0 - pad), y1 + pad + 1)
        xs = slice(max(0, x0 - pad), x1 + pad + 1)
        bp = ref == 1
        t = int(np.argmax(data[:, bp].mean(1))) if bp.any() else data.shape[0] // 2
        frame = data[min(t + 4, data.shape[0] - 1)][ys, xs]
        ax.imshow(frame, cmap="gray", vmin=0, vmax=np.percentile(frame, 99.5))
        for mask, colour, width in ((ref == 2, "c", 0.9), (labels == 2, "m", 0.9), (labels == 1, "r", 0.5),
                                    (labels == 3, "y", 0.5)):
            if mask[ys, xs].any():
                ax.contour(mask[ys, xs].astype(float), [0.5], colors=[colour], linewidths=width)
        ax.set_title(f"{dataset} {name[:22]}\nmyocardium Dice {score:.2f}", fontsize=7)
    fig.suptitle(f"{what}: reference myocardium cyan; predicted myocardium magenta, blood pool red, RV yellow",
                 fontsize=8)
    fig.tight_layout(pad=0.4, rect=(0, 0, 1, 0.94))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _dice(pred, ref, code):
    p, r = pred == code, ref == code
    d = p.sum() + r.sum()
    return float(2 * (p & r).sum() / d) if d else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", help="DAUGS pool folder")
    ap.add_argument("--model", help="full-image model card (ResUNet)")
    ap.add_argument("--daugs-spacing", type=float, default=0.9,
                    help="pixel spacing of the daugs_dev images, which do not store it (about 0.9 mm per the data README)")
    ap.add_argument("--ml-limit", type=int, help="evaluate only the first N ml_perfusion series")
    ap.add_argument("--fast", action="store_true", help="DAUGS staged search instead of exhaustive")
    ap.add_argument("--adapt-bn", action="store_true",
                    help="re-estimate the networks' BatchNorm statistics on each series (test-time adaptation; "
                         "DAUGS: each member on each slice; ResUNet: on its prepared input)")
    ap.add_argument("--no-postprocess", action="store_true",
                    help="DAUGS: raw labels (no postprocess.clean_labels), e.g. to compare clean-up rules offline")
    ap.add_argument("--save-labels", type=Path,
                    help="write every slice's DAUGS labels and reference labels to this .npz (offline analysis)")
    ap.add_argument("--out", type=Path, help="write the per-case results as JSON")
    ap.add_argument("--picture", type=Path, help="PNG of the DAUGS (else ResUNet) contours on the daugs_dev slices and "
                                                 "the first ml_perfusion series")
    ap.add_argument("--picture-ml", type=int, default=5, help="ml_perfusion series in the picture (default 5)")
    ap.add_argument("--record", action="store_true",
                    help="store the summary in the model cards (pool.json / the ResUNet card: evaluation.real_data)")
    args = ap.parse_args(argv)
    if not DATA.exists():
        print(f"real data absent: {DATA}", file=sys.stderr)
        return 2
    from PerfusionSegLib.readers import load_labels, load_series

    pool, model = load_models(args.pool, args.model)
    if pool is None and model is None:
        ap.error("give --pool and/or --model")

    rows, shown, saved = [], [], {}
    for dataset, name, img_path, lab_path, kw in _cases(args.ml_limit):
        if dataset == "daugs_dev":
            kw = dict(kw, spacing=args.daugs_spacing)
        row = {"dataset": dataset, "case": name}
        try:
            series = load_series(img_path, **kw)
            ref, _ = load_labels(lab_path)
            if ref.shape != series.shape:
                raise ValueError(f"label {ref.shape} vs image {series.shape}")
            t0 = time.time()
            if model is not None:
                from PerfusionSegLib.inference import segment_series
                res = segment_series(series, model, adapt_bn=args.adapt_bn)
                row.update(resunet_myo=_dice(res.labels, ref, 2), resunet_bp=_dice(res.labels, ref, 1),
                           resunet_flags=list((res.qc or {}).get("flags", [])),
                           resunet_empty=bool((res.labels == 2).sum() == 0))
            if pool is not None:
                from PerfusionDAUGSLib.daugs import run_daugs
                # the daugs_dev crops are already 2x interpolated (data README): DAUGS must not interpolate again
                res = run_daugs(series, pool, fast=args.fast, device="cpu",
                                input_overrides={"scale": 1.0} if dataset == "daugs_dev" else None,
                                postprocess=not args.no_postprocess, adapt_bn=args.adapt_bn)
                saved[f"{dataset}/{name}"] = {"labels": res.labels, "reference": ref,
                                              "spacing": np.asarray(series.spacing, float)}
                row.update(daugs_myo=_dice(res.labels, ref, 2), daugs_bp=_dice(res.labels, ref, 1),
                           daugs_chosen=res.chosen, daugs_upp=res.upp_chosen, daugs_flags=list(res.flags or []),
                           daugs_empty=bool((res.labels == 2).sum() == 0))
                if not args.no_postprocess:      # the same member's labels before the clean-up, and their QC flags
                    from PerfusionSegLib.qc import slice_qc
                    raw = res.raw_labels()
                    row.update(daugs_raw_myo=_dice(raw, ref, 2), daugs_raw_bp=_dice(raw, ref, 1),
                               daugs_raw_qc_flags=slice_qc(raw, series.spacing, level=series.level,
                                                           affine=series.affine)["flags"])
                if res.established_labels is not None:
                    row.update(established_myo=_dice(res.established_labels, ref, 2),
                               established_bp=_dice(res.established_labels, ref, 1), established=res.established)
            row["seconds"] = round(time.time() - t0, 2)
            if args.picture and (dataset == "daugs_dev" or sum(d == dataset for d, *_ in shown) < args.picture_ml):
                key = "daugs_myo" if pool is not None else "resunet_myo"
                shown.append((dataset, name, series.data, ref, res.labels, row[key]))
        except Exception as exc:  # noqa: BLE001 - a crash is a measured failure here
            row["error"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc(limit=2)
        rows.append(row)
        print(json.dumps(row), flush=True)

    print("\n| dataset | case | ResUNet myo | DAUGS myo | established myo | DAUGS flags |")
    print("|---|---|---|---|---|---|")
    fmt = lambda v: "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"  # noqa: E731
    for r in rows:
        print(f"| {r['dataset']} | {r['case']} | {fmt(r.get('resunet_myo'))} | {fmt(r.get('daugs_myo'))} | "
              f"{fmt(r.get('established_myo'))} | {', '.join(r.get('daugs_flags', [])) or r.get('error', '')} |")
    summaries = {}
    for dataset in ("daugs_dev", "ml_perfusion"):
        sel = [r for r in rows if r["dataset"] == dataset]
        if not sel:
            continue
        summary = {k: float(np.nanmean([r.get(k, np.nan) for r in sel]))
                   for k in ("resunet_myo", "daugs_myo", "established_myo", "daugs_raw_myo")
                   if any(k in r for r in sel)}
        errors = sum("error" in r for r in sel)
        empty = sum(bool(r.get("daugs_empty")) for r in sel)
        flagged = sum(bool(r.get("daugs_flags")) for r in sel)
        print(f"{dataset}: n={len(sel)} mean Dice {summary}; crashes {errors}, empty myocardium {empty}, "
              f"QC-flagged {flagged}")
        summaries[dataset] = dict(summary, n=len(sel), crashes=errors, empty_myocardium=empty, qc_flagged=flagged)
        for key, name in (("daugs_flags", "daugs_flag_counts"), ("daugs_raw_qc_flags", "daugs_raw_qc_flag_counts")):
            counts = {}
            for r in sel:
                for f in r.get(key, []):
                    counts[f] = counts.get(f, 0) + 1
            if any(key in r for r in sel):
                summaries[dataset][name] = counts
                print(f"{dataset} {name}: {counts}")
        if any("resunet_myo" in r for r in sel):
            resunet = {"resunet_median_myo": float(np.nanmedian([r.get("resunet_myo", np.nan) for r in sel])),
                       "resunet_empty_myocardium": sum(bool(r.get("resunet_empty")) for r in sel),
                       "resunet_qc_flagged": sum(bool(r.get("resunet_flags")) for r in sel)}
            print(f"{dataset} ResUNet: {resunet}")
            summaries[dataset].update(resunet)
    if args.picture and shown:
        picture(shown, args.picture, "DAUGS-selected member" if pool is not None else "ResUNet")
        print(f"picture: {args.picture}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    if args.save_labels:
        from evaluate_on_phantom import save_labels
        save_labels(args.save_labels, saved)
    if args.record:
        per_case = {f"{r['dataset']}/{r['case']}": {k: r.get(k) for k in ("daugs_myo", "established_myo", "resunet_myo")
                                                   if k in r} for r in rows if r["dataset"] == "daugs_dev"}
        record = {"summary": summaries, "daugs_dev_per_slice": per_case, "fast": args.fast,
                  "adapt_bn": args.adapt_bn,
                  "daugs_postprocess": not args.no_postprocess, "pool": args.pool, "resunet": args.model,
                  "note": "test only: never used to select models or stop training"}
        if args.pool:
            from PerfusionDAUGSLib.pool import record_evaluation
            print(f"recorded in {record_evaluation(args.pool, 'real_data', record)}")
        if args.model:   # the ResUNet's card gets the ResUNet's figures only, whatever pool ran beside it
            from PerfusionSegLib.networks.registry import record_evaluation as record_in_card
            own = {k: v for k, v in record.items()
                   if k not in ("summary", "daugs_dev_per_slice", "fast", "daugs_postprocess", "pool")}
            own["summary"] = {d: {k: v for k, v in s.items() if k.startswith("resunet") or k == "n"}
                              for d, s in summaries.items()}
            own["daugs_dev_per_slice"] = {c: {"resunet_myo": v["resunet_myo"]} for c, v in per_case.items()
                                          if "resunet_myo" in v}
            print(f"recorded in {record_in_card(args.model, 'real_data', own)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
