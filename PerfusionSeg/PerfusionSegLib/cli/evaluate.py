"""`perfusion evaluate --pred P... --ref R... [--out CSV]`: overlap and border metrics of label maps.

Predictions and references pair up in the order given. Pixel spacing comes from the label files (NIfTI, NRRD) or
``--spacing MM``; without either the command stops rather than report pixels as millimetres.
"""
from __future__ import annotations

import argparse
import csv
import io
import math
from pathlib import Path

import numpy as np

TABLE_COLUMNS = (("blood_pool_dice", "Dice BP"), ("myocardium_dice", "Dice myo"), ("rv_dice", "Dice RV"),
                 ("endo_mbe_mm", "MBE endo"), ("epi_mbe_mm", "MBE epi"), ("endo_hd95_mm", "HD95 endo"),
                 ("epi_hd95_mm", "HD95 epi"), ("rv_insertion_anterior_deg", "RVIP ant"))


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="compare predicted label maps with references (Dice, HD, ...)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pred", nargs="+", required=True, metavar="P", help="predicted label files")
    p.add_argument("--ref", nargs="+", required=True, metavar="R", help="reference label files, same order")
    p.add_argument("--out", metavar="CSV", help="write every metric per pair to this CSV file")
    p.add_argument("--spacing", type=float, metavar="MM", help="pixel spacing when the files do not store it")
    p.add_argument("--pred-scheme", default="auto", metavar="S", help="label codes of the predictions (default auto)")
    p.add_argument("--ref-scheme", default="auto", metavar="S",
                   help="label codes of the references: auto, project, daugs, ml_perfusion (default auto)")
    p.set_defaults(func=run)


def file_spacing(path: str):
    """(dy, dx) mm stored in a NIfTI/NRRD label file, or None."""
    name = path.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib
            zooms = nib.load(path).header.get_zooms()
            return (float(zooms[1]), float(zooms[0])) if len(zooms) >= 2 else None
        if name.endswith((".nrrd", ".nhdr")):
            import nrrd
            header = nrrd.read_header(path)
            dirs = header.get("space directions")
            if dirs is not None:
                d = np.asarray(dirs, float)
                return (float(np.linalg.norm(d[1])), float(np.linalg.norm(d[0])))
            sp = header.get("spacings")
            return (float(sp[1]), float(sp[0])) if sp is not None else None
    except Exception:
        return None
    return None


def _fmt(v) -> str:
    return "   nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:6.3f}"


def run(args: argparse.Namespace) -> int:
    from ..atomic import write_text_atomic
    from ..errors import InvalidParameterError, MissingGeometryError
    from ..metrics import evaluate_pair, flatten
    from ..readers import load_labels

    if len(args.pred) != len(args.ref):
        raise InvalidParameterError(f"{len(args.pred)} predictions but {len(args.ref)} references: give them in pairs")
    if args.spacing is not None and not 0.05 <= args.spacing <= 20:
        raise InvalidParameterError(f"--spacing must be in 0.05..20 mm, got {args.spacing}")
    rows, notes = [], []
    for pred_path, ref_path in zip(args.pred, args.ref):
        pred, pred_note = load_labels(pred_path, scheme=args.pred_scheme)
        ref, ref_note = load_labels(ref_path, scheme=args.ref_scheme)
        pred, ref = np.squeeze(pred), np.squeeze(ref)
        if pred.shape != ref.shape:
            raise InvalidParameterError(f"{pred_path} is {pred.shape} but {ref_path} is {ref.shape}: not the same grid")
        spacing = (args.spacing, args.spacing) if args.spacing else (file_spacing(ref_path) or file_spacing(pred_path))
        if spacing is None:
            raise MissingGeometryError(f"pixel spacing of {ref_path} is unknown: give --spacing MM")
        row = {"pred": pred_path, "ref": ref_path, "spacing_dy": spacing[0], "spacing_dx": spacing[1]}
        row.update(flatten(evaluate_pair(pred, ref, spacing)))
        rows.append(row)
        notes += [n for n in (pred_note, ref_note) if n and n not in notes]
    for note in notes:
        print(f"note: {note}")

    header = f"{'prediction':<32}" + "".join(f"{title:>10}" for _, title in TABLE_COLUMNS)
    print(header)
    for row in rows:
        print(f"{Path(row['pred']).name[:31]:<32}" + "".join(f"{_fmt(row[k]):>10}" for k, _ in TABLE_COLUMNS))
    if len(rows) > 1:
        means = {k: np.nanmean([r[k] for r in rows]) if not all(math.isnan(r[k]) for r in rows) else float("nan")
                 for k, _ in TABLE_COLUMNS}
        print(f"{'mean':<32}" + "".join(f"{_fmt(means[k]):>10}" for k, _ in TABLE_COLUMNS))
    if args.out:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(args.out, buf.getvalue())
        print(f"wrote {args.out}")
    return 0
