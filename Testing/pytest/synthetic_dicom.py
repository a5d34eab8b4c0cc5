"""Small synthetic DICOM perfusion series for reader tests (Siemens, GE, Philips-style time tags, PD frames, slices).

Not a test module: test_readers.py and test_bad_inputs.py import it. Images are tiny (24x20) so writing is fast.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

IOP = (0.8, 0.6, 0.0, -0.2, 0.26667, -0.94281)   # oblique, like a short-axis plane; normalised below


def _unit_iop(iop: Sequence[float]) -> np.ndarray:
    r = np.asarray(iop[:3], float)
    c = np.asarray(iop[3:], float)
    r /= np.linalg.norm(r)
    c -= r * np.dot(r, c)
    c /= np.linalg.norm(c)
    return np.concatenate([r, c])


def _tm(seconds: float) -> str:
    seconds %= 86400.0
    h = int(seconds // 3600)
    m = int((seconds - 3600 * h) // 60)
    s = seconds - 3600 * h - 60 * m
    return f"{h:02d}{m:02d}{s:09.6f}"


def default_times(n: int) -> np.ndarray:
    """Irregular times: a missed trigger (double interval) at frame 5, otherwise 0.9 s."""
    d = np.full(max(n - 1, 0), 0.9)
    if n > 6:
        d[5] = 1.8
    return np.concatenate([[0.0], np.cumsum(d)])


def write_series(folder: Path, *, n_frames: int = 12, rows: int = 24, cols: int = 20, n_slices: int = 1,
                 time_style: str = "siemens", pd_frames: int = 0, pd_style: str = "flip",
                 times: Optional[np.ndarray] = None, slope: float = 1.0, intercept: float = 0.0,
                 series_number: int = 7, description: str = "perf_sr", series_uid: Optional[str] = None,
                 pixel_spacing=(1.5, 1.25), iop=IOP, origin=(-40.0, -120.0, 60.0), slice_gap: float = 10.0,
                 manufacturer: str = "SIEMENS", start_s: float = 36000.0, seed: int = 0) -> dict:
    """Write (n_pd + n_frames) x n_slices files with shuffled names; return the truth for the checks."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    times = default_times(n_frames) if times is None else np.asarray(times, float)
    total = pd_frames + n_frames
    all_times = np.concatenate([-(np.arange(pd_frames, 0, -1)) * 0.9, times]) if pd_frames else times
    iop_u = _unit_iop(iop)
    normal = np.cross(iop_u[:3], iop_u[3:])
    series_uid = series_uid or generate_uid()
    study_uid, for_uid = generate_uid(), generate_uid()
    truth = {"times": times, "values": [], "pd_values": [], "positions": [], "iop": iop_u, "series_uid": series_uid}
    yy, xx = np.mgrid[0:rows, 0:cols]
    names = rng.permutation(total * n_slices)
    k = 0
    for s in range(n_slices):
        pos = np.asarray(origin, float) + normal * slice_gap * s
        truth["positions"].append(pos)
        stored_all = []
        for f in range(total):
            disc = ((yy - rows / 2) ** 2 + (xx - cols / 2) ** 2) < (rows / 5) ** 2
            base = 100 + 20 * s + rng.integers(0, 10, size=(rows, cols))
            stored = base + disc * (30 * f) + 5 * s
            is_pd = f < pd_frames
            if is_pd and pd_style == "intensity":
                stored = stored * 4
            stored = stored.astype(np.uint16)
            stored_all.append(stored)
            t = all_times[f] + 0.1 * s   # interleaved slices: one image per slice per beat
            instance = f * n_slices + s + 1
            ds = Dataset()
            meta = FileMetaDataset()
            sop = generate_uid()
            meta.MediaStorageSOPClassUID = MRImageStorage
            meta.MediaStorageSOPInstanceUID = sop
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta = meta
            ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, for_uid
            ds.Modality, ds.Manufacturer = "MR", manufacturer
            ds.SeriesNumber, ds.SeriesDescription, ds.InstanceNumber = series_number, description, instance
            ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
            ds.SequenceName = "*tfl2d1"
            ds.FlipAngle = 5 if (is_pd and pd_style == "flip") else 12
            ds.InversionTime = 100
            ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
            ds.ImageOrientationPatient = [f"{v:.6f}" for v in iop_u]
            ds.PixelSpacing = [f"{v:g}" for v in pixel_spacing]
            ds.SliceThickness = 8
            if time_style == "siemens":
                ds.AcquisitionTime = _tm(start_s + t)
                ds.ContentTime = _tm(start_s + t + 30)
                ds.TriggerTime = 155
            elif time_style == "ge":
                ds.AcquisitionTime = _tm(start_s)
                ds.TriggerTime = f"{(t - all_times[0]) * 1000:.1f}"
            elif time_style == "content":
                ds.ContentTime = _tm(start_s + t)
            elif time_style == "nominal":
                rr = np.diff(all_times, append=all_times[-1] + 0.9)[f]
                ds.NominalInterval = int(round(rr * 1000))
            elif time_style != "none":
                raise ValueError(time_style)
            if slope != 1.0 or intercept != 0.0:
                ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
            ds.Rows, ds.Columns = rows, cols
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
            ds.PixelData = stored.astype("<u2").tobytes()
            ds.save_as(str(folder / f"s{series_number}_{names[k]:04d}.dcm"), enforce_file_format=True)
            k += 1
        stored_all = np.stack(stored_all).astype(np.float32) * np.float32(slope) + np.float32(intercept)
        truth["pd_values"].append(stored_all[:pd_frames])
        truth["values"].append(stored_all[pd_frames:])
    return truth


