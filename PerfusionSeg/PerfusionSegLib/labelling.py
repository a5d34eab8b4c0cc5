"""Ground-truth labelling support: the frame to draw on, and the on-disk format of a labelled case.

A labelled dataset is a folder of cases, one sub-folder per case::

    DIR/<case>/image.nii.gz         the 2D+T series, (X, Y, 1, T), written by writers.write_series
    DIR/<case>/image.times.json     its real frame times (s), written beside it by writers.write_series
    DIR/<case>/labels.nii.gz        uint8 (X, Y, 1) in the project codes (1 LV blood pool, 2 LV myocardium, 3 RV)
    DIR/<case>/case.json            spacing, level, condition, source, frame count, label names, format version,
                                    label quality ("exact" or "coarse": rough outlines, see weak_labels)

`export_labelled_case` writes a case atomically (into a hidden temporary folder that is renamed at the end), so a
crash never leaves a half-written case that training would pick up. `read_labelled_dataset` reads them back.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import InvalidLabelsError, InvalidParameterError, UnreadableFileError
from .series import SliceSeries

FORMAT = "cardiac-perfusion-labelled-case/1"
LABEL_NAMES = {1: "LV blood pool", 2: "LV myocardium", 3: "RV blood pool"}
MYOCARDIUM = 2
_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
IMAGE_NAME, LABELS_NAME, META_NAME, TIMES_NAME = "image.nii.gz", "labels.nii.gz", "case.json", "image.times.json"


def _as_array(series_or_array) -> np.ndarray:
    data = series_or_array.data if isinstance(series_or_array, SliceSeries) else np.asarray(series_or_array)
    if data.ndim != 3 or data.shape[0] < 2:
        raise InvalidParameterError(f"expected a (T, Y, X) series with at least 2 frames, got shape {data.shape}")
    return data.astype(np.float32, copy=False)


def _enhancement(data: np.ndarray, n_baseline: int = 3) -> np.ndarray:
    """Signal minus the pre-contrast baseline (mean of the first frames)."""
    n_baseline = max(1, min(n_baseline, data.shape[0] // 4))
    return data - data[:n_baseline].mean(axis=0, keepdims=True)


def peak_myocardial_enhancement_frame(array, labels: Optional[np.ndarray] = None) -> int:
    """0-based index of the frame where the myocardium is brightest: the frame to draw contours on.

    With ``labels`` (project codes, myocardium = 2) it is the peak of the mean myocardial enhancement curve.
    Without labels the myocardium is unknown, so pixels are chosen by their behaviour: the blood pools are the most
    strongly enhancing pixels and the myocardium enhances clearly above noise but much less than blood, after it.
    We take pixels whose peak enhancement lies between the noise floor and the median of clearly enhancing pixels
    and whose peak comes after the blood-pool peak, and return the peak of their median enhancement curve.
    """
    data = _as_array(array)
    enh = _enhancement(data)
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != data.shape[1:]:
            raise InvalidLabelsError(f"labels {labels.shape} do not match the frame size {data.shape[1:]}")
        mask = labels == MYOCARDIUM
        if not mask.any():
            raise InvalidLabelsError("labels contain no myocardium (code 2): cannot find its peak enhancement")
        return int(np.argmax(enh[:, mask].mean(axis=1)))

    peak = enh.max(axis=0)
    # noise floor from frame-to-frame differences in the baseline-free part (robust: median absolute deviation)
    noise = 1.4826 * np.median(np.abs(np.diff(data, axis=0))) / np.sqrt(2.0) + 1e-6
    enhancing = peak > 5.0 * noise
    if enhancing.sum() < 10:
        return int(np.argmax(np.median(enh.reshape(enh.shape[0], -1), axis=1)))
    strong = np.percentile(peak[enhancing], 90)
    blood = peak >= strong
    blood_peak_frame = int(np.argmax(enh[:, blood].mean(axis=1)))
    moderate = enhancing & (peak <= np.median(peak[enhancing])) & (np.argmax(enh, axis=0) > blood_peak_frame)
    if moderate.sum() < 10:
        moderate = enhancing & (peak <= np.median(peak[enhancing]))
    return int(np.argmax(np.median(enh[:, moderate], axis=1)))


def _check_case_id(case_id: str) -> str:
    case_id = str(case_id)
    if not _CASE_ID.match(case_id):
        raise InvalidParameterError(
            f"case id {case_id!r} must start with a letter or digit and use only letters, digits, '.', '_' or '-'")
    return case_id


def _check_labels(labels, shape) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != tuple(shape):
        raise InvalidLabelsError(f"labels {labels.shape} do not match the series frame size {tuple(shape)}")
    if labels.size == 0 or not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
        raise InvalidLabelsError("labels must be whole numbers")
    unknown = sorted(set(np.unique(labels).astype(int).tolist()) - {0, 1, 2, 3})
    if unknown:
        raise InvalidLabelsError(f"labels hold codes {unknown}; expected 0 background, 1 LV blood pool, 2 LV "
                                 "myocardium, 3 RV blood pool")
    if not np.any(labels == MYOCARDIUM):
        raise InvalidLabelsError("labels contain no LV myocardium (code 2): nothing to learn from this case")
    return labels.astype(np.uint8)


def export_labelled_case(series: SliceSeries, labels, dataset_dir, case_id: str, *, overwrite: bool = False,
                         extra: Optional[dict] = None, patient_id: Optional[str] = None, coarse: bool = False) -> Path:
    """Write one labelled case into ``dataset_dir/case_id`` (image, times, labels, case.json) and return that folder.

    ``patient_id`` (case.json ``patient_id``) is what training splits by, so that no patient has slices on both
    sides of the validation split; by default the case id up to its first ``_`` (``patient07_stress_mid`` ->
    ``patient07``), written out so that it can be checked and corrected.
    ``coarse``: the labels are rough outlines (e.g. circles drawn around the LV), not traced borders. Training then
    learns only from their cores and from "not the LV" well outside them (``weak_labels.weak_labels_from_coarse``),
    so such labels must hold both an LV blood pool and a myocardium thick enough to keep a core.
    Refuses to replace an existing case unless ``overwrite``; the inputs are not modified.
    """
    from .writers import write_labels, write_series  # writers pull in nibabel: import when used

    if not isinstance(series, SliceSeries):
        raise InvalidParameterError("export_labelled_case needs a SliceSeries (data, times, spacing)")
    case_id = _check_case_id(case_id)
    if patient_id is not None and (not isinstance(patient_id, str) or not patient_id.strip()):
        raise InvalidParameterError(f"patient_id must be a non-empty string, got {patient_id!r}")
    patient_id = patient_id.strip() if patient_id is not None else case_id.split("_")[0]
    labels = _check_labels(labels, series.shape)
    if coarse:
        from .weak_labels import weak_labels_from_coarse

        weak_labels_from_coarse(labels)      # refuse now what training could not use later
    dataset_dir = Path(dataset_dir)
    target = dataset_dir / case_id
    if target.exists() and not overwrite:
        raise InvalidParameterError(f"case {case_id!r} already exists in {dataset_dir}; choose another id or overwrite")
    dataset_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{case_id}.", suffix=".tmp", dir=dataset_dir))
    try:
        write_series(series, tmp / IMAGE_NAME)
        write_labels(labels, tmp / LABELS_NAME, spacing=series.spacing, affine=series.affine)
        meta = {
            "format": FORMAT,
            "case_id": case_id,
            "patient_id": patient_id,
            "spacing_mm": list(series.spacing),
            "frames": series.n_frames,
            "matrix_yx": list(series.shape),
            "level": series.level,
            "condition": series.condition,
            "units": series.units,
            "source": series.source,
            "labels": {str(k): v for k, v in LABEL_NAMES.items()},
            "label_pixels": {str(k): int(np.sum(labels == k)) for k in LABEL_NAMES},
            "peak_myocardial_frame": peak_myocardial_enhancement_frame(series, labels),
            "label_quality": "coarse" if coarse else "exact",
        }
        if extra:
            meta["extra"] = extra
        (tmp / META_NAME).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        os.chmod(tmp, 0o755)
        if target.exists():  # overwrite: move the old case aside first so the swap is as short as possible
            old = Path(tempfile.mkdtemp(prefix=f".{case_id}.", suffix=".old", dir=dataset_dir))
            os.replace(target, old / case_id)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


@dataclass
class LabelledCase:
    case_id: str
    series: SliceSeries
    labels: np.ndarray  # uint8 (Y, X), project codes
    meta: dict = field(default_factory=dict)
    path: Optional[Path] = None

    @property
    def coarse(self) -> bool:
        """Whether the labels are rough outlines (exported with ``coarse=True``); cases of older exports are exact."""
        return self.meta.get("label_quality", "exact") == "coarse"


_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _read_case(folder: Path) -> LabelledCase:
    import nibabel as nib

    meta_path, image_path, labels_path = folder / META_NAME, folder / IMAGE_NAME, folder / LABELS_NAME
    for p in (meta_path, image_path, labels_path):
        if not p.is_file():
            raise UnreadableFileError(f"labelled case {folder.name}: {p.name} is missing")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        img = nib.load(str(image_path))
        lab = nib.load(str(labels_path))
        xyzt = np.asarray(img.dataobj, dtype=np.float32)
        labels_xy = np.asarray(lab.dataobj)
    except (OSError, ValueError) as exc:
        raise UnreadableFileError(f"labelled case {folder.name}: cannot read ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise UnreadableFileError(f"labelled case {folder.name}: unknown format {meta.get('format')!r}")
    if meta.get("label_quality", "exact") not in ("exact", "coarse"):
        raise UnreadableFileError(f"labelled case {folder.name}: label_quality must be 'exact' or 'coarse', got "
                                  f"{meta.get('label_quality')!r}")
    if xyzt.ndim == 4:
        xyzt = xyzt[:, :, 0, :]
    data = np.transpose(xyzt, (2, 1, 0))  # (X, Y, T) -> (T, Y, X)
    times_path = folder / TIMES_NAME
    if times_path.is_file():
        times = np.asarray(json.loads(times_path.read_text(encoding="utf-8"))["times_s"], dtype=float)
    else:
        dt = float(img.header.get_zooms()[3])
        times = np.arange(data.shape[0]) * dt
    labels = np.asarray(labels_xy.reshape(labels_xy.shape[0], labels_xy.shape[1]).T)
    series = SliceSeries(data=data, times=times, spacing=tuple(meta["spacing_mm"]),
                         affine=_LPS_TO_RAS @ np.asarray(img.affine, dtype=float),
                         level=meta.get("level"), condition=meta.get("condition"),
                         units=meta.get("units", "signal"), source=meta.get("source", ""))
    return LabelledCase(case_id=folder.name, series=series, labels=_check_labels(labels, series.shape), meta=meta,
                        path=folder)


def read_labelled_dataset(dataset_dir) -> list:
    """Every labelled case in ``dataset_dir`` (sorted by case id); hidden/temporary folders are ignored."""
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise UnreadableFileError(f"labelled dataset folder {dataset_dir} does not exist")
    cases = [_read_case(p) for p in sorted(dataset_dir.iterdir())
             if p.is_dir() and not p.name.startswith(".") and (p / META_NAME).exists()]
    if not cases:
        raise UnreadableFileError(f"no labelled cases (sub-folders with {META_NAME}) in {dataset_dir}")
    return cases
