"""Preparing a slice series for a network, and putting the network's answer back on the user's grid exactly.

Steps (each a small function; those that change geometry have an exact inverse):

- temporal: :func:`resample_time_linear` onto a fixed interval (0.5 s = 120 bpm, as Xue's ResUNet) from the real,
  possibly irregular, frame times; :func:`resample_time_pchip` onto N frames with a monotone cubic (PCHIP, as DAUGS);
  :func:`select_first_pass_window` picks the frames around the first pass.
- spatial: :func:`resample_space` to a target spacing (1.0 mm) or by a factor (2x); :func:`crop_or_pad` to a fixed
  field around a centre. Both are one :class:`GridMap` (axis-aligned scale + offset between pixel grids), so
  :func:`prepare_for_network` applies the composition with a single interpolation and inverts it exactly.
- intensity: :func:`normalise` (robust max: 99.5th percentile -> 1, clipped to [0, 1]; ``"none"`` passes [Gd] through).

Grid convention: network pixel ``(i, j)`` has its centre at input pixel coordinate ``(oy + i / zy, ox + j / zx)``
(input pixel centres at integers). Resampling is footprint-aligned (like ``scipy.ndimage.zoom(grid_mode=True)``):
pixel footprints of the whole input and the whole resampled image coincide. A network pixel "covers" the input pixels
whose centres lie in its footprint; outside the crop, inverse mapping fills 0 (labels) or NaN (maps).

Label round trip (input -> network grid with nearest -> back with nearest) is identical wherever the crop covers the
input when the network grid is at least as fine as the input (zoom >= 1: e.g. 1.5-2.5 mm data to 1 mm, or 2x):
the nearest network pixel of an input pixel centre lies within 0.5/zoom < 0.5 input pixels of it. A finer input than
the network grid (zoom < 1) loses detail by construction; the inverse is then the nearest-neighbour reconstruction.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
from scipy import ndimage
from scipy.interpolate import PchipInterpolator, interp1d

from .errors import InvalidParameterError, InvalidSeriesError
from .series import SliceSeries

__all__ = [
    "GridMap", "NetworkGeometry", "FrameWindow", "resample_time_linear", "resample_time_pchip",
    "select_first_pass_window", "resample_space", "crop_or_pad", "normalise", "prepare_for_network",
    "ROBUST_MAX_PERCENTILE",
]

ROBUST_MAX_PERCENTILE = 99.5
TEMPORAL_METHODS = ("linear", "pchip")
NORMALISATIONS = ("robust_max", "none")


# ---------------------------------------------------------------------------------------------------------------------
# temporal
# ---------------------------------------------------------------------------------------------------------------------
def _series_and_times(series, times) -> Tuple[np.ndarray, np.ndarray, Optional[SliceSeries]]:
    if isinstance(series, SliceSeries):
        return series.data, series.times, series
    data = np.asarray(series, dtype=np.float32)
    if data.ndim < 1 or data.shape[0] < 2:
        raise InvalidSeriesError(f"need a (T, ...) array with at least 2 frames, got shape {data.shape}")
    t = np.arange(data.shape[0], dtype=np.float64) if times is None else np.asarray(times, dtype=np.float64)
    if t.shape != (data.shape[0],) or not np.all(np.isfinite(t)) or np.any(np.diff(t) <= 0):
        raise InvalidParameterError("times must be finite, strictly increasing, one per frame")
    return data, t, None


def _rebuild(original: Optional[SliceSeries], data: np.ndarray, times: np.ndarray, note: dict):
    if original is None:
        return data.astype(np.float32), times
    meta = dict(original.metadata)
    meta.setdefault("preprocessing", []).append(note)
    return original.replace(data=data.astype(np.float32), times=times, metadata=meta)


def resample_time_linear(series, dt: float = 0.5, *, times=None):
    """Linear interpolation onto ``times[0] + k * dt`` (k = 0.. while inside the acquisition), from the real times.

    ``series``: SliceSeries (returns a SliceSeries) or (T, ...) array with ``times`` (returns (array, new_times)).
    Missed triggers and RR variation are handled because the real times are used.
    """
    if not (isinstance(dt, (int, float)) and math.isfinite(dt) and 0.01 <= dt <= 10.0):
        raise InvalidParameterError(f"frame interval dt must be 0.01..10 s, got {dt!r}")
    data, t, original = _series_and_times(series, times)
    grid = t[0] + np.arange(int(np.floor((t[-1] - t[0]) / dt + 1e-9)) + 1) * dt
    out = interp1d(t, data, axis=0, assume_sorted=True)(grid)
    return _rebuild(original, out, grid, {"step": "resample_time_linear", "dt": dt})


def resample_time_pchip(series, n_frames: int = 30, *, times=None, start: Optional[float] = None,
                        stop: Optional[float] = None):
    """Monotone cubic (PCHIP) interpolation onto ``n_frames`` evenly spaced times from ``start`` to ``stop``
    (default: first to last frame). PCHIP does not overshoot, so a bolus peak is not exaggerated."""
    if isinstance(n_frames, bool) or not isinstance(n_frames, (int, np.integer)) or not 2 <= n_frames <= 2000:
        raise InvalidParameterError(f"n_frames must be an integer 2..2000, got {n_frames!r}")
    data, t, original = _series_and_times(series, times)
    t0 = t[0] if start is None else float(start)
    t1 = t[-1] if stop is None else float(stop)
    if not (t[0] - 1e-9 <= t0 < t1 <= t[-1] + 1e-9):
        raise InvalidParameterError(f"PCHIP window {t0:.3f}..{t1:.3f} s is outside the series {t[0]:.3f}..{t[-1]:.3f} s")
    grid = np.linspace(t0, t1, int(n_frames))
    out = PchipInterpolator(t, data, axis=0, extrapolate=False)(np.clip(grid, t[0], t[-1]))
    return _rebuild(original, out, grid, {"step": "resample_time_pchip", "n_frames": int(n_frames)})


class FrameWindow(NamedTuple):
    start: int          # first frame of the window
    stop: int           # one past the last frame
    arrival: int        # bolus arrival frame found in the enhancement curve
    peak: int           # peak frame of the enhancement curve

    @property
    def slice(self) -> slice:
        return slice(self.start, self.stop)


def _enhancement_curve(data: np.ndarray) -> np.ndarray:
    """Mean curve of the most enhancing pixels (the blood pools): the top 2% by temporal range."""
    flat = data.reshape(data.shape[0], -1)
    rng = flat.max(axis=0) - flat.min(axis=0)
    keep = rng >= np.percentile(rng, 98.0)
    return flat[:, keep].mean(axis=1)


def select_first_pass_window(series, n_frames: int, times=None, *, pre_s: float = 3.0,
                             curve: Optional[np.ndarray] = None) -> FrameWindow:
    """Frames ``[start, start + n_frames)`` around the first pass.

    Rule: the enhancement curve is the mean of the 2% of pixels with the largest temporal range (they are the blood
    pools) unless ``curve`` is given. Baseline = median of the first 3 frames; peak = its maximum; arrival = the last
    frame before the peak still below baseline + 10% of the rise. The window starts ``pre_s`` seconds (at least one
    frame) before arrival so the network sees pre-contrast frames, and is moved earlier if it would run past the end.
    A series shorter than ``n_frames`` gives the whole series (callers pad).
    """
    data, t, _ = _series_and_times(series, times)
    if isinstance(n_frames, bool) or not isinstance(n_frames, (int, np.integer)) or n_frames < 1:
        raise InvalidParameterError(f"n_frames must be a positive integer, got {n_frames!r}")
    T = data.shape[0]
    c = _enhancement_curve(data) if curve is None else np.asarray(curve, dtype=np.float64).reshape(-1)
    if c.shape[0] != T:
        raise InvalidParameterError(f"curve has {c.shape[0]} samples for {T} frames")
    base = float(np.median(c[: min(3, T)]))
    peak = int(np.argmax(c))
    rise = float(c[peak]) - base
    below = np.nonzero(c[: peak + 1] <= base + 0.1 * rise)[0] if rise > 0 else np.array([0])
    arrival = int(below[-1]) if len(below) else 0
    interval = float(np.median(np.diff(t))) if T > 1 else 1.0
    pre = max(1, int(round(pre_s / interval)))
    if T <= n_frames:
        return FrameWindow(0, T, arrival, peak)
    start = min(max(0, arrival - pre), T - int(n_frames))
    return FrameWindow(int(start), int(start + n_frames), arrival, peak)


# ---------------------------------------------------------------------------------------------------------------------
# spatial: one axis-aligned map between pixel grids
# ---------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GridMap:
    """Output pixel (i, j) has its centre at input pixel coordinate (offset_y + i / zoom_y, offset_x + j / zoom_x)."""

    input_shape: Tuple[int, int]
    output_shape: Tuple[int, int]
    zoom: Tuple[float, float]
    offset: Tuple[float, float]

    def input_coords(self) -> Tuple[np.ndarray, np.ndarray]:
        """Input coordinates (rows, cols) of the output pixel centres."""
        return (self.offset[0] + np.arange(self.output_shape[0]) / self.zoom[0],
                self.offset[1] + np.arange(self.output_shape[1]) / self.zoom[1])

    def output_coords(self) -> Tuple[np.ndarray, np.ndarray]:
        """Output coordinates (rows, cols) of the input pixel centres."""
        return ((np.arange(self.input_shape[0]) - self.offset[0]) * self.zoom[0],
                (np.arange(self.input_shape[1]) - self.offset[1]) * self.zoom[1])

    def forward(self, array: np.ndarray, order: int = 1, fill: float = 0.0, antialias: bool = False) -> np.ndarray:
        """Input grid -> output grid for (..., Y, X) arrays; outside the input's footprint -> ``fill``."""
        return _sample(array, self.input_coords(), self.input_shape, order, fill,
                       sigma=_antialias_sigma(self.zoom) if antialias and order > 0 else None)

    def inverse(self, array: np.ndarray, order: int = 0, fill: float = 0.0) -> np.ndarray:
        """Output grid -> input grid; input pixels outside the output's footprint -> ``fill``."""
        return _sample(array, self.output_coords(), self.output_shape, order, fill)

    def to_dict(self) -> dict:
        return {k: list(map(float, v)) if "shape" not in k else list(map(int, v))
                for k, v in dataclasses.asdict(self).items()}


