"""The clinical perfusion report: AHA bullseye, segment table, slice images with sectors, as PNG, HTML, JSON and CSV.

Everything is rendered in memory first and then written file by file through :mod:`atomic`, so a failure leaves no
partial report behind. Matplotlib is driven through ``Figure`` + the Agg canvas (no pyplot state, no display).

Bullseye (AHA): viewed from the apex, basal ring outside, apical ring inside, segment 1 centred at 12 o'clock and the
numbers increasing counter-clockwise (2 anteroseptal at about 10 o'clock ... 6 anterolateral at 2 o'clock); the centre
disc shows the global value (segment 17, the apex cap, is not part of perfusion analysis).
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .aha import LEVELS, TERRITORIES, TERRITORY_COLORS, TERRITORY_OF_SEGMENT, InsertionPoints
from .atomic import write_bytes_atomic, write_text_atomic
from .errors import InvalidParameterError
from .segment_stats import SEGMENTS, SegmentStatistics, perfusion_reserve, rows_to_csv, segment_statistics

# bullseye ring radii (inner, outer) in axis units
_RINGS = {"apical": (0.32, 0.56), "mid": (0.56, 0.80), "basal": (0.80, 1.04)}
_CENTRE_R = 0.32
MAP_CMAP = "turbo"        # flow maps are customarily shown in a rainbow scale
RESERVE_CMAP = "viridis"
RESERVE_RANGE = (0.0, 4.0)


def segment_centre_angle(segment: int) -> float:
    """Bullseye angle (degrees, counter-clockwise from 3 o'clock) at the centre of a segment."""
    s = int(segment)
    if 1 <= s <= 12:
        return (90.0 + 60.0 * ((s - 1) % 6)) % 360.0
    if 13 <= s <= 16:
        return (90.0 + 90.0 * (s - 13)) % 360.0
    raise InvalidParameterError(f"segment must be 1-16, got {segment}")


def _segment_span(segment: int) -> tuple:
    c = segment_centre_angle(segment)
    half = 30.0 if segment <= 12 else 45.0
    return c - half, c + half


def _text_colour(rgba) -> str:
    r, g, b = rgba[:3]
    return "black" if (0.299 * r + 0.587 * g + 0.114 * b) > 0.55 else "white"


def _fmt(v: float, digits: int = 2) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


# --------------------------------------------------------------------------------------------------------------------
# drawing


def draw_bullseye(ax, values: dict, *, cmap, norm, title: str = "", centre_value: Optional[float] = None,
                  centre_label: str = "global", digits: int = 2) -> None:
    """Draw the 16-segment bullseye on a matplotlib axes: ``values`` maps segment number -> value (NaN = no data)."""
    from matplotlib.patches import Circle, Wedge

    for seg in SEGMENTS:
        level = "basal" if seg <= 6 else "mid" if seg <= 12 else "apical"
        r_in, r_out = _RINGS[level]
        t1, t2 = _segment_span(seg)
        v = values.get(seg, float("nan"))
        ok = v is not None and np.isfinite(v)
        face = cmap(norm(v)) if ok else (0.85, 0.85, 0.85, 1.0)
        if not ok:   # no data: light hatching under the outline, so the "n/a" stays readable
            ax.add_patch(Wedge((0, 0), r_out, t1, t2, width=r_out - r_in, facecolor=face, edgecolor="0.72",
                               linewidth=0.0, hatch="///"))
        ax.add_patch(Wedge((0, 0), r_out, t1, t2, width=r_out - r_in, facecolor=face if ok else "none",
                           edgecolor="black", linewidth=1.0))
        a = math.radians(segment_centre_angle(seg))
        rm = 0.5 * (r_in + r_out)
        colour = _text_colour(face) if ok else "black"
        ax.text(rm * math.cos(a), rm * math.sin(a) + 0.035, _fmt(v, digits), ha="center", va="center",
                fontsize=9, fontweight="bold", color=colour)
        ax.text(rm * math.cos(a), rm * math.sin(a) - 0.055, str(seg), ha="center", va="center", fontsize=6.5,
                color=colour)
    ok = centre_value is not None and np.isfinite(centre_value)
    face = cmap(norm(centre_value)) if ok else (0.95, 0.95, 0.95, 1.0)
    ax.add_patch(Circle((0, 0), _CENTRE_R, facecolor=face, edgecolor="black", linewidth=1.0))
    colour = _text_colour(face)
    ax.text(0, 0.05, _fmt(centre_value, digits), ha="center", va="center", fontsize=10, fontweight="bold", color=colour)
    ax.text(0, -0.09, centre_label, ha="center", va="center", fontsize=7, color=colour)
    # orientation cues (viewed from the apex): anterior up, septum left, lateral right, inferior down
    for txt, (x, y) in (("ANT", (0, 1.13)), ("INF", (0, -1.13)), ("SEPT", (-1.2, 0)), ("LAT", (1.2, 0))):
        ax.text(x, y, txt, ha="center", va="center", fontsize=7, color="0.35")
    ax.set_xlim(-1.32, 1.32)
    ax.set_ylim(-1.22, 1.22)
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=11)


