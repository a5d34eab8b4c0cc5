"""Labelling support: peak-myocardial-enhancement frame and the labelled-case folder format (write, read back)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from PerfusionSegLib.errors import InvalidLabelsError, InvalidParameterError, UnreadableFileError
from PerfusionSegLib.labelling import (export_labelled_case, peak_myocardial_enhancement_frame,
                                       read_labelled_dataset)
from PerfusionSegLib.series import SliceSeries

MYO_PEAK = 17


def _gamma(t, t0, tpeak, amp):
    s = np.clip(t - t0, 0, None)
    a = 3.0
    b = (tpeak - t0) / a
    return amp * (s / (a * b)) ** a * np.exp(a - s / b)


def synthetic_slice(seed=0, n=30, size=48):
    """Blood pools peak early and bright, a myocardial ring later and dimmer, noise everywhere."""
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=float)
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2 - 4)
    labels = np.zeros((size, size), np.uint8)
    labels[r < 7] = 1
    labels[(r >= 7) & (r < 11)] = 2
    labels[np.hypot(yy - size / 2, xx - size / 2 + 11) < 6] = 3
    data = 100.0 + rng.normal(0, 3, (n, size, size))
    data[:, labels == 3] += _gamma(t, 3, 8, 350)[:, None]
    data[:, labels == 1] += _gamma(t, 5, 11, 400)[:, None]
    data[:, labels == 2] += _gamma(t, 7, MYO_PEAK, 70)[:, None]
    series = SliceSeries(data=data.astype(np.float32), times=0.9 * t, spacing=(1.8, 1.7), level="mid",
                         condition="stress", source="synthetic")
    return series, labels


def test_peak_frame_with_labels_is_the_myocardial_peak():
    series, labels = synthetic_slice()
    assert peak_myocardial_enhancement_frame(series, labels) == MYO_PEAK
    assert peak_myocardial_enhancement_frame(series.data, labels) == MYO_PEAK


def test_peak_frame_without_labels_finds_myocardium_not_blood():
    for seed in range(3):
        series, _ = synthetic_slice(seed)
        frame = peak_myocardial_enhancement_frame(series)
        assert abs(frame - MYO_PEAK) <= 2, frame  # the blood-pool peaks are at frames 8 and 11


def test_peak_frame_rejects_bad_labels():
    series, labels = synthetic_slice()
    with pytest.raises(InvalidLabelsError):
        peak_myocardial_enhancement_frame(series, labels[:-1])
    with pytest.raises(InvalidLabelsError):
        peak_myocardial_enhancement_frame(series, np.where(labels == 2, 0, labels))


def test_export_and_read_back(tmp_path):
    series, labels = synthetic_slice()
    before = series.data.copy()
    folder = export_labelled_case(series, labels, tmp_path / "ds", "case-001")
    assert sorted(p.name for p in folder.iterdir()) == ["case.json", "image.nii.gz", "image.times.json",
                                                        "labels.nii.gz"]
    meta = json.loads((folder / "case.json").read_text())
    assert meta["spacing_mm"] == [1.8, 1.7] and meta["level"] == "mid" and meta["condition"] == "stress"
    assert meta["label_pixels"]["2"] == int((labels == 2).sum())
    assert meta["peak_myocardial_frame"] == MYO_PEAK
    assert meta["patient_id"] == "case-001"               # no "_": the whole case id
    np.testing.assert_array_equal(series.data, before)  # input untouched

    (case,) = read_labelled_dataset(tmp_path / "ds")
    assert case.case_id == "case-001"
    np.testing.assert_array_equal(case.labels, labels)
    np.testing.assert_allclose(case.series.data, series.data, rtol=1e-6)
    np.testing.assert_allclose(case.series.times, series.times)
    assert case.series.spacing == pytest.approx((1.8, 1.7))
    assert case.series.level == "mid"


def test_exported_patient_id_is_what_training_splits_by(tmp_path):
    from PerfusionSegLib.training.data import _patient_of

    series, labels = synthetic_slice()
    export_labelled_case(series, labels, tmp_path, "patient07_stress_mid")
    export_labelled_case(series, labels, tmp_path, "scan3", patient_id=" P-0042 ")
    cases = {c.case_id: c for c in read_labelled_dataset(tmp_path)}
    assert _patient_of(cases["patient07_stress_mid"]) == "patient07"
    assert _patient_of(cases["scan3"]) == "P-0042"
    with pytest.raises(InvalidParameterError, match="patient_id"):
        export_labelled_case(series, labels, tmp_path, "scan4", patient_id=" ")
    assert not (tmp_path / "scan4").exists()


def test_export_refuses_overwrite_and_bad_input(tmp_path):
    series, labels = synthetic_slice()
    export_labelled_case(series, labels, tmp_path, "a")
    with pytest.raises(InvalidParameterError):
        export_labelled_case(series, labels, tmp_path, "a")
    relabelled = labels.copy()
    relabelled[relabelled == 3] = 0
    export_labelled_case(series, relabelled, tmp_path, "a", overwrite=True)
    (case,) = read_labelled_dataset(tmp_path)
    assert not np.any(case.labels == 3)
    with pytest.raises(InvalidParameterError):
        export_labelled_case(series, labels, tmp_path, "../escape")
    with pytest.raises(InvalidLabelsError):
        export_labelled_case(series, np.where(labels == 2, 7, labels), tmp_path, "b")
    with pytest.raises(InvalidLabelsError):
        export_labelled_case(series, labels[:, :-1], tmp_path, "c")
    # nothing half-written: only the one good case, no temporary folders left
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


def test_read_rejects_missing_or_incomplete(tmp_path):
    with pytest.raises(UnreadableFileError):
        read_labelled_dataset(tmp_path / "nope")
    with pytest.raises(UnreadableFileError):
        read_labelled_dataset(tmp_path)
    series, labels = synthetic_slice()
    folder = export_labelled_case(series, labels, tmp_path, "x")
    (folder / "labels.nii.gz").unlink()
    with pytest.raises(UnreadableFileError, match="labels.nii.gz"):
        read_labelled_dataset(tmp_path)
