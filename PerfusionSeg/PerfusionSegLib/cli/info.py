"""`perfusion info PATH...`: what a file or folder holds (series, frames, timing, spacing, PD frames, levels, AIF).

Reads only; writes nothing. ``--list`` shows every selectable series from the headers without loading pixels;
``--json`` prints machine-readable output. Bad input: one line on stderr, exit status 2 (the reader's typed errors).
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings

from .common import add_geometry_options, geometry_kwargs


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "info", help="show what a perfusion file or folder holds",
        description="Show what a perfusion file or DICOM folder holds: series, frames, frame timing (median interval, "
                    "regular or not), pixel spacing, proton-density frames, slice levels and the AIF when present.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="DICOM folder or file, .nii/.nii.gz, .nrrd/.seq.nrrd, .mat, .npy/.npz")
    add_geometry_options(p)
    p.add_argument("--list", action="store_true", help="list the selectable series (headers only) instead of loading them")
    p.add_argument("--json", action="store_true", help="machine-readable JSON on stdout")
    p.set_defaults(func=run)


def _slice_facts(s) -> dict:
    d = s.describe()
    d["level_source"] = s.metadata.get("level_source")
    intervals = s.frame_intervals
    d["min_interval_s"] = round(float(intervals.min()), 4)
    d["max_interval_s"] = round(float(intervals.max()), 4)
    for key in ("format", "time_source", "time_note", "spacing_source", "pd_reason", "series_number",
                "series_description", "manufacturer", "variable", "geometry_note", "selection_note", "time_axis_note"):
        if s.metadata.get(key) not in (None, ""):
            d[key] = s.metadata[key]
    return d


def describe_path(path: str, kwargs: dict) -> dict:
    from ..readers import load_study

    study = load_study(path, **kwargs)
    out = {"path": path, "slices": [_slice_facts(s) for s in study.slices], "study": dict(study.metadata)}
    if study.aif is not None:
        a = study.aif
        out["aif"] = {"samples": int(a.curve.size), "units": a.units, "hematocrit": a.hematocrit,
                      "foot_frame_0based": a.foot, "peak_frame_0based": a.peak,
                      "median_interval_s": round(float(_median_diff(a.times)), 4),
                      "peak_value": round(float(a.curve.max()), 4)}
    return out


def _median_diff(t):
    import numpy as np

    return np.median(np.diff(t))


def _text(info: dict) -> str:
    lines = [f"{info['path']}: {len(info['slices'])} slice{'s' if len(info['slices']) != 1 else ''}"
             + (f", ordered {info['study']['order']}" if info["study"].get("order") else "")]
    n = len(info["slices"])
    for i, d in enumerate(info["slices"], 1):
        level = d["level"] if d.get("level_source") == "given" or n > 1 else "not stated"
        if d.get("level_source") == "order" and n > 1:
            level += " (from slice order)"
        pd = f", {d['pd_frames']} PD frame{'s' if d['pd_frames'] != 1 else ''} kept apart" if d["pd_frames"] else ", no PD frames"
        lines.append(f"  slice {i}: {d.get('format', '?')}, {d['frames']} frames{pd}, matrix {d['matrix_yx'][0]}x"
                     f"{d['matrix_yx'][1]} (rows x cols), spacing {d['spacing_mm'][0]:.4g} x {d['spacing_mm'][1]:.4g} mm"
                     f" ({d.get('spacing_source', 'file')}), units {d['units']}, level {level}"
                     + (f", {d['condition']}" if d.get("condition") else ""))
        regular = "regular" if d["regular_timing"] else f"irregular ({d['min_interval_s']:.3g}-{d['max_interval_s']:.3g} s)"
        lines.append(f"    timing: median interval {d['median_interval_s']:.4g} s, {regular}, duration "
                     f"{d['duration_s']:.4g} s, times from {d.get('time_source', '?')}"
                     + (f" [{d['time_note']}]" if d.get("time_note") else ""))
        extra = []
        if d.get("series_number") is not None:
            extra.append(f"series {d['series_number']} '{d.get('series_description', '')}'")
        if d.get("manufacturer"):
            extra.append(d["manufacturer"])
        if d.get("slice_position_mm") is not None:
            extra.append(f"position {d['slice_position_mm']:.1f} mm along the normal")
        if d.get("variable"):
            extra.append(f"variable '{d['variable']}'")
        extra.append("patient geometry known" if d["has_patient_geometry"] else "no patient geometry")
        if d.get("pd_reason"):
            extra.append(f"PD: {d['pd_reason']}")
        for key in ("time_axis_note", "geometry_note", "selection_note"):
            if d.get(key):
                extra.append(d[key])
        lines.append("    " + "; ".join(extra))
    if "aif" in info:
        a = info["aif"]
        lines.append(f"  AIF: {a['samples']} samples every {a['median_interval_s']:g} s, {a['units']}, peak "
                     f"{a['peak_value']:g}, haematocrit {a['hematocrit']:g}, foot frame {a['foot_frame_0based']}, "
                     f"peak frame {a['peak_frame_0based']} (0-based)"
                     + (f" [{info['study']['aif_note']}]" if info["study"].get("aif_note") else ""))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..readers import list_series

    kwargs = geometry_kwargs(args)
    results = []
    with warnings.catch_warnings(record=True) as caught:   # library warnings must not break the one-line error rule
        warnings.simplefilter("always")
        for path in args.paths:
            if args.list:
                results.append({"path": path, "series": list_series(path)})
            else:
                results.append(describe_path(path, kwargs))
    if args.json:
        print(json.dumps(results if len(results) > 1 else results[0], indent=2, default=str))
    else:
        for r in results:
            if args.list:
                print(f"{r['path']}: {len(r['series'])} selectable series")
                for e in r["series"]:
                    print("  " + ", ".join(f"{k} {v}" for k, v in e.items()))
            else:
                print(_text(r))
    for w in {str(w.message) for w in caught}:
        print(f"perfusion info: note: {' '.join(w.split())}", file=sys.stderr)
    return 0
