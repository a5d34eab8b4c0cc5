"""Options shared by several subcommands (geometry overrides, series selection, progress)."""
from __future__ import annotations

import argparse


def add_geometry_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("geometry and timing (for formats that lack them)")
    g.add_argument("--spacing", type=float, metavar="MM", help="in-plane pixel spacing in mm (overrides the file)")
    g.add_argument("--dt", type=float, metavar="S", help="frame interval in seconds (overrides the file)")
    g.add_argument("--time-axis", type=int, metavar="AXIS", help="which array axis is time, for files that store it elsewhere (e.g. 0)")
    g.add_argument("--series", metavar="SEL", help="which series to read when a folder or file holds several (index or description/UID text)")


def geometry_kwargs(args: argparse.Namespace) -> dict:
    return {"spacing": args.spacing, "dt": args.dt, "time_axis": args.time_axis, "series": args.series}
