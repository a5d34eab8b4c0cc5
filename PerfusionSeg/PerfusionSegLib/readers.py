"""Readers: every input format becomes a :class:`SliceSeries` (float32 ``(T, Y, X)``, times s, spacing mm, LPS matrix).

Entry points: :func:`load_series` (one slice series), :func:`load_study` (several slices, plus the AIF where the file
holds one), :func:`load_labels` (a label map in the project codes, with the mapping done reported) and
:func:`list_series` (what a file or folder holds, headers only where the format allows).
The format is picked from the content (magic bytes) and then the file name. One function per format:
:func:`read_nifti`, :func:`read_nrrd`, :func:`read_mat`, :func:`read_numpy`, and DICOM in :mod:`dicom_reader`.

Geometry and timing are never guessed silently: where a format lacks the pixel spacing or the frame interval, the
reader raises :class:`MissingGeometryError` unless ``spacing=`` / ``dt=`` supply it. ``time_axis=`` says which array
axis is time for files that store it elsewhere. Irregular frame times stored in a file are kept as they are.
Layouts on disk: NIfTI/NRRD ``(X, Y, T)``; MATLAB ``[rows, cols, frames]`` = ``(Y, X, T)``; NumPy ``(T, Y, X)``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from . import dicom_reader
from .errors import (AmbiguousInputError, InvalidLabelsError, InvalidParameterError, InvalidSeriesError,
                     MissingGeometryError, PerfusionInputError, UnreadableFileError)
from .series import AIF, MAX_FRAMES, MAX_MATRIX, MIN_FRAMES, MIN_MATRIX, SliceSeries, Study

PathLike = Union[str, os.PathLike]
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])   # its own inverse
LABEL_SCHEMES = ("auto", "project", "daugs", "ml_perfusion")
PROJECT_LABELS = {0: "background", 1: "LV blood pool", 2: "LV myocardium", 3: "RV blood pool"}
FOREIGN_CODES = {   # foreign code -> (project code, meaning)
    "daugs": {0: (0, "background"), 1: (2, "LV myocardium"), 3: (1, "LV blood pool")},
    "ml_perfusion": {0: (0, "background"), 1: (2, "LV myocardium"), 2: (1, "LV blood pool")},
}
MAX_VOXELS = 2048 * 2048 * 64   # refuse before reading anything this large: no perfusion slice series is


# --- format detection ---------------------------------------------------------------------------------------------------

def _name(path: Path) -> str:
    return path.name or str(path)


def detect_format(path: PathLike) -> str:
    """'dicom-folder', 'dicom', 'nifti', 'nrrd', 'mat', 'npy' or 'npz', from the content first, then the name."""
    path = Path(path)
    if not path.exists():
        raise UnreadableFileError(f"{path}: no such file or folder")
    if path.is_dir():
        return "dicom-folder"
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        raise UnreadableFileError(f"{_name(path)}: cannot be read ({exc.strerror or exc})") from None
    if size == 0:
        raise UnreadableFileError(f"{_name(path)}: empty file")
    low = path.name.lower()
    if head.startswith(b"NRRD"):
        return "nrrd"
    if head.startswith(b"MATLAB"):
        return "mat"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if len(head) == 132 and head[128:132] == b"DICM":
        return "dicom"
    if low.endswith((".nii", ".nii.gz")):
        if low.endswith(".gz") and not head.startswith(b"\x1f\x8b"):
            raise UnreadableFileError(f"{_name(path)}: named .nii.gz but not gzip-compressed (corrupt or another format)")
        return "nifti"
    if low.endswith((".nrrd", ".nhdr")):
        raise UnreadableFileError(f"{_name(path)}: named .nrrd but has no NRRD magic (corrupt or another format)")
    if low.endswith(".mat"):
        if head.startswith(b"\x89HDF"):
            return "mat"   # HDF5 written without MATLAB's text header (MATLAB's own v7.3 files start "MATLAB")
        raise UnreadableFileError(f"{_name(path)}: named .mat but is not a MATLAB file")
    if low.endswith(".npz") or head.startswith(b"PK\x03\x04"):
        return "npz"
    if low.endswith(".npy"):
        raise UnreadableFileError(f"{_name(path)}: named .npy but has no NumPy header (corrupt or another format)")
    if low.endswith((".dcm", ".ima")):
        return "dicom"
    raise UnreadableFileError(f"{_name(path)}: format not recognised (read: DICOM, .nii, .nii.gz, .nrrd, .seq.nrrd, "
                              f".mat, .npy, .npz)")


# --- shared helpers -------------------------------------------------------------------------------------------------------

def _spacing_override(spacing) -> Optional[tuple]:
    if spacing is None:
        return None
    v = np.atleast_1d(np.asarray(spacing, dtype=np.float64)).reshape(-1)
    if v.size not in (1, 2) or not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise InvalidParameterError(f"--spacing must be one or two positive numbers (mm), got {spacing!r}")
    return (float(v[0]), float(v[-1]))


def _check_dt(dt) -> Optional[float]:
    if dt is None:
        return None
    dt = float(dt)
    if not np.isfinite(dt) or dt <= 0:
        raise InvalidParameterError(f"--dt must be a positive frame interval in seconds, got {dt!r}")
    return dt


def _check_shape(shape_tyx: Sequence[int], what: str) -> None:
    """Refuse absurd sizes from the header, before the pixels are read (a 5000x5000 series is never loaded)."""
    t, ny, nx = (int(s) for s in shape_tyx)
    if not (MIN_MATRIX <= ny <= MAX_MATRIX and MIN_MATRIX <= nx <= MAX_MATRIX):
        raise InvalidSeriesError(f"{what}: absurd matrix size {ny}x{nx} (expected {MIN_MATRIX}..{MAX_MATRIX} per side)")
    if t < MIN_FRAMES:
        raise InvalidSeriesError(f"{what}: a perfusion series needs at least {MIN_FRAMES} frames, got {t}")
    if t > MAX_FRAMES:
        raise InvalidSeriesError(f"{what}: {t} frames is not a perfusion series; is the time axis right (--time-axis)?")


def _time_axis(time_axis, ndim: int, default: int, what: str) -> int:
    if time_axis is None:
        return default
    ax = int(time_axis)
    if not -ndim <= ax < ndim:
        raise InvalidParameterError(f"{what}: --time-axis {ax} but the array has {ndim} axes")
    return ax % ndim


def _spatial_shape(shape: Sequence[int], t_axis: int) -> list:
    return [s for i, s in enumerate(shape) if i != t_axis]


def _rescale_affine(affine: Optional[np.ndarray], spacing_yx: tuple) -> Optional[np.ndarray]:
    """Keep the directions of a matrix but give its in-plane columns the overriding spacing."""
    if affine is None:
        return None
    a = affine.copy()
    for col, step in ((0, spacing_yx[1]), (1, spacing_yx[0])):
        norm = np.linalg.norm(a[:3, col])
        if norm > 0:
            a[:3, col] *= step / norm
    return a


def _finish(tyx: np.ndarray, *, what: str, fmt: str, times=None, spacing_file=None, affine=None, spacing=None,
            dt=None, level=None, condition=None, units="signal", source="", metadata=None, time_note="",
            missing_times_hint="") -> SliceSeries:
    """Apply the overrides, refuse what is missing, and validate by building the SliceSeries."""
    meta = dict(metadata or {})
    meta["format"] = fmt
    spacing_yx = _spacing_override(spacing)
    dt = _check_dt(dt)
    missing = []
    if spacing_yx is not None:
        if spacing_file is not None:
            meta["spacing_in_file_mm"] = [round(float(s), 6) for s in spacing_file]
        meta["spacing_source"] = "--spacing override"
        affine = _rescale_affine(affine, spacing_yx)
    elif spacing_file is not None:
        spacing_yx = tuple(float(s) for s in spacing_file)
        meta.setdefault("spacing_source", "file")
    else:
        missing.append(("pixel spacing", "--spacing MM"))
    if dt is not None:
        times = np.arange(tyx.shape[0]) * dt
        meta["time_source"] = "--dt override"
    elif times is not None:
        meta.setdefault("time_source", "file")
        if time_note:
            meta["time_note"] = time_note
    else:
        missing.append(("frame interval", "--dt S"))
    if missing:
        why = f" ({missing_times_hint})" if missing_times_hint and any(m[0] == "frame interval" for m in missing) else ""
        raise MissingGeometryError(f"{what}: the file stores no " + " and no ".join(m[0] for m in missing) + why
                                   + "; give " + " and ".join(m[1] for m in missing) + " (the reader does not guess)")
    try:
        return SliceSeries(data=tyx, times=times, spacing=spacing_yx, affine=affine, level=level, condition=condition,
                           units=units, source=source, metadata=meta)
    except InvalidSeriesError as exc:   # say which input the defect is in
        raise InvalidSeriesError(f"{what}: {exc}") from None


def _pick(candidates: list, series, what: str, describe) -> object:
    """One candidate of several (slices of a file, arrays of a .mat/.npz), chosen by index or name."""
    if not candidates:
        raise InvalidSeriesError(f"{what}: holds no 2D+T series")
    if series is None:
        if len(candidates) == 1:
            return candidates[0]
        raise AmbiguousInputError(f"{what}: holds {len(candidates)} series, choose one with --series: "
                                  + "; ".join(f"[{i}] {describe(c)}" for i, c in enumerate(candidates)))
    sel = str(series).strip()
    if sel.lstrip("-").isdigit():
        i = int(sel)
        if -len(candidates) <= i < len(candidates):
            return candidates[i]
    hits = [c for c in candidates if sel.lower() in describe(c).lower()]
    if len(hits) == 1:
        return hits[0]
    raise AmbiguousInputError(f"{what}: --series {sel!r} matches {len(hits)} of: "
                              + "; ".join(f"[{i}] {describe(c)}" for i, c in enumerate(candidates)))


def _nonzero_unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


def _slice_matrix(spatial_cols: np.ndarray, origin: np.ndarray, normal_col: Optional[np.ndarray]) -> np.ndarray:
    """4x4 from the world steps of x and y (3x2), the origin and, if known, the step between slices."""
    m = np.eye(4)
    m[:3, 0], m[:3, 1] = spatial_cols[:, 0], spatial_cols[:, 1]
    if normal_col is None or np.linalg.norm(normal_col) == 0:
        normal_col = _nonzero_unit(np.cross(spatial_cols[:, 0], spatial_cols[:, 1]))
    m[:3, 2] = normal_col
    m[:3, 3] = origin
    return m


# --- NIfTI ------------------------------------------------------------------------------------------------------------------

_SPACE_UNIT_MM = {"mm": 1.0, "meter": 1000.0, "micron": 1e-3, "unknown": 1.0}
_TIME_UNIT_S = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}


def _looks_time_first(zooms: Sequence[float], shape: Sequence[int]) -> bool:
    """(T, X, Y) stored as a 3-D volume: the last two zooms agree (square pixels), the first is far from them."""
    if len(shape) != 3:
        return False
    z0, z1, z2 = (float(z) for z in zooms[:3])
    return z1 > 0 and abs(z1 - z2) <= 0.01 * z1 and not (0.5 <= z0 / z1 <= 2.0)


def _nifti_read(path: Path):
    import nibabel as nib

    try:
        img = nib.load(str(path))
        _ = img.header.get_zooms()
    except Exception as exc:  # nibabel raises ImageFileError, gzip/zlib errors, EOFError, ValueError...
        raise UnreadableFileError(f"{_name(path)}: not a readable NIfTI file ({type(exc).__name__})") from None
    return img


def _nifti_pixels(img, path: Path) -> np.ndarray:
    try:
        return np.asanyarray(img.dataobj)
    except Exception as exc:
        raise UnreadableFileError(f"{_name(path)}: truncated or corrupt NIfTI data ({type(exc).__name__})") from None


def _nifti_extension_json(img) -> dict:
    for ext in img.header.extensions:
        try:
            content = ext.get_content()
            info = json.loads(content.decode() if isinstance(content, bytes) else content)
            if isinstance(info, dict):
                return info
        except Exception:  # other software's extensions are not ours to parse
            continue
    return {}


def _sidecar_times(path: Path, n: int) -> Optional[np.ndarray]:
    """Real (possibly irregular) frame times that writers.write_series stores beside a NIfTI file."""
    name = path.name
    for suf in (".nii.gz", ".nii"):
        if name.lower().endswith(suf):
            name = name[: -len(suf)]
    side = path.with_name(name + ".times.json")
    if not side.is_file():
        return None
    try:
        times = np.asarray(json.loads(side.read_text(encoding="utf-8"))["times_s"], dtype=np.float64)
    except (OSError, ValueError, KeyError, TypeError):
        raise UnreadableFileError(f"{side.name}: unreadable frame-time side-car") from None
    return times if times.shape == (n,) else None


def _nifti_slices(path: Path, *, spacing=None, dt=None, time_axis=None, level=None, condition=None) -> list:
    img = _nifti_read(path)
    hdr = img.header
    shape = tuple(int(s) for s in img.shape)
    while len(shape) > 4 and shape[-1] == 1:
        shape = shape[:-1]
    what = _name(path)
    if len(shape) < 3:
        raise InvalidSeriesError(f"{what}: {len(shape)}-D image {shape}; a perfusion series is 2D+T (X, Y, T) "
                                 "or (X, Y, 1, T) (is this a label map?)")
    if len(shape) > 4:
        raise InvalidSeriesError(f"{what}: {len(shape)}-D image {shape}; expected (X, Y, T) or (X, Y, 1, T)")
    zooms = [float(z) for z in hdr.get_zooms()[: len(shape)]]
    space_unit, time_unit = hdr.get_xyzt_units()
    note, axis_note = "", ""
    default_t = len(shape) - 1
    if time_axis is None and _looks_time_first(zooms, shape):
        default_t = 0
        axis_note = f"time taken as axis 0: its pixdim {zooms[0]:g} differs from the square in-plane {zooms[1]:g}"
    t_ax = _time_axis(time_axis, len(shape), default_t, what)
    spatial_axes = [i for i in range(len(shape)) if i != t_ax]     # (x, y[, z]) in file order
    nt = shape[t_ax]
    nz = shape[spatial_axes[2]] if len(spatial_axes) == 3 else 1
    _check_shape((nt, shape[spatial_axes[1]], shape[spatial_axes[0]]), what)
    if int(np.prod(shape, dtype=np.int64)) > MAX_VOXELS:
        raise InvalidSeriesError(f"{what}: {shape} is far too large for a perfusion series")

    unit = _SPACE_UNIT_MM.get(space_unit, 1.0)
    sx, sy = zooms[spatial_axes[0]] * unit, zooms[spatial_axes[1]] * unit
    spacing_file = (sy, sx) if sx > 0 and sy > 0 else None
    # frame interval: pixdim of the time axis when the header says it is time (or it is the 4th axis, the NIfTI time
    # axis); a spatial pixdim reused for time (the 18.0 of ml_perfusion) is not trusted
    dt_file, hint = None, ""
    z_t = zooms[t_ax]
    if time_unit in _TIME_UNIT_S and t_ax >= 2 and z_t > 0:
        dt_file = z_t * _TIME_UNIT_S[time_unit]
    elif t_ax == 3 and 0.05 <= z_t <= 20.0 and z_t != 1.0:   # 1.0 is also what an unset pixdim reads as
        dt_file = z_t
        note = (note + "; " if note else "") + f"frame interval {z_t:g} from pixdim[4] (no time unit in the header: s assumed)"
    elif t_ax == 2 and 0.05 <= z_t <= 20.0 and z_t != 1.0 and abs(z_t - sx) > 1e-6:
        dt_file = z_t
        note = (note + "; " if note else "") + f"frame interval {z_t:g} s from pixdim[3] (no time unit in the header)"
    else:
        hint = f"pixdim {z_t:g} of the time axis {t_ax} is not a frame interval"
    times = None
    side = _sidecar_times(path, nt)
    if side is not None:
        times = side
        note = (note + "; " if note else "") + "frame times from the .times.json side-car"
    elif dt_file is not None:
        times = np.arange(nt) * dt_file

    qcode, scode = int(hdr["qform_code"]), int(hdr["sform_code"])
    affine_lps = LPS_TO_RAS @ img.affine if (qcode > 0 or scode > 0) else None
    info = _nifti_extension_json(img)
    arr = _nifti_pixels(img, path).reshape(shape)
    out = []
    for z in range(nz):
        vol = np.moveaxis(arr, t_ax, 0)              # (T, x, y[, z])
        vol = vol[..., z] if vol.ndim == 4 else vol
        tyx = np.asarray(vol, dtype=np.float32).transpose(0, 2, 1)
        affine = None
        if affine_lps is not None:
            cols = np.stack([affine_lps[:3, a] if a < 3 else np.zeros(3) for a in spatial_axes[:2]], axis=1)
            zcol = affine_lps[:3, spatial_axes[2]] if len(spatial_axes) == 3 and spatial_axes[2] < 3 else None
            origin = affine_lps[:3, 3] + (zcol * z if zcol is not None else 0.0)
            affine = _slice_matrix(cols, origin, zcol)
        meta = {"file_shape": list(shape), "time_axis": t_ax, "pixdim": zooms}
        if axis_note:
            meta["time_axis_note"] = axis_note
        if nz > 1:
            meta["slice_index"] = z
        if affine is None:
            meta["geometry_note"] = "no qform/sform in the file: patient orientation unknown"
        out.append(_finish(tyx, what=what, fmt="nifti", times=times, spacing_file=spacing_file, affine=affine,
                           spacing=spacing, dt=dt, level=level or info.get("level"),
                           condition=condition or info.get("condition"), units=info.get("units", "signal"),
                           source=str(path), metadata=meta, time_note=note, missing_times_hint=hint))
    return out


def read_nifti(path: PathLike, *, spacing=None, dt=None, time_axis=None, series=None, level=None,
               condition=None) -> SliceSeries:
    """NIfTI 2D+T: ``(X, Y, T)``, ``(X, Y, 1, T)`` or ``(X, Y, Z, T)`` (``series`` picks the slice z)."""
    path = Path(path)
    slices = _nifti_slices(path, spacing=spacing, dt=dt, time_axis=time_axis, level=level, condition=condition)
    return _pick(slices, series, _name(path), lambda s: f"slice {s.metadata.get('slice_index', 0)}")


# --- NRRD -----------------------------------------------------------------------------------------------------------------

_NRRD_SPACE_TO_LPS = {"left-posterior-superior": np.array([1.0, 1.0, 1.0]), "lps": np.array([1.0, 1.0, 1.0]),
                      "right-anterior-superior": np.array([-1.0, -1.0, 1.0]), "ras": np.array([-1.0, -1.0, 1.0]),
                      "left-anterior-superior": np.array([1.0, -1.0, 1.0]), "las": np.array([1.0, -1.0, 1.0])}
_SPATIAL_KINDS = {"domain", "space"}


def _nrrd_header(path: Path) -> dict:
    import nrrd

    try:
        return nrrd.read_header(str(path))
    except Exception as exc:  # NRRDError, ValueError, UnicodeDecodeError on damaged headers
        raise UnreadableFileError(f"{_name(path)}: not a readable NRRD header ({' '.join(str(exc).split())[:100]})") from None


def _nrrd_axis_times(header: dict, axis: int, n: int) -> tuple:
    """(times s or None, note) from a Slicer-style 'axis N index values' field or the axis spacing."""
    unit = str(header.get(f"axis {axis} unit", "") or "").strip().lower()
    units = header.get("units")
    if not unit and isinstance(units, (list, tuple)) and axis < len(units) and units[axis]:
        unit = str(units[axis]).strip().lower()
    scale = {"ms": 1e-3, "msec": 1e-3, "millisecond": 1e-3, "milliseconds": 1e-3}.get(unit, 1.0)
    values = header.get(f"axis {axis} index values")
    if values is not None:
        try:
            t = np.array([float(v) for v in str(values).replace(",", " ").split()], dtype=np.float64) * scale
        except ValueError:
            raise UnreadableFileError(f"axis {axis} index values are not numbers") from None
        if t.shape == (n,):
            return t, f"frame times from 'axis {axis} index values'"
    spacings = header.get("spacings")
    if spacings is not None and axis < len(spacings) and np.isfinite(spacings[axis]) and spacings[axis] > 0:
        return np.arange(n) * float(spacings[axis]) * scale, f"frame interval from the spacing of axis {axis}"
    return None, ""


def _nrrd_slices(path: Path, *, spacing=None, dt=None, time_axis=None, level=None, condition=None) -> list:
    import nrrd

    what = _name(path)
    header = _nrrd_header(path)
    sizes = [int(s) for s in header.get("sizes", [])]
    ndim = len(sizes)
    if ndim < 3:
        raise InvalidSeriesError(f"{what}: {ndim}-D image {tuple(sizes)}; a perfusion series is 2D+T (is this a label map?)")
    kinds = [str(k).lower() for k in header.get("kinds", [])] or [None] * ndim
    dirs = header.get("space directions")
    non_spatial = [i for i in range(ndim) if (kinds[i] is not None and kinds[i] not in _SPATIAL_KINDS)
                   or (dirs is not None and (dirs[i] is None or not np.all(np.isfinite(np.asarray(dirs[i], float)))))]
    if time_axis is not None:
        t_ax = _time_axis(time_axis, ndim, ndim - 1, what)
    elif len(non_spatial) == 1:
        t_ax = non_spatial[0]
    elif not non_spatial:
        t_ax = ndim - 1   # (X, Y, T) by convention
    else:
        raise InvalidSeriesError(f"{what}: {len(non_spatial)} non-spatial axes (kinds {kinds}); give --time-axis")
    spatial = [i for i in range(ndim) if i != t_ax]
    spatial_big = [i for i in spatial if sizes[i] > 1]
    if len(spatial) > 3 or len(spatial_big) > 3 or len(spatial) < 2:
        raise InvalidSeriesError(f"{what}: {ndim}-D image {tuple(sizes)}; expected 2D+T")
    xy = (spatial_big + [i for i in spatial if i not in spatial_big])[:2] if len(spatial_big) < 2 else spatial_big[:2]
    z_axes = [i for i in spatial if i not in xy]
    nz = sizes[z_axes[0]] if z_axes else 1
    _check_shape((sizes[t_ax], sizes[xy[1]], sizes[xy[0]]), what)

    times, tnote = _nrrd_axis_times(header, t_ax, sizes[t_ax])
    space = str(header.get("space", "")).lower()
    flip = _NRRD_SPACE_TO_LPS.get(space)
    spacing_file, affine_cols, origin = None, None, None
    if dirs is not None:
        d = {i: np.asarray(dirs[i], dtype=np.float64) for i in spatial}
        if all(np.all(np.isfinite(d[i])) for i in xy):
            spacing_file = (float(np.linalg.norm(d[xy[1]])), float(np.linalg.norm(d[xy[0]])))
            if flip is not None and all(d[i].shape == (3,) for i in spatial):
                affine_cols = {i: d[i] * flip for i in spatial}
                origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=np.float64) * flip
    if spacing_file is None and header.get("spacings") is not None:
        sp = header["spacings"]
        if all(np.isfinite(sp[i]) and sp[i] > 0 for i in xy):
            spacing_file = (float(sp[xy[1]]), float(sp[xy[0]]))
    try:
        data, _ = nrrd.read(str(path), index_order="F")
    except Exception as exc:
        raise UnreadableFileError(f"{what}: truncated or corrupt NRRD data ({type(exc).__name__})") from None
    data = data.reshape(sizes)
    info = {k[len("perfusion_"):]: v for k, v in header.items() if isinstance(k, str) and k.startswith("perfusion_")}
    out = []
    for z in range(nz):
        vol = np.moveaxis(data, [t_ax, xy[1], xy[0]] + z_axes, list(range(ndim)))   # (T, Y, X[, Z])
        tyx = np.asarray(vol[..., z] if vol.ndim == 4 else vol, dtype=np.float32)
        affine = None
        if affine_cols is not None:
            zcol = affine_cols[z_axes[0]] if z_axes else None
            affine = _slice_matrix(np.stack([affine_cols[xy[0]], affine_cols[xy[1]]], axis=1),
                                   origin + (zcol * z if zcol is not None else 0.0), zcol)
        meta = {"file_sizes": sizes, "time_axis": t_ax, "kinds": kinds}
        if nz > 1:
            meta["slice_index"] = z
        out.append(_finish(tyx, what=what, fmt="nrrd", times=times, spacing_file=spacing_file, affine=affine,
                           spacing=spacing, dt=dt, level=level or info.get("level"),
                           condition=condition or info.get("condition"), units=info.get("units", "signal"),
                           source=str(path), metadata=meta, time_note=tnote))
    return out


def read_nrrd(path: PathLike, *, spacing=None, dt=None, time_axis=None, series=None, level=None,
              condition=None) -> SliceSeries:
    """NRRD ``(X, Y, T)`` and Slicer sequences (``.seq.nrrd``: a list/time axis, 'axis N index values' times)."""
    path = Path(path)
    slices = _nrrd_slices(path, spacing=spacing, dt=dt, time_axis=time_axis, level=level, condition=condition)
    return _pick(slices, series, _name(path), lambda s: f"slice {s.metadata.get('slice_index', 0)}")


# --- MATLAB ---------------------------------------------------------------------------------------------------------------

def _mat_variables(path: Path) -> dict:
    """Variables of a .mat file (v4-v7 via scipy, v7.3 via h5py), arrays in MATLAB order."""
    import scipy.io

    with open(path, "rb") as fh:
        head = fh.read(520)
    if not (head[:4] == b"\x89HDF" or head[512:516] == b"\x89HDF"):   # v7.3 = HDF5 after a 512-byte user block
        try:
            return {k: v for k, v in scipy.io.loadmat(str(path)).items() if not k.startswith("__")}
        except NotImplementedError:   # scipy's answer to a v7.3 file it recognised
            pass
        except Exception as exc:
            raise UnreadableFileError(f"{_name(path)}: not a readable MATLAB file ({type(exc).__name__})") from None
    try:
        import h5py

        out = {}
        with h5py.File(str(path), "r") as fh:
            for k, ds in fh.items():
                if isinstance(ds, h5py.Dataset) and not k.startswith("#"):
                    out[k] = np.asarray(ds[()]).T   # HDF5 stores MATLAB arrays transposed
        return out
    except Exception as exc:
        raise UnreadableFileError(f"{_name(path)}: not a readable MATLAB v7.3 file ({type(exc).__name__})") from None


def _scalar(v) -> Optional[float]:
    try:
        a = np.asarray(v, dtype=np.float64).reshape(-1)
        return float(a[0]) if a.size == 1 and np.isfinite(a[0]) else None
    except (TypeError, ValueError):
        return None


def _mat_layout(variables: dict) -> str:
    if "final_img" in variables:
        return "daugs"
    if "data" in variables and "aif" in variables:
        return "qperf"
    return "generic"


def _numeric_arrays(variables: dict, ndim: int) -> list:
    return [(k, v) for k, v in variables.items()
            if isinstance(v, np.ndarray) and v.ndim == ndim and np.issubdtype(v.dtype, np.number)]


def _mat_series(path: Path, variables: dict, *, spacing=None, dt=None, time_axis=None, series=None, level=None,
                condition=None) -> SliceSeries:
    what = _name(path)
    layout = _mat_layout(variables)
    meta: dict = {"mat_layout": layout}
    units, times, hint = "signal", None, ""
    if layout == "daugs":
        name, arr = "final_img", variables["final_img"]
        units = "normalised"
        hint = "DAUGS images were resampled onto 30 frames and store no timing"
    elif layout == "qperf":
        name, arr = "data", variables["data"]
        units = "mmol/L"
        dt_file = _scalar(variables.get("deltaT"))
        if dt_file is not None and dt_file > 0:
            times = np.arange(arr.shape[-1] if arr.ndim == 3 else 0) * dt_file
            meta["time_source"] = "deltaT"
        else:
            hint = "this QPerf file has no deltaT"
    else:
        cands = _numeric_arrays(variables, 3)
        if not cands:
            shapes = ", ".join(f"{k} {getattr(v, 'shape', '?')}" for k, v in variables.items()) or "nothing"
            raise InvalidSeriesError(f"{what}: no 3-D array among its variables ({shapes}); a series is [rows, cols, frames]")
        name, arr = _pick(cands, series, what, lambda c: f"{c[0]} {c[1].shape}")
    arr = np.asarray(arr)
    if arr.ndim != 3 or not np.issubdtype(arr.dtype, np.number):
        raise InvalidSeriesError(f"{what}: variable {name!r} has shape {arr.shape}; a series is [rows, cols, frames]")
    t_ax = _time_axis(time_axis, 3, 2, what)
    ny, nx = _spatial_shape(arr.shape, t_ax)
    _check_shape((arr.shape[t_ax], ny, nx), what)
    tyx = np.moveaxis(arr, t_ax, 0).astype(np.float32)
    if times is not None and times.shape[0] != tyx.shape[0]:
        times = None
    meta["variable"] = name
    return _finish(tyx, what=what, fmt="mat", times=times, spacing_file=None, affine=None, spacing=spacing, dt=dt,
                   level=level, condition=condition, units=units, source=str(path), metadata=meta,
                   missing_times_hint=hint)


def read_mat(path: PathLike, *, spacing=None, dt=None, time_axis=None, series=None, level=None,
             condition=None) -> SliceSeries:
    """MATLAB: DAUGS ``final_img`` [rows, cols, 30]; QPerf ``data`` [rows, cols, frames] (+ ``aif``, ``deltaT``,
    Gd mmol/L); otherwise the single 3-D array (``series`` names it when there are several). No spacing is stored."""
    path = Path(path)
    return _mat_series(path, _mat_variables(path), spacing=spacing, dt=dt, time_axis=time_axis, series=series,
                       level=level, condition=condition)


def _qperf_aif(variables: dict, series: SliceSeries, dt: Optional[float], note: list) -> Optional[AIF]:
    curve = np.asarray(variables["aif"], dtype=np.float64).reshape(-1)
    dt_file = _scalar(variables.get("deltaT"))
    step = dt if dt is not None else dt_file
    if step is None:
        raise MissingGeometryError("QPerf file has no deltaT for its AIF; give the frame interval with --dt S")
    hct = _scalar(variables.get("HCT"))
    if hct is None:
        hct = 0.42
        note.append("no HCT in the file: haematocrit 0.42 assumed")

    def zero_based(key):
        v = _scalar(variables.get(key))
        return None if v is None else int(round(v)) - 1   # MATLAB frame numbers start at 1
    return AIF(curve=curve, times=np.arange(curve.size) * step, units="mmol/L", hematocrit=hct,
               foot=zero_based("foot"), peak=zero_based("peak"))


# --- NumPy ----------------------------------------------------------------------------------------------------------------

def _npy_open(path: Path):
    try:
        return np.load(str(path), mmap_mode="r", allow_pickle=False)
    except Exception as exc:   # ValueError (pickled object, bad header), EOFError, OSError
        raise UnreadableFileError(f"{_name(path)}: not a readable NumPy file ({' '.join(str(exc).split())[:100]})") from None


def read_numpy(path: PathLike, *, spacing=None, dt=None, time_axis=None, series=None, level=None,
               condition=None) -> SliceSeries:
    """``.npy``: one array ``(T, Y, X)`` (``time_axis`` otherwise). ``.npz``: ``data`` with optional ``times``,
    ``spacing`` (dy, dx) and ``dt``, or the single 3-D array (``series`` names it when there are several)."""
    path = Path(path)
    what = _name(path)
    times, spacing_file, name = None, None, None
    obj = _npy_open(path)
    if isinstance(obj, np.lib.npyio.NpzFile):
        with obj:
            keys = list(obj.files)
            try:
                if "data" in keys:
                    name = "data"
                else:
                    shapes = {}
                    for k in keys:
                        shapes[k] = obj[k].shape
                    cands = [(k, s) for k, s in shapes.items() if len(s) == 3]
                    if not cands:
                        raise InvalidSeriesError(f"{what}: no 3-D array in it ({', '.join(f'{k} {s}' for k, s in shapes.items())})")
                    name = _pick(cands, series, what, lambda c: f"{c[0]} {c[1]}")[0]
                arr = obj[name]
                if "times" in keys:
                    times = np.asarray(obj["times"], dtype=np.float64).reshape(-1)
                elif "dt" in keys:
                    times = None if _scalar(obj["dt"]) is None else np.arange(arr.shape[0]) * _scalar(obj["dt"])
                if "spacing" in keys:
                    spacing_file = tuple(np.asarray(obj["spacing"], dtype=np.float64).reshape(-1)[:2])
            except PerfusionInputError:
                raise
            except Exception as exc:
                raise UnreadableFileError(f"{what}: truncated or corrupt .npz ({type(exc).__name__})") from None
    else:
        arr = obj
    if arr.ndim != 3:
        raise InvalidSeriesError(f"{what}: {arr.ndim}-D array {arr.shape}; a series is 3-D (T, Y, X)")
    if not np.issubdtype(arr.dtype, np.number):
        raise InvalidSeriesError(f"{what}: array of dtype {arr.dtype} is not numeric")
    t_ax = _time_axis(time_axis, 3, 0, what)
    ny, nx = _spatial_shape(arr.shape, t_ax)
    _check_shape((arr.shape[t_ax], ny, nx), what)
    try:
        tyx = np.array(np.moveaxis(arr, t_ax, 0), dtype=np.float32)
    except Exception as exc:
        raise UnreadableFileError(f"{what}: truncated or corrupt array data ({type(exc).__name__})") from None
    if times is not None and times.shape[0] != tyx.shape[0]:
        times = None
    if spacing_file is not None and len(spacing_file) == 1:
        spacing_file = (spacing_file[0], spacing_file[0])
    return _finish(tyx, what=what, fmt=path.suffix.lower().lstrip("."), times=times, spacing_file=spacing_file,
                   spacing=spacing, dt=dt, level=level, condition=condition, source=str(path),
                   metadata={"time_axis": t_ax, "variable": name} if name else {"time_axis": t_ax})


# --- DICOM ----------------------------------------------------------------------------------------------------------------

def _dicom_entries(path: Path, fmt: str) -> tuple:
    """(entries, restriction note). A single classic DICOM file stands for its series in the same folder."""
    if fmt == "dicom-folder":
        files = dicom_reader.dicom_files_in(path)
        if not files:
            raise UnreadableFileError(f"{path}: empty folder")
        frames = dicom_reader.read_headers(files)
        if not frames:
            raise UnreadableFileError(f"{path}: folder holds no DICOM images")
        return dicom_reader.group_entries(frames), ""
    own = dicom_reader.read_headers([path])
    if not own:
        raise UnreadableFileError(f"{_name(path)}: DICOM file without an image")
    if len(own) > 1:   # enhanced multi-frame: the file is the series
        return dicom_reader.group_entries(own), ""
    siblings = [p for p in sorted(path.parent.iterdir()) if p.is_file() and not p.name.startswith(".")]
    frames = [f for f in dicom_reader.read_headers(siblings) if f.series_uid == own[0].series_uid]
    entries = dicom_reader.group_entries(frames)
    mine = [e for e in entries if any(f.sop_uid == own[0].sop_uid for f in e.frames)]
    for i, e in enumerate(mine):
        e.index = i
    return mine, f"read the images of {_name(path)}'s series and slice in its folder"


def _dicom_series(path: Path, fmt: str, *, allow_many: bool, spacing=None, dt=None, series=None, level=None,
                  condition=None) -> list:
    entries, note = _dicom_entries(path, fmt)
    chosen = dicom_reader.select_entries(entries, series, allow_many=allow_many, what=_name(path))
    out = []
    for e in chosen:
        s = dicom_reader.entry_to_series(e, spacing=_spacing_override(spacing), dt=_check_dt(dt), level=level,
                                         condition=condition, source=str(path))
        if note:
            s.metadata["selection_note"] = note
        out.append(s)
    return out


# --- public entry points --------------------------------------------------------------------------------------------------

def load_series(path: PathLike, *, spacing=None, dt=None, time_axis=None, series=None, level=None,
                condition=None) -> SliceSeries:
    """Read one 2D+T slice series from any supported file or a DICOM folder (format picked by content)."""
    path = Path(path)
    fmt = detect_format(path)
    kw = dict(spacing=spacing, dt=dt, series=series, level=level, condition=condition)
    if fmt in ("dicom-folder", "dicom"):
        if time_axis is not None:
            raise InvalidParameterError("--time-axis does not apply to DICOM (frames are separate images)")
        return _dicom_series(path, fmt, allow_many=False, **kw)[0]
    if fmt == "nifti":
        return read_nifti(path, time_axis=time_axis, **kw)
    if fmt == "nrrd":
        return read_nrrd(path, time_axis=time_axis, **kw)
    if fmt == "mat":
        return read_mat(path, time_axis=time_axis, **kw)
    return read_numpy(path, time_axis=time_axis, **kw)


def _study(slices: list, **kw) -> Study:
    for s in slices:   # Study assigns levels from the order; say which were stated by the file or the caller
        s.metadata["level_source"] = "given" if s.level is not None else "order"
    return Study(slices=slices, **kw)


def _common_time_origin(slices: list) -> None:
    """Slices of one acquisition share a clock: keep their offsets (tens to hundreds of ms within a beat) instead of
    starting every slice at 0, when every slice was timed by AcquisitionTime."""
    starts = [s.metadata.get("acquisition_start_s_of_day") for s in slices]
    if any(v is None for v in starts) or any(s.metadata.get("time_source") != "AcquisitionTime" for s in slices):
        return
    t0 = min(starts)
    if max(starts) - t0 > 60.0:   # different acquisitions (rest and stress): no common clock worth keeping
        return
    for s, start in zip(slices, starts):
        s.times = s.times + (start - t0)
        s.metadata["time_origin"] = "first image of the study (AcquisitionTime)"


def load_study(paths: Union[PathLike, Sequence[PathLike]], *, spacing=None, dt=None, time_axis=None, series=None,
               level=None, condition=None) -> Study:
    """Several slices as a :class:`Study` ordered basal to apical.

    A list of files: one slice per file, in the order given (taken as basal to apical). A DICOM folder: one slice per
    slice position of the selected series (``series`` may list several, comma-separated), ordered along the slice
    normal toward the apex. A multi-slice NIfTI/NRRD: its slices. A QPerf .mat: its series and its AIF.
    """
    kw = dict(spacing=spacing, dt=dt, time_axis=time_axis, series=series, condition=condition)
    if isinstance(paths, (list, tuple)):
        if not paths:
            raise InvalidParameterError("no input given")
        if len(paths) == 1:
            return load_study(paths[0], level=level, **kw)
        if level is not None:
            raise InvalidParameterError("one --level cannot describe several slices")
        slices = [load_series(p, **kw) for p in paths]
        return _study(slices, condition=condition, source=", ".join(str(p) for p in paths),
                     metadata={"order": "as given (basal to apical)"})
    path = Path(paths)
    fmt = detect_format(path)
    if fmt in ("dicom-folder", "dicom"):
        if time_axis is not None:
            raise InvalidParameterError("--time-axis does not apply to DICOM (frames are separate images)")
        slices = _dicom_series(path, fmt, allow_many=True, spacing=spacing, dt=dt, series=series, level=None,
                               condition=condition)
        if level is not None:
            if len(slices) > 1:
                raise InvalidParameterError(f"one --level cannot describe the {len(slices)} slices of {_name(path)}")
            slices[0].level = level
        meta = {}
        if len(slices) > 1:
            _common_time_origin(slices)
            slices = dicom_reader.apex_ordered(slices)
            meta["order"] = ("along the slice normal toward the apex (left-anterior-inferior)"
                             if all(s.affine is not None for s in slices) else "as found (no patient geometry)")
        return _study(slices, condition=condition, source=str(path), metadata=meta)
    if fmt == "mat":
        variables = _mat_variables(path)
        s = _mat_series(path, variables, spacing=spacing, dt=dt, time_axis=time_axis, series=series, level=level,
                        condition=condition)
        aif, meta = None, {}
        if _mat_layout(variables) == "qperf":
            notes: list = []
            aif = _qperf_aif(variables, s, _check_dt(dt), notes)
            meta = {"aif_source": "QPerf 'aif' (foot/peak converted to 0-based)"}
            if notes:
                meta["aif_note"] = "; ".join(notes)
        return _study([s], aif=aif, condition=condition, source=str(path), metadata=meta)
    if fmt in ("nifti", "nrrd"):
        reader = _nifti_slices if fmt == "nifti" else _nrrd_slices
        slices = reader(path, spacing=spacing, dt=dt, time_axis=time_axis, level=level if series is None else None,
                        condition=condition)
        if series is not None:
            slices = [_pick(slices, series, _name(path), lambda s: f"slice {s.metadata.get('slice_index', 0)}")]
        if len(slices) > 1:
            slices = dicom_reader.apex_ordered(slices)
            for s in slices:
                s.level = None
        return _study(slices, condition=condition, source=str(path))
    return _study([load_series(path, level=level, **kw)], condition=condition, source=str(path))


def list_series(path: PathLike) -> list:
    """What a file or folder holds, one dict per selectable series (index usable as ``series=``)."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt in ("dicom-folder", "dicom"):
        entries, _ = _dicom_entries(path, fmt)
        return [e.describe() for e in entries]
    if fmt == "nifti":
        img = _nifti_read(path)
        shape = list(img.shape)
        return [{"index": 0, "format": "nifti", "shape": shape, "pixdim": [float(z) for z in img.header.get_zooms()],
                 "units": list(img.header.get_xyzt_units()),
                 "slices": shape[2] if len(shape) == 4 else 1}]
    if fmt == "nrrd":
        h = _nrrd_header(path)
        return [{"index": 0, "format": "nrrd", "shape": [int(s) for s in h.get("sizes", [])],
                 "kinds": list(h.get("kinds", []))}]
    if fmt == "mat":
        variables = _mat_variables(path)
        layout = _mat_layout(variables)
        if layout != "generic":
            name = "final_img" if layout == "daugs" else "data"
            return [{"index": 0, "format": "mat", "layout": layout, "variable": name,
                     "shape": list(np.shape(variables[name])), "has_aif": layout == "qperf"}]
        return [{"index": i, "format": "mat", "layout": layout, "variable": k, "shape": list(v.shape)}
                for i, (k, v) in enumerate(_numeric_arrays(variables, 3))]
    obj = _npy_open(path)
    if isinstance(obj, np.lib.npyio.NpzFile):
        with obj:
            try:
                items = [(k, obj[k].shape) for k in obj.files]
            except Exception as exc:
                raise UnreadableFileError(f"{_name(path)}: truncated or corrupt .npz ({type(exc).__name__})") from None
        if any(k == "data" for k, _ in items):
            items = [(k, s) for k, s in items if k == "data"]
        return [{"index": i, "format": "npz", "variable": k, "shape": list(s)}
                for i, (k, s) in enumerate((k, s) for k, s in items if len(s) == 3)]
    return [{"index": 0, "format": "npy", "shape": list(obj.shape), "dtype": str(obj.dtype)}]


