"""DICOM perfusion series with pydicom: grouping, frame timing, proton-density frames and patient geometry.

A folder (or a list of files) may hold several series, and one series may interleave several slices (one image per
slice per heartbeat). Images are grouped by SeriesInstanceUID, then by slice position: ImagePositionPatient projected
on the slice normal (cross product of the ImageOrientationPatient cosines), so interleaved slices come apart.
Each (series, slice position) pair is one *entry*; ``series=`` selects entries by index or by text.

Frame times, first usable source wins (every image must carry it, values distinct and plausibly spaced):
AcquisitionTime (Siemens), TriggerTime in ms (GE/Philips, which store time since the first frame there when the
acquisition time is missing or constant), ContentTime, the cumulative NominalInterval (R-R, one frame per beat
assumed) and finally InstanceNumber, which holds no time at all, so ``dt`` is required then. Irregular intervals
(missed triggers, variable R-R) are kept as measured.

Proton-density (PD) frames at the start of a saturation-recovery series are told apart by their header (lower flip
angle, different ImageType or SequenceName, a much longer saturation delay, "PD" in the comments) or, when the header
says nothing, by an intensity clearly unlike the baseline that follows. They go to ``SliceSeries.pd_frames``.
Enhanced (multi-frame) MR files are split into per-frame records using their functional groups.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from .errors import (AmbiguousInputError, InvalidSeriesError, MissingGeometryError, UnreadableFileError)
from .series import MAX_FRAMES, MAX_MATRIX, MIN_MATRIX, SliceSeries

_SKIP_NAMES = {"DICOMDIR", ".DS_Store", "Thumbs.db"}
_POSITION_TOL_MM = 0.5        # images closer than this along the normal are the same slice
_MAX_PD_FRAMES = 5
_PLAUSIBLE_DT_S = (0.05, 20.0)  # a perfusion frame interval outside this range means the tag holds no frame time


@dataclass
class DicomFrame:
    """Header facts of one image (one file, or one frame of an enhanced multi-frame file); pixels are read later."""

    path: Path
    frame: Optional[int]              # index inside a multi-frame file, None for single-frame files
    sop_uid: str
    series_uid: str
    series_number: Optional[int]
    description: str
    rows: int
    cols: int
    position: Optional[np.ndarray]    # ImagePositionPatient (3,) mm, LPS
    orientation: Optional[np.ndarray]  # ImageOrientationPatient (6,): row cosines then column cosines
    pixel_spacing: Optional[tuple]    # (row spacing = dy, column spacing = dx) mm
    thickness: Optional[float]
    instance: Optional[int]
    acquisition_time: Optional[float]  # s since midnight
    content_time: Optional[float]      # s since midnight
    trigger_time: Optional[float]      # ms
    nominal_interval: Optional[float]  # ms
    flip_angle: Optional[float]
    image_type: tuple
    sequence_name: str
    inversion_time: Optional[float]    # ms; Siemens saturation-recovery sequences store the saturation delay here
    comments: str
    slope: float
    intercept: float
    manufacturer: str

    @property
    def normal(self) -> Optional[np.ndarray]:
        if self.orientation is None:
            return None
        n = np.cross(self.orientation[:3], self.orientation[3:])
        norm = np.linalg.norm(n)
        return n / norm if norm > 0 else None

    def slice_position(self) -> Optional[float]:
        n = self.normal
        if n is None or self.position is None:
            return None
        return float(np.dot(self.position, n))


@dataclass
class DicomEntry:
    """One selectable thing in a DICOM input: one slice position of one series."""

    index: int
    frames: list
    series_index: int

    @property
    def first(self) -> DicomFrame:
        return self.frames[0]

    def describe(self) -> dict:
        f = self.first
        return {
            "index": self.index,
            "format": "dicom",
            "series_index": self.series_index,
            "series_number": f.series_number,
            "series_description": f.description,
            "series_uid": f.series_uid,
            "manufacturer": f.manufacturer,
            "slice_position_mm": None if f.slice_position() is None else round(f.slice_position(), 3),
            "images": len(self.frames),
            "matrix_yx": [f.rows, f.cols],
            "spacing_mm": None if f.pixel_spacing is None else [round(s, 4) for s in f.pixel_spacing],
        }


# --- header parsing ------------------------------------------------------------------------------------------------

def _tm_seconds(value) -> Optional[float]:
    """DICOM TM ('HHMMSS.FFFFFF', also 'HH:MM:SS' in old files) to seconds since midnight."""
    if value is None:
        return None
    s = str(value).strip().replace(":", "")
    if not s:
        return None
    try:
        hh = int(s[0:2])
        mm = int(s[2:4]) if len(s) >= 4 else 0
        ss = float(s[4:]) if len(s) > 4 else 0.0
    except ValueError:
        return None
    return hh * 3600.0 + mm * 60.0 + ss


def _dt_seconds(value) -> Optional[float]:
    """DICOM DT ('YYYYMMDDHHMMSS.FFFFFF&ZZXX') to seconds since midnight of its day (date ignored; wrap handled later)."""
    if value is None:
        return None
    s = str(value).strip()
    for sign in "+-":
        if sign in s[8:]:
            s = s[: 8 + s[8:].index(sign)]
    return _tm_seconds(s[8:]) if len(s) > 8 else None


def _float(value) -> Optional[float]:
    try:
        if value is None or value == "":
            return None
        v = float(value)
        return v if np.isfinite(v) else None
    except (TypeError, ValueError):
        return None


def _int(value) -> Optional[int]:
    try:
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def _vector(value, n: int) -> Optional[np.ndarray]:
    try:
        v = np.array([float(x) for x in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return v if v.shape == (n,) and np.all(np.isfinite(v)) else None


def _first_item(ds, *path):
    """ds.Seq1[0].Seq2[0]... or None."""
    node = ds
    for name in path:
        seq = getattr(node, name, None)
        if not seq:
            return None
        node = seq[0]
    return node


def _frames_from_dataset(ds, path: Path) -> list:
    common = dict(
        path=path,
        series_uid=str(getattr(ds, "SeriesInstanceUID", "") or "unknown"),
        series_number=_int(getattr(ds, "SeriesNumber", None)),
        description=str(getattr(ds, "SeriesDescription", "") or ""),
        rows=int(ds.Rows),
        cols=int(ds.Columns),
        flip_angle=_float(getattr(ds, "FlipAngle", None)),
        image_type=tuple(str(x) for x in (getattr(ds, "ImageType", None) or ())),
        sequence_name=str(getattr(ds, "SequenceName", "") or getattr(ds, "PulseSequenceName", "") or ""),
        inversion_time=_float(getattr(ds, "InversionTime", None)),
        comments=str(getattr(ds, "ImageComments", "") or ""),
        manufacturer=str(getattr(ds, "Manufacturer", "") or ""),
    )
    n_frames = _int(getattr(ds, "NumberOfFrames", None)) or 1
    if n_frames <= 1 or "PerFrameFunctionalGroupsSequence" not in ds:
        return [DicomFrame(
            frame=None,
            sop_uid=str(getattr(ds, "SOPInstanceUID", "") or path.name),
            position=_vector(getattr(ds, "ImagePositionPatient", None), 3),
            orientation=_vector(getattr(ds, "ImageOrientationPatient", None), 6),
            pixel_spacing=_spacing(getattr(ds, "PixelSpacing", None)),
            thickness=_float(getattr(ds, "SliceThickness", None)),
            instance=_int(getattr(ds, "InstanceNumber", None)),
            acquisition_time=_tm_seconds(getattr(ds, "AcquisitionTime", None)),
            content_time=_tm_seconds(getattr(ds, "ContentTime", None)),
            trigger_time=_float(getattr(ds, "TriggerTime", None)),
            nominal_interval=_float(getattr(ds, "NominalInterval", None)),
            slope=_float(getattr(ds, "RescaleSlope", None)) or 1.0,
            intercept=_float(getattr(ds, "RescaleIntercept", None)) or 0.0,
            **common,
        )]
    # enhanced multi-frame: per-frame functional groups override the shared ones
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    frames = []
    for k, per in enumerate(ds.PerFrameFunctionalGroupsSequence):
        def get(seq_name, attr):
            for group in (per, shared):
                item = _first_item(group, seq_name) if group is not None else None
                if item is not None and attr in item:
                    return getattr(item, attr)
            return None
        slope = _float(get("PixelValueTransformationSequence", "RescaleSlope"))
        intercept = _float(get("PixelValueTransformationSequence", "RescaleIntercept"))
        own = dict(common)
        flip = _float(get("MRTimingAndRelatedParametersSequence", "FlipAngle"))
        if flip is not None:   # PD frames of a multi-frame file differ by their per-frame flip angle
            own["flip_angle"] = flip
        frames.append(DicomFrame(
            frame=k,
            sop_uid=f"{getattr(ds, 'SOPInstanceUID', path.name)}#{k}",
            position=_vector(get("PlanePositionSequence", "ImagePositionPatient"), 3),
            orientation=_vector(get("PlaneOrientationSequence", "ImageOrientationPatient"), 6),
            pixel_spacing=_spacing(get("PixelMeasuresSequence", "PixelSpacing")),
            thickness=_float(get("PixelMeasuresSequence", "SliceThickness")),
            instance=k + 1,
            acquisition_time=_dt_seconds(get("FrameContentSequence", "FrameAcquisitionDateTime")),
            content_time=_dt_seconds(get("FrameContentSequence", "FrameReferenceDateTime")),
            trigger_time=_float(get("CardiacSynchronizationSequence", "NominalCardiacTriggerDelayTime")),
            nominal_interval=_float(get("CardiacSynchronizationSequence", "RRIntervalTimeNominal")),
            slope=1.0 if slope is None else slope,
            intercept=0.0 if intercept is None else intercept,
            **own,
        ))
    return frames


def _spacing(value) -> Optional[tuple]:
    v = _vector(value, 2) if value is not None else None
    return None if v is None or np.any(v <= 0) else (float(v[0]), float(v[1]))


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def read_headers(paths: Iterable[Path]) -> list:
    """Header records of every image file among ``paths`` (non-DICOM files are ignored, broken DICOM files are not)."""
    import pydicom

    frames = []
    for path in paths:
        if path.name in _SKIP_NAMES or not _is_dicom_file(path):
            continue
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        except Exception as exc:  # pydicom raises many types (InvalidDicomError, EOFError, struct.error, ...) on damage
            raise UnreadableFileError(f"{path.name}: truncated or unreadable DICOM header ({type(exc).__name__})") from None
        if "Rows" not in ds or "Columns" not in ds:
            sop_class = getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None) or \
                getattr(ds, "SOPClassUID", None)
            if sop_class is not None and "Image Storage" in getattr(sop_class, "name", ""):
                raise UnreadableFileError(f"{path.name}: truncated DICOM image (its header ends before the image size)")
            continue  # not an image (structured report, presentation state, ...)
        frames.extend(_frames_from_dataset(ds, path))
    return frames


def dicom_files_in(path: Path) -> list:
    """Every file under a folder (recursively, sorted), or the given files."""
    if path.is_dir():
        out = []
        for root, dirs, files in os.walk(path):
            dirs.sort()
            out.extend(Path(root) / f for f in sorted(files) if not f.startswith("."))
        return out
    return [path]


# --- grouping and selection ------------------------------------------------------------------------------------------

def group_entries(frames: Sequence[DicomFrame]) -> list:
    """Entries ordered by series (number, UID) then by slice position along the normal."""
    unique = {}
    for f in frames:  # the same image copied twice into a folder is one image
        unique.setdefault(f.sop_uid, f)
    by_series: dict = {}
    for f in unique.values():
        by_series.setdefault(f.series_uid, []).append(f)
    series_keys = sorted(by_series, key=lambda uid: (by_series[uid][0].series_number is None,
                                                     by_series[uid][0].series_number or 0, uid))
    entries = []
    for s_idx, uid in enumerate(series_keys):
        slices: list = []  # [(position, orientation key, frames)]
        for f in by_series[uid]:
            pos = f.slice_position()
            okey = None if f.orientation is None else tuple(np.round(f.orientation, 3))
            for group in slices:
                if group[1] == okey and (pos is None and group[0] is None or
                                         pos is not None and group[0] is not None and abs(pos - group[0]) < _POSITION_TOL_MM):
                    group[2].append(f)
                    break
            else:
                slices.append([pos, okey, [f]])
        slices.sort(key=lambda g: (g[0] is None, g[0] or 0.0))
        for pos, _, fr in slices:
            entries.append(DicomEntry(index=len(entries), frames=fr, series_index=s_idx))
    return entries


def _entry_summary(e: DicomEntry) -> str:
    f = e.first
    pos = f.slice_position()
    where = "" if pos is None else f" at {pos:.1f} mm"
    return f"[{e.index}] series {f.series_number} '{f.description}' ({len(e.frames)} images{where})"


def select_entries(entries: list, selector, *, allow_many: bool, what: str) -> list:
    """Entries picked by ``selector`` (None, an index, or text matched against series number/description/UID;
    several selectors separated by commas). Without a selector the input must hold one series; ``allow_many``
    accepts several slice positions (and several series when the selector names them)."""
    if not entries:
        raise UnreadableFileError(f"{what}: holds no DICOM images")
    if selector is None or str(selector).strip() == "":
        chosen = entries
    else:
        chosen = []
        for sel in str(selector).split(","):
            sel = sel.strip()
            if sel.lstrip("-").isdigit():
                i = int(sel)
                if not -len(entries) <= i < len(entries):
                    raise AmbiguousInputError(f"{what}: no series entry {i}; it holds "
                                              + "; ".join(_entry_summary(e) for e in entries))
                chosen.append(entries[i])
                continue
            low = sel.lower()
            hits = [e for e in entries if low == str(e.first.series_number) or low in e.first.description.lower()
                    or low in e.first.series_uid.lower()]
            if not hits:
                raise AmbiguousInputError(f"{what}: no series matches {sel!r}; it holds "
                                          + "; ".join(_entry_summary(e) for e in entries))
            chosen.extend(hits)
    series_idx = {e.series_index for e in chosen}
    # several series only when the caller named them (slices stored as one series each); never by default
    if (len(series_idx) > 1 and (selector is None or not allow_many)) or (not allow_many and len(chosen) > 1):
        kind = "series" if len(series_idx) > 1 else "slice positions"
        raise AmbiguousInputError(f"{what}: holds {len(chosen)} {kind}, choose one with --series INDEX|TEXT: "
                                  + "; ".join(_entry_summary(e) for e in chosen))
    return chosen


# --- timing ------------------------------------------------------------------------------------------------------------

def _unwrap_midnight(v: np.ndarray) -> np.ndarray:
    if v.max() - v.min() > 43200.0:  # an acquisition crossing midnight
        v = np.where(v < 43200.0, v + 86400.0, v)
    return v


def _plausible(times: np.ndarray) -> bool:
    d = np.diff(np.sort(times))
    return bool(np.all(d > 0) and _PLAUSIBLE_DT_S[0] <= np.median(d) <= _PLAUSIBLE_DT_S[1])


def frame_times(frames: Sequence[DicomFrame], dt: Optional[float], what: str = "DICOM") -> tuple:
    """(order, times in s from the first frame, source tag, note). ``order`` sorts ``frames`` in time."""
    n = len(frames)
    instance_order = sorted(range(n), key=lambda i: (frames[i].instance is None, frames[i].instance or 0, i))
    candidates = (
        ("AcquisitionTime", [f.acquisition_time for f in frames], 1.0, True),
        ("TriggerTime", [f.trigger_time for f in frames], 1e-3, False),
        ("ContentTime", [f.content_time for f in frames], 1.0, True),
    )
    rejected = []
    for name, values, scale, time_of_day in candidates:
        if any(v is None for v in values):
            rejected.append(f"{name} missing")
            continue
        v = np.array(values, dtype=np.float64) * scale
        if time_of_day:
            v = _unwrap_midnight(v)
        if len(np.unique(v)) < n:
            rejected.append(f"{name} not distinct")
            continue
        if not _plausible(v):
            rejected.append(f"{name} implausibly spaced")
            continue
        order = sorted(range(n), key=lambda i: v[i])
        t = v[order] - v[order][0]
        return order, t, name, ""
    ni = [f.nominal_interval for f in frames]
    if all(x is not None and x > 0 for x in ni):
        order = instance_order
        rr = np.array([ni[i] for i in order], dtype=np.float64) * 1e-3
        t = np.concatenate([[0.0], np.cumsum(rr[:-1])])
        if _plausible(t):
            return order, t, "NominalInterval", "times from the cumulative R-R interval (one frame per beat assumed)"
        rejected.append("NominalInterval implausible")
    else:
        rejected.append("NominalInterval missing")
    if dt is None:
        raise MissingGeometryError(f"{what}: the DICOM images carry no usable frame time (" + ", ".join(rejected)
                                   + "); give the frame interval with --dt S")
    return instance_order, np.arange(n) * float(dt), "InstanceNumber", \
        "frame order from InstanceNumber and times from --dt (no usable time tag: " + ", ".join(rejected) + ")"


# --- proton-density frames -----------------------------------------------------------------------------------------------

def _mode(values):
    values = [v for v in values if v is not None and v != ""]
    return Counter(values).most_common(1)[0][0] if values else None


def detect_pd_frames(frames: Sequence[DicomFrame], images: np.ndarray) -> tuple:
    """(number of leading PD frames, reason). ``frames``/``images`` are in time order."""
    n = len(frames)
    max_pd = min(_MAX_PD_FRAMES, n // 5)
    if max_pd == 0:
        return 0, ""
    ref = frames[max_pd:]
    flip_ref = _mode([f.flip_angle for f in ref])
    type_ref = _mode([f.image_type for f in ref])
    seq_ref = _mode([f.sequence_name for f in ref])
    ti_ref = _mode([f.inversion_time for f in ref])
    count, reasons = 0, []
    for f in frames[:max_pd]:
        why = []
        if f.flip_angle is not None and flip_ref and f.flip_angle < 0.8 * flip_ref:
            why.append(f"flip angle {f.flip_angle:g} vs {flip_ref:g}")
        if type_ref is not None and f.image_type and f.image_type != type_ref:
            why.append(f"ImageType {'/'.join(f.image_type)}")
        if seq_ref and f.sequence_name and f.sequence_name != seq_ref:
            why.append(f"sequence {f.sequence_name}")
        if ti_ref and f.inversion_time is not None and f.inversion_time > 2.0 * ti_ref:
            why.append(f"saturation delay {f.inversion_time:g} vs {ti_ref:g} ms")
        words = f.comments.upper().replace("_", " ").replace("-", " ").split()
        if "PD" in words or "PROTON" in words:
            why.append(f"comment '{f.comments}'")
        if not why:
            break
        count += 1
        reasons.append("; ".join(why))
    if count:
        return count, "header: " + " | ".join(reasons)
    # no header clue: a PD frame is unsaturated, so its signal differs strongly from the saturated baseline after it
    flat = images.reshape(n, -1).astype(np.float64)
    mean, p99 = flat.mean(axis=1), np.percentile(flat, 99, axis=1)
    base = slice(max_pd, min(n, max_pd + 6))
    ref_mean, ref_p99 = np.median(mean[base]), np.median(p99[base])
    if ref_mean <= 0 or ref_p99 <= 0 or np.std(mean[base]) > 0.2 * ref_mean:
        return 0, ""
    for i in range(max_pd):
        r1, r2 = mean[i] / ref_mean, p99[i] / ref_p99
        if (r1 >= 2.0 and r2 >= 1.5) or (r1 <= 0.5 and r2 <= 0.67):
            count += 1
            reasons.append(f"frame {i} mean {r1:.2f}x baseline")
        else:
            break
    return count, ("intensity: " + ", ".join(reasons)) if count else ""


# --- pixels and geometry ------------------------------------------------------------------------------------------------

def _read_pixels(frames: Sequence[DicomFrame]) -> np.ndarray:
    import pydicom

    cache: dict = {}
    out = np.empty((len(frames), frames[0].rows, frames[0].cols), dtype=np.float32)
    for k, f in enumerate(frames):
        try:
            if f.path not in cache:
                cache = {f.path: pydicom.dcmread(str(f.path)).pixel_array}  # keep one file: multi-frame reuse
            arr = cache[f.path]
            img = arr[f.frame] if f.frame is not None else arr
        except Exception as exc:  # pydicom raises many types on truncated pixel data or unknown compression
            first = " ".join(str(exc).split()).split(" - ")[0][:120]   # pydicom's first clause says what is wrong
            raise UnreadableFileError(f"{f.path.name}: unreadable pixel data ({type(exc).__name__}: {first})") from None
        if img.ndim != 2 or img.shape != (f.rows, f.cols):
            raise InvalidSeriesError(f"{f.path.name}: image of shape {img.shape}, expected a 2-D {f.rows}x{f.cols} frame")
        out[k] = img.astype(np.float32) * np.float32(f.slope) + np.float32(f.intercept)
    return out


def patient_matrix(f: DicomFrame, spacing_yx: tuple) -> Optional[np.ndarray]:
    """4x4 voxel (column x, row y, slice) to patient LPS mm from orientation, position and spacing."""
    if f.orientation is None or f.position is None:
        return None
    dy, dx = spacing_yx
    row_dir, col_dir = f.orientation[:3], f.orientation[3:]
    m = np.eye(4)
    m[:3, 0] = row_dir * dx      # along a row: column index x increases
    m[:3, 1] = col_dir * dy      # down a column: row index y increases
    m[:3, 2] = f.normal * (f.thickness or 1.0)
    m[:3, 3] = f.position
    return m


def entry_to_series(entry: DicomEntry, *, spacing=None, dt=None, level=None, condition=None, source="") -> SliceSeries:
    frames = entry.frames
    first = frames[0]
    if any((f.rows, f.cols) != (first.rows, first.cols) for f in frames):
        raise InvalidSeriesError(f"{source}: images of one slice differ in matrix size")
    if not (MIN_MATRIX <= first.rows <= MAX_MATRIX and MIN_MATRIX <= first.cols <= MAX_MATRIX):
        raise InvalidSeriesError(f"{source}: absurd matrix size {first.rows}x{first.cols}")
    if len(frames) > MAX_FRAMES + _MAX_PD_FRAMES:
        raise InvalidSeriesError(f"{source}: {len(frames)} images in one slice is not a perfusion series")
    metadata: dict = {"format": "dicom", "manufacturer": first.manufacturer, "series_uid": first.series_uid,
                      "series_number": first.series_number, "series_description": first.description}
    if spacing is not None:
        spacing_yx = _spacing_override(spacing)
        metadata["spacing_source"] = "--spacing override"
    elif first.pixel_spacing is not None:
        spacing_yx = first.pixel_spacing
        metadata["spacing_source"] = "PixelSpacing"
    else:
        raise MissingGeometryError(f"{source}: DICOM images carry no PixelSpacing; give it with --spacing MM")
    what = Path(source).name or source
    order, times, time_source, note = frame_times(frames, dt, what)
    frames = [frames[i] for i in order]
    images = _read_pixels(frames)
    n_pd, pd_reason = detect_pd_frames(frames, images)
    pd = images[:n_pd] if n_pd else None
    images, frames, times = images[n_pd:], frames[n_pd:], times[n_pd:] - times[n_pd]
    if dt is not None and time_source != "InstanceNumber":  # the user's interval wins over the file's times
        note = f"times replaced by --dt {dt:g} s (the file's times came from {time_source})"
        times = np.arange(len(frames)) * float(dt)
        time_source = "--dt override"
    metadata.update({"time_source": time_source, "pd_frames": n_pd})
    if note:
        metadata["time_note"] = note
    if n_pd:
        metadata["pd_reason"] = pd_reason
    if frames[0].acquisition_time is not None:
        metadata["acquisition_start_s_of_day"] = frames[0].acquisition_time
    try:
        return SliceSeries(data=images, times=times, spacing=spacing_yx, affine=patient_matrix(frames[0], spacing_yx),
                           level=level, slice_position=frames[0].slice_position(), condition=condition,
                           units="signal", source=source, pd_frames=pd, metadata=metadata)
    except InvalidSeriesError as exc:   # say which input the defect is in
        raise InvalidSeriesError(f"{what}: {exc}") from None


def _spacing_override(spacing) -> tuple:
    v = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    return (float(v[0]), float(v[-1])) if v.size in (1, 2) else (float("nan"), float("nan"))


def apex_ordered(series_list: list) -> list:
    """Slices ordered basal to apical: the LV apex points to the patient's left, anterior and inferior, (+1, -1, -1) in
    LPS, so apical slices lie further along the slice normal turned that way. Slices without geometry keep their order."""
    if any(s.affine is None for s in series_list):
        return list(series_list)
    apex = np.array([1.0, -1.0, -1.0]) / np.sqrt(3.0)

    def centre(s):  # the image centre, not its corner: slices may be shifted in plane
        ny, nx = s.shape
        return (s.affine @ np.array([(nx - 1) / 2.0, (ny - 1) / 2.0, 0.0, 1.0]))[:3]
    # along the slice normal (short-axis stacks are spaced along it), signed so that it points toward the apex
    normal = np.cross(series_list[0].affine[:3, 0], series_list[0].affine[:3, 1])
    normal = normal / (np.linalg.norm(normal) or 1.0)
    axis = normal * (1.0 if np.dot(normal, apex) >= 0 else -1.0)
    return sorted(series_list, key=lambda s: float(np.dot(centre(s), axis)))