def _antialias_sigma(zoom) -> Optional[tuple]:
    # Gaussian prefilter before shrinking (zoom < 1) so that fine detail does not alias
    s = tuple(max(0.0, 0.5 * (1.0 / z - 1.0)) for z in zoom)
    return s if any(v > 0 for v in s) else None


def _sample(array: np.ndarray, coords_yx, source_shape, order: int, fill: float, sigma=None) -> np.ndarray:
    """Separable axis-aligned resampling of the last two axes at the given source coordinates.

    Coordinates inside a source pixel's footprint [-0.5, n - 0.5] use the edge values (mode 'nearest'), so the
    border pixels are not blended with the fill value; coordinates outside get ``fill``.
    """
    a = np.asarray(array)
    if a.ndim < 2 or tuple(a.shape[-2:]) != tuple(source_shape):
        raise InvalidParameterError(f"expected an array ending in {tuple(source_shape)}, got shape {a.shape}")
    if order not in (0, 1, 3):
        raise InvalidParameterError(f"interpolation order must be 0 (labels), 1 or 3, got {order!r}")
    ry, rx = coords_yx
    lead = a.shape[:-2]
    flat = a.reshape((-1,) + a.shape[-2:])
    if order == 0:
        # labels keep their dtype unless the fill value does not fit it (NaN into integers)
        exact = np.issubdtype(a.dtype, np.floating) or (math.isfinite(float(fill)) and float(fill).is_integer())
        out_dtype = a.dtype if exact else np.float32
    else:
        out_dtype = np.float32
    out = np.empty((flat.shape[0], len(ry), len(rx)), dtype=out_dtype)
    if order == 0:
        iy = np.clip(np.floor(ry + 0.5).astype(np.int64), 0, source_shape[0] - 1)
        ix = np.clip(np.floor(rx + 0.5).astype(np.int64), 0, source_shape[1] - 1)
        out[:] = flat[:, iy[:, None], ix[None, :]]
    else:
        gy, gx = np.meshgrid(ry, rx, indexing="ij")
        for k in range(flat.shape[0]):
            src = flat[k].astype(np.float64, copy=False)
            if sigma is not None:
                src = ndimage.gaussian_filter(src, sigma=sigma, mode="nearest")
            out[k] = ndimage.map_coordinates(src, [gy, gx], order=order, mode="nearest")
    inside_y = (ry >= -0.5) & (ry <= source_shape[0] - 0.5)
    inside_x = (rx >= -0.5) & (rx <= source_shape[1] - 0.5)
    outside = ~(inside_y[:, None] & inside_x[None, :])
    if outside.any():
        out[:, outside] = fill
    return out.reshape(lead + out.shape[-2:])


