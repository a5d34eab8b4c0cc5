"""Per-segment statistics of any parametric map (MBF, U-map, ...) over the AHA 16-segment model.

A segment collects the myocardium pixels that carry its number in the sector maps of the slices given (segments 1-6
come from the basal slice, 7-12 mid, 13-16 apical). Statistics use the finite values only; ``coverage`` is the
fraction of the segment's myocardium pixels that have a finite value (1.0 = the map covers the whole segment).
Territory and global values pool the pixels of their segments (pixel-weighted).
Myocardial perfusion reserve (MPR) = stress / rest, per segment, territory and globally, from the segment means.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from .aha import AHA_SEGMENT_NAMES, LEVEL_OF_SEGMENT, SEGMENTS_OF_TERRITORY, TERRITORIES, TERRITORY_OF_SEGMENT
from .errors import InvalidParameterError

SEGMENTS = tuple(range(1, 17))


@dataclass
class RegionStat:
    """Statistics of one region (a segment, a territory or the whole myocardium)."""

    region: str            # "1".."16", "LAD"/"RCA"/"LCX" or "global"
    name: str
    territory: str         # for segments; the territory itself for territories; "" for global
    level: str             # basal/mid/apical for segments, "" otherwise
    n_pixels: int          # myocardium pixels in the region
    n_valid: int           # of them with a finite map value
    coverage: float        # n_valid / n_pixels (NaN when the region is empty)
    mean: float
    median: float
    sd: float              # sample standard deviation (ddof=1); NaN with fewer than two values
    minimum: float
    maximum: float

    @property
    def present(self) -> bool:
        return self.n_valid > 0


def _stat(region: str, name: str, territory: str, level: str, values: np.ndarray, n_pixels: int) -> RegionStat:
    v = values[np.isfinite(values)].astype(np.float64)
    n = int(v.size)
    nan = float("nan")
    return RegionStat(
        region=region, name=name, territory=territory, level=level, n_pixels=int(n_pixels), n_valid=n,
        coverage=(n / n_pixels) if n_pixels else nan,
        mean=float(v.mean()) if n else nan, median=float(np.median(v)) if n else nan,
        sd=float(v.std(ddof=1)) if n > 1 else nan,
        minimum=float(v.min()) if n else nan, maximum=float(v.max()) if n else nan,
    )


def _as_list(x) -> list:
    if isinstance(x, np.ndarray) and x.ndim == 2:
        return [x]
    return list(x)


@dataclass
class SegmentStatistics:
    """Statistics of one map over the 16 segments, the three coronary territories and the whole myocardium."""

    segments: dict                 # segment number (1-16) -> RegionStat
    territories: dict              # "LAD"/"RCA"/"LCX" -> RegionStat
    global_: RegionStat
    units: str = ""
    condition: str = ""            # "stress", "rest" or "" (any map)
    quantity: str = "MBF"

    def mean(self, segment: int) -> float:
        return self.segments[int(segment)].mean

    def means(self) -> np.ndarray:
        """(16,) segment means, NaN where a segment has no values."""
        return np.array([self.segments[s].mean for s in SEGMENTS])

    def regions(self) -> list:
        return [self.segments[s] for s in SEGMENTS] + [self.territories[t] for t in TERRITORIES] + [self.global_]

    def to_rows(self) -> list:
        """One flat dict per region (16 segments, 3 territories, global) for CSV."""
        rows = []
        for r in self.regions():
            row = {"condition": self.condition, "quantity": self.quantity, "units": self.units}
            row.update(asdict(r))
            rows.append(row)
        return rows

    def to_dict(self) -> dict:
        return {"condition": self.condition, "quantity": self.quantity, "units": self.units,
                "segments": {str(s): _clean(asdict(self.segments[s])) for s in SEGMENTS},
                "territories": {t: _clean(asdict(self.territories[t])) for t in TERRITORIES},
                "global": _clean(asdict(self.global_))}


def _clean(d: dict) -> dict:
    """NaN -> None so that the dict is valid JSON."""
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in d.items()}


def segment_statistics(values, sector_maps, *, units: str = "ml/min/g", condition: str = "",
                       quantity: str = "MBF") -> SegmentStatistics:
    """Statistics of ``values`` per AHA segment.

    values, sector_maps: one (Y, X) array each, or equal-length sequences of them (one per slice; maps and sector maps
    of a slice on the same grid). Sector maps hold 1-16 on myocardium pixels and 0 elsewhere; NaN values (or Inf)
    mark pixels the map does not cover.
    """
    maps, sectors = _as_list(values), _as_list(sector_maps)
    if len(maps) != len(sectors) or not maps:
        raise InvalidParameterError(f"need one sector map per map: got {len(maps)} maps and {len(sectors)} sector maps")
    per_segment = {s: [] for s in SEGMENTS}
    counts = {s: 0 for s in SEGMENTS}
    for i, (m, sm) in enumerate(zip(maps, sectors)):
        m = np.asarray(m, dtype=np.float64)
        sm = np.asarray(sm)
        if m.shape != sm.shape or m.ndim != 2:
            raise InvalidParameterError(f"slice {i}: map {m.shape} and sector map {sm.shape} must be the same 2-D grid")
        if sm.size and (sm.min() < 0 or sm.max() > 17):
            raise InvalidParameterError(f"slice {i}: sector map values must be 0-16")
        for s in np.unique(sm):
            s = int(s)
            if 1 <= s <= 16:
                sel = sm == s
                per_segment[s].append(m[sel])
                counts[s] += int(sel.sum())
    seg_vals = {s: (np.concatenate(per_segment[s]) if per_segment[s] else np.zeros(0)) for s in SEGMENTS}
    segments = {s: _stat(str(s), AHA_SEGMENT_NAMES[s], TERRITORY_OF_SEGMENT[s], LEVEL_OF_SEGMENT[s], seg_vals[s], counts[s])
                for s in SEGMENTS}
    territories = {}
    for t in TERRITORIES:
        segs = SEGMENTS_OF_TERRITORY[t]
        territories[t] = _stat(t, f"{t} territory", t, "", np.concatenate([seg_vals[s] for s in segs]),
                               sum(counts[s] for s in segs))
    glob = _stat("global", "global (all segments)", "", "", np.concatenate([seg_vals[s] for s in SEGMENTS]),
                 sum(counts.values()))
    return SegmentStatistics(segments=segments, territories=territories, global_=glob, units=units,
                             condition=condition, quantity=quantity)


@dataclass
class ReserveRow:
    region: str
    name: str
    territory: str
    stress: float
    rest: float
    reserve: float       # stress / rest (NaN when either is missing or rest <= 0)


@dataclass
class PerfusionReserve:
    """Stress, rest and myocardial perfusion reserve (stress/rest of the region means) per region."""

    rows: list = field(default_factory=list)
    units: str = ""

    def by_region(self) -> dict:
        return {r.region: r for r in self.rows}

    def to_rows(self) -> list:
        return [dict(asdict(r), units=self.units) for r in self.rows]

    def to_dict(self) -> dict:
        return {"units": self.units, "rows": [_clean(asdict(r)) for r in self.rows]}


def perfusion_reserve(stress: SegmentStatistics, rest: SegmentStatistics) -> PerfusionReserve:
    """MPR per segment, territory and globally: stress mean / rest mean (NaN where undefined)."""
    if stress.units and rest.units and stress.units != rest.units:
        raise InvalidParameterError(f"stress ({stress.units}) and rest ({rest.units}) maps have different units")
    rows = []
    for s_reg, r_reg in zip(stress.regions(), rest.regions()):
        st, re = s_reg.mean, r_reg.mean
        mpr = st / re if (np.isfinite(st) and np.isfinite(re) and re > 0) else float("nan")
        rows.append(ReserveRow(region=s_reg.region, name=s_reg.name, territory=s_reg.territory,
                               stress=st, rest=re, reserve=float(mpr)))
    return PerfusionReserve(rows=rows, units=stress.units or rest.units)


def rows_to_csv(rows: Sequence[dict]) -> str:
    """CSV text of a list of flat dicts (columns: union of keys, first-seen order); NaN written empty."""
    import csv
    import io

    cols: list = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if isinstance(v, float) and not np.isfinite(v) else
                        (f"{v:.6g}" if isinstance(v, float) else v)) for k, v in r.items()})
    return buf.getvalue()
