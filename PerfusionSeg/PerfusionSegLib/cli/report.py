"""`perfusion report --labels L1 [L2 L3] --map M1 [M2 M3] [--rest-labels ...] [--rest-map R1 ...] --out DIR`

AHA 16-segment report of parametric maps (MBF by default) over label maps (one per slice, basal to apical): RV
insertion points, sector and territory maps, per-segment statistics, stress/rest reserve, and the report files
``bullseye.png``, ``slices_*.png``, ``report.html``, ``report.json``, ``segments.csv``, plus ``sectors_<level>.nii.gz``
and ``territories_<level>.nii.gz`` on the grid of each label map.

Maps on disk are ``(X, Y)`` or ``(X, Y, 1)`` NIfTI/NRRD (as ``perfusion mbf`` writes them), ``(Y, X)`` NumPy or a
MATLAB 2-D array ``[rows, cols]``. Pixel spacing and the voxel-to-patient matrix come from the label file header where
it has them (NIfTI/NRRD); the matrix tells anterior from inferior in mirrored images. Without it the image is assumed
an unmirrored standard short-axis view (stated in the report).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def register(subparsers) -> None:
    p = subparsers.add_parser("report", help="AHA 16-segment report (bullseye, table, slice images; HTML, PNG, JSON, CSV)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labels", nargs="+", required=True, metavar="L", help="label maps (project codes 0-3), one per slice, basal to apical")
    p.add_argument("--map", nargs="+", required=True, metavar="M", help="stress parametric maps (e.g. MBF), one per label map")
    p.add_argument("--rest-map", nargs="+", metavar="R", help="rest maps, one per slice (reserve = stress/rest)")
    p.add_argument("--rest-labels", nargs="+", metavar="RL", help="label maps of the rest slices (default: --labels, when the grids match)")
    p.add_argument("--background", nargs="+", metavar="B", help="background images for the slice pictures (default: the map)")
    p.add_argument("--levels", nargs="+", choices=("basal", "mid", "apical"),
                   help="level of each slice (default: basal, mid, apical in the order given; one slice: mid)")
    p.add_argument("--anterior", nargs="+", metavar="Y,X", help="anterior RV insertion point (row,column) per slice, or 'auto'")
    p.add_argument("--label-scheme", default="auto", choices=("auto", "project", "daugs", "ml_perfusion"))
    p.add_argument("--spacing", type=float, metavar="MM", help="in-plane pixel spacing in mm, for files without it")
    p.add_argument("--title", default="Myocardial perfusion report")
    p.add_argument("--units", default="ml/min/g", help="units of the maps (default ml/min/g)")
    p.add_argument("--quantity", default="MBF", help="name of the mapped quantity (default MBF)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.set_defaults(func=run)


def _geometry(path: Path) -> tuple:
    """(spacing (dy, dx) or None, LPS voxel-to-patient matrix or None) from a NIfTI/NRRD header."""
    name = path.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            img = nib.load(str(path))
            zooms = img.header.get_zooms()
            if img.header.get_sform(coded=True)[1] or img.header.get_qform(coded=True)[1]:
                affine = LPS_TO_RAS @ np.asarray(img.affine, dtype=np.float64)
            else:
                affine = None
            return (float(zooms[1]), float(zooms[0])), affine
        if name.endswith((".nrrd", ".nhdr")):
            import nrrd

            h = nrrd.read_header(str(path))
            dirs = h.get("space directions")
            if dirs is None:
                return None, None
            dirs = np.asarray([d for d in dirs if d is not None and np.all(np.isfinite(np.asarray(d, dtype=float)))],
                              dtype=np.float64)
            if dirs.shape[0] < 2:
                return None, None
            affine = np.eye(4)
            affine[:3, 0], affine[:3, 1] = dirs[0], dirs[1]
            affine[:3, 2] = dirs[2] if dirs.shape[0] > 2 else np.cross(dirs[0], dirs[1]) / max(np.linalg.norm(dirs[0]), 1e-9)
            affine[:3, 3] = np.asarray(h.get("space origin", [0, 0, 0]), dtype=np.float64)
            space = str(h.get("space", "left-posterior-superior")).lower()
            if space in ("right-anterior-superior", "ras"):
                affine = LPS_TO_RAS @ affine
            return (float(np.linalg.norm(dirs[1])), float(np.linalg.norm(dirs[0]))), affine
    except Exception:  # a header we cannot read gives no geometry; the reader reports unreadable files itself
        return None, None
    return None, None


def load_map(path) -> np.ndarray:
    """A 2-D parametric map as float (Y, X). NIfTI/NRRD (X, Y) or (X, Y, 1); NumPy (Y, X); MATLAB [rows, cols]."""
    from ..errors import InvalidParameterError, UnreadableFileError

    path = Path(path)
    name = path.name.lower()
    if not path.is_file():
        raise UnreadableFileError(f"{path}: no such file")
    try:
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            arr, transpose = np.asarray(nib.load(str(path)).dataobj), True
        elif name.endswith((".nrrd", ".nhdr")):
            import nrrd

            arr, transpose = nrrd.read(str(path), index_order="F")[0], True
        elif name.endswith(".npy"):
            arr, transpose = np.load(str(path), allow_pickle=False), False
        elif name.endswith(".npz"):
            with np.load(str(path), allow_pickle=False) as z:
                keys = [k for k in z.files if k in ("map", "mbf", "values")] or list(z.files)
                if len(keys) != 1:
                    raise InvalidParameterError(f"{path.name}: expected one map array, found {list(z.files)}")
                arr, transpose = np.asarray(z[keys[0]]), False
        elif name.endswith(".mat"):
            from ..readers import _mat_variables

            cands = [(k, v) for k, v in _mat_variables(path).items()
                     if isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.number) and np.squeeze(v).ndim == 2]
            if len(cands) != 1:
                raise InvalidParameterError(f"{path.name}: expected one 2-D array, found {[k for k, _ in cands] or 'none'}")
            arr, transpose = cands[0][1], False
        else:
            raise UnreadableFileError(f"{path.name}: maps are read from NIfTI, NRRD, NumPy or MATLAB files")
    except (InvalidParameterError, UnreadableFileError):
        raise
    except Exception as exc:
        raise UnreadableFileError(f"{path.name}: not a readable map ({type(exc).__name__})") from None
    arr = np.asarray(arr)
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise InvalidParameterError(f"{path.name}: map values must be real numbers, got {arr.dtype}")
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise InvalidParameterError(f"{path.name}: a map must be 2-D, got shape {np.shape(arr)}")
    arr = arr.astype(np.float64)
    return arr.T if transpose else arr


def _parse_points(items: Optional[list], n: int) -> list:
    from ..errors import InvalidParameterError

    if not items:
        return [None] * n
    if len(items) != n:
        raise InvalidParameterError(f"--anterior needs one value per slice ({n}), got {len(items)}")
    out = []
    for it in items:
        if it.lower() == "auto":
            out.append(None)
            continue
        try:
            y, x = (float(v) for v in it.split(","))
        except ValueError:
            raise InvalidParameterError(f"--anterior expects Y,X (row,column) or 'auto', got {it!r}") from None
        out.append((y, x))
    return out


def _build_slices(label_paths, map_paths, levels, backgrounds, anterior, args, what: str) -> tuple:
    """Read and analyse one acquisition: returns (slices for the report, per-slice geometry)."""
    from ..aha import aha_sector_map, find_insertion_points_stack
    from ..errors import InvalidParameterError
    from ..readers import load_labels

    read, geoms = [], []
    for i, (lp, mp) in enumerate(zip(label_paths, map_paths)):
        labels, note = load_labels(lp, scheme=args.label_scheme)
        values = load_map(mp)
        if values.shape != labels.shape:
            raise InvalidParameterError(f"{what} slice {i + 1}: map {Path(mp).name} is {values.shape[0]}x{values.shape[1]} "
                                        f"but labels {Path(lp).name} are {labels.shape[0]}x{labels.shape[1]} (Y x X)")
        spacing, affine = _geometry(Path(lp))
        if spacing is None:
            spacing, affine = _geometry(Path(mp))
        if args.spacing is not None:
            if not 0.05 <= args.spacing <= 20.0:
                raise InvalidParameterError(f"--spacing must be 0.05..20 mm, got {args.spacing}")
            spacing = (args.spacing, args.spacing)
        spacing = spacing or (1.0, 1.0)   # isotropic pixels: angles do not depend on the pixel size
        background = load_map(backgrounds[i]) if backgrounds else None
        if background is not None and background.shape != labels.shape:
            raise InvalidParameterError(f"{what} slice {i + 1}: background {Path(backgrounds[i]).name} does not match the labels' grid")
        read.append((labels, note, values, background))
        geoms.append((spacing, affine))
    # slices analysed together: one without a usable RV borrows its neighbour's anterior angle
    ips = find_insertion_points_stack([r[0] for r in read], spacing=[g[0] for g in geoms], affines=[g[1] for g in geoms],
                                      user_anterior=anterior)
    slices = []
    for level, (labels, note, values, background), ip in zip(levels, read, ips):
        sm = aha_sector_map(labels, level, ip)
        slices.append({"level": level, "image": background if background is not None else values, "labels": labels,
                       "sector_map": sm, "map": np.where(sm > 0, values, np.nan), "insertion": ip,
                       "label_note": note})
    return slices, geoms


def run(args: argparse.Namespace) -> int:
    from ..errors import InvalidParameterError
    from ..report import write_report
    from ..series import assign_levels
    from ..aha import territory_map
    from ..writers import write_labels

    n = len(args.labels)
    if len(args.map) != n:
        raise InvalidParameterError(f"--map needs one map per label map: {n} label maps, {len(args.map)} maps")
    if n > 3 and args.levels is None:
        raise InvalidParameterError(f"{n} slices: say which level each one is with --levels")
    # without --levels: three slices are basal, mid, apical in the order given; a single slice is taken as mid
    levels = list(args.levels) if args.levels else (["mid"] if n == 1 else assign_levels(n))
    if len(levels) != n:
        raise InvalidParameterError(f"--levels needs one level per slice ({n}), got {len(levels)}")
    if len(set(levels)) != len(levels):
        raise InvalidParameterError(f"each level may appear once, got {levels}")
    if args.background and len(args.background) != n:
        raise InvalidParameterError(f"--background needs one image per slice ({n}), got {len(args.background)}")
    anterior = _parse_points(args.anterior, n)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InvalidParameterError(f"--out {out} exists and is not a folder")

    # read and analyse everything first: a bad input stops the run with nothing written
    stress, geoms = _build_slices(args.labels, args.map, levels, args.background, anterior, args, "stress")
    rest = []
    if args.rest_map:
        if len(args.rest_map) != n:
            raise InvalidParameterError(f"--rest-map needs one map per slice ({n}), got {len(args.rest_map)}")
        rest_labels = args.rest_labels or args.labels
        if len(rest_labels) != n:
            raise InvalidParameterError(f"--rest-labels needs one label map per slice ({n}), got {len(rest_labels)}")
        rest, _ = _build_slices(rest_labels, args.rest_map, levels, None, [None] * n, args, "rest")
    elif args.rest_labels:
        raise InvalidParameterError("--rest-labels given without --rest-map")

    paths = write_report(out, stress, rest_slices=rest or None, title=args.title, units=args.units, quantity=args.quantity,
                         condition="stress",
                         metadata={"labels": [str(p) for p in args.labels], "maps": [str(p) for p in args.map],
                                   "rest_maps": [str(p) for p in (args.rest_map or [])],
                                   "label_notes": [s["label_note"] for s in stress + rest]})
    for sl, (spacing, affine) in zip(stress, geoms):
        for kind, arr in (("sectors", sl["sector_map"]), ("territories", territory_map(sl["sector_map"]))):
            paths[f"{kind}_{sl['level']}"] = write_labels(arr, out / f"{kind}_{sl['level']}.nii.gz", spacing=spacing,
                                                          affine=affine)
    for sl in stress + rest:
        ip = sl["insertion"]
        if ip.flagged or ip.source != "auto":
            print(f"perfusion report: {sl['level']}: insertion points from {ip.source}"
                  f"{' (CHECK)' if ip.flagged else ''}: {ip.note}", file=sys.stderr)
    print(f"report written to {out}: " + ", ".join(sorted(Path(p).name for p in paths.values())))
    return 0
