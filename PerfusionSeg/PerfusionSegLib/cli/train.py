"""`perfusion train`: train a ResUNet or a DAUGS pool with the published recipes, on the phantom and/or labelled folders.

Runs are resumable: run the same command again after an interruption and it continues from the last complete epoch.
Labelled folders may hold coarse cases (rough outlines, exported with ``coarse=True``): training learns from their
cores only. ``--init`` fine-tunes a trained model or pool (e.g. the shipped one on a site's own cases) instead of
starting from random weights.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a ResUNet or a DAUGS model pool (resumable)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=("resunet", "daugs"), required=True)
    p.add_argument("--data", nargs="+", default=["phantom"], metavar="SRC",
                   help="phantom[:preset,preset...] and/or folders of labelled cases (the Slicer export format)")
    p.add_argument("--out", required=True, type=Path, help="output folder (runs, checkpoints, the exported model/pool)")
    p.add_argument("--runs", type=int, default=None, help="DAUGS: independent runs (different initialisations); default 5")
    p.add_argument("--epochs", type=int, help="override the recipe's epoch count")
    p.add_argument("--steps-per-epoch", type=int, help="batches per epoch (on-the-fly data has no fixed epoch)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--lr-halve-every", type=int, help="halve the learning rate every this many epochs")
    p.add_argument("--patience", type=int, help="early stopping: epochs without validation Dice gain")
    p.add_argument("--config", help="network configuration name (e.g. xue2020, default, daugs2024, tiny)")
    p.add_argument("--bank-size", type=int, help="training slices kept in memory and refreshed each epoch")
    p.add_argument("--val-slices", type=int, help="phantom validation slices (separate seed stream)")
    p.add_argument("--dice-threshold", type=float, default=0.87,
                   help="DAUGS: a checkpoint joins the pool when its validation myocardium Dice reaches this")
    p.add_argument("--max-members", type=int, default=50)
    p.add_argument("--member-epoch-gap", type=int, default=2,
                   help="DAUGS: members of one run lie at least this many epochs apart (default 2: near-copy "
                        "neighbours make the fast search miss the exhaustive choice; 1: any checkpoint). With the "
                        "published recipe (at most 15 epochs) 2 leaves at most 8 members a run, 40 from 5 runs; "
                        "1 allows the published 5 x 10")
    p.add_argument("--max-minutes", type=float, help="training budget of each run in minutes, counted over interrupted and resumed invocations")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--parallel-runs", type=int, default=1, metavar="N",
                   help="DAUGS: train N runs at once, one process each (on a GPU the data generation is the "
                        "bottleneck of one run); the runs are the same as when trained one after the other")
    p.add_argument("--init", metavar="CARD_OR_POOL",
                   help="fine-tune: start from this model card (every run) or DAUGS pool folder (run r from the "
                        "best member of the pool's r-th training run) instead of random weights")
    p.add_argument("--qc-calibration-studies", type=int, default=4, metavar="N",
                   help="DAUGS: calibrate the built pool's high_uncertainty QC threshold on N phantom studies per "
                        "preset plus the held-out patients' exact cases (default 4; 0: leave the pool without one "
                        "and run `perfusion calibrate-qc` later)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-resume", action="store_true", help="start again even if the output holds a run")
    p.add_argument("--half", action="store_true", help="store exported weights as float16 (half the size)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _recipe(args):
    from ..errors import InvalidParameterError
    from ..training.recipes import recipe_for

    recipe = recipe_for(args.family)
    changes = {k: v for k, v in {"epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch,
                                 "batch_size": args.batch_size, "lr": args.lr, "config": args.config,
                                 "lr_halve_every": args.lr_halve_every, "early_stop_patience": args.patience,
                                 "bank_size": args.bank_size, "val_slices": args.val_slices}.items() if v is not None}
    for k, v in changes.items():
        if k != "config" and v <= 0:
            raise InvalidParameterError(f"--{k.replace('_', '-')} must be positive, got {v}")
    return recipe.replace(**changes)


def run(args) -> int:
    from ..errors import InvalidParameterError
    from ..training.pipeline import train_family

    if args.qc_calibration_studies < 0:
        raise InvalidParameterError(f"--qc-calibration-studies must be 0 or more, got {args.qc_calibration_studies}")
    recipe = _recipe(args)
    log = (lambda msg: print(msg, file=sys.stderr))
    result = train_family(recipe, args.data, args.out, runs=args.runs, seed=args.seed, device=args.device,
                          resume=not args.no_resume, max_minutes=args.max_minutes,
                          dice_threshold=args.dice_threshold, max_members=args.max_members,
                          min_epoch_gap=args.member_epoch_gap, half=args.half,
                          parallel_runs=args.parallel_runs, init=args.init,
                          qc_calibration_studies=args.qc_calibration_studies if args.family == "daugs" else 0,
                          progress=not args.quiet, log=log)
    print(result["summary"])
    return 0