def _zoom_for(spacing, spacing_mm, scale) -> Tuple[float, float]:
    if spacing_mm is not None and scale is not None:
        raise InvalidParameterError("give either a target spacing (spacing_mm) or a scale factor, not both")
    if spacing_mm is not None:
        if not (isinstance(spacing_mm, (int, float)) and math.isfinite(spacing_mm) and 0.1 <= spacing_mm <= 10.0):
            raise InvalidParameterError(f"target spacing must be 0.1..10 mm, got {spacing_mm!r}")
        return float(spacing[0]) / float(spacing_mm), float(spacing[1]) / float(spacing_mm)
    if scale is not None:
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and 0.1 <= scale <= 10.0):
            raise InvalidParameterError(f"scale factor must be 0.1..10, got {scale!r}")
        return float(scale), float(scale)
    return 1.0, 1.0


def resample_space(array: np.ndarray, spacing: Sequence[float], *, target_spacing: Optional[float] = None,
                   factor: Optional[float] = None, order: int = 1) -> Tuple[np.ndarray, GridMap]:
    """(..., Y, X) array to a target spacing (mm) or by a factor (2.0 = twice as many pixels per side).

    Footprint-aligned: the whole output covers the same extent as the whole input. Returns (array, map); the
    output spacing is ``spacing / map.zoom``; ``map.inverse(x, order)`` goes back.
    """
    a = np.asarray(array)
    zy, zx = _zoom_for(spacing, target_spacing, factor)
    ny, nx = a.shape[-2:]
    out_shape = (max(1, int(round(ny * zy))), max(1, int(round(nx * zx))))
    gmap = GridMap((ny, nx), out_shape, (zy, zx), (-0.5 + 0.5 / zy, -0.5 + 0.5 / zx))
    return gmap.forward(a, order=order, antialias=order > 0), gmap


