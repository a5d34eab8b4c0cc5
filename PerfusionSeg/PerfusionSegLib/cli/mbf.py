"""`perfusion mbf SERIES [--aif AIF] --out DIR [--model fermi|2cxm] [--mask LABELS]`: pixel-wise myocardial blood flow.

Writes, for the input series with file stem S, on the input grid: ``DIR/S_mbf.nii.gz`` (ml/min/g, tissue density
1.05 g/ml, NaN outside the mask) and the model's other parameter maps (fermi: delay, fermi_tau, fermi_k; 2cxm: ps,
vp, visf, delay; both: rmse), and ``DIR/S_mbf.json`` with the settings and summary values.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .common import add_geometry_options, geometry_kwargs

MAP_SUFFIX = ".nii.gz"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "mbf", help="pixel-wise myocardial blood flow (Fermi or two-compartment exchange)",
        description="Quantify myocardial blood flow from a first-pass series in [Gd] (mmol/L; signal series are "
                    "converted with a Bloch-simulated look-up table) and an arterial input function. MBF in ml/min/g "
                    "with a tissue density of 1.05 g/ml.")
    p.add_argument("input", metavar="SERIES", help="perfusion series (DICOM folder, NIfTI, NRRD, .mat, .npy)")
    p.add_argument("--aif", metavar="AIF",
                   help="AIF curve (blood Gd, mmol/L): .json (list, or {curve, times, hematocrit}), .npy, .txt/.csv "
                        "(one value per line, or 'time value' rows), or a QPerf .mat; or 'perfusion' = the mean of the "
                        "LV blood pool of the series itself (label 1 of --mask, else located automatically; saturates: "
                        "underestimates the AIF peak); default: the AIF stored in the series file (QPerf .mat)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--model", default="fermi", choices=("fermi", "2cxm"), help="kinetic model (default fermi)")
    p.add_argument("--mask", metavar="LABELS", help="label map on the series grid; MBF is computed where it equals "
                                                    "--mask-label (default: every pixel)")
    p.add_argument("--mask-label", type=int, default=2, metavar="L", help="label value to fit (default 2, LV myocardium)")
    p.add_argument("--no-denoise", action="store_true",
                   help="fit the raw pixel curves (default: low-rank temporal denoising of the masked curves first)")
    p.add_argument("--hematocrit", type=float, metavar="HCT", help="haematocrit (default: from the AIF file, else 0.42)")
    p.add_argument("--units", default="auto", choices=("auto", "gd", "signal"),
                   help="what the series values are: gd = [Gd] mmol/L, signal = scanner signal (converted), auto = as the "
                        "file says (QPerf .mat: Gd; DICOM, NIfTI, NumPy: signal)")
    p.add_argument("--sequence", choices=("flash", "bssfp"), help="SR readout, for signal series (default: from DICOM)")
    p.add_argument("--field-strength", type=float, choices=(1.5, 3.0), help="tesla, for signal series (default: DICOM)")
    add_geometry_options(p)
    p.set_defaults(func=run)


def _stem(path: Path) -> str:
    name = path.name.rstrip("/")
    for suf in (".nii.gz", ".seq.nrrd", ".nii", ".nrrd", ".nhdr", ".mat", ".npy", ".npz", ".dcm"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def read_aif_file(path: Path, series, hematocrit=None):
    """An AIF from a curve file; a curve without times must have one value per series frame."""
    import numpy as np

    from ..errors import InvalidParameterError, UnreadableFileError
    from ..quantification.aif import DEFAULT_HEMATOCRIT, make_aif, validate_aif_curve

    if not path.exists():
        raise UnreadableFileError(f"AIF file {path} does not exist")
    suffix = path.suffix.lower()
    times, foot, peak, hct = None, None, None, None
    try:
        if suffix == ".json":
            obj = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(obj, dict):
                curve = obj.get("curve", obj.get("aif"))
                times = obj.get("times", obj.get("times_s"))
                hct = obj.get("hematocrit")
                foot, peak = obj.get("foot"), obj.get("peak")
            else:
                curve = obj
            curve = np.asarray(curve, dtype=np.float64)
        elif suffix == ".npy":
            curve = np.asarray(np.load(str(path), allow_pickle=False), dtype=np.float64)
        elif suffix in (".txt", ".csv", ".tsv"):
            curve = np.loadtxt(str(path), delimiter="," if suffix == ".csv" else None, ndmin=1)
        elif suffix == ".mat":
            from ..readers import load_study
            study = load_study(path)
            if study.aif is None:
                raise InvalidParameterError(f"{path.name} holds no AIF")
            aif = study.aif
            curve, times, hct, foot, peak = aif.curve, aif.times, aif.hematocrit, aif.foot, aif.peak
        else:
            raise InvalidParameterError(f"AIF file {path.name}: use .json, .npy, .txt, .csv or a QPerf .mat")
    except (ValueError, TypeError, OSError) as exc:
        if isinstance(exc, InvalidParameterError):
            raise
        raise UnreadableFileError(f"AIF file {path.name} is not readable: {' '.join(str(exc).split())[:120]}") from None
    curve = np.asarray(curve, dtype=np.float64)
    if curve.ndim == 2 and curve.shape[1] == 2 and times is None:   # 'time value' rows
        times, curve = curve[:, 0], curve[:, 1]
    curve = curve.reshape(-1) if curve.ndim == 2 and 1 in curve.shape else curve
    if curve.ndim != 1:
        raise InvalidParameterError(f"AIF in {path.name} must be one curve, got an array of shape {curve.shape}")
    if times is None:
        validate_aif_curve(curve, series.n_frames, what=f"AIF in {path.name}")
        times = series.times
    times = np.asarray(times, dtype=np.float64).reshape(-1)
    if times.size != curve.size:
        raise InvalidParameterError(f"AIF in {path.name} has {curve.size} values but {times.size} times")
    hct = hematocrit if hematocrit is not None else (hct if hct is not None else DEFAULT_HEMATOCRIT)
    return make_aif(curve, times, hematocrit=float(hct), foot=foot if curve.size == series.n_frames else None,
                    peak=peak if curve.size == series.n_frames else None)


def _aif_from_perfusion(series, labels, args):
    """Fallback AIF: mean [Gd] of the LV blood pool of the perfusion series (label 1, or located), core only."""
    import warnings

    from scipy import ndimage

    from ..errors import InvalidLabelsError
    from ..quantification import extract_aif

    if labels is not None:
        pool, how = labels == 1, "label 1 of the mask"
        if not pool.any():
            raise InvalidLabelsError("--aif perfusion needs the LV blood pool (label 1) in --mask")
    else:
        from ..localise import locate_lv
        loc = locate_lv(series)
        if loc.lv_mask is None or not loc.lv_mask.any():
            raise InvalidLabelsError("--aif perfusion: the LV blood pool was not found; give --mask with label 1")
        pool, how = loc.lv_mask, f"located automatically ({loc.method}, confidence {loc.confidence:.2f})"
    core = ndimage.binary_erosion(pool, iterations=1)   # keep away from the myocardium (partial volume)
    pool = core if core.sum() >= 4 else pool
    if args.units == "gd":
        series = series.replace(units="mmol/L")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        aif = extract_aif(series, lv_mask=pool, hematocrit=0.42 if args.hematocrit is None else args.hematocrit,
                          sequence=args.sequence, field_strength=args.field_strength)
    for w in caught:
        print(f"perfusion mbf: warning: {w.message}", file=sys.stderr)
    return aif, f"perfusion LV blood pool ({how}, {int(pool.sum())} pixels)"


def run(args) -> int:
    import numpy as np
    from tqdm import tqdm

    from ..atomic import write_text_atomic
    from ..errors import InvalidLabelsError, InvalidParameterError
    from ..quantification import compute_mbf_map, make_aif, signal_to_gd
    from ..quantification.kinetic_fitting import TISSUE_DENSITY_G_PER_ML
    from ..readers import load_labels, load_series, load_study
    from ..writers import write_map

    if args.hematocrit is not None and not 0.0 <= args.hematocrit < 1.0:
        raise InvalidParameterError(f"--hematocrit must be in [0, 1), got {args.hematocrit}")
    src = Path(args.input)
    geo = geometry_kwargs(args)
    stored_aif = None
    if src.suffix.lower() == ".mat" and src.is_file():
        study = load_study(src, **geo)
        series, stored_aif = study.slices[0], study.aif
    else:
        series = load_series(src, **geo)
    labels = None
    if args.mask:
        labels, note = load_labels(Path(args.mask))
        labels = np.asarray(labels)
        if labels.shape != series.shape:
            raise InvalidLabelsError(f"mask {labels.shape} does not match the series frames {series.shape}")
    if args.aif == "perfusion":
        aif, aif_source = _aif_from_perfusion(series, labels, args)
    elif args.aif:
        aif = read_aif_file(Path(args.aif), series, args.hematocrit)
        aif_source = str(args.aif)
    elif stored_aif is not None:
        hct = args.hematocrit if args.hematocrit is not None else stored_aif.hematocrit
        aif = make_aif(stored_aif.curve, stored_aif.times, hematocrit=hct, foot=stored_aif.foot, peak=stored_aif.peak)
        aif_source = f"{src.name} (stored AIF)"
    else:
        raise InvalidParameterError(f"{src.name} holds no AIF: give one with --aif")

    if args.units == "gd":
        series = series.replace(units="mmol/L")
    elif args.units == "signal":
        series = series.replace(units="signal")
    if series.units == "signal":
        series = signal_to_gd(series, sequence=args.sequence, field_strength=args.field_strength)
    elif series.units != "mmol/L":
        raise InvalidParameterError(f"{src.name} is in {series.units!r} units: MBF needs [Gd] (mmol/L) or raw signal")

    if labels is not None:
        mask = labels == args.mask_label
        if not mask.any():
            raise InvalidLabelsError(f"mask {Path(args.mask).name} has no pixel with label {args.mask_label}")
    else:
        mask, note = np.ones(series.shape, bool), "every pixel"

    with tqdm(total=1, desc=f"mbf {args.model}", unit="series", file=sys.stderr, disable=None) as bar:
        maps = compute_mbf_map(series, aif, mask, model=args.model, denoise=not args.no_denoise)
        bar.update(1)

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InvalidParameterError(f"--out {out} exists and is not a folder")
    stem = _stem(src)
    written = []
    for name, values in maps.items():
        path = out / f"{stem}_{name}{MAP_SUFFIX}"
        write_map(values, path, spacing=series.spacing, affine=series.affine)
        written.append(path.name)
    mbf = maps["mbf"][mask]
    summary = {
        "series": str(src), "model": args.model, "aif": aif_source, "hematocrit": aif.hematocrit,
        "tissue_density_g_per_ml": TISSUE_DENSITY_G_PER_ML, "mask": note if args.mask else "every pixel",
        "mask_label": args.mask_label if args.mask else None, "pixels": int(mask.sum()),
        "mbf_median_ml_min_g": float(np.nanmedian(mbf)), "mbf_iqr_ml_min_g": [float(v) for v in np.nanpercentile(mbf, [25, 75])],
        "aif_foot_frame": aif.foot, "aif_peak_frame": aif.peak, "maps": written,
    }
    write_text_atomic(out / f"{stem}_mbf.json", json.dumps(summary, indent=1))
    print(f"{stem}: median MBF {summary['mbf_median_ml_min_g']:.2f} ml/min/g over {summary['pixels']} pixels "
          f"({args.model}); wrote {len(written)} maps to {out}")
    return 0