MBF_DISPLAY_MAX = 6.0


def _norm_for(stats_list: Sequence[SegmentStatistics], slices_list: Sequence[Sequence[dict]], units: str):
    from matplotlib.colors import Normalize

    vals = []
    for st in stats_list:
        if st is not None:
            vals.extend(v for v in st.means() if np.isfinite(v))
    for slices in slices_list:
        for sl in slices or ():
            m, sm = np.asarray(sl["map"], dtype=float), np.asarray(sl["sector_map"])
            v = m[(sm > 0) & np.isfinite(m)]
            if v.size:
                vals.append(float(np.percentile(v, 98)))
    if not vals:
        return Normalize(0.0, 1.0)
    hi, lo = max(vals), min(vals)
    if units == "ml/min/g":
        # from zero to the next 0.5, at most 6 ml/min/g (the display range of QPerf/Gadgetron flow maps): pixels where
        # the fit ran to its bound (partial volume with blood) must not squash the myocardial colours
        return Normalize(0.0, min(MBF_DISPLAY_MAX, max(1.0, math.ceil(hi * 2.0) / 2.0)))
    if lo == hi:
        hi = lo + 1.0
    return Normalize(min(0.0, lo), hi)


def _render_png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return buf.getvalue()


def bullseye_png(stress: SegmentStatistics, rest: Optional[SegmentStatistics] = None, *, units: str = "ml/min/g",
                 norm=None, title: str = "") -> bytes:
    """PNG bytes: the stress bullseye, and with ``rest`` also the rest and the reserve (stress/rest) bullseyes."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    panels = [("stress" if rest is not None else stress.condition, stress)]
    if rest is not None:
        panels.append(("rest", rest))
    n = len(panels) + (1 if rest is not None else 0)
    fig = Figure(figsize=(4.6 * n, 4.6), dpi=100, layout="constrained")
    norm = norm or _norm_for([stress, rest], [], units)
    cmap = colormaps[MAP_CMAP]
    for i, (name, st) in enumerate(panels):
        ax = fig.add_subplot(1, n, i + 1)
        draw_bullseye(ax, {s: st.mean(s) for s in SEGMENTS}, cmap=cmap, norm=norm,
                      title=f"{st.quantity}{' ' + name if name else ''} ({units})", centre_value=st.global_.mean)
        fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.046, pad=0.02, shrink=0.8).set_label(units)
    if rest is not None:
        mpr = perfusion_reserve(stress, rest).by_region()
        ax = fig.add_subplot(1, n, n)
        rnorm = Normalize(*RESERVE_RANGE)
        rcmap = colormaps[RESERVE_CMAP]
        draw_bullseye(ax, {s: mpr[str(s)].reserve for s in SEGMENTS}, cmap=rcmap, norm=rnorm,
                      title="perfusion reserve (stress/rest)", centre_value=mpr["global"].reserve)
        fig.colorbar(ScalarMappable(norm=rnorm, cmap=rcmap), ax=ax, fraction=0.046, pad=0.02, shrink=0.8).set_label("MPR")
    if title:
        fig.suptitle(title, fontsize=12)
    return _render_png(fig)


def _crop_box(labels: np.ndarray, sector_map: np.ndarray, margin: float = 0.8) -> tuple:
    """Square crop centred on the myocardium, wide enough to show the RV beside it."""
    mask = sector_map > 0
    if not mask.any():
        mask = np.asarray(labels) > 0
    if not mask.any():
        return 0, labels.shape[0], 0, labels.shape[1]
    ys, xs = np.nonzero(mask)
    cy, cx = 0.5 * (ys.min() + ys.max()), 0.5 * (xs.min() + xs.max())
    half = 0.5 * max(ys.max() - ys.min(), xs.max() - xs.min()) * (1.0 + margin) + 3
    y0, y1 = max(0, int(math.floor(cy - half))), min(labels.shape[0], int(math.ceil(cy + half)) + 1)
    x0, x1 = max(0, int(math.floor(cx - half))), min(labels.shape[1], int(math.ceil(cx + half)) + 1)
    return y0, y1, x0, x1


def _draw_slice(ax, sl: dict, *, cmap, norm, title: str) -> None:
    from matplotlib import patheffects
    from scipy import ndimage

    image = np.asarray(sl.get("image") if sl.get("image") is not None else sl["map"], dtype=float)
    labels = np.asarray(sl["labels"])
    sm = np.asarray(sl["sector_map"])
    values = np.asarray(sl["map"], dtype=float)
    y0, y1, x0, x1 = _crop_box(labels, sm)
    img = image[y0:y1, x0:x1]
    fin = img[np.isfinite(img)]
    lo, hi = (np.percentile(fin, 1), np.percentile(fin, 99.5)) if fin.size else (0.0, 1.0)
    extent = (x0 - 0.5, x1 - 0.5, y1 - 0.5, y0 - 0.5)
    ax.imshow(np.nan_to_num(img, nan=lo), cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, extent=extent,
              interpolation="nearest")
    over = np.where((sm[y0:y1, x0:x1] > 0) & np.isfinite(values[y0:y1, x0:x1]), values[y0:y1, x0:x1], np.nan)
    ax.imshow(np.ma.masked_invalid(over), cmap=cmap, norm=norm, extent=extent, interpolation="nearest", alpha=0.9)
    # segment outlines in the territory colours, on an upsampled grid so the lines follow pixel edges smoothly
    f = max(1, int(math.ceil(240.0 / max(1, max(y1 - y0, x1 - x0)))))
    sub = sm[y0:y1, x0:x1]
    yy = (np.arange((y1 - y0) * f) + 0.5) / f - 0.5 + y0
    xx = (np.arange((x1 - x0) * f) + 0.5) / f - 0.5 + x0
    for seg in np.unique(sub):
        seg = int(seg)
        if not 1 <= seg <= 16:
            continue
        mask = ndimage.zoom((sub == seg).astype(np.float32), f, order=0)
        colour = TERRITORY_COLORS[TERRITORY_OF_SEGMENT[seg]]
        cs = ax.contour(xx, yy, mask, levels=[0.5], colors=[colour], linewidths=1.8)
        cs.set(path_effects=[patheffects.Stroke(linewidth=3.4, foreground="black"), patheffects.Normal()])
        cy, cx = ndimage.center_of_mass(sm == seg)
        t = ax.text(cx, cy, str(seg), ha="center", va="center", fontsize=8, fontweight="bold", color=colour)
        t.set_path_effects([patheffects.withStroke(linewidth=2.2, foreground="black")])
    ip = sl.get("insertion")
    if isinstance(ip, InsertionPoints):
        for (py, px), marker in ((ip.anterior_yx, "^"), (ip.inferior_yx, "v")):
            ax.plot([px], [py], marker=marker, markersize=7, markerfacecolor="white", markeredgecolor="black",
                    linestyle="none")
        ax.plot([ip.centroid_yx[1]], [ip.centroid_yx[0]], marker="+", color="white", markersize=7, linestyle="none")
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)


def slices_png(slices: Sequence[dict], *, units: str = "ml/min/g", norm=None, condition: str = "",
               quantity: str = "MBF") -> bytes:
    """PNG bytes: each slice (basal to apical) with its map in the myocardium and the AHA sectors outlined in the
    colours of their coronary territories (LAD yellow, RCA green, LCX red)."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    n = len(slices)
    fig = Figure(figsize=(max(3.4 * n + 1.2, 6.4), 4.1), dpi=100, layout="constrained")
    norm = norm or _norm_for([], [slices], units)
    cmap = colormaps[MAP_CMAP]
    axes = [fig.add_subplot(1, n, i + 1) for i in range(n)]
    for ax, sl in zip(axes, slices):
        ip = sl.get("insertion")
        flag = ""
        if isinstance(ip, InsertionPoints) and (ip.flagged or ip.source != "auto"):
            flag = f"\ninsertion: {ip.source}" + (" - CHECK" if ip.flagged else "")
        _draw_slice(ax, sl, cmap=cmap, norm=norm, title=f"{sl['level']}{' ' + condition if condition else ''}{flag}")
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, fraction=0.03, pad=0.02).set_label(f"{quantity} ({units})")
    handles = [Line2D([], [], color=TERRITORY_COLORS[t], linewidth=2.5, label=t) for t in TERRITORIES]
    handles += [Line2D([], [], marker=m, color="white", markeredgecolor="black", linestyle="none", label=l)
                for m, l in (("^", "anterior RV insertion"), ("v", "inferior RV insertion"))]
    fig.legend(handles=handles, loc="outside lower center", ncol=5 if n > 1 else 3, fontsize=8, frameon=False)
    return _render_png(fig)