# --- labels ---------------------------------------------------------------------------------------------------------------

def _label_array(path: Path, fmt: str, time_axis) -> tuple:
    """(array (Y, X) or (T, Y, X), source detail, is_ml_perfusion_layout)."""
    what = _name(path)
    time_first = False
    if fmt == "nifti":
        img = _nifti_read(path)
        shape = tuple(int(s) for s in img.shape)
        if int(np.prod(shape, dtype=np.int64)) > MAX_VOXELS:
            raise InvalidLabelsError(f"{what}: {shape} is far too large for a label map")
        arr = np.asarray(_nifti_pixels(img, path))
        while arr.ndim > 2 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim == 4 and arr.shape[2] == 1:
            arr = arr[:, :, 0, :]
        if arr.ndim == 2:
            return arr.T, "", False
        if arr.ndim != 3:
            raise InvalidLabelsError(f"{what}: {arr.ndim}-D label image {shape}; expected (X, Y) or (X, Y, T)")
        zooms = img.header.get_zooms()
        time_first = time_axis is None and _looks_time_first(zooms, arr.shape)
        t_ax = _time_axis(time_axis, 3, 0 if time_first else 2, what)
        return np.moveaxis(arr, t_ax, 0).transpose(0, 2, 1), f"time axis {t_ax}", time_first
    if fmt == "nrrd":
        import nrrd
        try:
            arr, _ = nrrd.read(str(path), index_order="F")
        except Exception as exc:
            raise UnreadableFileError(f"{what}: not a readable NRRD file ({type(exc).__name__})") from None
        arr = np.squeeze(arr)
        if arr.ndim == 2:
            return arr.T, "", False
        if arr.ndim == 3:
            t_ax = _time_axis(time_axis, 3, 2, what)
            return np.moveaxis(arr, t_ax, 0).transpose(0, 2, 1), f"time axis {t_ax}", False
        raise InvalidLabelsError(f"{what}: {arr.ndim}-D label image; expected (X, Y)")
    if fmt == "mat":
        variables = _mat_variables(path)
        if "final_mask" in variables:
            return np.asarray(variables["final_mask"]), "final_mask", False
        cands = _numeric_arrays(variables, 2) or _numeric_arrays(variables, 3)
        if len(cands) != 1:
            raise AmbiguousInputError(f"{what}: expected one label array, found {[k for k, _ in cands] or 'none'}")
        arr = np.asarray(cands[0][1])
        if arr.ndim == 3:
            arr = np.moveaxis(arr, _time_axis(time_axis, 3, 2, what), 0)
        return arr, cands[0][0], False
    if fmt in ("npy", "npz"):
        obj = _npy_open(path)
        if isinstance(obj, np.lib.npyio.NpzFile):
            with obj:
                keys = [k for k in obj.files if k in ("labels", "mask")] or list(obj.files)
                if len(keys) != 1:
                    raise AmbiguousInputError(f"{what}: expected one label array, found {list(obj.files)}")
                arr = np.asarray(obj[keys[0]])
        else:
            arr = np.asarray(obj)
        if arr.ndim == 3:
            arr = np.moveaxis(arr, _time_axis(time_axis, 3, 0, what), 0)
        return arr, "", False
    raise InvalidLabelsError(f"{what}: label maps are read from NIfTI, NRRD, .mat or NumPy files, not {fmt}")