def _crop_offset(center: float, size: int, zoom: float) -> float:
    """Offset putting the output centre at ``center`` while keeping the footprint-aligned phase of the resampling
    (so crop after resample is the same map as the one-step prepare_for_network)."""
    phase = -0.5 + 0.5 / zoom
    # round half down: an integer centre lands on output index size // 2, as the usual ``c - size // 2`` crop
    k = int(np.ceil((center - (size - 1) / (2.0 * zoom) - phase) * zoom - 0.5))
    return phase + k / zoom


def crop_or_pad(array: np.ndarray, center_yx: Sequence[float], size: Union[int, Sequence[int]],
                fill: float = 0.0) -> Tuple[np.ndarray, GridMap]:
    """Crop (..., Y, X) to ``size`` pixels around ``center_yx``, padding with ``fill`` where the field leaves the
    image. Integer pixel shift: values are copied, never interpolated. Returns (array, map)."""
    a = np.asarray(array)
    sy, sx = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    if sy < 1 or sx < 1:
        raise InvalidParameterError(f"crop size must be positive, got {size!r}")
    gmap = GridMap(tuple(a.shape[-2:]), (sy, sx), (1.0, 1.0),
                   (_crop_offset(float(center_yx[0]), sy, 1.0), _crop_offset(float(center_yx[1]), sx, 1.0)))
    return gmap.forward(a, order=0, fill=fill), gmap