# --------------------------------------------------------------------------------------------------------------------
# tables


def table_rows(stress: SegmentStatistics, rest: Optional[SegmentStatistics] = None) -> list:
    """One flat dict per region (16 segments, territories, global): stress (and rest, reserve) statistics."""
    mpr = perfusion_reserve(stress, rest).by_region() if rest is not None else {}
    rows = []
    rest_regions = {r.region: r for r in rest.regions()} if rest is not None else {}
    for r in stress.regions():
        row = {"region": r.region, "name": r.name, "territory": r.territory, "level": r.level}
        for prefix, reg in (("stress", r), ("rest", rest_regions.get(r.region))):
            if reg is None:
                continue
            if rest is None:
                prefix = stress.condition or "value"
            row.update({f"{prefix}_mean": reg.mean, f"{prefix}_median": reg.median, f"{prefix}_sd": reg.sd,
                        f"{prefix}_min": reg.minimum, f"{prefix}_max": reg.maximum,
                        f"{prefix}_n_pixels": reg.n_pixels, f"{prefix}_n_valid": reg.n_valid,
                        f"{prefix}_coverage": reg.coverage})
        if rest is not None:
            row["reserve"] = mpr[r.region].reserve
        row["units"] = stress.units
        rows.append(row)
    return rows


def _html_table(stress: SegmentStatistics, rest: Optional[SegmentStatistics], units: str) -> str:
    mpr = perfusion_reserve(stress, rest).by_region() if rest is not None else {}
    rest_regions = {r.region: r for r in rest.regions()} if rest is not None else {}
    sname = "stress" if rest is not None else (stress.condition or stress.quantity)
    head = ["#", "segment", "territory", f"{sname} mean &plusmn; SD", "median", "pixels", "coverage"]
    if rest is not None:
        head += ["rest mean &plusmn; SD", "median", "coverage", "reserve"]
    out = ["<table>", "<thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead>", "<tbody>"]
    for r in stress.regions():
        cls = "seg" if r.region.isdigit() else "sum"
        tcol = TERRITORY_COLORS.get(r.territory)
        swatch = (f'<span class="sw" style="background:rgb({",".join(str(int(255 * c)) for c in tcol)})"></span>'
                  if tcol else "")
        cells = [html.escape(r.region if r.region.isdigit() else ""), html.escape(r.name), swatch + html.escape(r.territory),
                 f"{_fmt(r.mean)} &plusmn; {_fmt(r.sd)}", _fmt(r.median), str(r.n_pixels),
                 "n/a" if not np.isfinite(r.coverage) else f"{100 * r.coverage:.0f}%"]
        if rest is not None:
            q = rest_regions[r.region]
            cells += [f"{_fmt(q.mean)} &plusmn; {_fmt(q.sd)}", _fmt(q.median),
                      "n/a" if not np.isfinite(q.coverage) else f"{100 * q.coverage:.0f}%", _fmt(mpr[r.region].reserve)]
        out.append(f'<tr class="{cls}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out += ["</tbody></table>", f'<p class="note">Values in {html.escape(units)}; SD is the pixel standard deviation '
            "within the region; coverage is the share of the region's myocardium pixels with a value.</p>"]
    return "\n".join(out)