def _collapse_frames(arr: np.ndarray, frame) -> tuple:
    """A (T, Y, X) label stack with labels on some frames -> (Y, X) and what was done."""
    t = arr.shape[0]
    labelled = [i for i in range(t) if np.any(arr[i])]
    if not labelled:
        raise InvalidLabelsError("the label file holds no labels on any frame")
    span = f"frames {labelled[0]}-{labelled[-1]}" if len(labelled) > 1 else f"frame {labelled[0]}"
    if frame is not None:
        f = int(frame)
        if f not in labelled:
            raise InvalidLabelsError(f"frame {f} holds no labels (labelled: {span})")
        return arr[f], f"labels taken from frame {f} of {t} (labelled: {len(labelled)} frames, {span})"
    if len(labelled) == 1:
        return arr[labelled[0]], f"labels taken from frame {labelled[0]}, the only labelled one of {t}"
    stack = arr[labelled]
    if all(np.array_equal(stack[0], s) for s in stack[1:]):
        return stack[0], f"labels on {len(labelled)} of {t} frames ({span}), identical: collapsed to one map"
    from scipy import stats

    majority = stats.mode(stack, axis=0, keepdims=False).mode   # ties go to the smaller code (background first)
    return majority, (f"labels on {len(labelled)} of {t} frames ({span}) differ: collapsed by per-pixel majority vote")


