"""`perfusion preprocess INPUT... --out DIR [--method resunet|daugs]`: network-ready series and their geometry.

For each input series with file stem S, writes ``DIR/S_network.nii.gz`` (the frames the network sees: temporal
resampling, spatial resampling, crop around the LV and normalisation; NIfTI (X, Y, 1, T) whose matrix places the crop
where it came from, with a ``.times.json`` side-car) and ``DIR/S_geometry.json`` (everything needed to put a
network-grid label map or parametric map back on the input grid: ``NetworkGeometry.from_json``).
Defaults follow the method: resunet = 1.0 mm, 176 px, 48 frames, linear at 0.5 s; daugs = 2x, 128 px, 30 frames,
PCHIP. The LV centre is found automatically unless ``--center ROW COL`` is given. Every input is read before anything
is written: a bad input stops the run with nothing written (exit status 2).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import add_geometry_options, geometry_kwargs, unique_stems

METHOD_DEFAULTS = {
    "resunet": {"spacing_mm": 1.0, "scale": None, "size": 176, "n_frames": 48, "temporal": "linear", "dt": 0.5},
    "daugs": {"spacing_mm": None, "scale": 2.0, "size": 128, "n_frames": 30, "temporal": "pchip", "dt": 0.5},
}


def register(subparsers) -> None:
    p = subparsers.add_parser("preprocess", help="write network-ready series and the geometry that inverts them",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="series files or DICOM folders")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--method", choices=tuple(METHOD_DEFAULTS), default="resunet",
                   help="network whose input to prepare (sets the defaults below; default resunet)")
    add_geometry_options(p)
    g = p.add_argument_group("network grid (override the method's defaults)")
    g.add_argument("--target-spacing", type=float, metavar="MM", help="network pixel size in mm (resunet: 1.0)")
    g.add_argument("--scale", type=float, metavar="F", help="resample by a factor instead of to a spacing (daugs: 2)")
    g.add_argument("--size", type=int, metavar="PX", help="network field in pixels (resunet 176, daugs 128)")
    g.add_argument("--frames", type=int, metavar="N", help="frames given to the network (resunet 48, daugs 30)")
    g.add_argument("--temporal", choices=("linear", "pchip"), help="temporal resampling (resunet linear, daugs pchip)")
    g.add_argument("--frame-interval", type=float, metavar="S", help="network frame interval for linear resampling (0.5 s)")
    g.add_argument("--center", type=float, nargs=2, metavar=("ROW", "COL"),
                   help="LV centre in input pixels (default: found automatically)")
    g.add_argument("--normalise", choices=("robust_max", "none"), default=None,
                   help="intensity scaling (default robust_max; 'none' for [Gd] in mmol/L)")
    p.set_defaults(func=run)


def prepare_kwargs(args: argparse.Namespace, series) -> dict:
    kw = dict(METHOD_DEFAULTS[args.method])
    if args.target_spacing is not None and args.scale is not None:
        from ..errors import InvalidParameterError
        raise InvalidParameterError("give --target-spacing or --scale, not both")
    if args.target_spacing is not None:
        kw.update(spacing_mm=args.target_spacing, scale=None)
    if args.scale is not None:
        kw.update(scale=args.scale, spacing_mm=None)
    for opt, key in (("size", "size"), ("frames", "n_frames"), ("temporal", "temporal"), ("frame_interval", "dt")):
        if getattr(args, opt) is not None:
            kw[key] = getattr(args, opt)
    kw["normalise"] = args.normalise or ("none" if series.units == "mmol/L" else "robust_max")
    kw["center_yx"] = tuple(args.center) if args.center is not None else None
    return kw


def network_series(series, x, geometry):
    """The network input as a SliceSeries on the network grid (padded frames get times one step apart)."""
    import numpy as np

    from ..series import SliceSeries

    times = np.asarray(geometry.frame_times, dtype=np.float64)
    step = float(np.median(np.diff(times[: len(times) - geometry.n_padded_frames]))) if len(times) > 1 else 1.0
    for k in range(1, len(times)):            # repeated (padded) frames: keep times strictly increasing
        if times[k] <= times[k - 1]:
            times[k] = times[k - 1] + (step if step > 0 else 1.0)
    meta = {"network_geometry": geometry.to_dict(), "source_series": series.source}
    return SliceSeries(data=x, times=times, spacing=geometry.network_spacing,
                       affine=geometry.network_affine(series.affine), level=series.level, condition=series.condition,
                       units="normalised" if geometry.normalise == "robust_max" else series.units,
                       source=f"preprocess({series.source})", metadata=meta)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..atomic import write_text_atomic
    from ..errors import InvalidParameterError
    from ..preprocess import prepare_for_network
    from ..readers import load_series
    from ..writers import write_series

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InvalidParameterError(f"--out {out} exists and is not a folder")
    many = len(args.inputs) > 1
    # read and prepare every input before writing anything: a bad input stops the run with nothing written
    prepared = []
    for path in tqdm(args.inputs, desc="preprocess", unit="series", disable=not many, file=sys.stderr):
        series = load_series(path, **geometry_kwargs(args))
        x, geometry = prepare_for_network(series, **prepare_kwargs(args, series))
        prepared.append((series, x, geometry))
    out.mkdir(parents=True, exist_ok=True)
    for stem, (series, x, geometry) in zip(unique_stems(args.inputs), prepared):
        net_path = write_series(network_series(series, x, geometry), out / f"{stem}_network.nii.gz")
        geo_path = write_text_atomic(out / f"{stem}_geometry.json", geometry.to_json() + "\n")
        print(f"{net_path}  {geo_path.name}  {x.shape[0]}x{x.shape[1]}x{x.shape[2]} (frames x rows x cols), "
              f"centre {geometry.center_yx[0]:.1f},{geometry.center_yx[1]:.1f} [{geometry.center_source}]")
    return 0