_CSS = """
body{font-family:Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1900px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:13px} th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f0f0f0} td:nth-child(2),td:nth-child(3){text-align:left} tr.sum td{font-weight:bold;background:#fafafa}
.sw{display:inline-block;width:10px;height:10px;margin-right:5px;border:1px solid #555}
.row{display:flex;flex-wrap:wrap;gap:16px} .row figure{margin:0;flex:1 1 640px;min-width:0} img{max-width:100%}
.note{color:#555;font-size:12px} .warn{color:#a00;font-weight:bold} figcaption{font-size:13px;color:#444}
"""


def _img_tag(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _insertion_notes(slices: Sequence[dict], condition: str) -> list:
    out = []
    for sl in slices:
        ip = sl.get("insertion")
        if isinstance(ip, InsertionPoints):
            msg = (f"{condition} {sl['level']}: insertion points {ip.source}, anterior at {ip.anterior_angle_deg:.0f} deg,"
                   f" direction from {ip.direction_source}")
            if ip.note:
                msg += f" ({ip.note})"
            out.append((ip.flagged, msg))
    return out


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return None if not np.isfinite(o) else float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def _nan_to_none(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_nan_to_none(v) for v in x]
    return x


# --------------------------------------------------------------------------------------------------------------------
# the report


def _check_slices(slices, what: str) -> list:
    if slices is None:
        return []
    slices = list(slices)
    for i, sl in enumerate(slices):
        if not isinstance(sl, dict):
            raise InvalidParameterError(f"{what} slice {i}: expected a dict with level, labels, sector_map, map")
        for key in ("level", "labels", "sector_map", "map"):
            if key not in sl or sl[key] is None:
                raise InvalidParameterError(f"{what} slice {i}: missing '{key}'")
        if sl["level"] not in LEVELS:
            raise InvalidParameterError(f"{what} slice {i}: level must be one of {LEVELS}, got {sl['level']!r}")
        shapes = {k: np.shape(sl[k]) for k in ("labels", "sector_map", "map", "image") if sl.get(k) is not None}
        if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 2:
            raise InvalidParameterError(f"{what} slice {i}: arrays must share one 2-D grid, got {shapes}")
    rank = {lv: i for i, lv in enumerate(LEVELS)}
    return sorted(slices, key=lambda s: rank[s["level"]])


def write_report(out_dir, slices: Sequence[dict] = (), stats_stress: Optional[SegmentStatistics] = None,
                 stats_rest: Optional[SegmentStatistics] = None, *, title: str = "Myocardial perfusion report",
                 units: str = "ml/min/g", rest_slices: Optional[Sequence[dict]] = None, quantity: str = "MBF",
                 metadata: Optional[dict] = None, condition: str = "") -> dict:
    """Write the report into ``out_dir`` and return ``{kind: Path}``.

    slices: dicts ``{level, image (Y, X) background, labels, sector_map, map (Y, X), insertion (optional
    InsertionPoints)}`` of the stress (or only) acquisition; rest_slices the same for rest. Statistics not given are
    computed from the slices. ``condition`` names the first acquisition when there is no rest ("stress", "rest";
    empty for a map of no particular condition, filed as "map" in the JSON). Files: ``bullseye.png``, ``slices_stress.png`` (and ``slices_rest.png``),
    ``report.html`` (self-contained), ``report.json``, ``segments.csv``.
    """
    slices = _check_slices(slices, "stress")
    rest_slices = _check_slices(rest_slices, "rest")
    if stats_stress is None:
        if not slices:
            raise InvalidParameterError("nothing to report: give slices or stress statistics")
        stats_stress = segment_statistics([s["map"] for s in slices], [s["sector_map"] for s in slices], units=units,
                                          condition="stress" if rest_slices else condition, quantity=quantity)
    if stats_rest is None and rest_slices:
        stats_rest = segment_statistics([s["map"] for s in rest_slices], [s["sector_map"] for s in rest_slices],
                                        units=units, condition="rest", quantity=quantity)
    if not isinstance(stats_stress, SegmentStatistics) or (stats_rest is not None and not isinstance(stats_rest, SegmentStatistics)):
        raise InvalidParameterError("statistics must be SegmentStatistics (see segment_stats.segment_statistics)")
    out_dir = Path(out_dir)
    norm = _norm_for([stats_stress, stats_rest], [slices, rest_slices], units)
    stress_name = "stress" if stats_rest is not None else (stats_stress.condition or "")

    # render everything in memory first
    pngs = {"bullseye": bullseye_png(stats_stress, stats_rest, units=units, norm=norm, title=title)}
    if slices:
        pngs["slices_stress"] = slices_png(slices, units=units, norm=norm, condition=stress_name, quantity=quantity)
    if rest_slices:
        pngs["slices_rest"] = slices_png(rest_slices, units=units, norm=norm, condition="rest", quantity=quantity)
    rows = table_rows(stats_stress, stats_rest)
    reserve = perfusion_reserve(stats_stress, stats_rest) if stats_rest is not None else None
    generated = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    names = {"bullseye": "bullseye.png", "slices_stress": "slices_stress.png", "slices_rest": "slices_rest.png",
             "html": "report.html", "json": "report.json", "csv": "segments.csv"}

    doc = {
        "title": title, "generated": generated, "units": units, "quantity": quantity,
        "conventions": {"segments": "AHA 16-segment model (Cerqueira 2002); angles from the anterior RV insertion point "
                                    "toward the septum; basal/mid 60-degree sectors, apical 90-degree sectors offset 15 deg",
                        "territories": {t: [s for s in SEGMENTS if TERRITORY_OF_SEGMENT[s] == t] for t in TERRITORIES},
                        "reserve": "stress mean / rest mean per region"},
        "stress" if stats_rest is not None else (stats_stress.condition or "map"): stats_stress.to_dict(),
        "slices": [{"condition": c, "level": sl["level"],
                    "myocardium_pixels": int(np.count_nonzero(np.asarray(sl["sector_map"]) > 0)),
                    "insertion": sl["insertion"].to_dict() if isinstance(sl.get("insertion"), InsertionPoints) else None}
                   for c, group in ((stress_name or "map", slices), ("rest", rest_slices)) for sl in group],
        "files": {k: names[k] for k in list(pngs) + ["html", "csv"]},
        "metadata": metadata or {},
    }
    if stats_rest is not None:
        doc["rest"] = stats_rest.to_dict()
        doc["reserve"] = reserve.to_dict()
    json_text = json.dumps(_nan_to_none(doc), indent=2, default=_json_default, allow_nan=False)
    csv_text = rows_to_csv(rows)

    notes = _insertion_notes(slices, stress_name or "") + _insertion_notes(rest_slices, "rest")
    g = stats_stress.global_
    summary = [f"Global {html.escape(stress_name or quantity)}: <b>{_fmt(g.mean)}</b> {html.escape(units)} "
               f"(coverage {('n/a' if not np.isfinite(g.coverage) else f'{100 * g.coverage:.0f}%')})"]
    if stats_rest is not None:
        summary.append(f"Global rest: <b>{_fmt(stats_rest.global_.mean)}</b> {html.escape(units)}")
        summary.append(f"Global reserve (stress/rest): <b>{_fmt(reserve.by_region()['global'].reserve)}</b>")
    slice_figs = "".join(
        f"<figure>{_img_tag(pngs[k], k)}<figcaption>{cap}</figcaption></figure>"
        for k, cap in (("slices_stress", f"{stress_name or quantity} slices"), ("slices_rest", "rest slices")) if k in pngs)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="note">Generated {generated}. {html.escape(quantity)} in {html.escape(units)}. AHA 16-segment model, bullseye viewed
from the apex (segment 1 at 12 o'clock, septum on the left). Territories: LAD yellow, RCA green, LCX red.</p>
<p>{' &nbsp;|&nbsp; '.join(summary)}</p>
<h2>Bullseye</h2>
<figure>{_img_tag(pngs['bullseye'], 'bullseye')}</figure>
<h2>Segments</h2>
{_html_table(stats_stress, stats_rest, units)}
<h2>Slices</h2>
<div class="row">{slice_figs or '<p class="note">No slice images given.</p>'}</div>
<h2>RV insertion points</h2>
<ul>{''.join(f'<li class="{"warn" if f else ""}">{html.escape(m)}{" - please check" if f else ""}</li>' for f, m in notes) or '<li>not given</li>'}</ul>
</body></html>
"""
    # write: PNGs, CSV, JSON, then the HTML page last (its presence means the report is complete)
    paths = {}
    for k, data in pngs.items():
        paths[k] = write_bytes_atomic(out_dir / names[k], data)
    paths["csv"] = write_text_atomic(out_dir / names["csv"], csv_text)
    paths["json"] = write_text_atomic(out_dir / names["json"], json_text)
    paths["html"] = write_text_atomic(out_dir / names["html"], page)
    return paths