def write_enhanced(path: Path, *, n_frames: int = 12, rows: int = 24, cols: int = 20, pd_frames: int = 0,
                   times: Optional[np.ndarray] = None, slope: float = 1.5, intercept: float = 2.0,
                   pixel_spacing=(1.5, 1.25), iop=IOP, origin=(-40.0, -120.0, 60.0), seed: int = 0) -> dict:
    """One Enhanced MR (multi-frame) file: per-frame position, orientation, spacing, rescale and acquisition time."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence as Seq
    from pydicom.uid import EnhancedMRImageStorage, ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(seed)
    times = default_times(n_frames) if times is None else np.asarray(times, float)
    total = pd_frames + n_frames
    all_times = np.concatenate([-(np.arange(pd_frames, 0, -1)) * 0.9, times]) if pd_frames else times
    iop_u = _unit_iop(iop)
    order = rng.permutation(total)          # frames stored out of time order
    stored = np.stack([(100 + rng.integers(0, 10, size=(rows, cols)) + 30 * f).astype(np.uint16) for f in range(total)])
    ds = Dataset()
    meta = FileMetaDataset()
    sop = generate_uid()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = EnhancedMRImageStorage, sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID = EnhancedMRImageStorage, sop, generate_uid()
    ds.Modality, ds.Manufacturer, ds.SeriesNumber, ds.SeriesDescription = "MR", "Philips", 5, "perf enhanced"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.NumberOfFrames = total
    shared = Dataset()
    pm = Dataset()
    pm.PixelSpacing, pm.SliceThickness = [f"{v:g}" for v in pixel_spacing], 8
    po = Dataset()
    po.ImageOrientationPatient = [f"{v:.6f}" for v in iop_u]
    pvt = Dataset()
    pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = f"{slope:g}", f"{intercept:g}", "US"
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = Seq([pm]), Seq([po])
    shared.PixelValueTransformationSequence = Seq([pvt])
    ds.SharedFunctionalGroupsSequence = Seq([shared])
    per = []
    for k in order:
        item = Dataset()
        fc = Dataset()
        fc.FrameAcquisitionDateTime = "20240102" + _tm(36000.0 + all_times[k])
        pp = Dataset()
        pp.ImagePositionPatient = [f"{v:.6f}" for v in origin]
        item.FrameContentSequence, item.PlanePositionSequence = Seq([fc]), Seq([pp])
        mt = Dataset()
        mt.FlipAngle = 5 if k < pd_frames else 12   # PD frames: a lower flip angle in the per-frame MR timing group
        item.MRTimingAndRelatedParametersSequence = Seq([mt])
        per.append(item)
    ds.PerFrameFunctionalGroupsSequence = Seq(per)
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = stored[order].astype("<u2").tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    values = stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    return {"times": times, "values": values[pd_frames:], "pd_values": values[:pd_frames], "iop": iop_u,
            "origin": np.asarray(origin, float)}