# ---------------------------------------------------------------------------------------------------------------------
# intensity
# ---------------------------------------------------------------------------------------------------------------------
def normalise(array: np.ndarray, method: str = "robust_max", *, percentile: float = ROBUST_MAX_PERCENTILE
              ) -> Tuple[np.ndarray, float]:
    """Scale intensities. ``robust_max``: negative values to 0, the ``percentile`` (99.5th) to 1, clipped to [0, 1]
    (a few bright outliers, e.g. a flow artefact, must not set the scale). ``none``: unchanged (e.g. [Gd] in
    mmol/L, whose absolute values matter). Returns (array, scale) with ``original ~= array * scale`` below the clip."""
    if method not in NORMALISATIONS:
        raise InvalidParameterError(f"normalisation must be one of {NORMALISATIONS}, got {method!r}")
    a = np.asarray(array, dtype=np.float32)
    if method == "none":
        return a, 1.0
    pos = np.clip(a, 0.0, None)
    scale = float(np.percentile(pos, percentile))
    if not np.isfinite(scale) or scale <= 0:
        scale = float(pos.max())
    if scale <= 0:
        raise InvalidSeriesError("cannot normalise: the series has no positive intensity in the network field")
    return np.clip(pos / scale, 0.0, 1.0).astype(np.float32), scale


_normalise_intensity = normalise   # prepare_for_network's keyword of the same name hides the function


