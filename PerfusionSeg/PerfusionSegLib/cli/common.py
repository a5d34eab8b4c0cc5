"""Options shared by several subcommands (geometry overrides, series selection, progress)."""
from __future__ import annotations

import argparse
from pathlib import Path

INPUT_SUFFIXES = (".seq.nrrd", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mat", ".npz", ".npy", ".dcm")


def add_geometry_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("geometry and timing (for formats that lack them)")
    g.add_argument("--spacing", type=float, metavar="MM", help="in-plane pixel spacing in mm (overrides the file)")
    g.add_argument("--dt", type=float, metavar="S", help="frame interval in seconds (overrides the file)")
    g.add_argument("--time-axis", type=int, metavar="AXIS", help="which array axis is time, for files that store it elsewhere (e.g. 0)")
    g.add_argument("--series", metavar="SEL", help="which series to read when a folder or file holds several (index or description/UID text)")


def geometry_kwargs(args: argparse.Namespace) -> dict:
    return {"spacing": args.spacing, "dt": args.dt, "time_axis": args.time_axis, "series": args.series}


def stem_of(path) -> str:
    """File stem without the (double) format suffix: 'a/b/S.nii.gz' -> 'S'; a folder keeps its name."""
    name = Path(str(path).rstrip("/\\")).name
    for suf in INPUT_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def unique_stems(paths) -> list:
    """Output stems for several inputs; a repeated stem gets _2, _3 ... so no output overwrites another."""
    stems, seen = [], {}
    for p in paths:
        s = stem_of(p)
        seen[s] = seen.get(s, 0) + 1
        stems.append(s if seen[s] == 1 else f"{s}_{seen[s]}")
    return stems
