#!/usr/bin/env python
"""Segment phantom test studies of every preset with a DAUGS pool and/or a ResUNet and report Dice per class.

The test studies are whole `generate_study` studies (3 slices, stress and rest alternating, signal units) from seeds
``--seed-base`` onwards: a different generator entry point and seed range from training (`generate_training_slice`
drawn from run-seeded streams) and validation (seed + 1e6). Each slice goes through the product's own path: LV
localisation, preparation, DAUGS member selection (fast search unless --exhaustive) or the ResUNet, back to the
series grid. Reports, per preset, the mean Dice of blood pool, myocardium and RV for the DAUGS-selected member, the
established member (best validation Dice) and the ResUNet, and how many slices lost the heart (myocardium Dice < 0.3).

Usage: python scripts/evaluate_on_phantom.py --pool DIR [--model CARD] [--studies 4] [--out results.json] [--record]
       python scripts/evaluate_on_phantom.py --pool DIR --seed-base 4000000 --calibrate   (the U_pp threshold)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

CLASSES = {"blood": 1, "myo": 2, "rv": 3}
LOST = 0.3  # myocardium Dice below this: the slice was not segmented at all (wrong place or empty)


def dice_per_class(pred: np.ndarray, ref: np.ndarray) -> dict:
    from PerfusionSegLib.metrics import dice

    return {name: float(dice(pred == code, ref == code)) for name, code in CLASSES.items()}


def save_labels(path: Path, saved: dict) -> None:
    """One .npz: '<case>|labels', '<case>|reference', '<case>|spacing' for each case."""
    np.savez_compressed(path, **{f"{case}|{key}": value for case, entry in saved.items() for key, value in entry.items()})
    print(f"labels of {len(saved)} slices: {path}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", help="DAUGS pool folder")
    ap.add_argument("--model", help="full-image model card (ResUNet)")
    ap.add_argument("--studies", type=int, default=4, help="studies per preset (3 slices each)")
    ap.add_argument("--seed-base", type=int, default=3_000_000)
    ap.add_argument("--presets", nargs="+", help="default: every preset")
    ap.add_argument("--exhaustive", action="store_true", help="DAUGS: every member at the U-map stride")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--adapt-bn", action="store_true",
                    help="re-estimate the networks' BatchNorm statistics on each slice (test-time adaptation; "
                         "DAUGS: each member on each slice; ResUNet: on its prepared input)")
    ap.add_argument("--no-postprocess", action="store_true",
                    help="DAUGS: raw labels (no postprocess.clean_labels), e.g. to compare clean-up rules offline")
    ap.add_argument("--save-labels", type=Path,
                    help="write every slice's DAUGS labels and reference labels to this .npz (offline analysis)")
    ap.add_argument("--margin-truth", action="store_true",
                    help="also score against the truth with the training labels' partial-volume margin taken off the "
                         "myocardium (generator.TRAIN_MYO_MARGIN_ACQ_PX): the convention a pool trained with that "
                         "margin was taught; results under '<name>_margin'")
    ap.add_argument("--out", type=Path, help="per-slice results as JSON")
    ap.add_argument("--calibrate", action="store_true",
                    help="these studies are the calibration set of the pool's high_uncertainty threshold: compute it "
                         "(5 %% of slices with myocardium Dice >= 0.8 flagged) and store it in pool.json; use a seed "
                         "range kept for this (e.g. --seed-base 4000000)")
    ap.add_argument("--record", action="store_true",
                    help="store the summary in the model cards (pool.json / the ResUNet card: evaluation.phantom_test)")
    args = ap.parse_args(argv)

    from PerfusionSegLib.phantom import generate_study
    from PerfusionSegLib.phantom.generator import TRAIN_MYO_MARGIN_ACQ_PX
    from PerfusionSegLib.phantom.presets import PRESET_NAMES

    presets = args.presets or list(PRESET_NAMES)
    unknown = sorted(set(presets) - set(PRESET_NAMES))
    if unknown:
        ap.error(f"unknown preset(s) {unknown}; known: {', '.join(PRESET_NAMES)}")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from evaluate_on_real_data import load_models

    pool, model = load_models(args.pool, args.model)
    if pool is None and model is None:
        ap.error("give --pool and/or --model")
    if args.calibrate and pool is None:
        ap.error("--calibrate needs --pool")

    rows, saved = [], {}
    margin_px = TRAIN_MYO_MARGIN_ACQ_PX if args.margin_truth else 0.0
    for preset in presets:
        for k in range(args.studies):
            seed, condition = args.seed_base + k, ("stress", "rest")[k % 2]
            ps = generate_study(preset=preset, seed=seed, condition=condition, truth_myo_margin_acq_px=margin_px)
            slices = list(ps.study.slices)
            t0 = time.time()
            daugs = None
            if pool is not None:
                from PerfusionDAUGSLib.daugs import run_daugs
                daugs = run_daugs(slices, pool, fast=not args.exhaustive, bf16=args.bf16, device="cpu",
                                  postprocess=not args.no_postprocess, adapt_bn=args.adapt_bn)
            t_daugs = time.time() - t0
            for i, (s, truth) in enumerate(zip(slices, ps.truth)):
                row = {"preset": preset, "seed": seed, "condition": condition, "level": s.level or str(i)}
                preds = {}          # result name -> labels, scored against each truth below
                if daugs is not None:
                    r = daugs[i]
                    raw = r.raw_labels()            # resampled to the input grid on each call: once per slice
                    preds.update(daugs=r.labels, daugs_raw=raw)
                    if r.established_labels is not None:
                        preds["established_dice"] = r.established_labels
                    row.update(chosen=r.chosen, upp=r.upp_chosen, established=r.established,
                               flags=list(r.flags or []))
                    saved[f"{preset}/{seed}/{row['level']}"] = {"labels": r.labels, "raw_labels": raw,
                                                                "reference": truth.labels,
                                                                "spacing": np.asarray(s.spacing, float)}
                    row["daugs_seconds_per_slice"] = round(t_daugs / len(slices), 2)
                if model is not None:
                    from PerfusionSegLib.inference import segment_series
                    preds["resunet"] = segment_series(s, model, bf16=args.bf16, adapt_bn=args.adapt_bn).labels
                references = {"": truth.labels}
                if truth.margin_labels is not None:
                    references["_margin"] = truth.margin_labels
                for suffix, reference in references.items():
                    for name, labels in preds.items():
                        row[name + suffix] = dice_per_class(labels, reference)
                rows.append(row)
                print(json.dumps(row), flush=True)

    print("\nMean Dice blood / myocardium / RV per preset; 'lost' = slices with myocardium Dice < 0.3; DAUGS labels "
          "are cleaned (postprocess.clean_labels) unless --no-postprocess, 'raw' = the chosen member's labels before\n")
    print("| preset | slices | DAUGS-selected | established | ResUNet | DAUGS-selected, raw labels "
          "| lost (DAUGS / est. / ResUNet / raw) |")
    print("|---|---|---|---|---|---|---|")
    summary = {p: {"slices": sum(1 for r in rows if p in ("all", r["preset"]))} for p in presets + ["all"]}
    for suffix in ("", "_margin") if args.margin_truth else ("",):
        if suffix:
            print(f"\nThe same against the truth with the training labels' margin ({TRAIN_MYO_MARGIN_ACQ_PX} acquired "
                  "px) taken off the myocardium\n")
            print("| preset | slices | DAUGS-selected | established | ResUNet | DAUGS-selected, raw labels "
                  "| lost (DAUGS / est. / ResUNet / raw) |")
            print("|---|---|---|---|---|---|---|")
        for preset in presets + ["all"]:
            sel = [r for r in rows if preset in ("all", r["preset"])]
            cells, lost, entry = [], [], summary[preset]
            for key in ("daugs", "established_dice", "resunet", "daugs_raw"):
                vals = [r[key + suffix] for r in sel if key + suffix in r]
                if not vals:
                    cells.append("-")
                    lost.append("-")
                    continue
                means = {c: float(np.mean([v[c] for v in vals])) for c in CLASSES}
                n_lost = sum(v["myo"] < LOST for v in vals)
                entry[key + suffix] = dict(means, lost=n_lost)
                cells.append(" / ".join(f"{means[c]:.3f}" for c in CLASSES))
                lost.append(str(n_lost))
            print(f"| {preset} | {len(sel)} | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} | {' / '.join(lost)} |")
    record = {"summary": summary, "seed_base": args.seed_base, "studies_per_preset": args.studies,
              "fast": not args.exhaustive, "bf16": args.bf16, "adapt_bn": args.adapt_bn, "resunet": args.model,
              "pool": (str(args.pool) if args.pool else None), "lost_below_myo_dice": LOST,
              "margin_truth_acq_px": TRAIN_MYO_MARGIN_ACQ_PX if args.margin_truth else None}
    if args.out:
        args.out.write_text(json.dumps(dict(record, rows=rows), indent=1))
    if args.save_labels:
        save_labels(args.save_labels, saved)
    if pool is not None:        # how the pool's current threshold (if any) separates good and poor slices here
        from PerfusionDAUGSLib.uncertainty_threshold import pool_threshold
        threshold = pool_threshold(pool)
        if threshold is not None:
            flagged = [r for r in rows if "high_uncertainty" in r.get("flags", [])]
            poor = [r for r in rows if r["daugs"]["myo"] < 0.8]
            record["high_uncertainty"] = {
                "threshold": threshold, "flagged": len(flagged), "poor_slices": len(poor),
                "poor_flagged": sum("high_uncertainty" in r.get("flags", []) for r in poor),
                "good_flagged": sum(r["daugs"]["myo"] >= 0.8 for r in flagged)}
            print(f"high_uncertainty (U_pp > {threshold:.4g}): {record['high_uncertainty']}")
    if args.calibrate:
        from PerfusionDAUGSLib.uncertainty_threshold import calibrate_threshold, phantom_description, store_threshold
        cal = calibrate_threshold([r["upp"] for r in rows], [r["daugs"]["myo"] for r in rows])
        # the same record as `perfusion calibrate-qc` (uncertainty_threshold.calibrate_pool) stores
        cal.update(calibration_set=phantom_description(presets, args.studies, args.seed_base),
                   search="exhaustive" if args.exhaustive else "fast", bf16=bool(args.bf16),
                   per_slice=[[f"{r['preset']}/{r['seed']}#{r['level']}", r["upp"] if np.isfinite(r["upp"]) else None,
                               round(r["daugs"]["myo"], 4)]
                              for r in rows])
        store_threshold(args.pool, cal)
        print(f"calibrated high_uncertainty threshold stored in {args.pool}: {json.dumps(cal)}")
    if args.record and args.pool:
        from PerfusionDAUGSLib.pool import record_evaluation
        print(f"recorded in {record_evaluation(args.pool, 'phantom_test', record)}")
    if args.record and args.model:   # the ResUNet's card gets the ResUNet's figures only, whatever pool ran beside it
        from PerfusionSegLib.networks.registry import record_evaluation as record_in_card
        own = {k: v for k, v in record.items() if k not in ("summary", "high_uncertainty", "fast", "pool")}
        own["summary"] = {p: {"slices": e["slices"], "resunet": e["resunet"]}
                          for p, e in record["summary"].items() if "resunet" in e}
        print(f"recorded in {record_in_card(args.model, 'phantom_test', own)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