# ---------------------------------------------------------------------------------------------------------------------
# the whole preparation and its inverse
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class NetworkGeometry:
    """Everything needed to go from the network grid back to the input grid (JSON-serialisable)."""

    input_shape: Tuple[int, int]
    input_spacing: Tuple[float, float]
    output_size: int
    zoom: Tuple[float, float]             # input pixels per network pixel along (y, x), inverted: net = input * zoom
    offset: Tuple[float, float]           # input coordinate of network pixel (0, 0)
    network_spacing: Tuple[float, float]
    center_yx: Tuple[float, float]
    center_source: str                    # "given" | "auto (locate_lv, confidence c)" | "image centre (...)"
    temporal: str
    frame_times: list                     # (n_frames,) s, on the input's time axis; padded frames repeat the last
    frame_window: Tuple[int, int]         # frames of the (resampled) series used: [start, stop)
    n_padded_frames: int
    dt: Optional[float]
    normalise: str
    intensity_scale: float
    notes: list = field(default_factory=list)

    @property
    def grid_map(self) -> GridMap:
        return GridMap(tuple(self.input_shape), (self.output_size, self.output_size), tuple(self.zoom),
                       tuple(self.offset))

    @property
    def crop_box_yx(self) -> Tuple[float, float, float, float]:
        """(y0, x0, y1, x1) input coordinates of the network field's outer edges."""
        g = self.grid_map
        y0 = g.offset[0] - 0.5 / g.zoom[0]
        x0 = g.offset[1] - 0.5 / g.zoom[1]
        return (y0, x0, y0 + self.output_size / g.zoom[0], x0 + self.output_size / g.zoom[1])

    def to_input_grid(self, array: np.ndarray, order: int = 0, fill: Optional[float] = None) -> np.ndarray:
        """Network-grid (..., S, S) label map (order 0) or parametric map (order 1) -> (..., Y, X) on the input grid.

        Outside the network's field: ``fill`` (default 0 for labels, NaN for maps)."""
        if fill is None:
            fill = 0 if order == 0 else np.nan
        a = np.asarray(array)
        if order != 0 and not np.issubdtype(a.dtype, np.floating):
            a = a.astype(np.float32)
        return self.grid_map.inverse(a, order=order, fill=fill)

    def to_network_grid(self, array: np.ndarray, order: int = 0, fill: float = 0.0) -> np.ndarray:
        """Input-grid (..., Y, X) labels (order 0) or maps (order 1) -> (..., S, S) network grid (e.g. training)."""
        return self.grid_map.forward(np.asarray(array), order=order, fill=fill, antialias=order > 0)

    def input_to_network_yx(self, yx):
        """Input (row, col) coordinates (scalars or arrays) -> network grid coordinates."""
        return ((np.asarray(yx[0], float) - self.offset[0]) * self.zoom[0],
                (np.asarray(yx[1], float) - self.offset[1]) * self.zoom[1])

    def network_to_input_yx(self, ij):
        """Network (row, col) coordinates (scalars or arrays) -> input grid coordinates."""
        return (self.offset[0] + np.asarray(ij[0], float) / self.zoom[0],
                self.offset[1] + np.asarray(ij[1], float) / self.zoom[1])

    def network_affine(self, input_affine: Optional[np.ndarray] = None) -> np.ndarray:
        """4x4 voxel-to-patient matrix of the network grid (column, row, 0, 1), from the input's matrix (or from its
        spacing when unknown), so a viewer overlays the network crop where it came from."""
        from .series import affine_from_spacing

        a = np.asarray(input_affine, dtype=np.float64) if input_affine is not None else affine_from_spacing(self.input_spacing)
        step = np.array([[1.0 / self.zoom[1], 0, 0, self.offset[1]],
                         [0, 1.0 / self.zoom[0], 0, self.offset[0]],
                         [0, 0, 1, 0], [0, 0, 0, 1]])
        return a @ step

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return json.loads(json.dumps(d, default=_json_default))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "NetworkGeometry":
        names = {f.name for f in dataclasses.fields(cls)}
        missing = names - set(d) - {"notes"}
        if missing:
            raise InvalidParameterError(f"geometry is missing {sorted(missing)}")
        kw = {k: d[k] for k in names if k in d}
        for k in ("input_shape", "input_spacing", "zoom", "offset", "network_spacing", "center_yx", "frame_window"):
            kw[k] = tuple(kw[k])
        kw["input_shape"] = tuple(int(v) for v in kw["input_shape"])
        return cls(**kw)

    @classmethod
    def from_json(cls, text: str) -> "NetworkGeometry":
        return cls.from_dict(json.loads(text))


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def _temporal(series: SliceSeries, temporal: str, n_frames: int, dt: float):
    """(T', Y, X) frames for the network, their times, the window and the number of padded frames."""
    if temporal == "linear":
        res = resample_time_linear(series, dt=dt)
        win = select_first_pass_window(res, n_frames)
        frames, times = res.data[win.slice], res.times[win.slice]
    else:
        # DAUGS: n_frames consecutive acquired frames around the first pass, then PCHIP onto n_frames even times
        # (this regularises irregular triggers without changing the number of frames)
        win = select_first_pass_window(series, n_frames)
        sub_t = series.times[win.slice]
        if len(sub_t) >= 2:
            frames, times = resample_time_pchip(series.data[win.slice], n_frames, times=sub_t)
        else:  # pragma: no cover - SliceSeries has >= 10 frames
            frames, times = series.data[win.slice], sub_t
    n_pad = max(0, n_frames - frames.shape[0])
    if n_pad:
        # too short: repeat the last frame (the late, slowly varying part of the curve), never invent a bolus
        frames = np.concatenate([frames, np.repeat(frames[-1:], n_pad, axis=0)], axis=0)
        times = np.concatenate([times, np.repeat(times[-1:], n_pad)])
    return frames, np.asarray(times, dtype=np.float64), (int(win.start), int(win.stop)), n_pad


