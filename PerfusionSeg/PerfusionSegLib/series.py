"""The perfusion data model: a 2D+T slice series and a study of several slices.

A :class:`SliceSeries` holds float32 ``(T, Y, X)`` images with their real frame times (irregular times from missed
triggers or a variable RR interval are kept, never regularised here), pixel spacing ``(dy, dx)`` in mm and, when known,
the 4x4 voxel-to-patient matrix (LPS, DICOM convention) that maps ``(x, y, 0, 1)`` column/row indices to mm.
A :class:`Study` orders the slices basal to apical and may carry an arterial input function (AIF).
Validation happens on construction so that every later step can trust the arrays.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from .errors import InvalidParameterError, InvalidSeriesError

MIN_FRAMES = 10
MAX_MATRIX = 2048          # pixels per side: larger is not a perfusion slice
MIN_MATRIX = 8
MAX_FRAMES = 2000
LEVELS = ("basal", "mid", "apical")
CONDITIONS = ("stress", "rest")
UNITS = ("signal", "mmol/L", "normalised", "ml/min/g")


def _check_level(level: Optional[str]) -> Optional[str]:
    if level is not None and level not in LEVELS:
        raise InvalidParameterError(f"slice level must be one of {LEVELS}, got {level!r}")
    return level


def _check_condition(condition: Optional[str]) -> Optional[str]:
    if condition is not None and condition not in CONDITIONS:
        raise InvalidParameterError(f"condition must be one of {CONDITIONS}, got {condition!r}")
    return condition


def affine_from_spacing(spacing: Sequence[float], slice_thickness: float = 8.0) -> np.ndarray:
    """A voxel-to-patient matrix for an axis-aligned grid: x along columns (dx), y along rows (dy)."""
    dy, dx = float(spacing[0]), float(spacing[1])
    return np.diag([dx, dy, float(slice_thickness), 1.0])


@dataclass
class SliceSeries:
    """One short-axis slice over time.

    data: float32 (T, Y, X). times: (T,) seconds, strictly increasing. spacing: (dy, dx) mm.
    affine: 4x4 voxel (column x, row y, slice 0) to patient LPS mm, or None when unknown.
    pd_frames: proton-density frames acquired before the saturation-recovery frames, (P, Y, X), kept apart because
    they normalise signal before conversion to [Gd]; never part of ``data``.
    """

    data: np.ndarray
    times: np.ndarray
    spacing: tuple
    affine: Optional[np.ndarray] = None
    level: Optional[str] = None
    slice_position: Optional[float] = None   # mm along the slice normal (larger = more apical is NOT assumed)
    condition: Optional[str] = None
    units: str = "signal"
    source: str = ""
    pd_frames: Optional[np.ndarray] = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        data = np.asarray(self.data)
        if data.ndim != 3:
            raise InvalidSeriesError(f"a slice series must be 3-D (T, Y, X); got {data.ndim}-D with shape {data.shape}")
        if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
            raise InvalidSeriesError(f"series values must be real numbers, got dtype {data.dtype}")
        t, ny, nx = data.shape
        if t < MIN_FRAMES:
            raise InvalidSeriesError(f"a perfusion series needs at least {MIN_FRAMES} frames, got {t}")
        if t > MAX_FRAMES:
            raise InvalidSeriesError(f"{t} frames is not a perfusion series (at most {MAX_FRAMES}); is the time axis right?")
        if not (MIN_MATRIX <= ny <= MAX_MATRIX and MIN_MATRIX <= nx <= MAX_MATRIX):
            raise InvalidSeriesError(f"absurd matrix size {ny}x{nx} (expected {MIN_MATRIX}..{MAX_MATRIX} per side)")
        data = data.astype(np.float32, copy=False)
        if not np.all(np.isfinite(data)):
            raise InvalidSeriesError("series contains NaN or Inf values")
        if float(data.max()) == float(data.min()):
            raise InvalidSeriesError("series is constant (every pixel of every frame has the same value)")
        self.data = data

        times = np.asarray(self.times, dtype=np.float64).reshape(-1)
        if times.shape[0] != t:
            raise InvalidSeriesError(f"{times.shape[0]} frame times for {t} frames")
        if not np.all(np.isfinite(times)) or np.any(np.diff(times) <= 0):
            raise InvalidSeriesError("frame times must be finite and strictly increasing")
        self.times = times

        spacing = tuple(float(s) for s in np.asarray(self.spacing, dtype=np.float64).reshape(-1))
        if len(spacing) != 2 or not all(np.isfinite(spacing)) or not all(0.05 <= s <= 20.0 for s in spacing):
            raise InvalidSeriesError(f"pixel spacing must be two values in 0.05..20 mm, got {self.spacing}")
        self.spacing = spacing

        if self.affine is not None:
            affine = np.asarray(self.affine, dtype=np.float64)
            if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
                raise InvalidSeriesError("voxel-to-patient matrix must be a finite 4x4 array")
            self.affine = affine
        if self.pd_frames is not None:
            pd = np.asarray(self.pd_frames, dtype=np.float32)
            if pd.ndim == 2:
                pd = pd[None]
            if pd.ndim != 3 or pd.shape[1:] != (ny, nx) or not np.all(np.isfinite(pd)):
                raise InvalidSeriesError(f"PD frames must be finite (P, {ny}, {nx}); got shape {pd.shape}")
            self.pd_frames = pd
        self.level = _check_level(self.level)
        self.condition = _check_condition(self.condition)
        if self.units not in UNITS:
            raise InvalidParameterError(f"units must be one of {UNITS}, got {self.units!r}")

    # --- derived properties -------------------------------------------------------------------------------------
    @property
    def n_frames(self) -> int:
        return int(self.data.shape[0])

    @property
    def shape(self) -> tuple:
        """(Y, X) of one frame."""
        return tuple(self.data.shape[1:])

    @property
    def frame_intervals(self) -> np.ndarray:
        return np.diff(self.times)

    @property
    def median_interval(self) -> float:
        return float(np.median(self.frame_intervals))

    @property
    def is_regular(self) -> bool:
        """True when every frame interval is within 5% of the median (no missed triggers or RR variation)."""
        d = self.frame_intervals
        return bool(np.all(np.abs(d - np.median(d)) <= 0.05 * np.median(d)))

    def replace(self, **changes: Any) -> "SliceSeries":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> dict:
        """Plain facts for `perfusion info` and logs."""
        return {
            "source": self.source,
            "frames": self.n_frames,
            "matrix_yx": list(self.shape),
            "spacing_mm": list(self.spacing),
            "duration_s": round(float(self.times[-1] - self.times[0]), 3),
            "median_interval_s": round(self.median_interval, 4),
            "regular_timing": self.is_regular,
            "pd_frames": 0 if self.pd_frames is None else int(self.pd_frames.shape[0]),
            "level": self.level,
            "condition": self.condition,
            "slice_position_mm": self.slice_position,
            "units": self.units,
            "has_patient_geometry": self.affine is not None,
        }


@dataclass
class AIF:
    """Arterial input function: a curve (Gd mmol/L or signal) on its own time axis, and optionally its image series.

    curve: (T,) values; times: (T,) s. image_series: a low-resolution AIF SliceSeries when the dual-sequence images
    exist. hematocrit is used to convert blood to plasma concentration.
    """

    curve: np.ndarray
    times: np.ndarray
    units: str = "mmol/L"
    hematocrit: float = 0.42
    image_series: Optional[SliceSeries] = None
    foot: Optional[int] = None   # 0-based frame index
    peak: Optional[int] = None   # 0-based frame index

    def __post_init__(self) -> None:
        curve = np.asarray(self.curve, dtype=np.float64).reshape(-1)
        times = np.asarray(self.times, dtype=np.float64).reshape(-1)
        if curve.shape != times.shape:
            raise InvalidSeriesError(f"AIF has {curve.size} values but {times.size} times")
        if curve.size < MIN_FRAMES:
            raise InvalidSeriesError(f"AIF needs at least {MIN_FRAMES} samples, got {curve.size}")
        if not np.all(np.isfinite(curve)) or not np.all(np.isfinite(times)) or np.any(np.diff(times) <= 0):
            raise InvalidSeriesError("AIF values must be finite and its times strictly increasing")
        if not 0.0 <= self.hematocrit < 1.0:
            raise InvalidParameterError(f"haematocrit must be in [0, 1), got {self.hematocrit}")
        self.curve, self.times = curve, times


@dataclass
class Study:
    """Slices of one perfusion acquisition (stress or rest), ordered basal to apical, with an optional AIF."""

    slices: list
    aif: Optional[AIF] = None
    condition: Optional[str] = None
    source: str = ""
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.slices:
            raise InvalidSeriesError("a study needs at least one slice")
        for s in self.slices:
            if not isinstance(s, SliceSeries):
                raise InvalidSeriesError(f"study slices must be SliceSeries, got {type(s).__name__}")
        self.condition = _check_condition(self.condition)
        self.slices = order_basal_to_apical(list(self.slices))

    def __len__(self) -> int:
        return len(self.slices)

    def __iter__(self):
        return iter(self.slices)

    def by_level(self, level: str) -> Optional[SliceSeries]:
        for s in self.slices:
            if s.level == level:
                return s
        return None


def assign_levels(n: int) -> list:
    """Levels for n slices ordered basal to apical: 3 -> basal, mid, apical; other counts split into thirds."""
    if n == 3:
        return list(LEVELS)
    return [LEVELS[min(2, (3 * i) // max(n, 1))] for i in range(n)]


def order_basal_to_apical(slices: list) -> list:
    """Order by explicit level when every slice has one, else keep the given order (assumed basal to apical).

    Slice position alone cannot tell base from apex (that needs the LV long axis), so it is used only to break ties
    among slices with the same level. Slices without levels get them from their order.
    """
    rank = {lv: i for i, lv in enumerate(LEVELS)}
    if all(s.level is not None for s in slices):
        slices = sorted(slices, key=lambda s: (rank[s.level], s.slice_position if s.slice_position is not None else 0.0))
    else:
        for s, lv in zip(slices, assign_levels(len(slices))):
            if s.level is None:
                s.level = lv
    return slices
