"""Writers for series, label maps and parametric maps (NIfTI and NRRD), all atomic.

On disk a series is ``(X, Y, T)`` and a 2-D map ``(X, Y)`` (CONVENTIONS); in memory ``(T, Y, X)`` / ``(Y, X)``.
NIfTI stores RAS world coordinates, our matrices are LPS: the first two world axes change sign on the way out.
NRRD stores LPS directly (``space: left-posterior-superior``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import numpy as np

from .atomic import atomic_output
from .errors import InvalidParameterError
from .series import SliceSeries, affine_from_spacing

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _affine_for(spacing, affine: Optional[np.ndarray]) -> np.ndarray:
    return np.asarray(affine, dtype=np.float64) if affine is not None else affine_from_spacing(spacing)


def _format_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".nii") or name.endswith(".nii.gz"):
        return "nifti"
    if name.endswith(".nrrd") or name.endswith(".nhdr"):
        return "nrrd"
    raise InvalidParameterError(f"cannot write {path.name}: use .nii, .nii.gz or .nrrd")


def _write_nifti(path: Path, xyz: np.ndarray, affine_lps: np.ndarray, dt: Optional[float], extra: dict) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(xyz, LPS_TO_RAS @ affine_lps)
    img.header.set_qform(LPS_TO_RAS @ affine_lps, code=1)
    img.header.set_sform(LPS_TO_RAS @ affine_lps, code=1)
    img.header.set_xyzt_units(xyz="mm", t="sec")
    if dt is not None:  # (X, Y, 1, T): the 4th pixdim is the frame interval (set after the forms, which reset zooms)
        zooms = list(img.header.get_zooms())
        zooms[3] = float(dt)
        img.header.set_zooms(zooms)
    if extra:
        img.header.extensions.append(nib.nifti1.Nifti1Extension("comment", json.dumps(extra).encode()))
    with atomic_output(path) as tmp:
        nib.save(img, str(tmp))


def _write_nrrd(path: Path, xyz: np.ndarray, affine_lps: np.ndarray, times: Optional[np.ndarray], extra: dict) -> None:
    import nrrd

    dirs = affine_lps[:3, :3].T  # rows: world vector of one step along x, y, slice
    header = {"space": "left-posterior-superior", "space origin": affine_lps[:3, 3].tolist()}
    if xyz.ndim == 3 and times is not None:
        header["kinds"] = ["domain", "domain", "list"]
        header["space directions"] = np.array([dirs[0], dirs[1], [np.nan] * 3])  # NaN row: non-spatial axis
        header["axis 2 index type"] = "time"  # Slicer sequence convention
        header["axis 2 index values"] = " ".join(f"{t:.6g}" for t in times)
        header["axis 2 unit"] = "s"
    else:
        # a single frame is written as a one-slice 3-D volume so Slicer places it in patient space
        xyz = xyz.reshape(xyz.shape[0], xyz.shape[1], 1) if xyz.ndim == 2 else xyz
        header["kinds"] = ["domain", "domain", "domain"]
        header["space directions"] = np.array([dirs[0], dirs[1], dirs[2]])
    for k, v in extra.items():
        header[f"perfusion_{k}"] = str(v)
    with atomic_output(path) as tmp:
        nrrd.write(str(tmp), np.ascontiguousarray(xyz), header, index_order="F")


def write_series(series: SliceSeries, path: os.PathLike | str) -> Path:
    """Write a series as NIfTI (X, Y, 1, T) with the median frame interval in pixdim, or NRRD (Slicer sequence, real times).

    Real, possibly irregular frame times are stored in a JSON side-car ``<stem>.times.json`` next to NIfTI files.
    """
    path = Path(path)
    fmt = _format_of(path)
    xyt = np.ascontiguousarray(np.transpose(series.data, (2, 1, 0)))  # (X, Y, T)
    affine = _affine_for(series.spacing, series.affine)
    extra = {k: v for k, v in {"level": series.level, "condition": series.condition, "units": series.units}.items() if v}
    if fmt == "nifti":
        _write_nifti(path, xyt[:, :, None, :], affine, series.median_interval, extra)  # (X, Y, 1, T)
        side = path.with_name(_stem(path) + ".times.json")
        from .atomic import write_text_atomic
        write_text_atomic(side, json.dumps({"times_s": [float(t) for t in series.times]}))
    else:
        _write_nrrd(path, xyt, affine, series.times, extra)
    return path


def _stem(path: Path) -> str:
    name = path.name
    for suf in (".nii.gz", ".seq.nrrd", ".nii", ".nrrd", ".nhdr"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return path.stem


def _write_map(array: np.ndarray, path: Path, spacing, affine, dtype) -> Path:
    array = np.asarray(array)
    if array.ndim != 2:
        raise InvalidParameterError(f"a map must be 2-D (Y, X), got shape {array.shape}")
    xy = np.ascontiguousarray(array.T.astype(dtype))[:, :, None]   # (X, Y, 1) per CONVENTIONS
    aff = _affine_for(spacing, affine)
    if _format_of(path) == "nifti":
        _write_nifti(path, xy, aff, None, {})
    else:
        _write_nrrd(path, xy[:, :, 0], aff, None, {})
    return path


def write_labels(labels: np.ndarray, path: os.PathLike | str, spacing=(1.0, 1.0), affine=None) -> Path:
    """Write a uint8 label map (Y, X) in the project codes as (X, Y, 1)."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() > 255 or not np.all(labels == np.round(labels))):
        raise InvalidParameterError("labels must be integers in 0..255")
    return _write_map(labels, Path(path), spacing, affine, np.uint8)


def write_map(values: np.ndarray, path: os.PathLike | str, spacing=(1.0, 1.0), affine=None) -> Path:
    """Write a float32 parametric map (Y, X) (MBF, U-map, ...) as (X, Y, 1); NaN marks 'not computed'."""
    return _write_map(values, Path(path), spacing, affine, np.float32)
