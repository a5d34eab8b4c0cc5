"""`perfusion calibrate-qc --pool P [--data SRC...]`: calibrate a DAUGS pool's ``high_uncertainty`` QC threshold.

U_pp's scale depends on the members, so every pool needs its own threshold; a pool without one raises no
``high_uncertainty`` flag. The pool segments labelled calibration slices with its DAUGS search, and the threshold is
set so that about ``--false-alarm`` of the slices it segments well (myocardium Dice >= ``--good-dice``) are flagged.
How many poor slices it catches is printed, and stored with the threshold in the pool's ``pool.json``.

Calibration data: ``phantom`` (every preset; ``--studies`` studies of 3 slices each from seed ``--seed-base``, a
range no training, validation or test set uses), ``phantom:preset,...``, and/or folders of labelled cases (the Slicer
export format; coarse cases are left out: rough outlines cannot tell a good segmentation from a poor one). Use data
the pool was not trained on. ``perfusion train --family daugs`` runs this on the pool it builds.
"""
from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:
    from PerfusionDAUGSLib.uncertainty_threshold import CALIBRATION_SEED_BASE, CALIBRATION_STUDIES_PER_PRESET

    p = subparsers.add_parser("calibrate-qc", help="calibrate a DAUGS pool's high-uncertainty QC threshold",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pool", required=True, metavar="P", help="DAUGS pool folder or name")
    p.add_argument("--data", nargs="+", default=["phantom"], metavar="SRC",
                   help="phantom (every preset), phantom:preset,... and/or labelled-case folders (default phantom)")
    p.add_argument("--studies", type=int, default=CALIBRATION_STUDIES_PER_PRESET,
                   help=f"phantom studies per preset (default {CALIBRATION_STUDIES_PER_PRESET})")
    p.add_argument("--seed-base", type=int, default=CALIBRATION_SEED_BASE,
                   help=f"first phantom seed (default {CALIBRATION_SEED_BASE})")
    p.add_argument("--good-dice", type=float, default=0.8, help="a slice is segmented well at this myocardium Dice")
    p.add_argument("--false-alarm", type=float, default=0.05,
                   help="fraction of well-segmented slices the threshold flags (default 0.05)")
    p.add_argument("--exhaustive", action="store_true", help="every member at the U-map stride (default: fast search)")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    p.add_argument("--dry-run", action="store_true", help="print the calibration, do not store it")
    p.add_argument("--quiet", action="store_true", help="no line per slice")
    p.set_defaults(func=run)


def run(args) -> int:
    from PerfusionDAUGSLib.pool import load_pool
    from PerfusionDAUGSLib.uncertainty_threshold import (calibrate_pool, calibration_studies, calibration_summary,
                                                         store_threshold)

    studies, described = calibration_studies(args.data, studies_per_preset=args.studies, seed_base=args.seed_base)
    pool = load_pool(args.pool, device=args.device)
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    record = calibrate_pool(pool, studies, good_dice=args.good_dice, false_alarm=args.false_alarm,
                            fast=not args.exhaustive, bf16=args.bf16, device=args.device, log=log)
    record["calibration_set"] = described
    print(calibration_summary(record))
    if args.dry_run:
        print("dry run: pool.json unchanged")
        return 0
    store_threshold(args.pool, record)
    print(f"stored in {args.pool}: {json.dumps({k: v for k, v in record.items() if k != 'per_slice'})}")
    return 0