def prepare_for_network(series: SliceSeries, *, spacing_mm: Optional[float] = 1.0, scale: Optional[float] = None,
                        size: int = 176, n_frames: int = 48, temporal: str = "linear", dt: float = 0.5,
                        center_yx: Optional[Sequence[float]] = None, normalise: str = "robust_max"
                        ) -> Tuple[np.ndarray, NetworkGeometry]:
    """Series -> network input (n_frames, size, size) float32 and the geometry that inverts it.

    Xue ResUNet: ``spacing_mm=1.0, size=176, n_frames=48, temporal="linear", dt=0.5``.
    DAUGS: ``spacing_mm=None, scale=2.0, size=128, n_frames=30, temporal="pchip"``.
    ``center_yx`` (input pixels) defaults to the automatic LV centre (:func:`localise.locate_lv`); when that fails
    the image centre is used and the geometry says so. One interpolation takes the frames from the input grid to
    the network grid (resample and crop composed).
    """
    if not isinstance(series, SliceSeries):
        raise InvalidSeriesError(f"prepare_for_network needs a SliceSeries, got {type(series).__name__}")
    if temporal not in TEMPORAL_METHODS:
        raise InvalidParameterError(f"temporal resampling must be one of {TEMPORAL_METHODS}, got {temporal!r}")
    if normalise not in NORMALISATIONS:
        raise InvalidParameterError(f"normalisation must be one of {NORMALISATIONS}, got {normalise!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 16 <= size <= 1024:
        raise InvalidParameterError(f"network field size must be an integer 16..1024 pixels, got {size!r}")
    if isinstance(n_frames, bool) or not isinstance(n_frames, (int, np.integer)) or not 1 <= n_frames <= 1000:
        raise InvalidParameterError(f"n_frames must be an integer 1..1000, got {n_frames!r}")
    zoom = _zoom_for(series.spacing, spacing_mm, scale)
    notes = []

    if center_yx is None:
        from .localise import locate_lv

        try:
            loc = locate_lv(series)
            center = tuple(map(float, loc.center_yx))
            source = f"auto (locate_lv, confidence {loc.confidence:.2f})"
        except InvalidSeriesError as exc:
            center = ((series.shape[0] - 1) / 2.0, (series.shape[1] - 1) / 2.0)
            source = "image centre (LV not found)"
            notes.append(f"automatic LV localisation failed: {exc}")
    else:
        center = (float(center_yx[0]), float(center_yx[1]))
        if not all(math.isfinite(c) for c in center):
            raise InvalidParameterError(f"center_yx must be finite, got {center_yx!r}")
        source = "given"

    frames, times, window, n_pad = _temporal(series, temporal, int(n_frames), float(dt))
    offset = (_crop_offset(center[0], int(size), zoom[0]), _crop_offset(center[1], int(size), zoom[1]))
    gmap = GridMap(tuple(series.shape), (int(size), int(size)), zoom, offset)
    net = gmap.forward(frames, order=1, fill=0.0, antialias=True)
    net, intensity_scale = _normalise_intensity(net, normalise)
    geometry = NetworkGeometry(
        input_shape=tuple(series.shape), input_spacing=tuple(series.spacing), output_size=int(size),
        zoom=zoom, offset=offset, network_spacing=(series.spacing[0] / zoom[0], series.spacing[1] / zoom[1]),
        center_yx=center, center_source=source, temporal=temporal, frame_times=[float(v) for v in times],
        frame_window=window, n_padded_frames=int(n_pad), dt=float(dt) if temporal == "linear" else None,
        normalise=normalise, intensity_scale=float(intensity_scale), notes=notes)
    return np.ascontiguousarray(net, dtype=np.float32), geometry