def load_labels(path: PathLike, *, scheme: str = "auto", time_axis=None, frame=None) -> tuple:
    """A label map as uint8 ``(Y, X)`` in the project codes, and a note saying what mapping (and collapsing) was done.

    scheme: "project" (0-3 as CONVENTIONS), "daugs" (1 myocardium, 3 LV blood pool), "ml_perfusion" (1 myocardium,
    2 LV blood pool) or "auto" (DAUGS for a .mat ``final_mask``; ml_perfusion for ``*_gt.nii[.gz]`` or a time-first
    label stack with codes 0-2; project otherwise). Label stacks over time (ml_perfusion stores ``(T, X, Y)`` with
    labels on some frames) are collapsed: ``frame`` picks one, else the labelled frames are merged by majority.
    """
    path = Path(path)
    if scheme not in LABEL_SCHEMES:
        raise InvalidParameterError(f"label scheme must be one of {LABEL_SCHEMES}, got {scheme!r}")
    fmt = detect_format(path)
    if fmt in ("dicom-folder", "dicom"):
        raise InvalidLabelsError(f"{_name(path)}: DICOM label objects are not read; export the labels as NIfTI or NRRD")
    arr, detail, time_first = _label_array(path, fmt, time_axis)
    arr = np.asarray(arr)
    what = _name(path)
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise InvalidLabelsError(f"{what}: labels must be integers, got {arr.dtype}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0) or np.any(arr != np.round(arr)):
        raise InvalidLabelsError(f"{what}: labels must be non-negative integers (found NaN, negative or fractional values)")
    ny, nx = arr.shape[-2:]
    if not (MIN_MATRIX <= ny <= MAX_MATRIX and MIN_MATRIX <= nx <= MAX_MATRIX):
        raise InvalidLabelsError(f"{what}: absurd label map size {ny}x{nx}")
    arr = arr.astype(np.int64)
    notes = []
    if arr.ndim == 3:
        arr, how = _collapse_frames(arr, frame)
        notes.append(how)
    codes = sorted(int(c) for c in np.unique(arr))
    if scheme == "auto":
        low = path.name.lower()
        if detail == "final_mask":
            scheme = "daugs"
        elif (low.endswith(("_gt.nii.gz", "_gt.nii")) or time_first) and set(codes) <= {0, 1, 2}:
            scheme = "ml_perfusion"
        else:
            scheme = "project"
        notes.insert(0, f"scheme '{scheme}' chosen automatically")
    if scheme == "project":
        bad = [c for c in codes if c not in PROJECT_LABELS]
        if bad:
            raise InvalidLabelsError(f"{what}: codes {bad} are not project labels 0-3; give --label-scheme daugs|ml_perfusion")
        out = arr.astype(np.uint8)
        notes.append("project codes kept (" + ", ".join(f"{c} {PROJECT_LABELS[c]}" for c in codes if c) + ")")
    else:
        table = FOREIGN_CODES[scheme]
        bad = [c for c in codes if c not in table]
        if bad:
            raise InvalidLabelsError(f"{what}: codes {bad} have no meaning in the {scheme} scheme "
                                     f"(known: {sorted(table)})")
        out = np.zeros(arr.shape, dtype=np.uint8)
        for c, (p, _) in table.items():
            out[arr == c] = p
        mapped = [f"{c} ({table[c][1]}) -> {table[c][0]}" for c in codes if c]
        notes.append(f"{scheme} codes mapped to project codes: " + (", ".join(mapped) or "no labels"))
        if 3 not in out:
            notes.append("no RV blood pool label in the file")
    if not np.any(out):
        raise InvalidLabelsError(f"{what}: the label map is empty (background only)")
    return out, "; ".join(notes)
