"""`perfusion phantom --n N --preset P --seed S --out DIR`: write synthetic perfusion studies with ground truth.

Study i uses seed S+i and goes to ``DIR/phantom_<seed>/``; with ``--condition both`` the stress and rest studies of a
seed share the anatomy (same patient). Files per study: see ``PerfusionSegLib.phantom.write_phantom``.
"""
from __future__ import annotations

import sys


def register(subparsers) -> None:
    from ..phantom.presets import DEFAULT_PRESET, PRESET_NAMES

    p = subparsers.add_parser(
        "phantom", help="generate synthetic perfusion studies with exact ground truth",
        description="Generate synthetic first-pass perfusion studies (basal, mid, apical short-axis 2D+T series with PD "
                    "frames) and their truth: labels, RV insertion points, AHA map, MBF map, AIF, tissue Gd curves and "
                    "every parameter used (JSON). Same seed, same output.")
    p.add_argument("--n", type=int, default=1, metavar="N", help="number of studies (seeds S .. S+N-1; default 1)")
    p.add_argument("--preset", default=DEFAULT_PRESET, metavar="P", help=f"acquisition preset: {', '.join(PRESET_NAMES)} (default {DEFAULT_PRESET})")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="first seed (default 0)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--condition", default="stress", choices=("stress", "rest", "both"), help="default stress")
    p.add_argument("--units", default="signal", choices=("signal", "gd"), help="series values: scanner signal or Gd mmol/L")
    p.add_argument("--slices", type=int, default=3, metavar="K", help="short-axis slices per study (default 3)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from ..errors import InvalidParameterError
    from ..phantom import generate_study, write_phantom
    from ..phantom.presets import check_preset

    check_preset(args.preset)
    if not 1 <= args.n <= 100000:
        raise InvalidParameterError(f"--n must be in 1..100000, got {args.n}")
    if args.seed < 0:
        raise InvalidParameterError(f"--seed must be >= 0, got {args.seed}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InvalidParameterError(f"--out {out} exists and is not a folder")
    conditions = ("stress", "rest") if args.condition == "both" else (args.condition,)
    units = "mmol/L" if args.units == "gd" else "signal"
    jobs = [(args.seed + i, c) for i in range(args.n) for c in conditions]
    for seed, cond in tqdm(jobs, desc="phantom", unit="study", file=sys.stderr, disable=None):
        ps = generate_study(args.preset, seed=seed, condition=cond, n_slices=args.slices, units=units)
        write_phantom(ps, out / f"phantom_{seed:04d}")
    print(f"wrote {len(jobs)} stud{'y' if len(jobs) == 1 else 'ies'} to {out}")
    return 0
